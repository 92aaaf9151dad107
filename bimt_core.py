"""Brain-Inspired Modular Training (BIMT), the core.

Liu, Gan, Tegmark (2023), "Seeing is Believing: Brain-Inspired Modular Training for Mechanistic
Interpretability", arXiv:2305.08746.

Every neuron has a position in space. The loss pays for each connection in proportion to its length
(`connection_cost`), and every few hundred steps neurons of a layer exchange places when that lowers the
cost (`relocate`); a swap permutes weights, never the function the network computes.

Read top to bottom: geometry -> layers -> models -> cost -> swapping -> analysis -> plotting -> training -> data.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------------
# Geometry


def neuron_coords(n: int, geometry: str = "line", fold: int = 1) -> torch.Tensor:
    """Positions of the n neurons of one layer, shape (n, 1) for 'line' and (n, 2) for 'grid' and 'ring'.

    A layer with fold f is f stacked copies of n/f neurons (e.g. the concatenated embeddings of a and b, or
    q|k|v): the n/f positions repeat f times, so copy c of unit u sits where unit u does.
    - line: unit k of m at x = (2k+1)/(2m) on [0, 1];
    - grid: m must be a square s*s; unit k at column k % s, row k // s, cell centres on [0, 1]^2;
    - ring: m units on a circle of radius 1/4 centred at (0.5, 0.5) (the MNIST outputs).
    """
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"layer width must be a positive integer, got {n!r}")
    if not isinstance(fold, int) or fold <= 0 or n % fold:
        raise ValueError(f"fold {fold!r} must be a positive integer dividing the layer width {n}")
    m = n // fold
    k = torch.arange(m, dtype=torch.float32)
    if geometry == "line":
        c = ((2 * k + 1) / (2 * m))[:, None]
    elif geometry == "grid":
        s = math.isqrt(m)
        if s * s != m:
            raise ValueError(f"a 2D grid layer needs a perfect-square width per fold copy, got {m} "
                             f"(nearest squares {s * s} and {(s + 1) ** 2})")
        c = torch.stack([(2 * (k % s) + 1) / (2 * s), (2 * (k // s) + 1) / (2 * s)], dim=1)
    elif geometry == "ring":
        theta = 2 * math.pi * k / m
        c = torch.stack([0.5 + 0.25 * torch.cos(theta), 0.5 + 0.25 * torch.sin(theta)], dim=1)
    else:
        raise ValueError(f"unknown geometry {geometry!r}; expected 'line', 'grid' or 'ring'")
    return c.repeat(fold, 1)


def manhattan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise Manhattan distances, (n, d) x (m, d) -> (n, m). In 1D it is |dx|."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"cannot measure distances between {a.shape[1]}D and {b.shape[1]}D coordinates")
    return (a[:, None, :] - b[None, :, :]).abs().sum(-1)


# ----------------------------------------------------------------------------------------------------------
# Layers


class BioLinear(nn.Linear):
    """nn.Linear whose input and output neurons carry coordinates (buffers, not learned).

    `dist` (out, in) holds every connection's length, computed once from the coordinates. Neurons never
    move: a swap exchanges the weights of two positions, so coordinates and distances stay fixed.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, in_geometry: str = "line",
                 out_geometry: str = "line", in_fold: int = 1, out_fold: int = 1,
                 generator: torch.Generator | None = None):
        self._generator = generator  # read by reset_parameters, which nn.Linear.__init__ calls
        super().__init__(in_features, out_features, bias=bias)
        del self._generator
        self.in_fold, self.out_fold = in_fold, out_fold
        self.register_buffer("in_coords", neuron_coords(in_features, in_geometry, in_fold))
        self.register_buffer("out_coords", neuron_coords(out_features, out_geometry, out_fold))
        self.register_buffer("dist", manhattan(self.out_coords, self.in_coords), persistent=False)

    def reset_parameters(self) -> None:
        # nn.Linear's default init, drawn from an explicit generator so that seeds come from the caller.
        g = getattr(self, "_generator", None)
        bound = 1 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound, generator=g)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound, generator=g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"BioLinear expects inputs of width {self.in_features}, got shape {tuple(x.shape)}")
        return super().forward(x)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.dist = manhattan(self.out_coords, self.in_coords)  # coordinates may have been replaced


@dataclass
class NeuronLayer:
    """One layer of swappable units and every tensor slice that belongs to each unit.

    `members` lists (module, attribute, dim, index): the unit u owns entries index[:, u] of that tensor along
    dim (index has shape (copies, n_units); copies > 1 for folds and for heads). Roles: 'in' marks a
    BioLinear weight whose rows are the unit's incoming connections, 'out' one whose columns are its outgoing
    connections, 'embed' a token embedding feeding the unit; None is carried along (biases, permutations).
    """
    name: str
    n_units: int
    members: list = field(default_factory=list)
    fixed: bool = False

    def add(self, module: nn.Module, attr: str, dim: int, index: torch.Tensor, role: str | None = None):
        self.members.append((module, attr, dim, index, role))


