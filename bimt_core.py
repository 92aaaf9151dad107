"""Brain-Inspired Modular Training (BIMT), the method of Liu, Gan, Tegmark (2023), "Seeing is Believing:
Brain-Inspired Modular Training for Mechanistic Interpretability", arXiv:2305.08746.

Every neuron has a position in space. The loss pays for each connection in proportion to its length
(`connection_cost`), and every few hundred steps neurons of a layer exchange places when that lowers the
cost (`relocate`); a swap permutes weights, never the function the network computes. Top to bottom:
input checks -> geometry -> layers -> models -> cost -> swapping -> the data train reads -> training.
Reading a trained network (analysis, circuits, plotting, claims) lives in bimt_seeing, which imports this module."""
from __future__ import annotations

import itertools
import math
import numbers
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["neuron_coords", "manhattan", "BioLinear", "Member", "NeuronLayer", "fold_index", "Edge", "Row", "Graph",
           "SwappableModel", "BioMLP", "from_sequential", "BioBlock", "BioTransformer", "cost_terms", "sum_terms",
           "connection_cost", "permute_units", "swap_units", "neuron_scores", "placement_costs", "SWAP_TOL", "relocate",
           "BIMTConfig", "AUTHORS_PROCEDURE", "History", "penalty", "swap_pass", "train", "accuracy"]

# -- Input checks: each public function checks its arguments once, at its boundary, with these --------
def _check(ok, name: str, v, expected: str, exc=ValueError):
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
    return _check(_is_real(v, lo, hi), name, v, f"a number in [{lo:g}, {hi:g}]" if hi < math.inf
                  else f"a finite number >= {lo:g}")

def _choice(name: str, v, options):
    return _check(isinstance(v, (str, type(None))) and v in options, name, v, " or ".join(map(repr, options)))

def _flags(**flags):
    for k, v in flags.items():
        _check(isinstance(v, (bool, np.bool_)), k, v, "True or False")

def _float(name: str, v) -> float:  # what a metric returns: a number, or a one-element tensor or array
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
    k = torch.arange(m := n // fold, dtype=_dtype(dtype) or torch.float32)  # the model's precision, never a cast
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
        self.in_fold, self.out_fold, self.in_geometry, self.out_geometry = in_fold, out_fold, in_geometry, out_geometry
        for name in ("in_coords", "out_coords", "dist"):  # dist follows from the coordinates: not saved
            self.register_buffer(name, None, persistent=name != "dist")
        self._place()

    def _place(self) -> None:
        dtype, device = self.weight.dtype, self.weight.device
        self.in_coords = neuron_coords(self.in_features, self.in_geometry, self.in_fold, dtype).to(device)
        self.out_coords = neuron_coords(self.out_features, self.out_geometry, self.out_fold, dtype).to(device)
        self.dist = manhattan(self.out_coords, self.in_coords)

    def reset_parameters(self) -> None:
        # nn.Linear's own init (the same numbers in float32 and float64), from the caller's seeded generator
        g = getattr(self, "_generator", None)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=g)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -(bound := 1 / math.sqrt(self.in_features)), bound, generator=g)

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
    """One layer of swappable units and the tensor slices each owns (`members`); fixed: never moved (pixels).
    add, incoming and outgoing return the layer, so that they chain."""
    name: str
    n_units: int
    members: list = field(default_factory=list)
    fixed: bool = False

    def __post_init__(self):
        _int(f"neuron layer {self.name!r}: n_units", self.n_units)

    def add(self, module: nn.Module, attr: str, dim: int, index: torch.Tensor, role: str | None = None) -> NeuronLayer:
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
        return self

    def incoming(self, lin: "BioLinear", index: torch.Tensor) -> NeuronLayer:
        """lin writes these units: its weight rows (and bias entries) move with them."""
        self.add(lin, "weight", 0, index, "incoming")
        return self if lin.bias is None else self.add(lin, "bias", 0, index)

    def outgoing(self, lin: "BioLinear", index: torch.Tensor) -> NeuronLayer:
        """lin reads these units: its weight columns move with them."""
        return self.add(lin, "weight", 1, index, "outgoing")

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
        self.caller = None if self.caller is None else self.caller.cpu()

