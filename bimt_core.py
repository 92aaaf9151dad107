"""Brain-Inspired Modular Training (BIMT), the method of Liu, Gan, Tegmark (2023), "Seeing is Believing:
Brain-Inspired Modular Training for Mechanistic Interpretability", arXiv:2305.08746.

Every neuron has a position in space. The loss pays for each connection in proportion to its length
(`connection_cost`), and every few hundred steps neurons of a layer exchange places when that lowers the
cost (`relocate`); a swap permutes weights, never the function the network computes. Top to bottom:
input checks -> geometry -> layers -> models -> cost -> swapping -> training -> data. Reading a trained
network (analysis, circuits, plotting, claims) lives in bimt_seeing, which imports this module.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import math
import numbers
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

import torch
import torch.nn as nn
import torch.nn.functional as F

# -- Input checks: each public function checks its arguments once, at its boundary, with these --------
def _check(ok, name: str, v, expected: str, exc=ValueError):
    """v if ok, else exc('{name} must be {expected}, got {v!r}')."""
    if not ok:
        raise exc(f"{name} must be {expected}, got {v!r}")
    return v

def _is_int(v, lo=1, hi=math.inf) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and lo <= v < hi  # a bool is no count

def _is_real(v, lo=-math.inf, hi=math.inf) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi

def _int(name: str, v, lo: int = 1, none: bool = False):
    return _check(_is_int(v, lo) or (none and v is None), name, v,
                  ("a positive int" if lo == 1 else f"an int >= {lo}") + (" or None" if none else ""))

def _number(name: str, v, lo: float = 0.0, hi: float = math.inf):
    """A finite number in [lo, hi]; _number(name, v, 0, 1) is a fraction (NaN is never one)."""
    return _check(_is_real(v, lo, hi), name, v, f"a number in [{lo:g}, {hi:g}]" if hi < math.inf
                  else f"a finite number >= {lo:g}")

def _choice(name: str, v, options):
    return _check(isinstance(v, (str, type(None))) and v in options, name, v, " or ".join(map(repr, options)))

def _flags(**flags):
    for k, v in flags.items():
        _check(isinstance(v, (bool, np.bool_)), k, v, "True or False")

def _float(name: str, v) -> float:
    """float(v) for a number or a one-element tensor or array (what a metric returns)."""
    return float(_check(isinstance(v, numbers.Real) or isinstance(v, np.ndarray) and v.size == 1
                        or torch.is_tensor(v) and v.numel() == 1, name, v, "a number"))

def _dtype(dtype):
    return _check(dtype is None or isinstance(dtype, torch.dtype) and dtype.is_floating_point, "dtype", dtype,
                  "a floating-point torch dtype (e.g. torch.float64) or None")

# -- Geometry ----------------------------------------------------------------------------------------
def neuron_coords(n: int, geometry: str = "line", fold: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Positions of the n neurons of one layer, (n, 1) for 'line', (n, 2) for 'grid' and 'ring'. A layer with
    fold f is f stacked copies of m = n/f units (the a|b embeddings, q|k|v): copy c of unit k sits where k does.
    line: unit k at x = (2k+1)/(2m) on [0, 1]; grid (m = s*s): column k % s, row k // s, cell centres on
    [0, 1]^2; ring: angle 2 pi (2k+1)/(2m) on a circle of radius 1/4 about (0.5, 0.5) (MNIST's outputs)."""
    _check(_is_int(n), "layer width", n, "a positive integer")
    _check(_is_int(fold) and n % fold == 0, "fold", fold, f"a positive integer dividing the layer width {n}")
    m = n // fold
    k = torch.arange(m, dtype=_dtype(dtype) or torch.float32)  # in the model's precision, never cast from a coarser one
    if geometry == "line":
        c = ((2 * k + 1) / (2 * m))[:, None]
    elif geometry == "grid":
        s = math.isqrt(m)
        if s * s != m:
            raise ValueError(f"a 2D grid layer needs a perfect-square width per fold copy, got {m} "
                             f"(nearest squares {s * s} and {(s + 1) ** 2})")
        c = torch.stack([(2 * (k % s) + 1) / (2 * s), (2 * (k // s) + 1) / (2 * s)], dim=1)
    elif geometry == "ring":
        theta = 2 * math.pi * (2 * k + 1) / (2 * m)
        c = torch.stack([0.5 + 0.25 * torch.cos(theta), 0.5 + 0.25 * torch.sin(theta)], dim=1)
    else:
        raise ValueError(f"unknown geometry {geometry!r}; expected 'line', 'grid' or 'ring'")
    return c.repeat(fold, 1)

def manhattan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise Manhattan distances, (n, d) x (m, d) -> (n, m). In 1D it is |dx|."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"cannot measure distances between coordinates of shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}; expected (n, d) and (m, d) with the same d")
    return (a[:, None, :] - b[None, :, :]).abs().sum(-1)

# -- Layers ------------------------------------------------------------------------------------------
class BioLinear(nn.Linear):
    """nn.Linear whose input and output neurons carry coordinates (buffers), and `dist` (out, in), every
    connection's length. Neurons never move: a swap exchanges weights. Coordinates follow the weights' dtype,
    recomputed by `.double()`, not cast (float32 rounding, ~1e-7, would exceed the swap pass's tie tolerance)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, in_geometry: str = "line",
                 out_geometry: str = "line", in_fold: int = 1, out_fold: int = 1,
                 generator: torch.Generator | None = None, dtype: torch.dtype | None = None):
        _check(_is_int(in_features) and _is_int(out_features), "BioLinear's widths", (in_features, out_features),
               "positive ints")
        _check(generator is None or isinstance(generator, torch.Generator), "generator", generator,
               "a torch.Generator or None", TypeError)
        self._generator = generator  # read by reset_parameters, which nn.Linear.__init__ calls
        super().__init__(in_features, out_features, bias=bias, dtype=_dtype(dtype))
        del self._generator
        self.in_fold, self.out_fold = in_fold, out_fold
        self.in_geometry, self.out_geometry = in_geometry, out_geometry
        self.register_buffer("in_coords", None)
        self.register_buffer("out_coords", None)
        self.register_buffer("dist", None, persistent=False)
        self._place()

    def _place(self) -> None:
        dtype, device = self.weight.dtype, self.weight.device
        self.in_coords = neuron_coords(self.in_features, self.in_geometry, self.in_fold, dtype).to(device)
        self.out_coords = neuron_coords(self.out_features, self.out_geometry, self.out_fold, dtype).to(device)
        self.dist = manhattan(self.out_coords, self.in_coords)

    def reset_parameters(self) -> None:
        # nn.Linear's own init (same formula, so the same numbers in float32 and float64), drawn from an
        # explicit generator so that seeds come from the caller.
        g = getattr(self, "_generator", None)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=g)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound, generator=g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"BioLinear expects inputs of width {self.in_features}, got shape {tuple(x.shape)}")
        try:  # free unless it raises; a dtype check here would refuse what autocast allows
            return super().forward(x)
        except RuntimeError:
            if x.dtype == self.weight.dtype:
                raise
            raise ValueError(f"BioLinear expects {self.weight.dtype} inputs like its weights, got {x.dtype}; "
                             f"convert them with .to({self.weight.dtype})") from None

    def _apply(self, fn, recurse=True):
        dtype = self.weight.dtype
        standard = all(torch.equal(c.cpu(), neuron_coords(n, g, f, dtype)) for c, n, g, f in (
            (self.in_coords, self.in_features, self.in_geometry, self.in_fold),
            (self.out_coords, self.out_features, self.out_geometry, self.out_fold)))
        super()._apply(fn, recurse)
        if self.weight.dtype != dtype and standard:  # coordinates of a `compact` model are a subset: cast
            self._place()
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.dist = manhattan(self.out_coords, self.in_coords)  # coordinates may have been replaced

class Member(NamedTuple):
    """Unit u of a NeuronLayer owns entries index[:, u] (index (copies, n_units)) of getattr(module, attr) along
    dim. role: 'incoming' / 'outgoing', a BioLinear weight's rows / columns; 'embedding'; None: carried along."""
    module: nn.Module
    attr: str
    dim: int
    index: torch.Tensor
    role: str | None = None

@dataclass
class NeuronLayer:
    """One layer of swappable units and the tensor slices each owns (`members`); fixed: never moved (pixels)."""
    name: str
    n_units: int
    members: list = field(default_factory=list)
    fixed: bool = False

    def __post_init__(self):
        _int(f"neuron layer {self.name!r}: n_units", self.n_units)

    def add(self, module: nn.Module, attr: str, dim: int, index: torch.Tensor, role: str | None = None):
        t, index, where = getattr(module, attr, None), torch.as_tensor(index), f"{self.name!r}: {type(module).__name__}"
        _check(torch.is_tensor(t) and _is_int(dim, 0, t.dim()), f"neuron layer {where}.{attr}: dim", dim,
               "a dim of a tensor attribute")
        n = t.shape[dim]
        _check(index.dtype == torch.long and index.dim() == 2 and index.shape[1] == self.n_units and (
            not index.numel() or 0 <= index.min() <= index.max() < n), f"neuron layer {where}.{attr}: index",
            f"{index.dtype} {tuple(index.shape)}", f"a long (copies, {self.n_units}) tensor of positions in [0, {n})")
        _check(role in (None, "embedding") or role in ("incoming", "outgoing") and isinstance(module, BioLinear)
               and attr == "weight" and dim == (role == "outgoing"), f"neuron layer {where}.{attr}: role", role,
               "None, 'embedding', or 'incoming' / 'outgoing' for a BioLinear's weight along dim 0 / 1")
        self.members.append(Member(module, attr, dim, index, role))

    def incoming(self, lin: "BioLinear", index: torch.Tensor):
        """lin writes these units: its weight rows (and bias entries) move with them."""
        self.add(lin, "weight", 0, index, "incoming")
        if lin.bias is not None:
            self.add(lin, "bias", 0, index)

    def outgoing(self, lin: "BioLinear", index: torch.Tensor):
        """lin reads these units: its weight columns move with them."""
        self.add(lin, "weight", 1, index, "outgoing")

def fold_index(n: int, fold: int) -> torch.Tensor:
    """(fold, n // fold) index: unit u of a folded layer owns positions u, u + n/f, u + 2n/f, ..."""
    _check(_is_int(n) and _is_int(fold) and n % fold == 0, "fold", fold, f"a positive int dividing {n!r}")
    return torch.arange(n).view(fold, n // fold)

class Edge(NamedTuple):
    """`linear` reads row src and writes row dst; cols[j]: the src position its input j reads (None: all, in
    order). linear None: an identity (a residual skip), drawn grey, never pruned, not counted as a connection."""
    name: str
    linear: BioLinear | None
    src: int
    dst: int
    cols: torch.Tensor | None = None

    def src_cols(self):
        return slice(None) if self.cols is None else self.cols

@dataclass
class Row:
    """One row of neurons as analysis and drawing see it. coords (n, d); unit[p]: the unit at position p
    (default p mod n/fold: fold copies are one unit); caller[p]: the caller's index of the input or output at
    position p (in_perm / out_perm; None for hidden rows)."""
    name: str
    coords: torch.Tensor
    kind: str = "hidden"
    fold: int = 1
    caller: torch.Tensor | None = None
    unit: torch.Tensor | None = None

    def __post_init__(self):
        where = f"row {self.name!r}: "
        _choice(where + "kind", self.kind, ("input", "hidden", "output"))
        _check(torch.is_tensor(self.coords) and self.coords.dim() == 2 and len(self.coords), where + "coords",
               getattr(self.coords, "shape", self.coords), "an (n, d) tensor with n >= 1")
        self.coords, n = self.coords.detach().cpu(), len(self.coords)
        _check(_is_int(self.fold) and n % self.fold == 0, where + "fold", self.fold, f"a positive int dividing {n}")
        self.unit = torch.arange(n) % (n // self.fold) if self.unit is None else self.unit.cpu()
        _check(self.unit.shape == (n,), where + "unit", tuple(self.unit.shape), f"one unit per position, ({n},)")
        _check(self.kind == "hidden" or torch.is_tensor(self.caller) and self.caller.shape == (n,), where + "caller",
               self.caller, f"the caller's index at each of its {n} positions (input and output rows)")
        if self.caller is not None:
            self.caller = self.caller.cpu()

@dataclass
class Graph:
    """Rows of neurons (bottom to top) and the edges between them, each row written before it is read."""
    rows: list
    edges: list

    def __post_init__(self):
        self.edges, rows = [Edge(*e) for e in self.edges], self.rows
        kinds, n = [r.kind for r in rows], [len(r.unit) for r in rows]
        _check(kinds.count("input") == 1 and "output" in kinds, "a graph's row kinds", kinds,
               "one 'input' row and at least one 'output' row")
        for i, (name, lin, s, d, cols) in enumerate(self.edges):
            where = f"edge {i} ({name!r}): "
            _check(_is_int(d, 0, len(rows)) and _is_int(s, 0, d), where + "(src, dst)", (s, d),
                   f"row indices, src < dst < {len(rows)} (rows run bottom to top)")
            _check(lin is None or isinstance(lin, BioLinear), where + "linear", type(lin).__name__,
                   "a BioLinear, or None for an identity", TypeError)
            _check(cols is None or torch.is_tensor(cols) and len(cols) and 0 <= cols.min() <= cols.max() < n[s],
                   where + "cols", cols, f"None or a tensor of positions in [0, {n[s]})")
            want, got = (n[s] if cols is None else len(cols), n[d]), (n[d], n[d]) if lin is None else (
                lin.in_features, lin.out_features)
            _check(got == want, where + "(inputs, outputs)", got,
                   f"{want}: the widths of rows {rows[s].name!r} (or of cols) and {rows[d].name!r}")
            _check(all(e.dst != s for e in self.edges[i + 1:]), where + "its source row", rows[s].name,
                   "written by no later edge (list edges so that every row is written before it is read)")

    def index(self, row) -> int:
        """The index of `row`: a row index, or a name (the first row so called)."""
        names = [r.name for r in self.rows]
        if _is_int(row, 0, len(names)):
            return int(row)
        _check(row in names, "row", row, f"a name among {names} or an index in [0, {len(names)})")
        return names.index(row)

    def upto(self, name: str) -> "Graph":
        """The network up to row `name`, which becomes the output row (e.g. to find an embedding's modules)."""
        k = self.index(name)
        top = Row(name, self.rows[k].coords, "output", self.rows[k].fold, torch.arange(len(self.rows[k].coords)))
        return Graph(self.rows[:k] + [top], [e for e in self.edges if e.dst <= k])

def _activation(name: str):
    acts = {"silu": F.silu, "relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh,
            "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}  # the authors' transformer MLP
    if name not in acts:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(acts)}")
    return acts[name]

# -- Models ------------------------------------------------------------------------------------------
class SwappableModel(nn.Module):
    """A model BIMT can train, swap, analyse and draw, described twice over the same neurons, on demand:
    neuron_layers() (what a swap moves) and graph() (what analysis and drawing walk). A subclass with embed(x)
    (caller inputs -> input-row activations), forward_internal(h, record) (position order in and out; appends
    every row's activations to record) and an out_perm buffer gets forward() and activations()
    (tests/test_custom_model.py shows one beside BioMLP and BioTransformer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # index_select, not [..., perm]: on CPU the backward of advanced indexing is an accumulating
        # index_put that cost more than the whole MLP (about 4 of 9 ms per modular-addition step).
        return self.forward_internal(self.embed(x)).index_select(-1, torch.argsort(self.out_perm))

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every row's activations of `graph()`, in position order, (B, width) or (B, T, width), for inputs x."""
        record = []
        self.forward_internal(self.embed(x), record)
        return record

    def swap(self, layer, j: int, k: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Exchange units j and k of a neuron layer (index or name); the function is unchanged."""
        swap_units(self, layer, j, k, optimizer)

class BioMLP(SwappableModel):
    """The MLPs of the paper: BioLinear layers of widths shape = [n0, ..., nL], an activation in between.
    geometry: 'line' or 'grid' for the input and hidden layers; out_geometry (default the same) e.g. 'ring'.
    vocab_size: x is (B, in_fold) long tokens, embedded by a learned (vocab, n0 / in_fold) table and concatenated.
    fix_inputs: input neurons are never swapped (pixels). in_perm[p] / out_perm[p]: the caller's input / output
    at position p; swaps update them, so the caller always sees the original order."""

    def __init__(self, shape, geometry: str = "line", out_geometry: str | None = None, in_fold: int = 1,
                 vocab_size: int | None = None, activation: str = "silu", fix_inputs: bool = False,
                 bias: bool = True, generator: torch.Generator | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        _check(isinstance(shape, (list, tuple)) and len(shape) >= 2, "shape", shape,
               "a list of layer widths, at least an input and an output")
        _check(all(map(_is_int, shape)), "shape", shape, "a list of positive int layer widths")
        _check(vocab_size is None or _is_int(vocab_size), "vocab_size", vocab_size, "a positive int or None")
        self.shape = [int(w) for w in shape]
        self.act = _activation(activation)
        self.fix_inputs = fix_inputs
        _flags(fix_inputs=fix_inputs, bias=bias)
        geos = [geometry] * (len(shape) - 1) + [out_geometry or geometry]
        dims = {"line": 1, "grid": 2, "ring": 2}
        if geos[0] in dims and geos[-1] in dims and dims[geos[0]] != dims[geos[-1]]:
            raise ValueError(f"geometry {geos[0]!r} is {dims[geos[0]]}D but out_geometry {geos[-1]!r} is "
                             f"{dims[geos[-1]]}D; all layers must live in the same space (e.g. 'grid' with 'ring')")
        folds = [in_fold] + [1] * (len(shape) - 1)
        self.linears = nn.ModuleList(
            BioLinear(shape[i], shape[i + 1], bias, geos[i], geos[i + 1], folds[i], folds[i + 1], generator, dtype)
            for i in range(len(shape) - 1))
        self.embedding = None if vocab_size is None else nn.Parameter(
            torch.randn(vocab_size, shape[0] // in_fold, generator=generator, dtype=dtype))
        # tokens are not features: nothing to permute
        self.register_buffer("in_perm", torch.arange(shape[0]) if vocab_size is None else None)
        self.register_buffer("out_perm", torch.arange(shape[-1]))

    @property
    def in_fold(self) -> int:
        return self.linears[0].in_fold

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n0) features, or (B, in_fold) tokens -> (B, n0) input-layer activations."""
        _check(torch.is_tensor(x), "inputs", type(x).__name__, "a torch.Tensor", TypeError)
        if self.embedding is None:
            if x.dim() != 2 or x.shape[1] != self.shape[0]:
                raise ValueError(f"BioMLP expects inputs of shape (batch, {self.shape[0]}), got {tuple(x.shape)}")
            return x.index_select(1, self.in_perm)
        if x.dim() != 2 or x.shape[1] != self.in_fold or x.dtype != torch.long:
            raise ValueError(f"BioMLP with an embedding expects long tokens of shape (batch, {self.in_fold}), "
                             f"got {x.dtype} {tuple(x.shape)}")
        vocab = self.embedding.shape[0]
        if x.numel() and (x.min() < 0 or x.max() >= vocab):
            raise ValueError(f"tokens must lie in [0, {vocab}), got values in [{x.min()}, {x.max()}]")
        return self.embedding[x].flatten(1)

    def forward_internal(self, h: torch.Tensor, record: list | None = None) -> torch.Tensor:
        """Input row (B, n0) -> output row (B, nL), in position order; record receives every row's activations."""
        rec = (record if record is not None else []).append  # references only: nothing is copied
        for i, lin in enumerate(self.linears):
            rec(h)
            h = lin(h)
            if i < len(self.linears) - 1:
                h = self.act(h)
        rec(h)
        return h

    def neuron_layers(self) -> list[NeuronLayer]:
        """The swappable layers, input first, referencing the current tensors."""
        n, layers = len(self.linears), []
        for i, width in enumerate(self.shape):
            fold = self.in_fold if i == 0 else 1
            idx = fold_index(width, fold)
            layer = NeuronLayer("input" if i == 0 else "output" if i == n else f"hidden{i}", width // fold,
                                fixed=i == 0 and self.fix_inputs)
            if i > 0:
                layer.incoming(self.linears[i - 1], idx)
            elif self.embedding is not None:
                layer.add(self, "embedding", 1, idx[:1], "embedding")
            else:
                layer.add(self, "in_perm", 0, idx)
            if i < n:
                layer.outgoing(self.linears[i], idx)
            else:
                layer.add(self, "out_perm", 0, idx)
            layers.append(layer)
        return layers

    def graph(self) -> "Graph":
        """The chain input -> hidden1 -> ... -> output, rows named as in `neuron_layers`."""
        lins, n, n0 = self.linears, len(self.linears), self.shape[0]
        # with an embedding, the caller's input p is embedding dim p, and its fold copies are one unit
        caller, unit = (self.in_perm, torch.arange(n0)) if self.embedding is None else (
            torch.arange(n0) % (n0 // self.in_fold), None)
        rows = [Row("input", lins[0].in_coords, "input", self.in_fold, caller, unit)]
        rows += [Row(f"hidden{i}", lins[i].in_coords) for i in range(1, n)]
        rows.append(Row("output", lins[-1].out_coords, "output", caller=self.out_perm))
        return Graph(rows, [(f"linears.{i}", lin, i, i + 1) for i, lin in enumerate(lins)])

class BioBlock(nn.Module):
    """One block on a (B, T, d_model) residual stream: x + attn(ln1(x)), then x + mlp(ln2(x)). q|k|v is one
    BioLinear with out_fold 3 (channel c's q, k, v at one place); head h owns channels [h dh, (h+1) dh)."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int, layer_norm: bool, bias: bool,
                 generator: torch.Generator | None, dtype: torch.dtype | None = None, activation: str = "gelu"):
        super().__init__()
        self.n_heads = n_heads
        self.act = _activation(activation)
        kw = dict(generator=generator, dtype=dtype)
        self.ln1 = nn.LayerNorm(d_model, dtype=dtype) if layer_norm else nn.Identity()
        self.qkv = BioLinear(d_model, 3 * d_model, bias, out_fold=3, **kw)
        self.attn_out = BioLinear(d_model, d_model, bias, **kw)
        self.ln2 = nn.LayerNorm(d_model, dtype=dtype) if layer_norm else nn.Identity()
        self.mlp_in = BioLinear(d_model, d_mlp, bias, **kw)
        self.mlp_out = BioLinear(d_mlp, d_model, bias, **kw)

    def attention(self, x: torch.Tensor, rec=None) -> torch.Tensor:
        """(B, T, d_model) -> what attention writes to the stream, (B, T, d_model); rec receives q|k|v."""
        B, T, C = x.shape
        qkv = self.qkv(x)
        if rec is not None:
            rec(qkv)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, heads, T, dh)
                   for t in qkv.split(C, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.attn_out(y.transpose(1, 2).reshape(B, T, C))

    def mlp(self, x: torch.Tensor, rec=None) -> torch.Tensor:
        """rec(t), if given, receives the hidden activations (B, T, d_mlp)."""
        h = self.act(self.mlp_in(x))
        if rec is not None:
            rec(h)
        return self.mlp_out(h)

class BioTransformer(SwappableModel):
    """The transformer of Fig 7, x (B, T, in_dim) -> (B, T, out_dim): a BioLinear in_dim -> d_model, n_blocks
    BioBlocks, a BioLinear d_model -> out_dim; no token or positional embedding. layer_norm: pre-norm
    LayerNorms (off, as in the paper's released run). activation: the MLPs'; 'gelu_tanh' as the authors'.
    Swaps keep the function: a residual neuron moves in every linear and LayerNorm of the stream, a head as a
    whole, a channel of a head in q, k and v together. in_perm / out_perm as in BioMLP."""

    def __init__(self, in_dim: int, out_dim: int, d_model: int = 32, n_blocks: int = 2, n_heads: int = 1,
                 d_mlp: int = 128, layer_norm: bool = False, bias: bool = True, activation: str = "gelu",
                 generator: torch.Generator | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        for k, v in dict(in_dim=in_dim, out_dim=out_dim, d_model=d_model, n_blocks=n_blocks, n_heads=n_heads,
                         d_mlp=d_mlp).items():
            _int(k, v)
        _flags(layer_norm=layer_norm, bias=bias)
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.in_dim, self.out_dim, self.d_model = in_dim, out_dim, d_model
        self.n_heads, self.d_mlp = n_heads, d_mlp
        self.embed_in = BioLinear(in_dim, d_model, bias, generator=generator, dtype=dtype)
        self.blocks = nn.ModuleList(BioBlock(d_model, n_heads, d_mlp, layer_norm, bias, generator, dtype, activation)
                                    for _ in range(n_blocks))
        self.ln_f = nn.LayerNorm(d_model, dtype=dtype) if layer_norm else nn.Identity()
        self.unembed = BioLinear(d_model, out_dim, bias, generator=generator, dtype=dtype)  # last: "last layer"
        self.register_buffer("in_perm", torch.arange(in_dim))
        self.register_buffer("out_perm", torch.arange(out_dim))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, in_dim) caller features -> the same in internal (position) order."""
        _check(torch.is_tensor(x), "inputs", type(x).__name__, "a torch.Tensor", TypeError)
        if x.dim() != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"BioTransformer expects inputs of shape (batch, seq, {self.in_dim}), "
                             f"got {tuple(x.shape)}")
        return x.index_select(-1, self.in_perm)

    def forward_internal(self, x: torch.Tensor, record: list | None = None) -> torch.Tensor:
        """(B, T, in_dim) -> (B, T, out_dim), in position order; record receives every row's activations."""
        rec = (record if record is not None else []).append  # references only: nothing is copied
        rec(x)
        h = self.embed_in(x)
        rec(h)
        for blk in self.blocks:
            h = h + blk.attention(blk.ln1(h), rec)
            rec(h)
            h = h + blk.mlp(blk.ln2(h), rec)
            rec(h)
        y = self.unembed(self.ln_f(h))
        rec(y)
        return y

    def neuron_layers(self) -> list[NeuronLayer]:
        """'input', 'residual', per block b 'block{b}.heads', 'block{b}.head{h}' (its channels) and
        'block{b}.mlp_hidden', then 'output'; no BioLinear is on both sides of one layer (see `relocate`)."""
        d, nh, dh = self.d_model, self.n_heads, self.d_model // self.n_heads
        inp = NeuronLayer("input", self.in_dim)
        inp.add(self, "in_perm", 0, fold_index(self.in_dim, 1))
        inp.outgoing(self.embed_in, fold_index(self.in_dim, 1))
        res, ri = NeuronLayer("residual", d), fold_index(d, 1)
        res.incoming(self.embed_in, ri)
        for blk in self.blocks:  # writers of the stream move their rows, readers their columns
            res.incoming(blk.attn_out, ri)
            res.incoming(blk.mlp_out, ri)
            res.outgoing(blk.qkv, ri)
            res.outgoing(blk.mlp_in, ri)
        res.outgoing(self.unembed, ri)
        for ln in [self.ln_f] + [ln for blk in self.blocks for ln in (blk.ln1, blk.ln2)]:
            if isinstance(ln, nn.LayerNorm):
                for attr in ("weight", "bias"):
                    if getattr(ln, attr) is not None:
                        res.add(ln, attr, 0, ri)
        layers = [inp, res]
        rows = torch.arange(3 * d).view(3, nh, dh)  # q|k|v row of (copy, head, channel)
        cols = torch.arange(d).view(nh, dh)         # attention-output column of (head, channel)
        for b, blk in enumerate(self.blocks):
            heads = NeuronLayer(f"block{b}.heads", nh)
            heads.incoming(blk.qkv, rows.permute(0, 2, 1).reshape(3 * dh, nh))
            heads.outgoing(blk.attn_out, cols.T)
            layers.append(heads)
            for h in range(nh):
                head = NeuronLayer(f"block{b}.head{h}", dh)
                head.incoming(blk.qkv, rows[:, h])
                head.outgoing(blk.attn_out, cols[h][None])
                layers.append(head)
            mlp = NeuronLayer(f"block{b}.mlp_hidden", self.d_mlp)
            mlp.incoming(blk.mlp_in, fold_index(self.d_mlp, 1))
            mlp.outgoing(blk.mlp_out, fold_index(self.d_mlp, 1))
            layers.append(mlp)
        out = NeuronLayer("output", self.out_dim)
        out.incoming(self.unembed, fold_index(self.out_dim, 1))
        out.add(self, "out_perm", 0, fold_index(self.out_dim, 1))
        return layers + [out]

    def graph(self) -> "Graph":
        """Rows input, embed, per block b attention{b} (q|k|v, fold 3), residual, mlp{b}, residual, then output.
        attn_out reads the v copy (attention mixes positions, never channels); residual skips are identities."""
        d = self.d_model
        rows = [Row("input", self.embed_in.in_coords, "input", caller=self.in_perm,
                    unit=torch.arange(self.in_dim)), Row("embed", self.embed_in.out_coords)]
        edges, res = [("embed_in", self.embed_in, 0, 1)], 1
        for b, blk in enumerate(self.blocks):
            a = len(rows)
            rows += [Row(f"attention{b}", blk.qkv.out_coords, fold=3), Row("residual", blk.attn_out.out_coords),
                     Row(f"mlp{b}", blk.mlp_in.out_coords), Row("residual", blk.mlp_out.out_coords)]
            edges += [(f"blocks.{b}.qkv", blk.qkv, res, a),
                      (f"blocks.{b}.attn_out", blk.attn_out, a, a + 1, torch.arange(2 * d, 3 * d)),
                      (f"blocks.{b}.attn_skip", None, res, a + 1),
                      (f"blocks.{b}.mlp_in", blk.mlp_in, a + 1, a + 2),
                      (f"blocks.{b}.mlp_out", blk.mlp_out, a + 2, a + 3),
                      (f"blocks.{b}.mlp_skip", None, a + 1, a + 3)]
            res = a + 3
        rows.append(Row("output", self.unembed.out_coords, "output", caller=self.out_perm))
        return Graph(rows, edges + [("unembed", self.unembed, res, len(rows) - 1)])

# -- Connection cost ---------------------------------------------------------------------------------
def _linears(model: nn.Module) -> list[BioLinear]:
    _check(isinstance(model, nn.Module), "model", type(model).__name__, "an nn.Module", TypeError)
    lins = [m for m in model.modules() if isinstance(m, BioLinear)]
    _check(lins, "model", type(model).__name__, "a model with BioLinear layers to pay a connection cost for")
    return lins

def _cost_args(weight_factor, l0, agg, **flags):
    _number("weight_factor", weight_factor), _number("l0", l0), _choice("agg", agg, ("sum", "mean")), _flags(**flags)

def cost_terms(model: nn.Module, weight_factor: float = 1.0, l0: float = 0.1, agg: str = "sum",
               bias_penalty: bool = False, embedding_penalty: bool = False,
               last_layer_l0_only: bool = False) -> list:
    """The connection cost as terms (tensor, coef, factor) worth factor * sum(|tensor| * coef) (coef None: 1);
    W_ij's coef is A d_ij + l0. Positions never move, so `train` builds them once per phase."""
    _cost_args(weight_factor, l0, agg, bias_penalty=bias_penalty, embedding_penalty=embedding_penalty,
               last_layer_l0_only=last_layer_l0_only)
    lins, terms = _linears(model), []
    scale = (lambda t: 1.0) if agg == "sum" else (lambda t: 1.0 / t.numel())
    for i, lin in enumerate(lins):
        a = 0.0 if (last_layer_l0_only and i == len(lins) - 1) else weight_factor
        terms.append((lin.weight, a * lin.dist + l0, scale(lin.weight)))
        if bias_penalty and lin.bias is not None:
            terms.append((lin.bias, None, scale(lin.bias) * l0))
    emb = getattr(model, "embedding", None)
    if embedding_penalty and emb is not None:
        terms.append((emb, None, scale(emb) * l0))
    return terms

def sum_terms(terms: list) -> torch.Tensor:
    """The cost of `cost_terms`: a scalar tensor with gradients."""
    cost = None
    for t, coef, factor in terms:
        c = t.abs().sum() if coef is None else (t.abs() * coef).sum()
        c = c if factor == 1.0 else factor * c
        cost = c if cost is None else cost + c
    if cost is None:
        raise ValueError("sum_terms needs the non-empty list of terms of cost_terms, got none")
    return cost

def connection_cost(model: nn.Module, weight_factor: float = 1.0, l0: float = 0.1, agg: str = "sum",
                    bias_penalty: bool = False, embedding_penalty: bool = False,
                    last_layer_l0_only: bool = False) -> torch.Tensor:
    """Scalar tensor: agg_ij |W_ij| (A d_ij + l0) over every BioLinear, + agg |b| l0 with bias_penalty, + agg |E|
    l0 with embedding_penalty. agg 'sum', or 'mean' within each tensor (Fig 5-8). last_layer_l0_only: the last
    BioLinear pays l0 |w| only (MNIST)."""
    return sum_terms(cost_terms(model, weight_factor, l0, agg, bias_penalty, embedding_penalty,
                                last_layer_l0_only))

# -- Swapping ----------------------------------------------------------------------------------------
def _neuron_layers(model: nn.Module) -> list[NeuronLayer]:
    if not callable(getattr(model, "neuron_layers", None)):
        raise TypeError(f"{type(model).__name__} cannot be swapped: it needs a neuron_layers() method listing "
                        f"its swappable layers (see bc.SwappableModel and BioMLP.neuron_layers)")
    layers = model.neuron_layers()
    return _check(isinstance(layers, list) and all(isinstance(nl, NeuronLayer) for nl in layers),
                  f"{type(model).__name__}.neuron_layers()", layers, "a list of NeuronLayers", TypeError)

def _optimizer(optimizer):
    return _check(optimizer is None or isinstance(optimizer, torch.optim.Optimizer), "optimizer", optimizer,
                  "a torch.optim.Optimizer or None", TypeError)

def _get_layer(model: nn.Module, layer) -> NeuronLayer:
    if isinstance(layer, NeuronLayer):
        return layer
    layers = _neuron_layers(model)
    if isinstance(layer, str):
        for nl in layers:
            if nl.name == layer:
                return nl
        raise ValueError(f"no neuron layer named {layer!r}; layers are {[nl.name for nl in layers]}")
    return layers[_check(_is_int(layer, -len(layers), len(layers)), "layer", layer,
                         f"a name or an index in [0, {len(layers)})")]

def permute_units(model: nn.Module, layer, perm: torch.Tensor,
                  optimizer: torch.optim.Optimizer | None = None) -> None:
    """Position p of `layer` (index, name or NeuronLayer) receives the unit now at perm[p]: every member tensor
    moves, and the optimizer's per-parameter state if given (else it stays, as in the authors' code)."""
    nl, optimizer = _get_layer(model, layer), _optimizer(optimizer)
    if nl.fixed:
        raise ValueError(f"neuron layer {nl.name!r} is fixed (fix_inputs=True); its neurons cannot be swapped")
    perm = torch.as_tensor(perm)
    _check(perm.dtype == torch.long and torch.equal(perm.sort().values, torch.arange(nl.n_units)), "perm",
           perm.tolist(), f"an integer permutation of range({nl.n_units}) for layer {nl.name!r}")
    for m in nl.members:
        t = getattr(m.module, m.attr)
        full = torch.arange(t.shape[m.dim])
        full[m.index] = m.index[:, perm]  # every copy of a unit moves with it
        full = full.to(t.device)
        state = optimizer.state.get(t, {}) if optimizer is not None else {}  # e.g. Adam's moments, shaped like t
        with torch.no_grad():
            for v in [t, *(v for v in state.values() if torch.is_tensor(v) and v.shape == t.shape)]:
                v.copy_(v.index_select(m.dim, full))  # index_select copies first: no aliasing

def swap_units(model: nn.Module, layer, j: int, k: int,
               optimizer: torch.optim.Optimizer | None = None) -> None:
    """Exchange units j and k of `layer` (index, name or NeuronLayer): `permute_units` with a transposition."""
    nl = _get_layer(model, layer)
    for u in (j, k):
        _check(_is_int(u, 0, nl.n_units), "unit index", u, f"an int in [0, {nl.n_units}) for layer {nl.name!r}")
    perm = torch.arange(nl.n_units)
    perm[[j, k]] = perm[[k, j]]
    permute_units(model, nl, perm, optimizer)

def neuron_scores(nl: NeuronLayer) -> torch.Tensor:
    """(n_units,) float64: sum |incoming| + sum |outgoing weights| over fold copies (an embedding: incoming)."""
    score = torch.zeros(nl.n_units, dtype=torch.float64)
    for m in nl.members:
        if m.role is None:
            continue
        w = getattr(m.module, m.attr).detach().abs().double()
        per_pos = w.sum(dim=1 - m.dim)  # (size along dim,)
        score += per_pos[m.index].sum(0).cpu()
    return score

def placement_costs(nl: NeuronLayer, coefs: dict) -> torch.Tensor:
    """P (n_units, n_units) float64: P[a, p] the cost of the unit at a if it sat at p (coefs: {weight: (coef,
    factor)} of `cost_terms`). Swapping j, k changes the cost by P[j, k] + P[k, j] - P[j, j] - P[k, k]."""
    P = torch.zeros(nl.n_units, nl.n_units, dtype=torch.float64)
    sides = {"incoming": set(), "outgoing": set()}
    for m in nl.members:
        if m.role not in sides or not isinstance(m.module, BioLinear):
            continue  # embeddings and biases pay l0 * |w| wherever they sit
        sides[m.role].add(m.module)
        w = m.module.weight.detach().abs().double()
        coef, scale = coefs[m.module.weight]
        coef = coef.double()
        # G[r, s] = cost of the connections of the unit's row (incoming) / column (outgoing) r at position s
        G = w @ coef.T if m.role == "incoming" else w.T @ coef
        P += scale * G[m.index[:, :, None], m.index[:, None, :]].sum(0).cpu()
    if sides["incoming"] & sides["outgoing"]:
        raise NotImplementedError(f"layer {nl.name!r} has a BioLinear on both sides; its swap cost is not separable")
    return P

SWAP_TOL = 1e-9  # a swap must lower the cost by more than this fraction of the total: ties are not swaps

def relocate(model: nn.Module, top_k: int, optimizer: torch.optim.Optimizer | None = None,
             follow: str = "neurons", **cost_kwargs) -> int:
    """The paper's greedy swap pass; returns the number of swaps. Per unfixed neuron layer, each of the top_k
    units by `neuron_scores` swaps with the partner that lowers `connection_cost(**cost_kwargs)` most, if by more
    than SWAP_TOL of the total (ties are no swaps); the same choice as brute force (tests/test_core.py).
    follow: 'neurons' visits each ranked unit where earlier swaps moved it, 'positions' the positions they held
    when ranked (the authors' code). optimizer: its state moves with the units (see `permute_units`)."""
    _int("top_k (units tried per layer)", top_k, 0), _choice("follow", follow, ("neurons", "positions"))
    optimizer, layers, terms = _optimizer(optimizer), _neuron_layers(model), cost_terms(model, **cost_kwargs)
    with torch.no_grad():
        total = float(sum_terms(terms))
    if not math.isfinite(total):
        raise FloatingPointError(f"the connection cost is {total}: a weight is not finite, so no swap can be judged")
    coefs = {t: (coef, factor) for t, coef, factor in terms if coef is not None}
    swaps = 0
    for nl in layers:
        if nl.fixed or nl.n_units < 2:
            continue
        # The greedy pass runs on P alone (numpy: these are ~100-element vectors); the model is permuted
        # once per layer at the end, which is the same as making the swaps one after another.
        P = placement_costs(nl, coefs).numpy()
        order = torch.argsort(neuron_scores(nl), descending=True, stable=True)[:top_k].tolist()
        perm = np.arange(nl.n_units)     # perm[p]: the unit (by starting position) now at position p
        where = np.arange(nl.n_units)    # where[u]: the position of unit u
        for u in order:
            j = where[u] if follow == "neurons" else u
            delta = P[j] + P[:, j] - P[j, j] - P.diagonal()
            delta[j] = np.inf
            k = int(np.argmin(delta))
            if delta[k] < -SWAP_TOL * total:
                P[[j, k]] = P[[k, j]]
                perm[[j, k]] = perm[[k, j]]
                where[perm[j]], where[perm[k]] = j, k
                swaps += 1
        if (perm != np.arange(nl.n_units)).any():
            permute_units(model, nl, torch.from_numpy(perm), optimizer)
    return swaps

# -- Training ----------------------------------------------------------------------------------------
@dataclass
class BIMTConfig:
    """The knobs of one BIMT run; experiments subclass it. lam_schedule: (fraction, multiplier) pairs, lambda
    multiplied from step int(fraction * steps) on (cumulatively). bias_penalty_from: fraction of training after
    which biases pay l0 |b| (None: never). swap_cost: `connection_cost` keywords for the swap pass instead of
    the training cost's (the paper's 'L1 + swap' trains with weight_factor 0, swaps with 1). batch_size: None
    is full batch, else drawn with replacement by a generator seeded with seed. threads: torch's threads while
    `train` runs (one: the overhead of tiny ops dominates; benchmarks/bench_train.py). The authors' procedure
    (AUTHORS_PROCEDURE) leaves AdamW's moments in place on a swap and relocate_follow='positions'."""
    steps: int = 20000
    lr: float = 2e-3
    weight_decay: float = 0.0  # AdamW's decoupled weight decay (a baseline regulariser; BIMT uses none)
    lam: float = 1e-3
    lam_schedule: tuple = ((0.25, 10.0), (0.75, 0.1))
    weight_factor: float = 1.0  # A
    l0: float = 0.1
    agg: str = "sum"
    bias_penalty_from: float | None = 0.75
    embedding_penalty: bool = False
    last_layer_l0_only: bool = False
    swap: bool = True
    swap_every: int = 200
    swap_cost: dict | None = None
    top_k: int = 5
    batch_size: int | None = None  # None: full batch
    eval_every: int = 200
    seed: int = 0
    threads: int | None = 1
    dtype: str = "float32"
    swap_moves_optimizer_state: bool = True
    relocate_follow: str = "neurons"

    def __post_init__(self):
        for name in ("steps", "swap_every", "eval_every"):
            _int(name, getattr(self, name))
        _int("top_k", self.top_k, 0), _int("seed", self.seed, 0), _number("weight_decay", self.weight_decay)
        _int("batch_size", self.batch_size, none=True), _int("threads", self.threads, none=True)
        _check(_is_real(self.lr) and self.lr > 0, "lr", self.lr, "a finite number > 0"), _number("lam", self.lam)
        _check(isinstance(self.lam_schedule, (tuple, list)) and all(isinstance(p, (tuple, list)) and len(p) == 2
               and _is_real(p[0], 0, 1) and _is_real(p[1], 0) for p in self.lam_schedule), "lam_schedule",
               self.lam_schedule, "(fraction in [0, 1], multiplier >= 0) pairs")
        _check(self.bias_penalty_from is None or _is_real(self.bias_penalty_from, 0, 1), "bias_penalty_from",
               self.bias_penalty_from, "a fraction in [0, 1] or None")
        _flags(swap=self.swap, swap_moves_optimizer_state=self.swap_moves_optimizer_state)
        _choice("dtype", self.dtype, ("float32", "float64"))
        _choice("relocate_follow", self.relocate_follow, ("neurons", "positions"))
        keys = set(self.cost_kwargs())
        _check(self.swap_cost is None or isinstance(self.swap_cost, dict) and set(self.swap_cost) <= keys,
               "swap_cost keys", self.swap_cost, f"among {sorted(keys)} (swap_cost: a dict or None)")
        _cost_args(**self.cost_kwargs()), _cost_args(**self.swap_cost_kwargs())

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def lam_at(self, step: int) -> float:
        lam = self.lam
        for frac, mult in self.lam_schedule:
            if step >= int(frac * self.steps):
                lam *= mult
        return lam

    def cost_kwargs(self, step: int | None = None) -> dict:
        """Keyword arguments of connection_cost at `step` (None: the end of training)."""
        step = self.steps if step is None else step
        bias = self.bias_penalty_from is not None and step >= int(self.bias_penalty_from * self.steps)
        return dict(weight_factor=self.weight_factor, l0=self.l0, agg=self.agg, bias_penalty=bias,
                    embedding_penalty=self.embedding_penalty, last_layer_l0_only=self.last_layer_l0_only)

    def swap_cost_kwargs(self, step: int | None = None) -> dict:
        """Keyword arguments of the cost that relocate minimises at `step`: cost_kwargs updated by swap_cost."""
        return {**self.cost_kwargs(step), **(self.swap_cost or {})}

    def phase_starts(self) -> list:
        """The steps at which lambda or the bias penalty changes (0 included)."""
        fracs = [f for f, _ in self.lam_schedule] + [self.bias_penalty_from or 0.0]
        return sorted({0, *(int(f * self.steps) for f in fracs)})

AUTHORS_PROCEDURE = dict(swap_moves_optimizer_state=False, relocate_follow="positions")

def _check_data(model: nn.Module, cfg: BIMTConfig, fns: dict, snapshot_every, **data) -> None:
    """Clear errors for what would fail deep inside torch or train silently; fns: train's functions by name."""
    _check(isinstance(cfg, BIMTConfig), "cfg", type(cfg).__name__, "a BIMTConfig", TypeError)
    for name, f in fns.items():
        _check(callable(f) or f is None and name != "loss_fn", name, f, "a function" + " or None" * (name != "loss_fn"),
               TypeError)
    _check(fns["snapshot_fn"] is None or _is_int(snapshot_every), "snapshot_every", snapshot_every,
           "a positive int when snapshot_fn is given")
    if cfg.swap:
        _neuron_layers(model)  # a model that cannot swap fails now, not after swap_every steps
    params = [p for p in model.parameters() if p.is_floating_point()]
    if params and params[0].dtype != cfg.torch_dtype:
        raise ValueError(f"cfg.dtype is {cfg.dtype} but the model's parameters are {params[0].dtype}: build the "
                         f"model with dtype=cfg.torch_dtype (so its initialisation is drawn in that precision)")
    for name, pair in data.items():
        _check(isinstance(pair, (tuple, list)) and len(pair) == 2 and all(map(torch.is_tensor, pair)), name,
               type(pair).__name__, "an (inputs, targets) pair of tensors")
        x, y = pair
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"{name}: {len(x)} inputs and {len(y)} targets; expected the same, non-zero number")
        for what, t in (("inputs", x), ("targets", y)):
            if t.is_floating_point() and t.dtype != cfg.torch_dtype:
                raise ValueError(f"{name} {what} are {t.dtype} but the model trains in {cfg.dtype}; "
                                 f"convert them with .to({cfg.torch_dtype})")

def _batch(x: torch.Tensor, y: torch.Tensor, idx, step: int) -> tuple:
    """x[idx], y[idx], or a clear error for indices that do not pick a batch of rows."""
    try:
        xb, yb = x[idx], y[idx]
    except (IndexError, TypeError, RuntimeError):
        xb = None
    if xb is None or xb.dim() != x.dim() or len(xb) == 0:
        raise ValueError(f"sampler({step}) returned {idx!r}; expected a non-empty 1-D tensor of row indices in "
                         f"[0, {len(x)})")
    return xb, yb

def train(model: nn.Module, cfg: BIMTConfig, train_data: tuple, test_data: tuple, loss_fn,
          metric_fn=None, snapshot_fn=None, snapshot_every: int | None = None, progress: bool = True,
          sampler=None) -> dict:
    """Train on loss_fn(model(x), y) + lambda * connection_cost, swapping every cfg.swap_every steps.
    train_data, test_data: (inputs, targets). metric_fn(outputs, targets) -> float and the test loss every
    cfg.eval_every steps and at the last; snapshot_fn(step, model) likewise every snapshot_every steps.
    sampler(step) -> batch indices. Returns the history as lists: step, train_loss, test_loss, metric, cost,
    lam, swaps."""
    from tqdm.auto import tqdm

    _check_data(model, cfg, dict(loss_fn=loss_fn, metric_fn=metric_fn, snapshot_fn=snapshot_fn, sampler=sampler),
                snapshot_every, train_data=train_data, test_data=test_data)
    (x_tr, y_tr), (x_te, y_te) = train_data, test_data
    if sampler is None and cfg.batch_size is not None:
        gen = torch.Generator().manual_seed(cfg.seed)
        sampler = lambda step: torch.randint(len(x_tr), (cfg.batch_size,), generator=gen)  # noqa: E731
    # foreach: the same arithmetic as PyTorch's default single-tensor AdamW on CPU (bit for bit), in fewer ops
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    swap_opt = opt if cfg.swap_moves_optimizer_state else None
    hist = {k: [] for k in ("step", "train_loss", "test_loss", "metric", "cost", "lam", "swaps")}
    swaps, phases = 0, set(cfg.phase_starts())
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        bar = tqdm(range(cfg.steps), disable=not progress, mininterval=0.5)
        for step in bar:
            if step in phases:  # lambda and the cost's terms change only here
                lam, terms = cfg.lam_at(step), cost_terms(model, **cfg.cost_kwargs(step))
            xb, yb = (x_tr, y_tr) if sampler is None else _batch(x_tr, y_tr, sampler(step), step)
            task = loss_fn(model(xb), yb)
            if not (torch.is_tensor(task) and task.dim() == 0 and task.requires_grad):
                raise ValueError(f"loss_fn must return a scalar tensor with gradients (e.g. F.mse_loss(out, y)), "
                                 f"got {task!r}")
            last = step == cfg.steps - 1
            evaluate = step % cfg.eval_every == 0 or last
            # at lambda 0 the cost adds exactly zero to the loss and its gradients, so it is only computed for the
            # history, without gradients: the same trajectory bit for bit, in less time
            with torch.set_grad_enabled(lam != 0):
                cost = sum_terms(terms) if lam or evaluate else None
            loss = task + lam * cost if lam else task
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step} (lambda={lam:g}, task loss "
                                         f"{task.item():.4g}, cost {sum_terms(terms).item():.4g}); try a lower lr or "
                                         f"lambda")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cfg.swap and (step + 1) % cfg.swap_every == 0:
                swaps += relocate(model, cfg.top_k, swap_opt, cfg.relocate_follow, **cfg.swap_cost_kwargs(step))
            if snapshot_fn is not None and (step % snapshot_every == 0 or last):
                snapshot_fn(step, model)
            if evaluate:
                with torch.no_grad():
                    out = model(x_te)
                    metric = None if metric_fn is None else _float("metric_fn's result", metric_fn(out, y_te))
                    for k, v in dict(step=step, train_loss=task.item(), test_loss=loss_fn(out, y_te).item(),
                                     metric=metric, cost=cost.item(), lam=lam, swaps=swaps).items():
                        hist[k].append(v)
                bar.set_postfix(train=f"{hist['train_loss'][-1]:.2e}", test=f"{hist['test_loss'][-1]:.2e}",
                                cost=f"{hist['cost'][-1]:.3g}", refresh=False)
    finally:
        torch.set_num_threads(threads)
    return hist

def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax equals the label."""
    _check(torch.is_tensor(labels) and labels.shape == logits.shape[:-1], "labels' shape", tuple(labels.shape),
           f"the logits' shape without the class dim, {tuple(logits.shape[:-1])}")
    return (logits.argmax(-1) == labels).float().mean().item()

# -- Data --------------------------------------------------------------------------------------------

MNIST_5K = Path(__file__).resolve().parent / "data" / "mnist_5k.npz"  # provenance: data/README.md
MNIST_5K_SHA256 = "246e0c30eeea57c8d0037d3f38c8e00651ec204cc61b8022563e9aeeb9d756f4"
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

def read_idx(path) -> np.ndarray:
    """One IDX file, raw or gzipped -> uint8 array (big-endian magic 0x801 / 0x803, then int32 dims)."""
    path = Path(path)
    buf = path.read_bytes()
    if buf[:2] == b"\x1f\x8b":  # gzip magic; an IDX file starts with two zero bytes
        try:
            buf = gzip.decompress(buf)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from None
    magic = int.from_bytes(buf[:4], "big") if len(buf) >= 4 else None
    if magic not in (0x801, 0x803):
        raise ValueError(f"{path}: bad magic number {magic if magic is None else hex(magic)}; expected 0x801 "
                         f"(labels) or 0x803 (images) - not an unsigned-byte IDX file")
    ndim = magic & 0xFF
    if len(buf) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated header ({len(buf)} bytes)")
    dims = [int.from_bytes(buf[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    need = 4 + 4 * ndim + math.prod(dims)
    if len(buf) != need:
        raise ValueError(f"{path}: {'truncated' if len(buf) < need else 'trailing bytes'}: header says {dims} "
                         f"({need} bytes) but the file has {len(buf)} bytes")
    return np.frombuffer(buf, np.uint8, offset=4 + 4 * ndim).reshape(dims)

def _find_idx(folder: Path, name: str) -> Path:
    for cand in (name, name + ".gz", name.replace("-idx", ".idx"), name.replace("-idx", ".idx") + ".gz"):
        if (folder / cand).is_file():
            return folder / cand
    raise FileNotFoundError(f"{folder}: no {name}[.gz]; an MNIST folder must hold {', '.join(IDX_NAMES)} "
                            f"(each raw or .gz)")

def _to_tensors(images: np.ndarray, labels: np.ndarray, source) -> tuple[torch.Tensor, torch.Tensor]:
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"{source}: images must be uint8 of shape (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),) or labels.dtype != np.uint8 or (labels.size and labels.max() > 9):
        raise ValueError(f"{source}: expected {len(images)} uint8 labels in 0..9 (one per image), got "
                         f"{labels.dtype} {labels.shape}" + (f" with max {labels.max()}" if labels.size else ""))
    x = torch.from_numpy(images.reshape(len(images), 784).astype(np.float32) / 255.0)
    return x, torch.from_numpy(labels.astype(np.int64))

def load_mnist(path=None, n_test: int = 1000, seed: int = 0):
    """MNIST -> x_train, y_train, x_test, y_test: float32 pixels in [0, 1], (N, 784) row-major, int64 labels
    (N,). path None: the shipped 5,000-digit subset (checksum verified) or an .npz with uint8 'images' (N, 28,
    28) and 'labels', split at random by seed; a folder: the IDX files (IDX_NAMES), the official split."""
    path = MNIST_5K if path is None else Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; expected an .npz of MNIST digits or a folder "
                                f"holding {', '.join(IDX_NAMES)} (each raw or .gz)")
    if path.is_dir():
        tr = [read_idx(_find_idx(path, n)) for n in IDX_NAMES[:2]]
        te = [read_idx(_find_idx(path, n)) for n in IDX_NAMES[2:]]
        return (*_to_tensors(*tr, f"{path} (train)"), *_to_tensors(*te, f"{path} (t10k)"))
    raw = path.read_bytes()
    if path.resolve() == MNIST_5K and hashlib.sha256(raw).hexdigest() != MNIST_5K_SHA256:
        raise ValueError(f"{path}: SHA-256 does not match the shipped subset (corrupt or truncated?); "
                         f"rebuild it as data/README.md describes")
    try:
        with np.load(io.BytesIO(raw)) as f:
            images, labels = f["images"], f["labels"]
    except Exception as e:
        raise ValueError(f"{path}: not an .npz holding 'images' and 'labels' ({type(e).__name__}: {e})") from None
    x, y = _to_tensors(images, labels, path)
    _check(_is_int(n_test, 1, len(x)), "n_test", n_test, f"an int in (0, {len(x)})"), _int("seed", seed, 0)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]