def fold_index(n: int, fold: int) -> torch.Tensor:
    """(fold, n // fold) index: unit u of a folded layer owns positions u, u + n/f, u + 2n/f, ..."""
    return torch.arange(n).view(fold, n // fold)


def _activation(name: str):
    acts = {"silu": F.silu, "relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh}
    if name not in acts:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(acts)}")
    return acts[name]


# ----------------------------------------------------------------------------------------------------------
# Models


class SwappableModel(nn.Module):
    """A model that lists its swappable layers in `neuron_layers()` (built on demand, input first)."""

    def neuron_layers(self) -> list[NeuronLayer]:
        raise NotImplementedError

    def swap(self, layer, j: int, k: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Exchange units j and k of a neuron layer (index or name); the function is unchanged."""
        swap_units(self, layer, j, k, optimizer)


class BioMLP(SwappableModel):
    """The MLPs of the paper: shape [n0, n1, ..., nL] of BioLinear layers with an activation in between.

    geometry:     'line' (1D) or 'grid' (2D) for the input and hidden layers.
    out_geometry: geometry of the output layer, default the same; 'ring' puts MNIST's outputs on a circle.
    in_fold:      the input layer is in_fold stacked copies (concatenated operand embeddings).
    vocab_size:   if set, the input is in_fold tokens per example, embedded by a learned (vocab, n0 / in_fold)
                  table and concatenated: x (B, in_fold) long -> concat(E[x[:, 0]], E[x[:, 1]], ...).
    fix_inputs:   input neurons are never swapped (pixels keep their place).

    in_perm[p] is the caller's input feature sitting at input position p, out_perm[p] the caller's output at
    output position p; swaps update them so the caller always sees the original order.
    """

    def __init__(self, shape, geometry: str = "line", out_geometry: str | None = None, in_fold: int = 1,
                 vocab_size: int | None = None, activation: str = "silu", fix_inputs: bool = False,
                 bias: bool = True, generator: torch.Generator | None = None):
        super().__init__()
        shape = [int(w) for w in shape]
        if len(shape) < 2:
            raise ValueError(f"shape needs at least an input and an output width, got {shape}")
        if any(w <= 0 for w in shape):
            raise ValueError(f"layer widths must be positive, got {shape}")
        self.shape = shape
        self.act = _activation(activation)
        self.fix_inputs = fix_inputs
        geos = [geometry] * (len(shape) - 1) + [out_geometry or geometry]
        dims = {"line": 1, "grid": 2, "ring": 2}
        if geos[0] in dims and geos[-1] in dims and dims[geos[0]] != dims[geos[-1]]:
            raise ValueError(f"geometry {geos[0]!r} is {dims[geos[0]]}D but out_geometry {geos[-1]!r} is "
                             f"{dims[geos[-1]]}D; all layers must live in the same space (e.g. 'grid' with 'ring')")
        folds = [in_fold] + [1] * (len(shape) - 1)
        self.linears = nn.ModuleList(
            BioLinear(shape[i], shape[i + 1], bias, geos[i], geos[i + 1], folds[i], folds[i + 1], generator)
            for i in range(len(shape) - 1))
        if vocab_size is not None:
            self.embedding = nn.Parameter(torch.randn(vocab_size, shape[0] // in_fold, generator=generator))
            self.register_buffer("in_perm", torch.arange(0))  # tokens are not features: nothing to permute
        else:
            self.embedding = None
            self.register_buffer("in_perm", torch.arange(shape[0]))
        self.register_buffer("out_perm", torch.arange(shape[-1]))

    @property
    def in_fold(self) -> int:
        return self.linears[0].in_fold

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n0) features, or (B, in_fold) tokens -> (B, n0) input-layer activations."""
        if self.embedding is None:
            if x.dim() != 2 or x.shape[1] != self.shape[0]:
                raise ValueError(f"BioMLP expects inputs of shape (batch, {self.shape[0]}), got {tuple(x.shape)}")
            return x[:, self.in_perm]
        if x.dim() != 2 or x.shape[1] != self.in_fold or x.dtype != torch.long:
            raise ValueError(f"BioMLP with an embedding expects long tokens of shape (batch, {self.in_fold}), "
                             f"got {x.dtype} {tuple(x.shape)}")
        vocab = self.embedding.shape[0]
        if x.numel() and (x.min() < 0 or x.max() >= vocab):
            raise ValueError(f"tokens must lie in [0, {vocab}), got values in [{x.min()}, {x.max()}]")
        return self.embedding[x].flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # index_select, not [:, perm]: on CPU the backward of advanced indexing is an accumulating
        # index_put that cost more than the whole MLP (about 4 of 9 ms per modular-addition step).
        return self.forward_internal(self.embed(x)).index_select(1, torch.argsort(self.out_perm))

    def forward_internal(self, h: torch.Tensor, return_all: bool = False):
        """Input-layer activations -> output-layer activations in internal (position) order.
        With return_all, the list of every neuron layer's activations, input first."""
        acts = [h]
        for i, lin in enumerate(self.linears):
            h = lin(h)
            if i < len(self.linears) - 1:
                h = self.act(h)
            acts.append(h)
        return acts if return_all else h

    def neuron_layers(self) -> list[NeuronLayer]:
        """The swappable layers, input first. Built on demand: they reference the current tensors."""
        n = len(self.linears)
        layers = []
        for i in range(n + 1):
            width = self.shape[i]
            fold = self.in_fold if i == 0 else 1
            idx = fold_index(width, fold)
            name = "input" if i == 0 else ("output" if i == n else f"hidden{i}")
            layer = NeuronLayer(name, width // fold, fixed=(i == 0 and self.fix_inputs))
            if i == 0:
                if self.embedding is not None:
                    layer.add(self, "embedding", 1, idx[:1], "embed")
                else:
                    layer.add(self, "in_perm", 0, idx)
            else:
                layer.add(self.linears[i - 1], "weight", 0, idx, "in")
                if self.linears[i - 1].bias is not None:
                    layer.add(self.linears[i - 1], "bias", 0, idx)
            if i < n:
                layer.add(self.linears[i], "weight", 1, idx, "out")
            else:
                layer.add(self, "out_perm", 0, idx)
            layers.append(layer)
        return layers


class BioBlock(nn.Module):
    """One transformer block on a (B, T, d_model) residual stream: x + attn(ln1(x)), then x + mlp(ln2(x)).

    Causal multi-head self-attention with q|k|v as one BioLinear (d_model -> 3 d_model, out_fold 3, so the
    q, k and v of channel c sit at the same place); head h owns channels [h dh, (h+1) dh) of each of q, k, v.
    The MLP is d_model -> d_mlp -> d_model with GELU. ln1, ln2 are nn.Identity without layer_norm.
    """

    def __init__(self, d_model: int, n_heads: int, d_mlp: int, layer_norm: bool, bias: bool,
                 generator: torch.Generator | None):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.qkv = BioLinear(d_model, 3 * d_model, bias, out_fold=3, generator=generator)
        self.attn_out = BioLinear(d_model, d_model, bias, generator=generator)
        self.ln2 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.mlp_in = BioLinear(d_model, d_mlp, bias, generator=generator)
        self.mlp_out = BioLinear(d_mlp, d_model, bias, generator=generator)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) -> (B, T, d_model): what the attention writes to the residual stream."""
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, heads, T, dh)
                   for t in self.qkv(x).split(C, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.attn_out(y.transpose(1, 2).reshape(B, T, C))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp_out(F.gelu(self.mlp_in(x)))


class BioTransformer(SwappableModel):
    """The transformer of Fig 7: input linear in_dim -> d_model, n_blocks BioBlocks, output linear
    d_model -> out_dim; no token or positional embedding, so any sequence length works.
    x (B, T, in_dim) -> (B, T, out_dim). Every linear is a BioLinear on a line.

    layer_norm: pre-norm LayerNorms in each block and before the output linear. Off by default: the paper's
    released run defined them but left them out of the forward pass.

    Swaps keep the function: a residual-stream neuron moves in every linear that writes to the stream (input
    linear, attention outputs, MLP outputs) or reads from it (q|k|v, MLP inputs, output linear) and in every
    LayerNorm; a head moves as a whole (its q, k, v rows and attention-output columns); a neuron inside a
    head moves in q, k and v together, which keeps q.k and the value it carries. in_perm / out_perm keep the
    caller's feature order along the last dim, as in BioMLP.
    """

    def __init__(self, in_dim: int, out_dim: int, d_model: int = 32, n_blocks: int = 2, n_heads: int = 1,
                 d_mlp: int = 128, layer_norm: bool = False, bias: bool = True,
                 generator: torch.Generator | None = None):
        super().__init__()
        dims = dict(in_dim=in_dim, out_dim=out_dim, d_model=d_model, n_blocks=n_blocks, n_heads=n_heads,
                    d_mlp=d_mlp)
        for k, v in dims.items():
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{k} must be a positive integer, got {v!r}")
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.in_dim, self.out_dim, self.d_model = in_dim, out_dim, d_model
        self.n_heads, self.d_mlp = n_heads, d_mlp
        self.embed_in = BioLinear(in_dim, d_model, bias, generator=generator)
        self.blocks = nn.ModuleList(BioBlock(d_model, n_heads, d_mlp, layer_norm, bias, generator)
                                    for _ in range(n_blocks))
        self.ln_f = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.unembed = BioLinear(d_model, out_dim, bias, generator=generator)  # registered last: "last layer"
        self.register_buffer("in_perm", torch.arange(in_dim))
        self.register_buffer("out_perm", torch.arange(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"BioTransformer expects inputs of shape (batch, seq, {self.in_dim}), "
                             f"got {tuple(x.shape)}")
        return self.forward_internal(x[..., self.in_perm])[..., torch.argsort(self.out_perm)]

    def forward_internal(self, x: torch.Tensor, return_all: bool = False):
        """(B, T, in_dim) in internal order -> (B, T, out_dim) in internal order. With return_all, also the
        list of residual-stream states (B, T, d_model): after the input linear, then after every attention
        and every MLP."""
        h = self.embed_in(x)
        stream = [h]
        for blk in self.blocks:
            h = h + blk.attention(blk.ln1(h))
            stream.append(h)
            h = h + blk.mlp(blk.ln2(h))
            stream.append(h)
        y = self.unembed(self.ln_f(h))
        return (y, stream) if return_all else y

    def neuron_layers(self) -> list[NeuronLayer]:
        """'input', 'residual', then per block b 'block{b}.heads' (units: heads), 'block{b}.head{h}' (units:
        channels of head h) and 'block{b}.mlp_hidden', then 'output'. No BioLinear is both 'in' and 'out'
        of one layer, so `relocate`'s separable swap cost applies."""
        d, nh, dh = self.d_model, self.n_heads, self.d_model // self.n_heads

        def connect(layer, lin, role, index):
            layer.add(lin, "weight", 0 if role == "in" else 1, index, role)
            if role == "in" and lin.bias is not None:
                layer.add(lin, "bias", 0, index)

        inp = NeuronLayer("input", self.in_dim)
        inp.add(self, "in_perm", 0, fold_index(self.in_dim, 1))
        connect(inp, self.embed_in, "out", fold_index(self.in_dim, 1))
        res, ri = NeuronLayer("residual", d), fold_index(d, 1)
        lns = [self.ln_f]
        connect(res, self.embed_in, "in", ri)
        for blk in self.blocks:
            for lin, role in ((blk.attn_out, "in"), (blk.mlp_out, "in"), (blk.qkv, "out"), (blk.mlp_in, "out")):
                connect(res, lin, role, ri)
            lns += [blk.ln1, blk.ln2]
        connect(res, self.unembed, "out", ri)
        for ln in lns:
            for attr in ("weight", "bias"):
                if isinstance(ln, nn.LayerNorm) and getattr(ln, attr) is not None:
                    res.add(ln, attr, 0, ri)
        layers = [inp, res]
        rows = torch.arange(3 * d).view(3, nh, dh)  # q|k|v row of (copy, head, channel)
        cols = torch.arange(d).view(nh, dh)         # attention-output column of (head, channel)
        for b, blk in enumerate(self.blocks):
            heads = NeuronLayer(f"block{b}.heads", nh)
            connect(heads, blk.qkv, "in", rows.permute(0, 2, 1).reshape(3 * dh, nh))
            connect(heads, blk.attn_out, "out", cols.T)
            layers.append(heads)
            for h in range(nh):
                head = NeuronLayer(f"block{b}.head{h}", dh)
                connect(head, blk.qkv, "in", rows[:, h])
                connect(head, blk.attn_out, "out", cols[h][None])
                layers.append(head)
            mlp = NeuronLayer(f"block{b}.mlp_hidden", self.d_mlp)
            connect(mlp, blk.mlp_in, "in", fold_index(self.d_mlp, 1))
            connect(mlp, blk.mlp_out, "out", fold_index(self.d_mlp, 1))
            layers.append(mlp)
        out = NeuronLayer("output", self.out_dim)
        connect(out, self.unembed, "in", fold_index(self.out_dim, 1))
        out.add(self, "out_perm", 0, fold_index(self.out_dim, 1))
        return layers + [out]


# ----------------------------------------------------------------------------------------------------------
# Connection cost


def _linears(model: nn.Module) -> list[BioLinear]:
    lins = [m for m in model.modules() if isinstance(m, BioLinear)]
    if not lins:
        raise ValueError(f"{type(model).__name__} has no BioLinear layers to pay a connection cost for")
    return lins


def _agg_scale(t: torch.Tensor, agg: str) -> float:
    if agg == "sum":
        return 1.0
    if agg == "mean":
        return 1.0 / t.numel()
    raise ValueError(f"agg must be 'sum' or 'mean', got {agg!r}")


def cost_coefficients(model: nn.Module, weight_factor: float = 1.0, l0: float = 0.1, agg: str = "sum",
                      last_layer_l0_only: bool = False) -> dict:
    """{BioLinear: (coef, scale)}: a weight W_ij costs scale * |W_ij| * coef_ij, coef = A * d_ij + l0."""
    lins = _linears(model)
    out = {}
    for i, lin in enumerate(lins):
        a = 0.0 if (last_layer_l0_only and i == len(lins) - 1) else weight_factor
        out[lin] = (a * lin.dist + l0, _agg_scale(lin.weight, agg))
    return out


def connection_cost(model: nn.Module, weight_factor: float = 1.0, l0: float = 0.1, agg: str = "sum",
                    bias_penalty: bool = False, embedding_penalty: bool = False,
                    last_layer_l0_only: bool = False) -> torch.Tensor:
    """agg_ij |W_ij| (A d_ij + l0) summed over every BioLinear, + agg |b| l0 with bias_penalty,
    + agg |E| l0 for the token embedding with embedding_penalty. A scalar tensor with gradients.

    agg 'sum' adds every term; 'mean' averages within each tensor (the paper's setting for Fig 5-8).
    last_layer_l0_only: the last BioLinear pays l0 * |w| only, without the distance term (MNIST).
    """
    cost = 0.0
    for lin, (coef, scale) in cost_coefficients(model, weight_factor, l0, agg, last_layer_l0_only).items():
        cost = cost + scale * (lin.weight.abs() * coef).sum()
        if bias_penalty and lin.bias is not None:
            cost = cost + _agg_scale(lin.bias, agg) * l0 * lin.bias.abs().sum()
    emb = getattr(model, "embedding", None)
    if embedding_penalty and emb is not None:
        cost = cost + _agg_scale(emb, agg) * l0 * emb.abs().sum()
    return cost


# ----------------------------------------------------------------------------------------------------------
# Swapping


def _get_layer(model: nn.Module, layer) -> NeuronLayer:
    if isinstance(layer, NeuronLayer):
        return layer
    layers = model.neuron_layers()
    if isinstance(layer, str):
        for nl in layers:
            if nl.name == layer:
                return nl
        raise ValueError(f"no neuron layer named {layer!r}; layers are {[nl.name for nl in layers]}")
    if not isinstance(layer, int) or not -len(layers) <= layer < len(layers):
        raise ValueError(f"layer must be a name or an index in [0, {len(layers)}), got {layer!r}")
    return layers[layer]


def _with_state(t: torch.Tensor, optimizer: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    """t and the optimizer's per-parameter state shaped like it (e.g. Adam's moments): what a swap moves."""
    state = optimizer.state.get(t, {}) if optimizer is not None else {}
    return [t, *(v for v in state.values() if torch.is_tensor(v) and v.shape == t.shape)]


def permute_units(model: nn.Module, layer, perm: torch.Tensor,
                  optimizer: torch.optim.Optimizer | None = None) -> None:
    """Rearrange the units of `layer` (index, name or NeuronLayer): position p receives the unit now at
    perm[p]. Moves every member tensor, and the optimizer's per-parameter state (e.g. Adam's moments) so
    that training goes on as if nothing had moved. One gather per tensor, whatever the number of swaps."""
    nl = _get_layer(model, layer)
    if nl.fixed:
        raise ValueError(f"neuron layer {nl.name!r} is fixed (fix_inputs=True); its neurons cannot be swapped")
    perm = torch.as_tensor(perm, dtype=torch.long)
    if not torch.equal(perm.sort().values, torch.arange(nl.n_units)):
        raise ValueError(f"perm must be a permutation of range({nl.n_units}) for layer {nl.name!r}")
    for module, attr, dim, index, _ in nl.members:
        t = getattr(module, attr)
        full = torch.arange(t.shape[dim])
        full[index] = index[:, perm]  # every copy of a unit moves with it
        full = full.to(t.device)
        with torch.no_grad():
            for v in _with_state(t, optimizer):
                v.copy_(v.index_select(dim, full))  # index_select copies first: no aliasing


def swap_units(model: nn.Module, layer, j: int, k: int,
               optimizer: torch.optim.Optimizer | None = None) -> None:
    """Exchange units j and k of `layer` (index, name or NeuronLayer), optimizer state included, as
    `permute_units` does; only the two units' slices are copied."""
    nl = _get_layer(model, layer)
    if nl.fixed:
        raise ValueError(f"neuron layer {nl.name!r} is fixed (fix_inputs=True); its neurons cannot be swapped")
    for u in (j, k):
        if not isinstance(u, int) or not 0 <= u < nl.n_units:
            raise ValueError(f"unit index must be an int in [0, {nl.n_units}) for layer {nl.name!r}, got {u!r}")
    for module, attr, dim, index, _ in nl.members:
        t = getattr(module, attr)
        a, b = index[:, j].to(t.device), index[:, k].to(t.device)
        with torch.no_grad():
            for v in _with_state(t, optimizer):
                va, vb = v.index_select(dim, a), v.index_select(dim, b)  # copies: no aliasing
                v.index_copy_(dim, a, vb)
                v.index_copy_(dim, b, va)


def neuron_scores(nl: NeuronLayer) -> torch.Tensor:
    """Per unit: sum |incoming weights| + sum |outgoing weights| (all fold copies). Shape (n_units,)."""
    score = torch.zeros(nl.n_units, dtype=torch.float64)
    for module, attr, dim, index, role in nl.members:
        if role is None:
            continue
        w = getattr(module, attr).detach().abs().double()
        per_pos = w.sum(dim=1 - dim)  # (size along dim,)
        score += per_pos[index].sum(0).cpu()
    return score


def placement_costs(nl: NeuronLayer, coefs: dict) -> torch.Tensor:
    """P[a, p] = connection cost of the weights of the unit now at position a if it sat at position p
    (float64, shape (n_units, n_units)). Swapping j and k changes the total cost by
    P[j, k] + P[k, j] - P[j, j] - P[k, k]: one matrix product per BioLinear scores every candidate."""
    P = torch.zeros(nl.n_units, nl.n_units, dtype=torch.float64)
    in_lins, out_lins = [], []
    for module, attr, dim, index, role in nl.members:
        if role not in ("in", "out") or not isinstance(module, BioLinear):
            continue  # embeddings and biases pay l0 * |w| wherever they sit
        (in_lins if role == "in" else out_lins).append(module)
        w = module.weight.detach().abs().double()
        coef, scale = coefs[module]
        coef = coef.double()
        # G[r, s] = cost of the connections that row (in) / column (out) r has, placed at position s
        G = w @ coef.T if role == "in" else w.T @ coef
        P += scale * G[index[:, :, None], index[:, None, :]].sum(0).cpu()
    if set(in_lins) & set(out_lins):
        raise NotImplementedError(f"layer {nl.name!r} has a BioLinear on both sides; its swap cost is not separable")
    return P


SWAP_TOL = 1e-9  # a swap must lower the cost by more than this fraction of the total: ties are not swaps


def relocate(model: nn.Module, top_k: int, optimizer: torch.optim.Optimizer | None = None,
             **cost_kwargs) -> int:
    """The paper's greedy swap pass; returns the number of swaps made.

    For each neuron layer in order (fixed layers skipped), rank units by `neuron_scores`, take the top_k, and
    for each of those units in turn (following it if an earlier swap moved it) find the partner whose swap
    gives the lowest total connection cost; swap if that lowers the cost by more than SWAP_TOL of the total
    (exact ties, e.g. output swaps when the last layer pays l0 only, would otherwise be decided by rounding).
    This chooses exactly what recomputing `connection_cost` for every candidate would (tests/test_core.py
    checks it against that brute force), at the price of one small matrix product per layer.
    cost_kwargs: those of `connection_cost` (biases and embeddings do not depend on position).
    """
    with torch.no_grad():
        tol = SWAP_TOL * float(connection_cost(model, **cost_kwargs))
    coefs = cost_coefficients(model, **{k: v for k, v in cost_kwargs.items()
                                         if k not in ("bias_penalty", "embedding_penalty")})
    swaps = 0
    for nl in model.neuron_layers():
        if nl.fixed or nl.n_units < 2:
            continue
        # The greedy pass runs on P alone (numpy: these are ~100-element vectors); the model is permuted
        # once per layer at the end, which is the same as making the swaps one after another.
        P = placement_costs(nl, coefs).numpy()
        order = torch.argsort(neuron_scores(nl), descending=True, stable=True)[:top_k].tolist()
        perm = np.arange(nl.n_units)     # perm[p]: the unit (by starting position) now at position p
        where = np.arange(nl.n_units)    # where[u]: the position of unit u
        for u in order:
            j = where[u]
            delta = P[j] + P[:, j] - P[j, j] - P.diagonal()
            delta[j] = np.inf
            k = int(np.argmin(delta))
            if delta[k] < -tol:
                P[[j, k]] = P[[k, j]]
                perm[[j, k]] = perm[[k, j]]
                where[perm[j]], where[perm[k]] = j, k
                swaps += 1
        if (perm != np.arange(nl.n_units)).any():
            permute_units(model, nl, torch.from_numpy(perm), optimizer)
    return swaps


# ----------------------------------------------------------------------------------------------------------
# Analysis


class Edge(NamedTuple):
    """`linear` reads row src and writes row dst. cols[j]: the src position that the linear's input j reads
    (None: the whole row, in order). linear None: an identity (a residual skip) between rows of one width,
    drawn grey, never pruned and not counted as a connection."""
    name: str
    linear: BioLinear | None
    src: int
    dst: int
    cols: torch.Tensor | None = None

    def src_cols(self):
        return slice(None) if self.cols is None else self.cols


@dataclass
class Graph:
    """Rows of neurons (bottom to top) and the edges between them; what analysis and plotting walk.

    Edges are listed so that every row is written before it is read. A model may describe itself with a
    `graph()` method; BioMLP is the chain input -> hidden1 -> ... -> output (named as in `neuron_layers`),
    BioTransformer is `transformer_graph`.
    """
    rows: list
    edges: list

    def __post_init__(self):
        self.edges = [Edge(*e) for e in self.edges]


def network_graph(model: nn.Module) -> Graph:
    if hasattr(model, "graph"):
        return model.graph()
    if isinstance(model, BioTransformer):
        return transformer_graph(model)
    if not isinstance(getattr(model, "linears", None), nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no graph() method and no .linears chain; pass graph=")
    n = len(model.linears)
    rows = ["input"] + [f"hidden{i}" for i in range(1, n)] + ["output"]
    return Graph(rows, [(f"linears.{i}", lin, i, i + 1) for i, lin in enumerate(model.linears)])


def transformer_graph(model: "BioTransformer") -> Graph:
    """Rows input, embed (the residual stream after the input linear), then per block b: attention{b}
    (q|k|v, three stacked copies of the head channels), residual, mlp{b} (hidden units), residual; then
    output. The attention output linear reads the v copy (attention mixes positions, never channels); q, k
    and v of a channel are one unit, as in `neuron_layers`. Residual skips are identity edges."""
    d = model.d_model
    rows, edges, res = ["input", "embed"], [("embed_in", model.embed_in, 0, 1)], 1
    for b, blk in enumerate(model.blocks):
        a = len(rows)
        rows += [f"attention{b}", "residual", f"mlp{b}", "residual"]
        edges += [(f"blocks.{b}.qkv", blk.qkv, res, a),
                  (f"blocks.{b}.attn_out", blk.attn_out, a, a + 1, torch.arange(2 * d, 3 * d)),
                  (f"blocks.{b}.attn_skip", None, res, a + 1),
                  (f"blocks.{b}.mlp_in", blk.mlp_in, a + 1, a + 2),
                  (f"blocks.{b}.mlp_out", blk.mlp_out, a + 2, a + 3),
                  (f"blocks.{b}.mlp_skip", None, a + 1, a + 3)]
        res = a + 3
    return Graph(rows + ["output"], edges + [("unembed", model.unembed, res, len(rows))])


@dataclass
class Row:
    """One row of neurons: coords (n, d); unit[p] = the unit at position p (the copies of a folded row are
    one unit: an embedding dimension, or a channel's q|k|v), except on an input row of caller features;
    caller[p] = the caller's index of that input or output (through in_perm / out_perm), None if hidden."""
    name: str
    coords: torch.Tensor
    fold: int
    unit: torch.Tensor
    caller: torch.Tensor | None
    kind: str  # 'input', 'hidden' or 'output'


def graph_rows(model: nn.Module, graph: Graph) -> list[Row]:
    found = {}
    for e in graph.edges:
        if e.linear is not None:
            found.setdefault(e.dst, (e.linear.out_coords.cpu(), e.linear.out_fold))
            if e.cols is None:
                found.setdefault(e.src, (e.linear.in_coords.cpu(), e.linear.in_fold))
    srcs, dsts = {e.src for e in graph.edges}, {e.dst for e in graph.edges}
    rows = []
    for r, name in enumerate(graph.rows):
        coords, fold = found[r]
        n, pos = len(coords), torch.arange(len(coords))
        kind = "input" if r not in dsts else ("output" if r not in srcs else "hidden")
        unit, caller = pos % (n // fold), None
        if kind == "input":
            perm = getattr(model, "in_perm", torch.arange(0)).cpu()
            unit = pos if len(perm) == n else unit  # no perm: embedding dims
            caller = perm if len(perm) == n else unit
        elif kind == "output":
            perm = getattr(model, "out_perm", torch.arange(0)).cpu()
            caller = perm if len(perm) == n else pos
        rows.append(Row(name, coords, fold, unit, caller, kind))
    return rows


def surviving(graph: Graph, threshold: float = 0.0) -> list[torch.Tensor]:
    """Per edge, the (out, in) bool mask of connections with w != 0 and |w| >= threshold * max |w| of
    that layer (threshold is relative: 0 keeps every non-zero weight, 1 only the strongest)."""
    width = {e.dst: e.linear.out_features for e in graph.edges if e.linear is not None}
    masks = []
    for _, lin, s, _, _ in graph.edges:
        w = torch.eye(width[s]) if lin is None else lin.weight.detach().abs().cpu()
        masks.append((w > 0) & (w >= threshold * w.max()))
    return masks


def active_neurons(rows: list[Row], graph: Graph, masks: list) -> list[torch.Tensor]:
    """Per row, a bool per unit. A neuron is active if it keeps at least one incoming and one outgoing
    connection; inputs need only an outgoing one, outputs only an incoming one. Folded copies of an
    embedded input count as one unit, active if any copy is."""
    has_in = [torch.zeros(len(r.coords), dtype=torch.bool) for r in rows]
    has_out = [torch.zeros(len(r.coords), dtype=torch.bool) for r in rows]
    for e, m in zip(graph.edges, masks):
        has_out[e.src][e.src_cols()] |= m.any(0)
        has_in[e.dst] |= m.any(1)
    active = []
    for r, i, o in zip(rows, has_in, has_out):
        a = o if r.kind == "input" else (i if r.kind == "output" else i & o)
        units = torch.zeros(int(r.unit.max()) + 1, dtype=torch.bool)
        units[r.unit[a]] = True
        active.append(units)
    return active


@dataclass
class Module:
    """A connected component of the surviving graph that links inputs to outputs (caller indices);
    hidden: row name -> positions of its hidden neurons."""
    inputs: list
    outputs: list
    hidden: dict

    def __str__(self):
        return (f"inputs {_short(self.inputs)} -> outputs {_short(self.outputs)} "
                f"({sum(map(len, self.hidden.values()))} hidden neurons)")


def _short(xs: list, n: int = 12) -> str:
    return str(xs) if len(xs) <= n else f"[{', '.join(map(str, xs[:n]))}, ... ({len(xs)} in all)]"


def find_modules(rows: list[Row], graph: Graph, masks: list) -> list[Module]:
    """Connected components (union-find over surviving connections) holding an input and an output."""
    offset = [0]
    for r in rows:
        offset.append(offset[-1] + int(r.unit.max()) + 1)
    parent = list(range(offset[-1]))

    def root(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for e, m in zip(graph.edges, masks):
        o, i = m.nonzero(as_tuple=True)
        dst_units, src_units = rows[e.dst].unit[o], rows[e.src].unit[e.src_cols()][i]
        for a, b in zip((offset[e.dst] + dst_units).tolist(), (offset[e.src] + src_units).tolist()):
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[ra] = rb
    comps = {}
    active = active_neurons(rows, graph, masks)
    for ri, (r, act) in enumerate(zip(rows, active)):
        for u in act.nonzero().flatten().tolist():
            c = comps.setdefault(root(offset[ri] + u), Module([], [], {}))
            if r.kind == "hidden":
                c.hidden.setdefault(r.name, []).append(u)
            else:
                callers = r.caller[r.unit == u].tolist()
                (c.inputs if r.kind == "input" else c.outputs).extend(callers[:1])
    mods = [m for m in comps.values() if m.inputs and m.outputs]
    for m in mods:
        m.inputs.sort()
        m.outputs.sort()
    return sorted(mods, key=lambda m: m.outputs)


def reachable_inputs(rows: list[Row], graph: Graph, masks: list) -> dict:
    """{output (caller index): sorted inputs (caller index) with a surviving path to it}. One input row."""
    inp = next(r for r in rows if r.kind == "input")
    n_in = int(inp.caller.max()) + 1
    reach = [None] * len(rows)
    reach[rows.index(inp)] = F.one_hot(inp.caller, n_in).float()
    for e, m in zip(graph.edges, masks):
        s, d = e.src, e.dst
        if reach[s] is None:
            continue  # a row fed by no input
        r = (m.float() @ reach[s][e.src_cols()] > 0).float()
        reach[d] = r if reach[d] is None else torch.maximum(reach[d], r)
    out = {}
    for ri, r in enumerate(rows):
        if r.kind == "output" and reach[ri] is not None:
            for p, c in enumerate(r.caller.tolist()):
                out[c] = reach[ri][p].nonzero().flatten().tolist()
    return dict(sorted(out.items()))


@dataclass
class NetworkReport:
    """The numbers behind a picture, at one relative threshold (see `analyze`)."""
    threshold: float
    connections: int
    total_connections: int
    neurons: int
    total_neurons: int
    wiring: float  # sum over surviving connections of |w| * length
    reach: dict
    modules: list
    metric: float | None = None

    def __str__(self):
        lines = [f"threshold {self.threshold:g}: {self.connections}/{self.total_connections} connections, "
                 f"{self.neurons}/{self.total_neurons} neurons active, wiring length {self.wiring:.4g}"
                 + ("" if self.metric is None else f", metric {self.metric:.4g}")]
        lines += [f"  output {o} reads inputs {_short(i)}" for o, i in self.reach.items()]
        lines += [f"  module {k}: {m}" for k, m in enumerate(self.modules)]
        return "\n".join(lines)


def analyze(model: nn.Module, threshold: float = 0.0, graph: Graph | None = None) -> NetworkReport:
    """Active connections and neurons, wiring length, reachability and modules of the connections that
    survive a relative threshold (without changing the weights)."""
    graph = graph or network_graph(model)
    rows, masks = graph_rows(model, graph), surviving(graph, threshold)
    active = active_neurons(rows, graph, masks)
    wiring = sum(float((lin.weight.detach().abs().cpu() * lin.dist.cpu() * m).sum())
                 for (_, lin, _, _, _), m in zip(graph.edges, masks) if lin is not None)
    learned = [m for e, m in zip(graph.edges, masks) if e.linear is not None]  # skips are not counted
    return NetworkReport(threshold, sum(int(m.sum()) for m in learned), sum(m.numel() for m in learned),
                         sum(int(a.sum()) for a in active), sum(len(a) for a in active), wiring,
                         reachable_inputs(rows, graph, masks), find_modules(rows, graph, masks))


@dataclass
class Pruned:
    """What `prune` changed: the original weights by parameter name, and what survived. Also a context
    manager that restores the weights on exit."""
    saved: dict
    connections: int
    neurons: int
    model: nn.Module = field(repr=False, default=None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        restore(self.model, self)


def _param_names(model: nn.Module) -> dict:
    return {id(p): name for name, p in model.named_parameters()}


def prune(model: nn.Module, threshold: float, graph: Graph | None = None) -> Pruned:
    """Zero every weight with |w| < threshold * (its layer's max |w|); `restore(model, record)` undoes it."""
    graph = graph or network_graph(model)
    names, saved = _param_names(model), {}
    masks = surviving(graph, threshold)
    with torch.no_grad():
        for (_, lin, _, _, _), m in filter(lambda em: em[0].linear is not None, zip(graph.edges, masks)):
            saved[names[id(lin.weight)]] = lin.weight.detach().clone()
            lin.weight.mul_(m.to(lin.weight.device))
    report = analyze(model, 0.0, graph)
    return Pruned(saved, report.connections, report.neurons, model)


def restore(model: nn.Module, record) -> None:
    """Put back the tensors saved in a `Pruned` record (or a {parameter name: tensor} dict)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in getattr(record, "saved", record).items():
            params[name].copy_(t)


@contextmanager
def intervene(model: nn.Module, weights: dict | None = None, neurons: dict | None = None,
              embedding_dims=None, value: float = 0.0, graph: Graph | None = None):
    """Within the block, set chosen weights, neuron activations or embedding dimensions to `value`
    (0: knock-out); everything is restored on exit, also when the block raises.

    weights:        {edge index: bool mask (out, in) or (rows, cols) index} of graph edges (BioMLP: linears).
    neurons:        {row name or index: positions}, internal order as drawn; a neuron's activation is
                    replaced by `value` where BioLinears read it (hooks; an identity edge still carries
                    the original value) and, for outputs, where they are written. Positions
                    of a folded input row name units: all copies are set.
    embedding_dims: columns of model.embedding set to `value` for every token.
    """
    graph = graph or network_graph(model)
    rows, names, saved, hooks = graph_rows(model, graph), _param_names(model), {}, []
    try:
        with torch.no_grad():
            for e, where in (weights or {}).items():
                w = graph.edges[e].linear.weight
                saved[names[id(w)]] = w.detach().clone()
                w[where] = value
            if embedding_dims is not None:
                saved[names[id(model.embedding)]] = model.embedding.detach().clone()
                model.embedding[:, embedding_dims] = value
        for row, pos in (neurons or {}).items():
            r = graph.rows.index(row) if isinstance(row, str) else row
            hit = torch.isin(rows[r].unit, torch.as_tensor(pos))
            for e in filter(lambda e: e.linear is not None, graph.edges):
                lin = e.linear
                if e.src == r:
                    idx = hit[e.src_cols()].nonzero().flatten()  # the linear's input columns
                    hooks.append(lin.register_forward_pre_hook(
                        lambda m, args, idx=idx: (args[0].index_fill(-1, idx.to(args[0].device), value),)))
                elif e.dst == r and rows[r].kind == "output":
                    idx = hit.nonzero().flatten()
                    hooks.append(lin.register_forward_hook(
                        lambda m, args, out, idx=idx: out.index_fill(-1, idx.to(out.device), value)))
        yield model
    finally:
        for h in hooks:
            h.remove()
        restore(model, saved)


# Circuits (Nainani 2024, arXiv:2401.03646). Ablating connection i -> j makes its BioLinear read a baseline
# abar_i instead of a_i for that connection only: z = (W*M) a + (W*(1-M)) abar + b, M the kept connections.


def _run(model: nn.Module, graph: Graph, x: torch.Tensor, masks: list | None = None, abar: list | None = None):
    """model(x) with the connections outside `masks` (per edge an (out, in) bool mask; None: keep all)
    ablated to `abar`, and per edge the (input (B, ..., in), output (B, ..., out)) of its BioLinear."""
    seen = [None] * len(graph.edges)

    def hook(k, lin, args, z):
        if masks is not None and masks[k] is not None:
            z = z + F.linear(abar[k] - args[0], lin.weight * ~masks[k].to(z.device))
        seen[k] = (args[0], z)
        return z

    hooks = [e.linear.register_forward_hook(partial(hook, k)) for k, e in enumerate(graph.edges)
             if e.linear is not None]
    try:
        return model(x), seen
    finally:
        for h in hooks:
            h.remove()


def _baseline(model: nn.Module, graph: Graph, x: torch.Tensor, baseline: torch.Tensor | None) -> list:
    """Per edge, what ablated connections read: each BioLinear input's mean over the batch (1, ..., in) if
    baseline is None (mean ablation), else its value when the model runs on the corrupted batch `baseline`."""
    if baseline is not None and baseline.shape != x.shape:
        raise ValueError(f"a corrupted baseline must have the shape of x {tuple(x.shape)}, got {tuple(baseline.shape)}")
    with torch.no_grad():
        seen = _run(model, graph, x if baseline is None else baseline)[1]
    return [None if s is None else s[0].mean(0, keepdim=True) if baseline is None else s[0] for s in seen]


def _metric(metric, y: torch.Tensor) -> torch.Tensor:
    if not (torch.is_tensor(m := metric(y)) and m.dim() == 0):
        raise ValueError(f"metric(output) must return a scalar tensor (e.g. a mean over the batch), got {m!r:.80}")
    return m


def edge_attribution(model: nn.Module, x: torch.Tensor, metric, baseline: torch.Tensor | None = None,
                     graph: Graph | None = None) -> list:
    """Edge attribution patching: per graph edge an (out, in) tensor (None: identity edge) of scores
    |sum over batch and positions of (a_i - abar_i) W_ji dmetric/dz_j|, the first-order change of the metric
    when connection i -> j alone is ablated. metric(output) -> scalar tensor, e.g. the mean correct-class
    log-prob; not one at its optimum (the MSE to the model's own output: every score is 0). baseline: None
    (mean ablation) or a corrupted batch shaped like x."""
    graph = graph or network_graph(model)
    abar = _baseline(model, graph, x, baseline)
    with torch.enable_grad():
        y, seen = _run(model, graph, x)
        ks = [k for k, s in enumerate(seen) if s is not None]
        grads = torch.autograd.grad(_metric(metric, y), [seen[k][1] for k in ks], materialize_grads=True)
    scores = [None] * len(graph.edges)
    for k, g in zip(ks, grads):
        a, w = seen[k][0], graph.edges[k].linear.weight
        scores[k] = (w * (g.reshape(-1, len(w)).T @ (a - abar[k]).reshape(-1, w.shape[1]))).detach().abs().cpu()
    return scores


def _faithfulness(model: nn.Module, graph: Graph, x: torch.Tensor, metric, baseline):
    """masks -> faithfulness on x; the baseline and the full and empty circuits' metrics computed once."""
    abar = _baseline(model, graph, x, baseline)

    def value(masks):
        with torch.no_grad():
            return float(_metric(metric, _run(model, graph, x, masks, abar)[0]))

    full = value(None)
    empty = value([None if e.linear is None else torch.zeros_like(e.linear.weight, dtype=torch.bool)
                   for e in graph.edges])
    if full == empty:
        raise ValueError(f"the metric is {full:.6g} for the full and the empty circuit alike: nothing to preserve")
    return lambda masks: (value(masks) - empty) / (full - empty)


def circuit_faithfulness(model: nn.Module, masks: list, x: torch.Tensor, metric,
                         baseline: torch.Tensor | None = None, graph: Graph | None = None) -> float:
    """(m_circuit - m_empty) / (m_full - m_empty): 1 for the full model, 0 with every connection ablated.
    masks: per graph edge the (out, in) bool mask of the circuit's connections (None: identity edge)."""
    return _faithfulness(model, graph or network_graph(model), x, metric, baseline)(masks)


@dataclass
class Circuit:
    """What `discover_circuit` found: per graph edge the (out, in) bool mask of kept connections (None:
    identity edge); `edges` lists them as (edge name, out, in) of its BioLinear; total: all connections."""
    masks: list
    edges: list
    total: int
    faithfulness: float
    seconds: float
    method: str

    def __str__(self):
        return (f"{self.method} circuit: {len(self.edges)}/{self.total} connections, faithfulness "
                f"{self.faithfulness:.3f}, found in {self.seconds:.3g} s: {_short(self.edges, 6)}")


def discover_circuit(model: nn.Module, x: torch.Tensor, metric, target: float = 0.9, method: str = "eap",
                     baseline: torch.Tensor | None = None, candidates: list | None = None,
                     graph: Graph | None = None) -> Circuit:
    """A small circuit with `circuit_faithfulness` >= target. 'eap': the fewest top connections by
    `edge_attribution`; 'acdc': from all candidates, visiting edges from the output side, drop each connection
    whose removal keeps the target (a forward pass each). candidates: per edge (out, in) bool masks of what may
    be kept (default: non-zero weights; `surviving(graph, 0.01)` speeds ACDC up); the rest is always ablated.
    If all candidates together miss the target, all are returned."""
    if method not in ("eap", "acdc"):
        raise ValueError(f"unknown method {method!r}; expected 'eap' or 'acdc'")
    if not 0 < target <= 1:
        raise ValueError(f"target faithfulness must lie in (0, 1], got {target!r}")
    t0, graph = time.perf_counter(), graph or network_graph(model)
    cand = candidates or [None if e.linear is None else e.linear.weight.detach().cpu() != 0 for e in graph.edges]
    faith = _faithfulness(model, graph, x, metric, baseline)
    if method == "eap":
        scores = edge_attribution(model, x, metric, baseline, graph)
        flat = torch.cat([torch.where(c, s, -1.0).flatten() for s, c in zip(scores, cand) if c is not None])
        rank = flat.argsort(descending=True, stable=True).argsort()
        ranks = iter(rank.split([c.numel() for c in cand if c is not None]))
        ranks = [None if c is None else next(ranks).view(c.shape) for c in cand]  # non-candidates rank last

        def top(k):
            return [r if r is None else r < k for r in ranks]

        # Faithfulness grows with k almost monotonically: bisection finds a k reaching the target next to one
        # missing it (k = 0: faithfulness 0) in log2(n) forward passes, not n; a smaller k after a dip is missed.
        lo, hi = 0, sum(int(c.sum()) for c in cand if c is not None)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if faith(top(mid)) >= target else (mid, hi)
        masks = top(hi)
    else:
        masks = [None if c is None else c.clone() for c in cand]
        for m in reversed(masks):  # output side first: edges are listed inputs first
            for o, i in ([] if m is None else m.nonzero().tolist()):
                m[o, i] = False
                m[o, i] = faith(masks) < target  # put it back if the circuit needs it
    edges = [(e.name, o, i) for e, m in zip(graph.edges, masks) if m is not None for o, i in m.nonzero().tolist()]
    total = sum(e.linear.weight.numel() for e in graph.edges if e.linear is not None)
    return Circuit(masks, edges, total, faith(masks), time.perf_counter() - t0, method)


def compact(model: BioMLP, threshold: float = 0.0) -> BioMLP:
    """A smaller BioMLP computing what `model` computes after `prune(model, threshold)` (up to rounding):
    the pruned weights without the dead hidden neurons, those that read no kept neuron or feed none. One that
    reads nothing still feeds act(bias) forward: that constant is folded into the next layer's bias (so the
    result has biases). Inputs, outputs, their order, embedding and kept neurons' coordinates are unchanged."""
    if not isinstance(model, BioMLP):
        raise TypeError(f"compact supports BioMLP (embeddings, folds, grids and rings included), not "
                        f"{type(model).__name__}")
    lins = model.linears
    masks = surviving(network_graph(model), threshold)
    ws = [lin.weight.detach() * m.to(lin.weight.device) for lin, m in zip(lins, masks)]
    bs = [torch.zeros_like(lin.weight[:, 0]) if lin.bias is None else lin.bias.detach().clone() for lin in lins]
    keep = [torch.arange(model.shape[0])]
    for l in range(1, len(lins)):  # forward: fold the neurons that read no kept neuron into the next bias
        fed = (ws[l - 1][:, keep[-1]] != 0).any(1)
        bs[l] += ws[l][:, ~fed] @ model.act(bs[l - 1][~fed])
        keep.append(fed.nonzero().flatten())
    keep.append(torch.arange(model.shape[-1]))
    for l in range(len(lins) - 1, 0, -1):  # backward: drop the neurons that feed no kept neuron
        keep[l] = keep[l][(ws[l][keep[l + 1]][:, keep[l]] != 0).any(0)]
    if any(len(k) == 0 for k in keep):
        raise ValueError(f"a hidden layer has no neuron left at threshold {threshold}: the pruned model is constant")
    small = BioMLP([len(k) for k in keep], in_fold=model.in_fold, fix_inputs=model.fix_inputs,
                   generator=torch.Generator()).to(lins[0].weight)  # its own generator: the caller's RNG is untouched
    small.act, small.in_perm, small.out_perm = model.act, model.in_perm.clone(), model.out_perm.clone()
    if model.embedding is not None:
        small.embedding = nn.Parameter(model.embedding.detach().clone())
    with torch.no_grad():
        for l, (new, old) in enumerate(zip(small.linears, lins)):
            new.weight.copy_(ws[l][keep[l + 1]][:, keep[l]])
            new.bias.copy_(bs[l][keep[l + 1]])
            new.in_coords, new.out_coords = old.in_coords[keep[l]], old.out_coords[keep[l + 1]]
            new.dist = manhattan(new.out_coords, new.in_coords)
    return small


# ----------------------------------------------------------------------------------------------------------
# Plotting


def _connections(graph: Graph, masks: list, points: list):
    """Per edge: segments (k, 2, D) between neuron drawing positions, rgba colours (k, 4) and relative
    strengths |w| / max |w| of the layer (k,), weakest first so that strong connections are drawn on top.
    Blue is positive, red negative; alpha is the relative strength. Identity edges are thin and grey."""
    for e, m in zip(graph.edges, masks):
        lin = e.linear
        w = m.float() if lin is None else lin.weight.detach().cpu().float()
        o, i = m.nonzero(as_tuple=True)
        wk = w[o, i]
        rel = wk.abs() / w.abs().max().clamp_min(1e-30)
        order = rel.argsort()
        o, i, wk, rel = o[order], i[order], wk[order], rel[order]
        rgba = torch.stack([(wk < 0).float(), torch.zeros_like(wk), (wk > 0).float(), rel], 1)
        if lin is None:
            rgba, rel = torch.tensor([0.5, 0.5, 0.5, 0.4]).expand(len(wk), 4), 0.25 * rel
        segs = torch.stack([points[e.src][e.src_cols()][i], points[e.dst][o]], 1)
        yield segs.numpy(), rgba.numpy(), rel.numpy()


def _row_points(row: Row, y: int, fold_offset: float) -> torch.Tensor:
    """(n, 2) drawing positions of a 1D row: x = coordinate, y = row index; the copies of a folded row are
    stacked below copy 0, the last one fold_offset lower (operand embeddings as in the paper's Fig 5)."""
    copy = torch.arange(len(row.coords)) // (len(row.coords) // row.fold)
    return torch.stack([row.coords[:, 0].float(), y - fold_offset * copy.float() / max(row.fold - 1, 1)], 1)


def plot_network(model: nn.Module, ax=None, threshold: float = 0.0, graph: Graph | None = None,
                 in_labels=None, out_labels=None, max_lw: float = 2.0, fold_offset: float = 0.3,
                 neuron_size: float = 12.0, masks: list | None = None):
    """Draw a 1D network as in the paper: neurons as dots at (coordinate, row), rows bottom to top, one
    segment per connection with |w| >= threshold * max |w| of its layer, width and alpha proportional to
    |w| / max |w|, blue positive, red negative. Each layer is one LineCollection (fast for 10^5 lines).

    in_labels / out_labels: the caller's names of the inputs / outputs in the caller's order; they follow
    in_perm / out_perm, so a label stays with its neuron after swaps. masks: per graph edge an (out, in) bool
    mask (e.g. `Circuit.masks`): only those connections are drawn (None: the edge as usual). Returns the axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    graph = graph or network_graph(model)
    rows = graph_rows(model, graph)
    if any(r.coords.shape[1] != 1 for r in rows):
        raise ValueError("plot_network draws 1D ('line') networks; use plot_network_3d for 2D ones")
    if ax is None:
        ax = plt.subplots(figsize=(6, 1.4 * len(rows)))[1]
    pts = [_row_points(r, y, fold_offset) for y, r in enumerate(rows)]
    masks = masks or [None] * len(graph.edges)
    shown = [s if m is None else s & m.cpu() for s, m in zip(surviving(graph, threshold), masks)]
    for segs, rgba, rel in _connections(graph, shown, pts):
        ax.add_collection(LineCollection(segs, colors=rgba, linewidths=max_lw * rel))
    for r, p in zip(rows, pts):
        ax.scatter(p[:, 0], p[:, 1], s=neuron_size, c="k", zorder=3)
        labels = {"input": in_labels, "output": out_labels}.get(r.kind)
        if labels is None:
            continue
        edge = p[:, 1] == (p[:, 1].min() if r.kind == "input" else p[:, 1].max())  # outermost copy only
        for (x, y), c in zip(p[edge].tolist(), r.caller[edge].tolist()):
            below = r.kind == "input"
            ax.text(x, y - 0.1 if below else y + 0.1, str(labels[c]), ha="center",
                    va="top" if below else "bottom", fontsize=8)
    ax.set_yticks(range(len(rows)), [r.name for r in rows])
    ax.set_xticks([])
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.5 - fold_offset * (rows[0].fold > 1), len(rows) - 0.5)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    return ax


def plot_network_3d(model: nn.Module, ax=None, threshold: float = 0.0, graph: Graph | None = None,
                    image=None, out_labels=None, max_lw: float = 1.0, neuron_size: float = 4.0,
                    cmap: str = "Greys"):
    """Draw a 2D network (MNIST's grids and output ring) in 3D: row k is the plane z = k, connections as in
    `plot_network` (one Line3DCollection per layer). image: the caller's input values (e.g. a 28x28 digit),
    shown on the input plane at each pixel's position (through in_perm). Returns the 3D axes."""
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    graph = graph or network_graph(model)
    rows = graph_rows(model, graph)
    if ax is None:
        ax = plt.figure(figsize=(7, 7)).add_subplot(projection="3d")
    pts = []
    for z, r in enumerate(rows):
        xy = r.coords.float() if r.coords.shape[1] == 2 else F.pad(r.coords.float(), (0, 1), value=0.5)
        pts.append(torch.cat([xy, torch.full((len(xy), 1), float(z))], 1))
    for segs, rgba, rel in _connections(graph, surviving(graph, threshold), pts):
        ax.add_collection3d(Line3DCollection(segs, colors=rgba, linewidths=max_lw * rel))
    for r, p in zip(rows, pts):
        if r.kind == "input" and image is not None:
            vals = torch.as_tensor(image, dtype=torch.float32).flatten()[r.caller]
            ax.scatter(p[:, 0], p[:, 1], p[:, 2], c=vals.numpy(), cmap=cmap, s=3 * neuron_size, marker="s",
                       depthshade=False)
        else:
            ax.scatter(p[:, 0], p[:, 1], p[:, 2], c="k", s=neuron_size, depthshade=False)
        if r.kind == "output" and out_labels is not None:
            for (x, y, z), c in zip(p.tolist(), r.caller.tolist()):
                ax.text(0.5 + 1.25 * (x - 0.5), 0.5 + 1.25 * (y - 0.5), z, str(out_labels[c]), ha="center",
                        fontsize=8)
    # y runs away from the viewer so that pixel row 0 (the top of an image) is at the back: digits read upright
    ax.set(xlim=(0, 1), ylim=(1, 0), zlim=(0, len(rows) - 1), xticks=[], yticks=[])
    ax.set_zticks(range(len(rows)), [r.name for r in rows])
    return ax


def _new_axes(fig, draw):
    return fig.add_subplot(projection="3d" if draw is plot_network_3d else None)


def snapshot_recorder(snapshots: list):
    """A snapshot_fn for `train`: appends (step, copy of the state_dict) to `snapshots`."""
    def record(step, model):
        snapshots.append((step, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}))
    return record


def draw_snapshot(model: nn.Module, snapshot: tuple, ax=None, draw=None, **draw_kw):
    """Load a recorded (step, state_dict) into `model` (overwriting its weights) and draw it."""
    step, state = snapshot
    model.load_state_dict(state)
    ax = (draw or plot_network)(model, ax=ax, **draw_kw)
    ax.set_title(f"step {step}")
    return ax


def save_gif(model: nn.Module, snapshots: list, path: str = "figures/training.gif", draw=None, fps: int = 4,
             dpi: int = 80, figsize=(6, 6), **draw_kw) -> str:
    """Render recorded snapshots (one frame each) into an animated GIF with matplotlib's Pillow writer.
    `model` is only the template (a copy is loaded with each snapshot); the directory is created if needed."""
    import copy
    import os

    import matplotlib.pyplot as plt
    from matplotlib.animation import PillowWriter

    draw, m = draw or plot_network, copy.deepcopy(model)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig = plt.figure(figsize=figsize)
    writer = PillowWriter(fps=fps)
    try:
        with writer.saving(fig, path, dpi):
            for snap in snapshots:
                fig.clf()
                draw_snapshot(m, snap, _new_axes(fig, draw), draw, **draw_kw)
                writer.grab_frame()
    finally:
        plt.close(fig)
    return path


def threshold_view(model: nn.Module, threshold: float, metric_fn=None, ax=None, graph: Graph | None = None,
                   draw=None, **draw_kw) -> NetworkReport:
    """Prune at `threshold`, evaluate metric_fn(model) (the task metric), draw, restore the weights, and
    return the report with its metric. The threshold slider's work."""
    with prune(model, threshold, graph):
        report = analyze(model, threshold, graph)
        report.metric = None if metric_fn is None else float(metric_fn(model))
        (draw or plot_network)(model, ax=ax, threshold=threshold, graph=graph, **draw_kw)
    return report


def _slider_view(slider, render, figsize) -> "ipywidgets.VBox":
    """A slider above a picture and a text; render(value, fig) draws into fig and returns the text.

    The picture is a PNG in an Image widget, not an Output widget: capturing plots into Output widgets
    intermittently deadlocks headless execution (nbconvert / nbclient), which the notebooks rely on."""
    import html
    import io

    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    image, text = widgets.Image(format="png"), widgets.HTML()

    def update(change=None):
        fig = plt.figure(figsize=figsize)
        report = render(slider.value, fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        image.value = buf.getvalue()
        text.value = "" if report is None else f"<pre>{html.escape(str(report))}</pre>"

    slider.observe(update, names="value")
    update()
    return widgets.VBox([slider, image, text])


def threshold_explorer(model: nn.Module, metric_fn=None, graph: Graph | None = None, draw=None,
                       max_threshold: float = 1.0, figsize=(6, 6), **draw_kw):
    """An ipywidgets slider over the pruning threshold: re-draws the pruned network and shows its report."""
    import ipywidgets as widgets

    slider = widgets.FloatSlider(value=0.0, min=0.0, max=max_threshold, step=max_threshold / 100,
                                 description="threshold", continuous_update=False, readout_format=".2f")
    return _slider_view(slider, lambda t, fig: threshold_view(model, t, metric_fn, _new_axes(fig, draw), graph,
                                                              draw, **draw_kw), figsize)


def snapshot_explorer(model: nn.Module, snapshots: list, draw=None, figsize=(6, 6), **draw_kw):
    """An ipywidgets slider that scrubs through recorded training snapshots (on a copy of the model)."""
    import copy

    import ipywidgets as widgets

    m = copy.deepcopy(model)
    slider = widgets.IntSlider(value=0, min=0, max=len(snapshots) - 1, description="snapshot",
                               continuous_update=False)

    def render(i, fig):
        draw_snapshot(m, snapshots[i], _new_axes(fig, draw), draw, **draw_kw)

    return _slider_view(slider, render, figsize)


# ----------------------------------------------------------------------------------------------------------
# Training


@dataclass
class BIMTConfig:
    """The knobs of one BIMT run. Experiments subclass it and add their shape, data sizes, etc.

    lam_schedule: (fraction, multiplier) pairs; from step int(fraction * steps) on, lambda is multiplied by
    the multiplier (cumulatively): ((0.25, 10), (0.75, 0.1)) is 'x10 at 1/4, x0.1 at 3/4'.
    bias_penalty_from: fraction of training after which biases pay l0 * |b| (None: never).
    swap_weight_factor: the A that the swap pass minimises (None: weight_factor). With A = 0 every placement
    costs the same and no swap is ever made, so the paper's 'L1 + swap' ablation trains with weight_factor=0
    and swaps with swap_weight_factor=1 (shortening wires that the loss does not pay for).
    """
    steps: int = 20000
    lr: float = 2e-3
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
    swap_weight_factor: float | None = None
    top_k: int = 5
    batch_size: int | None = None  # None: full batch
    eval_every: int = 200
    seed: int = 0

    def lam_at(self, step: int) -> float:
        lam = self.lam
        for frac, mult in self.lam_schedule:
            if step >= int(frac * self.steps):
                lam *= mult
        return lam

    def cost_kwargs(self, step: int | None = None) -> dict:
        """Keyword arguments of connection_cost / relocate at `step` (None: the end of training)."""
        step = self.steps if step is None else step
        bias = self.bias_penalty_from is not None and step >= int(self.bias_penalty_from * self.steps)
        return dict(weight_factor=self.weight_factor, l0=self.l0, agg=self.agg, bias_penalty=bias,
                    embedding_penalty=self.embedding_penalty, last_layer_l0_only=self.last_layer_l0_only)

    def swap_cost_kwargs(self, step: int | None = None) -> dict:
        """Keyword arguments of relocate at `step`: cost_kwargs with A = swap_weight_factor if set."""
        kw = self.cost_kwargs(step)
        if self.swap_weight_factor is not None:
            kw["weight_factor"] = self.swap_weight_factor
        return kw


def train(model: nn.Module, cfg: BIMTConfig, train_data: tuple, test_data: tuple, loss_fn,
          metric_fn=None, snapshot_fn=None, snapshot_every: int | None = None, progress: bool = True) -> dict:
    """Train with loss_fn(model(x), y) + lambda * connection_cost, swapping every cfg.swap_every steps.

    train_data, test_data: (inputs, targets) tensors. metric_fn(outputs, targets) -> float (e.g. accuracy)
    is evaluated on the test set every cfg.eval_every steps and at the last step, as is the test loss.
    snapshot_fn(step, model) is called every snapshot_every steps and at the last step (for animations).
    Returns the history as plain lists: step, train_loss, test_loss, metric, cost, lam, swaps.
    Raises FloatingPointError naming the step and lambda if the loss stops being finite.
    """
    from tqdm.auto import tqdm

    x_tr, y_tr = train_data
    x_te, y_te = test_data
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise ValueError(f"inputs and targets differ in length: train {len(x_tr)} vs {len(y_tr)}, "
                         f"test {len(x_te)} vs {len(y_te)}")
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    hist = {k: [] for k in ("step", "train_loss", "test_loss", "metric", "cost", "lam", "swaps")}
    swaps = 0
    bar = tqdm(range(cfg.steps), disable=not progress, mininterval=0.5)
    for step in bar:
        lam, ckw = cfg.lam_at(step), cfg.cost_kwargs(step)
        if cfg.batch_size is None:
            xb, yb = x_tr, y_tr
        else:
            idx = torch.randint(len(x_tr), (cfg.batch_size,), generator=gen)
            xb, yb = x_tr[idx], y_tr[idx]
        task = loss_fn(model(xb), yb)
        cost = connection_cost(model, **ckw)
        loss = task + lam * cost
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step} (lambda={lam:g}, task loss "
                                     f"{task.item():.4g}, cost {cost.item():.4g}); try a lower lr or lambda")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cfg.swap and cfg.swap_every and (step + 1) % cfg.swap_every == 0:
            swaps += relocate(model, cfg.top_k, optimizer=opt, **cfg.swap_cost_kwargs(step))
        last = step == cfg.steps - 1
        if snapshot_fn is not None and snapshot_every and (step % snapshot_every == 0 or last):
            snapshot_fn(step, model)
        if step % cfg.eval_every == 0 or last:
            with torch.no_grad():
                out = model(x_te)
                hist["step"].append(step)
                hist["train_loss"].append(task.item())
                hist["test_loss"].append(loss_fn(out, y_te).item())
                hist["metric"].append(None if metric_fn is None else float(metric_fn(out, y_te)))
                hist["cost"].append(cost.item())
                hist["lam"].append(lam)
                hist["swaps"].append(swaps)
            bar.set_postfix(train=f"{task.item():.2e}", test=f"{hist['test_loss'][-1]:.2e}",
                            cost=f"{cost.item():.3g}", refresh=False)
    return hist


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax equals the label."""
    return (logits.argmax(-1) == labels).float().mean().item()


# ----------------------------------------------------------------------------------------------------------
# Data

MNIST_5K = Path(__file__).resolve().parent / "data" / "mnist_5k.npz"  # provenance: data/README.md
MNIST_5K_SHA256 = "246e0c30eeea57c8d0037d3f38c8e00651ec204cc61b8022563e9aeeb9d756f4"
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path) -> np.ndarray:
    """One IDX file, raw or gzip-compressed -> uint8 array of the shape its header states. Big-endian header:
    magic 0x00000801 (labels, 1 dim) or 0x00000803 (images, 3 dims), then one int32 size per dim."""
    path = Path(path)
    buf = path.read_bytes()
    if buf[:2] == b"\x1f\x8b":  # gzip magic; an IDX file starts with two zero bytes
        try:
            buf = gzip.decompress(buf)
        except (OSError, EOFError) as e:
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
    """MNIST -> (x_train, y_train, x_test, y_test): float32 pixels in [0, 1] of shape (N, 784), row-major 28x28
    (pixel r*28 + c), and int64 labels of shape (N,).

    path None: the 5,000-digit subset shipped in data/mnist_5k.npz (checksum verified), split at random into
      5000 - n_test training and n_test test digits by torch.Generator().manual_seed(seed).
    path a folder: the standard IDX files (IDX_NAMES, raw or .gz): the official 60,000 / 10,000 split.
    path an .npz file with 'images' (N, 28, 28) and 'labels' (N,) uint8: split like the subset.
    """
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
    if not 0 < n_test < len(x):
        raise ValueError(f"n_test must lie in (0, {len(x)}), got {n_test}")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]