@dataclass
class Graph:
    """Rows of neurons (bottom to top) and the edges between them, each row written before it is read."""
    rows: list
    edges: list

    def __post_init__(self):
        self.edges, rows = [Edge(*e) for e in self.edges], self.rows
        kinds, n, names = [r.kind for r in rows], [len(r.unit) for r in rows], [r.name for r in rows]
        _check(kinds.count("input") == 1 and "output" in kinds, "a graph's row kinds", kinds,
               "one 'input' row and at least one 'output' row")
        repeated = sorted({x for x in names if names.count(x) > 1})  # a lookup by name would find the first only
        _check(not repeated, "a graph's row names", names, f"unique (rows are looked up by name); {repeated} repeat")
        for i, e in enumerate(self.edges):
            where, lin, s, d, cols = f"edge {i} ({e.name!r}): ", e.linear, e.src, e.dst, e.cols
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
            _check(all(later.dst != s for later in self.edges[i + 1:]), where + "its source row", rows[s].name,
                   "written by no later edge (list edges so that every row is written before it is read)")

    def index(self, row) -> int:
        """The index of `row`: a row index, or a row's name (names are unique)."""
        names = [r.name for r in self.rows]
        if _is_int(row, 0, len(names)):
            return int(row)
        return names.index(_check(row in names, "row", row, f"a name among {names} or an index in [0, {len(names)})"))

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
    """A model of BioLinears that BIMT can swap, analyse and draw, described twice, on demand, over the same neurons:
    neuron_layers() -> [NeuronLayer], what a swap moves (input first); graph() -> Graph, the rows of neurons and
    the BioLinears between them that analysis and drawing walk. For a: n -> h, an activation, b: h -> m:

        def neuron_layers(self):
            hidden, units = bc.NeuronLayer("hidden", self.a.out_features), bc.fold_index(self.a.out_features, 1)
            hidden.incoming(self.a, units)  # a writes unit u: its row u (and bias u) moves with it
            hidden.outgoing(self.b, units)  # b reads it: its column u moves with it
            return [hidden]

        def graph(self):
            return bc.Graph([bc.Row("input", self.a.in_coords, "input", caller=torch.arange(self.a.in_features)),
                             bc.Row("hidden", self.a.out_coords),
                             bc.Row("output", self.b.out_coords, "output", caller=torch.arange(self.b.out_features))],
                            [("a", self.a, 0, 1), ("b", self.b, 1, 2)])

    A subclass with embed(x) (caller inputs -> input-row activations), forward_internal(h, record) (position
    order in and out; appends every row's activations to record) and an out_perm buffer gets forward() and
    activations() (tests/test_custom_model.py shows one beside BioMLP and BioTransformer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # index_select, not [..., perm]: on CPU, advanced indexing's backward (index_put) cost more than the MLP
        return self.forward_internal(self.embed(x)).index_select(-1, torch.argsort(self.out_perm))

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every row's activations of `graph()`, in position order, (B, width) or (B, T, width), for inputs x."""
        self.forward_internal(self.embed(x), record := [])
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
        _check(isinstance(shape, (list, tuple)) and len(shape) >= 2 and all(map(_is_int, shape)), "shape", shape,
               "a list of positive int layer widths, at least an input and an output")
        _int("vocab_size", vocab_size, none=True)
        _flags(fix_inputs=fix_inputs, bias=bias)
        self.shape, self.act, self.fix_inputs = [int(w) for w in shape], _activation(activation), fix_inputs
        geos, dims = [geometry] * (len(shape) - 1) + [out_geometry or geometry], {"line": 1, "grid": 2, "ring": 2}
        if geos[0] in dims and geos[-1] in dims and dims[geos[0]] != dims[geos[-1]]:
            raise ValueError(f"geometry {geos[0]!r} is {dims[geos[0]]}D but out_geometry {geos[-1]!r} is "
                             f"{dims[geos[-1]]}D; all layers must live in the same space (e.g. 'grid' with 'ring')")
        self.linears = nn.ModuleList(  # the input layer alone may be folded (token embeddings a|b)
            BioLinear(shape[i], shape[i + 1], bias, geos[i], geos[i + 1], in_fold if i == 0 else 1, 1, generator, dtype)
            for i in range(len(shape) - 1))
        self.embedding = None if vocab_size is None else nn.Parameter(
            torch.randn(vocab_size, shape[0] // in_fold, generator=generator, dtype=dtype))
        self.register_buffer("in_perm", torch.arange(shape[0]) if vocab_size is None else None)  # tokens: no perm
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
            h = lin(h) if i == len(self.linears) - 1 else self.act(lin(h))
        rec(h)
        return h

    def neuron_layers(self) -> list[NeuronLayer]:
        """The swappable layers, input first, referencing the current tensors."""
        n, layers = len(self.linears), []
        for i, width in enumerate(self.shape):
            idx = fold_index(width, fold := self.in_fold if i == 0 else 1)
            layer = NeuronLayer("input" if i == 0 else "output" if i == n else f"hidden{i}", width // fold,
                                fixed=i == 0 and self.fix_inputs)
            if i > 0:
                layer.incoming(self.linears[i - 1], idx)
            elif self.embedding is not None:
                layer.add(self, "embedding", 1, idx[:1], "embedding")
            else:
                layer.add(self, "in_perm", 0, idx)
            layers.append(layer.outgoing(self.linears[i], idx) if i < n else layer.add(self, "out_perm", 0, idx))
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
        return Graph(rows, [Edge(f"linears.{i}", lin, i, i + 1) for i, lin in enumerate(lins)])

def _act_name(m: nn.Module) -> str | None:
    """The BioMLP activation that an activation module computes (None: not one)."""
    if isinstance(m, nn.GELU):
        return "gelu" if m.approximate == "none" else "gelu_tanh"
    return {nn.SiLU: "silu", nn.ReLU: "relu", nn.Tanh: "tanh"}.get(type(m))

def from_sequential(seq: nn.Sequential, geometry: str = "line", out_geometry: str | None = None,
                    fix_inputs: bool = False) -> BioMLP:
    """A BioMLP computing what `seq` computes, (B, in) -> (B, out), its weights copied (dtype, device kept): seq is
    nn.Linear layers with one elementwise activation between each two (nn.ReLU, SiLU, GELU or Tanh, the same
    throughout); nn.Identity and nn.Dropout are left out (the eval-mode function). geometry etc.: as in BioMLP."""
    how = ("from_sequential converts nn.Linear layers with one elementwise activation (nn.ReLU, SiLU, GELU or Tanh, "
           "the same throughout) between each two; for convolutions, attention, normalisation or other layers, "
           "build the model of bc.BioLinear layers and subclass bc.SwappableModel")
    _check(isinstance(seq, nn.Sequential), "seq", type(seq).__name__, "an nn.Sequential: " + how, TypeError)
    mods = [(i, m) for i, m in enumerate(seq) if not isinstance(m, (nn.Identity, nn.Dropout))]
    _check(len(mods) % 2, "seq", seq, "nn.Linear, activation, ..., nn.Linear (odd in length): " + how)
    lins, acts = mods[::2], [(i, m, _act_name(m)) for i, m in mods[1::2]]
    for i, m in lins:
        _check(isinstance(m, nn.Linear), f"seq[{i}]", m, "an nn.Linear: " + how)
    for i, m, act in acts:
        _check(act, f"seq[{i}]", m, "an elementwise activation: " + how)
        _check(act == acts[0][2], f"seq[{i}]", m, f"{acts[0][1]} like seq[{acts[0][0]}] (a BioMLP has one activation)")
    for (i, a), (j, b) in zip(lins, lins[1:]):
        _check(b.in_features == a.out_features, f"seq[{j}].in_features", b.in_features,
               f"seq[{i}].out_features, {a.out_features}")
    lins = [m for _, m in lins]
    _check(len({lin.bias is None for lin in lins}) == 1, "seq's Linear layers' biases", [lin.bias is not None
           for lin in lins], "all present or all absent")
    w = lins[0].weight  # a throwaway generator: the global RNG is left alone
    model = BioMLP([w.shape[1]] + [lin.out_features for lin in lins], geometry, out_geometry, fix_inputs=fix_inputs,
                   activation=acts[0][2] if acts else "silu", bias=lins[0].bias is not None,
                   generator=torch.Generator(), dtype=w.dtype).to(w.device)
    for bio, lin in zip(model.linears, lins):
        bio.load_state_dict(lin.state_dict(), strict=False)  # weight and bias; the coordinates stay
    return model

class BioBlock(nn.Module):
    """One block on a (B, T, d_model) residual stream: x + attn(ln1(x)), then x + mlp(ln2(x)). q|k|v is one
    BioLinear with out_fold 3 (channel c's q, k, v at one place); head h owns channels [h dh, (h+1) dh)."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int, layer_norm: bool, bias: bool,
                 generator: torch.Generator | None, dtype: torch.dtype | None = None, activation: str = "gelu"):
        super().__init__()
        self.n_heads, self.act, kw = n_heads, _activation(activation), dict(generator=generator, dtype=dtype)
        self.ln1 = nn.LayerNorm(d_model, dtype=dtype) if layer_norm else nn.Identity()
        self.qkv = BioLinear(d_model, 3 * d_model, bias, out_fold=3, **kw)
        self.attn_out = BioLinear(d_model, d_model, bias, **kw)
        self.ln2 = nn.LayerNorm(d_model, dtype=dtype) if layer_norm else nn.Identity()
        self.mlp_in = BioLinear(d_model, d_mlp, bias, **kw)
        self.mlp_out = BioLinear(d_mlp, d_model, bias, **kw)

    def attention(self, x: torch.Tensor, rec=lambda t: None) -> torch.Tensor:
        """(B, T, d_model) -> what attention writes to the stream, (B, T, d_model); rec receives q|k|v."""
        B, T, C = x.shape
        rec(qkv := self.qkv(x))
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, heads, T, dh)
                   for t in qkv.split(C, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.attn_out(y.transpose(1, 2).reshape(B, T, C))

    def mlp(self, x: torch.Tensor, rec=lambda t: None) -> torch.Tensor:
        """(B, T, d_model) -> what the MLP writes to the stream; rec receives the hidden activations (B, T, d_mlp)."""
        rec(h := self.act(self.mlp_in(x)))
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
        _int("in_dim", in_dim), _int("out_dim", out_dim), _int("d_model", d_model), _int("n_blocks", n_blocks)
        _int("n_heads", n_heads), _int("d_mlp", d_mlp), _flags(layer_norm=layer_norm, bias=bias)
        _check(d_model % n_heads == 0, "d_model", d_model, f"divisible by n_heads ({n_heads})")
        self.in_dim, self.out_dim, self.d_model, self.n_heads, self.d_mlp = in_dim, out_dim, d_model, n_heads, d_mlp
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
            raise ValueError(f"BioTransformer takes inputs of shape (batch, seq, {self.in_dim}), got {tuple(x.shape)}")
        return x.index_select(-1, self.in_perm)

    def forward_internal(self, x: torch.Tensor, record: list | None = None) -> torch.Tensor:
        """(B, T, in_dim) -> (B, T, out_dim), in position order; record receives every row's activations."""
        rec = (record if record is not None else []).append  # references only: nothing is copied
        rec(x), rec(h := self.embed_in(x))
        for blk in self.blocks:  # each block records q|k|v, the stream, the MLP's hidden row, the stream
            rec(h := h + blk.attention(blk.ln1(h), rec))
            rec(h := h + blk.mlp(blk.ln2(h), rec))
        rec(y := self.unembed(self.ln_f(h)))
        return y

    def neuron_layers(self) -> list[NeuronLayer]:
        """'input', 'residual', per block b 'block{b}.heads', 'block{b}.head{h}' (its channels) and
        'block{b}.mlp_hidden', then 'output'; no BioLinear is on both sides of one layer (see `relocate`)."""
        d, nh, dh = self.d_model, self.n_heads, self.d_model // self.n_heads
        ii, ri, mi, oi = (fold_index(n, 1) for n in (self.in_dim, d, self.d_mlp, self.out_dim))
        res = NeuronLayer("residual", d).incoming(self.embed_in, ri)
        for blk in self.blocks:  # writers of the stream move their rows, readers their columns
            res.incoming(blk.attn_out, ri).incoming(blk.mlp_out, ri).outgoing(blk.qkv, ri).outgoing(blk.mlp_in, ri)
        res.outgoing(self.unembed, ri)
        for ln in [self.ln_f] + [ln for blk in self.blocks for ln in (blk.ln1, blk.ln2)]:
            for attr in [a for a in ("weight", "bias") if getattr(ln, a, None) is not None]:  # nn.Identity: none
                res.add(ln, attr, 0, ri)
        layers = [NeuronLayer("input", self.in_dim).add(self, "in_perm", 0, ii).outgoing(self.embed_in, ii), res]
        rows = torch.arange(3 * d).view(3, nh, dh)  # q|k|v row of (copy, head, channel)
        cols = torch.arange(d).view(nh, dh)         # attention-output column of (head, channel)
        for b, blk in enumerate(self.blocks):
            heads = rows.permute(0, 2, 1).reshape(3 * dh, nh)  # a head owns its channels' q|k|v rows
            layers.append(NeuronLayer(f"block{b}.heads", nh).incoming(blk.qkv, heads).outgoing(blk.attn_out, cols.T))
            layers += [NeuronLayer(f"block{b}.head{h}", dh).incoming(blk.qkv, rows[:, h])
                       .outgoing(blk.attn_out, cols[h][None]) for h in range(nh)]
            layers.append(NeuronLayer(f"block{b}.mlp_hidden", self.d_mlp).incoming(blk.mlp_in, mi)
                          .outgoing(blk.mlp_out, mi))
        return layers + [NeuronLayer("output", self.out_dim).incoming(self.unembed, oi).add(self, "out_perm", 0, oi)]

    def graph(self) -> "Graph":
        """Rows input, embed, per block b attention{b} (q|k|v, fold 3), residual{b}.attn (the stream after the
        attention adds), mlp{b}, residual{b}.mlp (after the MLP adds), then output. attn_out reads the v copy
        (attention mixes positions, never channels); residual skips are identities."""
        d = self.d_model
        rows = [Row("input", self.embed_in.in_coords, "input", caller=self.in_perm,
                    unit=torch.arange(self.in_dim)), Row("embed", self.embed_in.out_coords)]
        edges, res = [Edge("embed_in", self.embed_in, 0, 1)], 1
        for b, blk in enumerate(self.blocks):
            a, p = len(rows), f"blocks.{b}."
            rows += [Row(f"attention{b}", blk.qkv.out_coords, fold=3),
                     Row(f"residual{b}.attn", blk.attn_out.out_coords),
                     Row(f"mlp{b}", blk.mlp_in.out_coords), Row(f"residual{b}.mlp", blk.mlp_out.out_coords)]
            edges += [Edge(p + "qkv", blk.qkv, res, a),
                      Edge(p + "attn_out", blk.attn_out, a, a + 1, torch.arange(2 * d, 3 * d)),
                      Edge(p + "attn_skip", None, res, a + 1), Edge(p + "mlp_in", blk.mlp_in, a + 1, a + 2),
                      Edge(p + "mlp_out", blk.mlp_out, a + 2, a + 3), Edge(p + "mlp_skip", None, a + 1, a + 3)]
            res = a + 3
        rows.append(Row("output", self.unembed.out_coords, "output", caller=self.out_perm))
        return Graph(rows, edges + [Edge("unembed", self.unembed, res, len(rows) - 1)])

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
    if embedding_penalty and (emb := getattr(model, "embedding", None)) is not None:
        terms.append((emb, None, scale(emb) * l0))
    return terms

def sum_terms(terms: list) -> torch.Tensor:
    """The cost of `cost_terms`: a scalar tensor with gradients."""
    if not terms:
        raise ValueError("sum_terms needs the non-empty list of terms of cost_terms, got none")
    costs = [(t.abs() if coef is None else t.abs() * coef).sum() for t, coef, _ in terms]
    costs = [c if factor == 1.0 else factor * c for c, (*_, factor) in zip(costs, terms)]  # a factor of 1: no op
    return sum(costs[1:], costs[0])

def connection_cost(model: nn.Module, weight_factor: float = 1.0, l0: float = 0.1, agg: str = "sum",
                    bias_penalty: bool = False, embedding_penalty: bool = False,
                    last_layer_l0_only: bool = False) -> torch.Tensor:
    """Scalar tensor: agg_ij |W_ij| (A d_ij + l0) over every BioLinear (A = 0 in the last with last_layer_l0_only,
    MNIST), + agg |b| l0 with bias_penalty, + agg |E| l0 with embedding_penalty; agg 'sum', or 'mean' per tensor."""
    return sum_terms(cost_terms(model, weight_factor, l0, agg, bias_penalty, embedding_penalty, last_layer_l0_only))

# -- Swapping ----------------------------------------------------------------------------------------
def _neuron_layers(model: nn.Module) -> list[NeuronLayer]:
    if not callable(getattr(model, "neuron_layers", None)):
        raise TypeError(f"{type(model).__name__} cannot be swapped: it needs a neuron_layers() method listing "
                        f"its swappable layers (see bc.SwappableModel; bc.from_sequential converts an MLP), or "
                        f"train it with cfg.swap=False (the cost needs only BioLinears)")
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
        if layer not in (names := [nl.name for nl in layers]):
            raise ValueError(f"no neuron layer named {layer!r}; layers are {names}")
        return layers[names.index(layer)]
    return layers[_check(_is_int(layer, -len(layers), len(layers)), "layer", layer,
                         f"a name or an index in [0, {len(layers)})")]

def permute_units(model: nn.Module, layer, perm: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
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

def swap_units(model: nn.Module, layer, j: int, k: int, optimizer: torch.optim.Optimizer | None = None) -> None:
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
    for m in (m for m in nl.members if m.role is not None):  # what is only carried along has no weight
        score += getattr(m.module, m.attr).detach().abs().double().sum(dim=1 - m.dim)[m.index].sum(0).cpu()
    return score

def placement_costs(nl: NeuronLayer, coefs: dict) -> torch.Tensor:
    """P (n_units, n_units) float64: P[a, p] the cost of the unit at a if it sat at p (coefs: {weight: (coef,
    factor)} of `cost_terms`). Swapping j, k changes the cost by P[j, k] + P[k, j] - P[j, j] - P[k, k]."""
    P, sides = torch.zeros(nl.n_units, nl.n_units, dtype=torch.float64), {"incoming": set(), "outgoing": set()}
    for m in (m for m in nl.members if m.role in sides and isinstance(m.module, BioLinear)):  # others: l0 |w| anywhere
        sides[m.role].add(m.module)
        w, (coef, scale) = m.module.weight.detach().abs().double(), coefs[m.module.weight]
        # G[r, s] = cost of the connections of the unit's row (incoming) / column (outgoing) r at position s
        G = w @ coef.double().T if m.role == "incoming" else w.T @ coef.double()
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
    total = sum_terms(terms).item()
    if not math.isfinite(total):
        raise FloatingPointError(f"the connection cost is {total}: a weight is not finite, so no swap can be judged")
    coefs, swaps = {t: (coef, factor) for t, coef, factor in terms if coef is not None}, 0
    for nl in layers:
        if nl.fixed or nl.n_units < 2:
            continue
        # The greedy pass runs on P alone (numpy: these are ~100-element vectors); the model is permuted
        # once per layer at the end, which is the same as making the swaps one after another.
        P = placement_costs(nl, coefs).numpy()
        order = torch.argsort(neuron_scores(nl), descending=True, stable=True)[:top_k].tolist()
        # perm[p]: the unit (by starting position) now at position p; where[u]: the position of unit u
        perm, where = np.arange(nl.n_units), np.arange(nl.n_units)
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

# -- The data train reads: checked once, then a batch per step -------------------------------------
def _finite(name: str, t: torch.Tensor) -> None:
    if t.is_floating_point() and not (ok := torch.isfinite(t)).all():
        i = tuple((~ok).nonzero()[0].tolist())
        raise ValueError(f"{name} hold {t[i].item()} at index {i} (the first of {int((~ok).sum())}); BIMT needs "
                         f"finite data: drop or impute those entries")

def _is_pair(data) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(map(torch.is_tensor, data))
def _batched(data) -> bool:
    """Whether data is an iterable of (inputs, targets) batches (a DataLoader) rather than one pair of tensors."""
    return not _is_pair(data) and not torch.is_tensor(data) and hasattr(data, "__iter__")

def _pair(name: str, pair, dtype: torch.dtype, device=None) -> tuple:
    """An (inputs, targets) pair of tensors, checked (as many of each, > 0; floats in dtype), on device."""
    _check(_is_pair(pair), name, type(pair).__name__, "an (inputs, targets) pair of tensors, or an iterable of such "
           "batches (a DataLoader)")
    if len(pair[0]) != len(pair[1]) or len(pair[0]) == 0:
        raise ValueError(f"{name}: {len(pair[0])} inputs and {len(pair[1])} targets; expected the same number, > 0")
    for what, t in zip(("inputs", "targets"), pair):
        if t.is_floating_point() and t.dtype != dtype:
            raise ValueError(f"{name} {what} are {t.dtype} but the model trains in {str(dtype)[6:]}; convert them "
                             f"with .to({dtype})")
    return pair[0].to(device), pair[1].to(device)

def _tensors(name: str, data, dtype: torch.dtype, device) -> tuple:
    """(inputs, targets) of a pair of tensors or of an iterable's batches (concatenated), checked, on device."""
    if _batched(data):
        data = [torch.cat(t) for t in zip(*(_pair(f"{name}'s batch", b, dtype) for b in data))] or data
    x, y = _pair(name, data, dtype, device)
    _finite(f"{name} inputs", x), _finite(f"{name} targets", y)
    return x, y

def _rows(x: torch.Tensor, y: torch.Tensor, idx, step: int) -> tuple:
    try:
        if (xb := x[idx]).dim() == x.dim() and len(xb):
            return xb, y[idx]
    except (IndexError, TypeError, RuntimeError):
        pass
    raise ValueError(f"sampler({step}) returned {idx!r}; expected a non-empty 1-D tensor of row indices in "
                     f"[0, {len(x)})")

def _cycle(data, dtype: torch.dtype, device, step: int):
    """The batches of an iterable, checked and on device, for steps step, step + 1, ..., pass after pass."""
    n = 1
    while n:  # until a pass yields nothing
        n = 0
        for n, batch in enumerate(data, 1):
            yield _pair(f"train_data's batch for step {step}", batch, dtype, device)
            step += 1
    raise ValueError(f"train_data yielded no batch for step {step}: a spent iterator has no second pass (pass a "
                     f"DataLoader or a list of batches)")

def _batches(data, dtype: torch.dtype, device, sampler, batch_size: int | None, seed: int, start: int):
    """The (inputs, targets) of steps start, start + 1, ...: of a pair of tensors (checked now) the whole, the rows
    sampler(step) picks, or batch_size rows drawn with replacement (seeded by seed and start); an iterable's batches."""
    if _batched(data):
        _check(sampler is None and batch_size is None, "sampler and cfg.batch_size", (sampler, batch_size),
               "None when train_data yields its own batches")
        return _cycle(data, dtype, device, start)
    x, y = _tensors("train_data", data, dtype, device)
    if sampler is None and batch_size is not None:
        gen = torch.Generator().manual_seed(hash((seed, start)) % 2 ** 63 if start else seed)
        sampler = lambda step: torch.randint(len(x), (batch_size,), generator=gen)  # noqa: E731
    return ((x, y) if sampler is None else _rows(x, y, sampler(step), step) for step in itertools.count(start))

def _loss_probe(loss_fn, out: torch.Tensor, y: torch.Tensor, name: str) -> torch.Tensor:
    """loss_fn(out, y) the first time: targets that would broadcast, or a failure, told with what a loss expects."""
    got = f"outputs {out.dtype} {tuple(out.shape)} and {name} targets {y.dtype} {tuple(y.shape)}" + (
        "" if y.is_floating_point() else f" in [{y.min()}, {y.max()}]")
    expect = (f"Expected: a regression loss (F.mse_loss) takes float targets shaped like the outputs; a classification "
              f"loss (F.cross_entropy) int64 labels in [0, {out.shape[-1]}) of shape {tuple(out.shape[:-1])}")
    if y.is_floating_point() and out.shape != y.shape and all(a == b or 1 in (a, b) for a, b in zip(
            out.shape[::-1], y.shape[::-1])):
        raise ValueError(f"{got} would broadcast into a wrong loss. {expect}")
    if (loss_fn is F.cross_entropy or isinstance(loss_fn, nn.CrossEntropyLoss)) and y.is_floating_point() and (
            y.dim() > 1 and not ((y >= 0).all() and torch.allclose(y.sum(1), y.new_ones(())))):
        raise ValueError(f"cross-entropy reads float targets as class probabilities (>= 0, summing to 1 over dim 1), "
                         f"which these are not: {got}. {expect}")
    try:
        loss = loss_fn(out, y)
    except Exception as e:
        raise ValueError(f"loss_fn failed on {got} ({type(e).__name__}: {e}). {expect}") from e
    return _check(torch.is_tensor(loss) and loss.dim() == 0 and (loss.requires_grad or not torch.is_grad_enabled()),
                  "loss_fn's result", loss, "a scalar tensor with gradients (e.g. F.mse_loss(out, y))")

def _check_run(model: nn.Module, cfg, loss_fn, **fns) -> torch.device:
    """`train`'s checks of cfg, loss_fn, the functions fns and the model's dtype (bimt_ensemble's per member);
    returns the device the model is on."""
    _check(isinstance(cfg, BIMTConfig), "cfg", type(cfg).__name__, "a BIMTConfig", TypeError)
    _check(callable(loss_fn) and not isinstance(loss_fn, type), "loss_fn", loss_fn, "a function or a loss module "
           "instance, e.g. F.mse_loss or nn.MSELoss() (called with outputs and targets; not the class)", TypeError)
    for fn_name, f in fns.items():
        _check(f is None or callable(f), fn_name, f, "a function or None", TypeError)
    weight = _linears(model)[0].weight
    if weight.dtype != cfg.torch_dtype:
        raise ValueError(f"cfg.dtype is {cfg.dtype} but the model's parameters are {weight.dtype}: build the "
                         f"model with dtype=cfg.torch_dtype (so its initialisation is drawn in that precision)")
    return weight.device

# -- Training ----------------------------------------------------------------------------------------
@dataclass
class BIMTConfig:
    """The knobs of one BIMT run (one `train` call); experiments subclass it. A layer spans length 1 (positions in
    [0, 1]); a connection of weight w and length d costs |w| (A d + l0); the loss adds lambda times the cost. steps:
    optimizer steps. lr, weight_decay: the default optimizer's (AdamW; BIMT uses no weight decay). lam: lambda, loss
    per unit of cost. lam_schedule: (fraction, multiplier) pairs, lambda multiplied by each from step int(fraction *
    steps) on. weight_factor: A, cost per unit |w| and length. l0: l0, every connection's cost per unit |w|, in units
    of length. agg: 'sum' over all weights, or 'mean' within each tensor (Fig 5-8). bias_penalty_from: fraction of
    steps after which biases pay l0 |b| (None: never). embedding_penalty: a token embedding E pays l0 |E|.
    last_layer_l0_only: the last BioLinear pays l0 |w| alone (A = 0 there; MNIST). swap: a swap pass (`relocate`)
    every swap_every steps, of top_k units per neuron layer (all of a narrower one), on the training cost or
    swap_cost (`connection_cost` keywords; the paper's 'L1 + swap' trains with A = 0, swaps with A = 1). batch_size:
    rows per step, drawn with replacement from seed (None: full batch). eval_every: steps between evaluations.
    threads: torch's while `train` runs (None: as they are; one: tiny ops' overhead dominates,
    benchmarks/bench_train.py). dtype: the model's and the data's. swap_moves_optimizer_state, relocate_follow: ours
    (True, 'neurons'), or the authors' (AUTHORS_PROCEDURE): AdamW's moments stay on a swap, 'positions'."""
    steps: int = 20000
    lr: float = 2e-3
    weight_decay: float = 0.0
    lam: float = 1e-3
    lam_schedule: tuple = ((0.25, 10.0), (0.75, 0.1))
    weight_factor: float = 1.0
    l0: float = 0.1
    agg: str = "sum"
    bias_penalty_from: float | None = 0.75
    embedding_penalty: bool = False
    last_layer_l0_only: bool = False
    swap: bool = True
    swap_every: int = 200
    swap_cost: dict | None = None
    top_k: int = 5
    batch_size: int | None = None
    eval_every: int = 200
    seed: int = 0
    threads: int | None = 1
    dtype: str = "float32"
    swap_moves_optimizer_state: bool = True
    relocate_follow: str = "neurons"

    def __post_init__(self):
        _int("steps", self.steps), _int("swap_every", self.swap_every), _int("eval_every", self.eval_every)
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
        return math.prod([self.lam] + [mult for frac, mult in self.lam_schedule if step >= int(frac * self.steps)])

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

class History(dict):
    """What `train` recorded: a dict of lists, keys also attributes (h.step is h["step"]), one entry per evaluation
    (every cfg.eval_every steps, and each call's last). step: counted on over train calls on one model; train_loss:
    the task loss of that step's batch, before its update; test_loss, metric (None without metric_fn): on the test
    data, after it; cost: connection cost, before lambda; lam: lambda; swaps: all so far (cumulative over calls)."""

    def __init__(self):
        super().__init__((k, []) for k in ("step", "train_loss", "test_loss", "metric", "cost", "lam", "swaps"))

    def __getattr__(self, key: str) -> list:
        if key not in self:
            raise AttributeError(f"a History has no field {key!r}; its fields are {list(self)}")
        return self[key]

def _cfg_step(cfg, step) -> None:
    _check(isinstance(cfg, BIMTConfig), "cfg", type(cfg).__name__, "a BIMTConfig", TypeError), _int("step", step, 0)

def penalty(model: nn.Module, cfg: BIMTConfig, step: int, terms: list | None = None) -> torch.Tensor:
    """What BIMT adds to the task loss at `step` of cfg's schedule: cfg.lam_at(step) times `connection_cost` with
    cfg.cost_kwargs(step); a scalar tensor, exactly 0 (no gradient) where lambda is 0. terms: `cost_terms` of the
    step's phase, to reuse (`train` builds them once per phase; a swap leaves them valid)."""
    _cfg_step(cfg, step)
    if (lam := cfg.lam_at(step)) == 0:  # it adds nothing to the loss or its gradients: the cost is skipped
        return (terms[0][0] if terms else _linears(model)[0].weight).new_zeros(())
    return lam * sum_terms(terms or cost_terms(model, **cfg.cost_kwargs(step)))

def swap_pass(model: nn.Module, cfg: BIMTConfig, optimizer: torch.optim.Optimizer | None, step: int) -> int:
    """The swap pass `train` makes after the update of `step`: `relocate` with cfg's top_k, relocate_follow and
    swap cost where cfg.swap and step + 1 is a multiple of cfg.swap_every, else none. The optimizer's
    per-parameter state moves with the units if cfg.swap_moves_optimizer_state. Returns the number of swaps."""
    _cfg_step(cfg, step)
    due = cfg.swap and (step + 1) % cfg.swap_every == 0
    return relocate(model, cfg.top_k, optimizer if cfg.swap_moves_optimizer_state else None, cfg.relocate_follow,
                    **cfg.swap_cost_kwargs(step)) if due else 0

def train(model: nn.Module, cfg: BIMTConfig, train_data, test_data, loss_fn, metric_fn=None, snapshot_fn=None,
          snapshot_every: int | None = None, progress: bool = True, sampler=None, optimizer=None,
          scheduler=None) -> History:
    """Train on loss_fn(model(x), y) + `penalty`, with a `swap_pass` after each update, on the model's device (the
    data moved there). train_data: an (inputs, targets) pair of tensors (full batch, cfg.batch_size rows per step,
    or the rows sampler(step) returns), or any iterable of such batches (a DataLoader), cycled; test_data: a pair
    or an iterable of batches (concatenated once). optimizer(params) -> torch.optim.Optimizer (default AdamW, lr
    cfg.lr, cfg.weight_decay); scheduler(optimizer) -> LRScheduler, stepped after every update. metric_fn(outputs,
    targets) -> float and the test loss every cfg.eval_every steps and at the last; snapshot_fn(step, model) every
    snapshot_every steps and at the last. Before the first step the data (finite, shapes, dtypes) and loss_fn are
    checked; a loss that turns non-finite stops the run, and a test loss 1,000 times the worst seen before the call
    (the untrained one, at first) warns that the weights diverge. Calling train again on the model continues:
    cfg.steps more steps (cfg's schedule from its start, a new optimizer unless the factory returns the old one,
    batches and steps counted on) appended to the `History` it returns, model.bimt_history (del it to count
    from 0)."""
    from tqdm.auto import tqdm
    hist = model.__dict__.setdefault("bimt_history", History())  # a plain attribute of the module
    start, swaps = (hist.step[-1] + 1, hist.swaps[-1]) if hist.step else (0, 0)
    # Before the first step: errors for what would fail deep in torch or train wrongly, warnings for idle swaps
    device = _check_run(model, cfg, loss_fn, metric_fn=metric_fn, snapshot_fn=snapshot_fn, sampler=sampler,
                        optimizer=optimizer, scheduler=scheduler)
    _check(snapshot_fn is None or _is_int(snapshot_every), "snapshot_every", snapshot_every,
           "a positive int when snapshot_fn is given")
    widths = [nl.n_units for nl in _neuron_layers(model) if not nl.fixed] if cfg.swap else []  # fails now, or never
    batches = _batches(train_data, cfg.torch_dtype, device, sampler, cfg.batch_size, cfg.seed, start)
    x_te, y_te = _tensors("test_data", test_data, cfg.torch_dtype, device)
    with torch.no_grad():  # ref: the worst test loss seen so far; 1,000 times it says the weights diverge
        ref = max([_loss_probe(loss_fn, model(x_te), y_te, "test_data").item(), *hist.test_loss])
    if cfg.swap and (cfg.swap_every > cfg.steps or cfg.top_k == 0):
        warnings.warn("no swap will happen: " + ("top_k=0 tries no unit" if cfg.top_k == 0 else f"swap_every="
                      f"{cfg.swap_every} > steps={cfg.steps}") + " (swap=False says so)", stacklevel=2)
    elif widths and cfg.top_k > max(widths):
        warnings.warn(f"top_k={cfg.top_k} exceeds every swappable layer's width (at most {max(widths)} units): "
                      f"each swap pass tries every unit, as top_k={max(widths)} would", stacklevel=2)
    adamw = partial(torch.optim.AdamW, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    opt = (optimizer or adamw)(model.parameters())
    _check(isinstance(opt, torch.optim.Optimizer), "optimizer(params)", opt, "a torch.optim.Optimizer", TypeError)
    sched, threads, phases = scheduler and scheduler(opt), torch.get_num_threads(), set(cfg.phase_starts())
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        for s, (xb, yb) in zip(bar := tqdm(range(cfg.steps), disable=not progress, mininterval=0.5), batches):
            step, last = start + s, s == cfg.steps - 1  # s: in cfg's schedule; step: counted on over calls
            if s in phases:  # lambda and the cost's terms change only here
                terms = cost_terms(model, **cfg.cost_kwargs(s))
            out = model(xb)
            task = _loss_probe(loss_fn, out, yb, "train_data") if s == 0 else loss_fn(out, yb)
            loss = task + (pen := penalty(model, cfg, s, terms))
            if not torch.isfinite(loss):  # the data of a batch are checked here, the weights blamed only then
                _finite(f"train_data inputs of step {step}", xb), _finite(f"train_data targets of step {step}", yb)
                raise FloatingPointError(f"the loss became {loss.item()} at step {step} (lambda {cfg.lam_at(s):g}): "
                                         f"task loss {task.item():.4g}, penalty {pen.item():.4g}. The weights "
                                         f"diverged: try a lower lr (cfg.lr={cfg.lr:g}) or lambda")
            cost = sum_terms(terms).item() if (evaluate := s % cfg.eval_every == 0 or last) else None
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            swaps += swap_pass(model, cfg, opt, s)
            if snapshot_fn is not None and (step % snapshot_every == 0 or last):
                snapshot_fn(step, model)
            if evaluate:
                with torch.no_grad():
                    out = model(x_te)
                    metric = None if metric_fn is None else _float("metric_fn's result", metric_fn(out, y_te))
                    for k, v in dict(step=step, train_loss=task.item(), test_loss=loss_fn(out, y_te).item(),
                                     metric=metric, cost=cost, lam=cfg.lam_at(s), swaps=swaps).items():
                        hist[k].append(v)
                if hist.test_loss[-1] > 1e3 * ref:  # said once (ref becomes inf): the loss may come back down
                    warnings.warn(f"the test loss rose from {ref:.3g} to {hist.test_loss[-1]:.3g} at step {step} (lambda "
                                  f"{cfg.lam_at(s):g}): the weights are diverging; try a lower lr (cfg.lr={cfg.lr:g}) "
                                  f"or lambda", stacklevel=2)
                    ref = math.inf
                bar.set_postfix(train=f"{hist.train_loss[-1]:.2e}", test=f"{hist.test_loss[-1]:.2e}",
                                cost=f"{cost:.3g}", refresh=False)
    finally:
        torch.set_num_threads(threads)
    return hist

def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax equals the label."""
    _check(torch.is_tensor(labels) and labels.shape == logits.shape[:-1], "labels' shape", tuple(labels.shape),
           f"the logits' shape without the class dim, {tuple(logits.shape[:-1])}")
    return (logits.argmax(-1) == labels).float().mean().item()
