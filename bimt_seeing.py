"""Seeing a trained BIMT network: which neurons and connections survive, the modules they form, circuits
found by attribution (EAP, ACDC) and checked on planted circuits, modularity as a number, pruning and
interventions, network drawings, training GIFs, widgets, and the checked claims of the notebooks with their
success rates over seeds (Wilson intervals). The method itself (layers, cost, swapping, training) is bimt_core;
this module imports it and is never imported by it. Top to bottom: analysis -> circuits -> circuits against
ground truth -> modularity -> plotting -> claims.
"""
from __future__ import annotations

import csv
import io
import json
import math
import numbers
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

import torch
import torch.nn as nn
import torch.nn.functional as F

import bimt_core as bc

__all__ = ["network_graph", "surviving", "active_neurons", "Module", "find_modules", "reach_matrices",
           "NetworkReport", "analyze", "embedding_modules", "Pruned", "prune", "restore", "intervene",
           "edge_attribution", "circuit_faithfulness", "Circuit", "discover_circuit", "compact", "Planted",
           "planted_mlp", "roc_auc", "Roc", "roc_curve", "weight_graph", "Modularity", "NULL_STD_FLOOR", "z_score",
           "modularity", "CircuitCurve", "circuit_curve", "plot_network", "plot_network_3d", "snapshot_recorder",
           "draw_snapshot", "save_gif", "threshold_view", "threshold_explorer", "Claims", "record_members",
           "seed_table", "figures_dir", "Interval", "wilson", "bootstrap_ci", "sign_test", "MIN_PAIRS",
           "PairedDifference", "paired", "verdict", "Rate", "ClaimRate", "claim_tally", "claim_rates"]

# -- Analysis ----------------------------------------------------------------------------------------
def network_graph(model: nn.Module, graph: bc.Graph | None = None) -> bc.Graph:
    """graph if given, else model.graph(), with a clear error for a model that does not describe itself."""
    if graph is None:
        if not callable(getattr(model, "graph", None)):
            raise TypeError(f"{type(model).__name__} cannot be analysed or drawn: it needs a graph() method "
                            f"describing its rows of neurons and the BioLinears between them (see "
                            f"bc.SwappableModel and BioMLP.graph), or pass graph=")
        graph = model.graph()
    bc._check(isinstance(graph, bc.Graph), "graph", type(graph).__name__, "a bc.Graph (see BioMLP.graph)", TypeError)
    return graph

def surviving(graph: bc.Graph, threshold: float = 0.0) -> list[torch.Tensor]:
    """Per edge, the (out, in) bool mask of w != 0 with |w| >= threshold * max |w| of its layer (threshold: [0, 1])."""
    bc._number("threshold", threshold, 0, 1)
    masks = []
    for e in graph.edges:
        w = torch.eye(len(graph.rows[e.dst].unit)) if e.linear is None else e.linear.weight.detach().abs().cpu()
        masks.append((w > 0) & (w >= threshold * w.max()))
    return masks

def _ends(graph: bc.Graph, masks: list, skips: bool = True) -> tuple[list, list]:
    """Per row, a bool per position: (an incoming, an outgoing) connection in masks (with skips: identities too)."""
    has_in, has_out = ([torch.zeros(len(r.coords), dtype=torch.bool) for r in graph.rows] for _ in range(2))
    for e, m in zip(graph.edges, masks):
        if skips or e.linear is not None:
            has_out[e.src][e.src_cols()] |= m.any(0)
            has_in[e.dst] |= m.any(1)
    return has_in, has_out

def active_neurons(graph: bc.Graph, masks: list) -> list[torch.Tensor]:
    """Per row, a bool per unit: one of its copies keeps an incoming and an outgoing connection (an input
    needs only the outgoing one, an output the incoming one)."""
    active = []
    for r, i, o in zip(graph.rows, *_ends(graph, masks)):
        a = o if r.kind == "input" else (i if r.kind == "output" else i & o)
        units = torch.zeros(int(r.unit.max()) + 1, dtype=torch.bool)
        units[r.unit[a]] = True
        active.append(units)
    return active

@dataclass
class Module:
    """A connected component linking inputs to outputs (caller indices); hidden: row name -> positions."""
    inputs: list
    outputs: list
    hidden: dict

    def __str__(self):
        return (f"inputs {_short(self.inputs)} -> outputs {_short(self.outputs)} "
                f"({sum(map(len, self.hidden.values()))} hidden neurons)")

def _short(xs: list, n: int = 12) -> str:
    return str(xs) if len(xs) <= n else f"[{', '.join(map(str, xs[:n]))}, ... ({len(xs)} in all)]"

def find_modules(graph: bc.Graph, masks: list, active: list | None = None) -> list[Module]:
    """The components (union-find over masks) holding an input and an output, sorted by their inputs."""
    offset = np.cumsum([0] + [int(r.unit.max()) + 1 for r in graph.rows]).tolist()  # of each row's first unit
    parent = list(range(offset[-1]))

    def root(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for e, m in zip(graph.edges, masks):
        o, i = m.nonzero(as_tuple=True)
        dst_units, src_units = graph.rows[e.dst].unit[o], graph.rows[e.src].unit[e.src_cols()][i]
        for a, b in zip((offset[e.dst] + dst_units).tolist(), (offset[e.src] + src_units).tolist()):
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[ra] = rb
    comps = {}
    for ri, (r, act) in enumerate(zip(graph.rows, active or active_neurons(graph, masks))):
        for u in act.nonzero().flatten().tolist():
            c = comps.setdefault(root(offset[ri] + u), Module(inputs=[], outputs=[], hidden={}))
            if r.kind == "hidden":
                c.hidden.setdefault(r.name, []).append(u)
            else:
                callers = r.caller[r.unit == u].tolist()
                (c.inputs if r.kind == "input" else c.outputs).extend(callers[:1])
    mods = [Module(inputs=sorted(m.inputs), outputs=sorted(m.outputs), hidden=m.hidden)
            for m in comps.values() if m.inputs and m.outputs]
    return sorted(mods, key=lambda m: (m.inputs, m.outputs))

def reach_matrices(graph: bc.Graph, masks: list) -> list:
    """Per row, (positions, inputs) bool: which caller inputs reach each neuron (None: no input feeds the row)."""
    inp = next(r for r in graph.rows if r.kind == "input")
    reach = [None] * len(graph.rows)
    reach[graph.rows.index(inp)] = F.one_hot(inp.caller, int(inp.caller.max()) + 1).bool()
    for e, m in zip(graph.edges, masks):
        if reach[e.src] is not None:
            r = (m.float() @ reach[e.src][e.src_cols()].float()) > 0
            reach[e.dst] = r if reach[e.dst] is None else reach[e.dst] | r
    return reach

@dataclass
class NetworkReport:
    """The numbers behind a picture, at one relative threshold (see `analyze`).
    reach: {output: inputs with a surviving path to it} (caller indices); active[r]: the active units of
    row r; reads[r]: {active unit of row r: the inputs with a surviving path to it} (internal positions)."""
    threshold: float
    connections: int
    total_connections: int
    neurons: int
    total_neurons: int
    hidden_neurons: int  # active neurons of the hidden rows
    wiring: float  # sum over surviving connections of |w| * length
    reach: dict
    modules: list
    rows: list
    active: list
    reads: list
    metric: float | None = None

    def __str__(self):
        lines = [f"threshold {self.threshold:g}: {self.connections}/{self.total_connections} connections, "
                 f"{self.neurons}/{self.total_neurons} neurons active, wiring length {self.wiring:.4g}"
                 + ("" if self.metric is None else f", metric {self.metric:.4g}")]
        lines += [f"  output {o} reads inputs {_short(i)}" for o, i in self.reach.items()]
        lines += [f"  module {k}: {m}" for k, m in enumerate(self.modules)]
        return "\n".join(lines)

def analyze(model: nn.Module, threshold: float = 0.0, graph: bc.Graph | None = None) -> NetworkReport:
    """The `NetworkReport` of the connections that survive a relative threshold (the weights are unchanged)."""
    graph = network_graph(model, graph)
    masks = surviving(graph, threshold)
    active = active_neurons(graph, masks)
    reach = reach_matrices(graph, masks)
    wiring = sum(float((e.linear.weight.detach().abs().cpu() * e.linear.dist.cpu() * m).sum())
                 for e, m in zip(graph.edges, masks) if e.linear is not None)
    learned = [m for e, m in zip(graph.edges, masks) if e.linear is not None]  # skips are not counted
    outputs, reads = {}, []
    for r, rr, act in zip(graph.rows, reach, active):
        units = act.nonzero().flatten().tolist()
        pos = {u: (r.unit == u).nonzero().flatten() for u in units}  # a unit's positions (its fold copies)
        reads.append({} if rr is None or r.kind == "input" else
                     {u: rr[p].any(0).nonzero().flatten().tolist() for u, p in pos.items()})
        if r.kind == "output" and rr is not None:
            outputs.update({c: rr[p].nonzero().flatten().tolist() for p, c in enumerate(r.caller.tolist())})
    return NetworkReport(
        threshold=threshold, connections=sum(int(m.sum()) for m in learned),
        total_connections=sum(m.numel() for m in learned), neurons=sum(int(a.sum()) for a in active),
        total_neurons=sum(len(a) for a in active),
        hidden_neurons=sum(int(a.sum()) for r, a in zip(graph.rows, active) if r.kind == "hidden"), wiring=wiring,
        reach=dict(sorted(outputs.items())), modules=find_modules(graph, masks, active),
        rows=[r.name for r in graph.rows], active=[a.nonzero().flatten().tolist() for a in active], reads=reads)

def embedding_modules(model: nn.Module, threshold: float) -> list[list[int]]:
    """The embedding dims of each module of the network below the output row (every output reads them all)."""
    if getattr(model, "embedding", None) is None:
        raise ValueError(f"{type(model).__name__} has no token embedding (BioMLP with vocab_size)")
    graph = network_graph(model)
    return [m.inputs for m in analyze(model, threshold, graph.upto(graph.rows[-2].name)).modules]

@dataclass
class Pruned:
    """What `prune` changed (original weights by name) and what survived; restores the weights on exit."""
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

def prune(model: nn.Module, threshold: float, graph: bc.Graph | None = None) -> Pruned:
    """Zero every weight with |w| < threshold * (its layer's max |w|); `restore(model, record)` undoes it."""
    graph = network_graph(model, graph)
    names, saved = _param_names(model), {}
    masks = surviving(graph, threshold)
    with torch.no_grad():
        for e, m in zip(graph.edges, masks):
            if e.linear is not None:
                saved[names[id(e.linear.weight)]] = e.linear.weight.detach().clone()
                e.linear.weight.mul_(m.to(e.linear.weight.device))
    report = analyze(model, 0.0, graph)
    return Pruned(saved=saved, connections=report.connections, neurons=report.neurons, model=model)

def restore(model: nn.Module, record) -> None:
    """Put back the tensors saved in a `Pruned` record (or a {parameter name: tensor} dict)."""
    params, saved = dict(model.named_parameters()), getattr(record, "saved", record)
    bc._check(isinstance(saved, dict), "record", type(record).__name__, "a Pruned record or a {name: tensor} dict",
           TypeError)
    bad = {k: getattr(t, "shape", t) for k, t in saved.items()
           if getattr(params.get(k), "shape", 0) != getattr(t, "shape", 1)}
    bc._check(not bad, f"the saved tensors of {type(model).__name__}", bad, "its parameters, by name and shape")
    with torch.no_grad():
        for name, t in saved.items():
            params[name].copy_(t)

@contextmanager
def intervene(model: nn.Module, weights: dict | None = None, neurons: dict | None = None,
              embedding_dims=None, value: float = 0.0, graph: bc.Graph | None = None):
    """Within the block, set weights, neuron activations or embedding dims to `value` (0: knock-out); all is
    restored on exit. weights: {edge index: (out, in) bool mask or index}. neurons: {row name or index:
    positions (units of a folded row)}, replaced where BioLinears read them (an identity edge still carries
    the original) and where outputs are written. embedding_dims: columns of model.embedding."""
    graph = network_graph(model, graph)
    rows, names, saved, hooks = graph.rows, _param_names(model), {}, []
    bc._check(isinstance(value, numbers.Real) and not isinstance(value, bool), "value", value, "a number")
    learned = {i: e.name for i, e in enumerate(graph.edges) if e.linear is not None}

    def put(t, where, what):  # t[where] = value, saving t first
        saved.setdefault(names[id(t)], t.detach().clone())
        try:
            t[where] = value
        except (IndexError, RuntimeError, TypeError) as err:
            raise ValueError(f"{what} does not fit the {tuple(t.shape)} tensor it indexes ({err})") from None

    try:
        with torch.no_grad():
            for e, where in (weights or {}).items():
                bc._check(bc._is_int(e, 0) and e in learned, "a key of weights", e,
                       f"the index of an edge with a BioLinear, one of {learned}")
                put(graph.edges[e].linear.weight, where, f"weights[{e}] (edge {learned[e]!r})")
            if embedding_dims is not None:
                bc._check(getattr(model, "embedding", None) is not None, "embedding_dims", embedding_dims,
                       f"None: {type(model).__name__} has no token embedding")
                put(model.embedding, (slice(None), embedding_dims), f"embedding_dims {embedding_dims!r}")
        for row, pos in (neurons or {}).items():
            r, pos = graph.index(row), torch.as_tensor(pos)
            n = int(rows[r].unit.max()) + 1
            bc._check(not pos.numel() or pos.dtype == torch.long and 0 <= pos.min() <= pos.max() < n,
                   f"neurons[{row!r}]", pos.tolist(), f"positions in [0, {n})")
            hit = torch.isin(rows[r].unit, pos)
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

def _run(model: nn.Module, graph: bc.Graph, x: torch.Tensor, masks: list | None = None, abar: list | None = None):
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

def _baseline(model: nn.Module, graph: bc.Graph, x: torch.Tensor, baseline: torch.Tensor | None) -> list:
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
                     graph: bc.Graph | None = None) -> list:
    """Edge attribution patching: per graph edge an (out, in) tensor (None: identity) of |sum over batch and
    positions of (a_i - abar_i) W_ji dmetric/dz_j|, the first-order effect of ablating i -> j alone.
    metric(output) -> scalar tensor, not at its optimum; baseline: None (mean ablation) or a corrupted x."""
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

def _faithfulness(model: nn.Module, graph: bc.Graph, x: torch.Tensor, metric, baseline):
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
                         baseline: torch.Tensor | None = None, graph: bc.Graph | None = None) -> float:
    """(m_circuit - m_empty) / (m_full - m_empty) of per-edge (out, in) bool masks (None: identity edge)."""
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

def _candidates(graph: bc.Graph, candidates: list | None) -> list:
    """Per edge the (out, in) bool mask of the connections a circuit may keep: `candidates`, else the non-zero
    weights; None for an identity edge (a skip is never a candidate, whatever mask is given for it)."""
    bc._check(candidates is None or isinstance(candidates, (list, tuple)) and len(candidates) == len(graph.edges),
              "candidates", candidates if candidates is None else f"{len(candidates)} masks",
              f"None or one (out, in) bool mask per graph edge ({len(graph.edges)})")
    return [None if e.linear is None else (e.linear.weight.detach().cpu() != 0 if candidates is None else candidates[k])
            for k, e in enumerate(graph.edges)]

def _eap_masks(model: nn.Module, graph: bc.Graph, x: torch.Tensor, metric, baseline, cand: list, faith,
               target: float) -> list:
    """The fewest candidates with the top `edge_attribution` scores whose circuit reaches the target."""
    scores = edge_attribution(model, x, metric, baseline, graph)
    learned = [k for k, c in enumerate(cand) if c is not None]
    flat = torch.cat([scores[k][cand[k]] for k in learned])  # the candidates' scores, edge by edge, row-major
    order = flat.argsort(descending=True, stable=True)  # ties: the earlier edge and connection first

    def top(n):  # the masks of the n best candidates
        kept = torch.zeros(len(flat), dtype=torch.bool)
        kept[order[:n]] = True
        masks = [None] * len(cand)
        for k, part in zip(learned, kept.split([int(cand[k].sum()) for k in learned])):
            masks[k] = torch.zeros_like(cand[k])
            masks[k][cand[k]] = part
        return masks

    # Faithfulness grows with n almost monotonically: bisection finds an n reaching the target next to one
    # missing it (n = 0: faithfulness 0) in log2(N) forward passes, not N; a smaller n after a dip is missed.
    lo, hi = 0, len(flat)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if faith(top(mid)) >= target:
            hi = mid
        else:
            lo = mid
    return top(hi)

def _acdc_masks(cand: list, faith, target: float) -> list:
    """From the output side, every candidate in turn is dropped unless the circuit then misses the target."""
    masks = [None if c is None else c.clone() for c in cand]
    for m in reversed(masks):  # output side first: edges are listed inputs first
        if m is None:
            continue
        for o, i in m.nonzero().tolist():
            m[o, i] = False
            if faith(masks) < target:  # the circuit needs this connection
                m[o, i] = True
    return masks

def discover_circuit(model: nn.Module, x: torch.Tensor, metric, target: float = 0.9, method: str = "eap",
                     baseline: torch.Tensor | None = None, candidates: list | None = None,
                     graph: bc.Graph | None = None) -> Circuit:
    """A small circuit with `circuit_faithfulness` >= target (else all candidates). 'eap': the fewest top
    connections by `edge_attribution`; 'acdc': from the output side, drop each connection whose removal keeps
    the target. candidates: per edge (out, in) bool masks of what may be kept (default: non-zero weights).
    metric(output) -> scalar tensor, in either direction (a loss or a log-probability alike): faithfulness is the
    share of the metric's change from the empty to the full circuit that the circuit keeps."""
    if method not in ("eap", "acdc"):
        raise ValueError(f"unknown method {method!r}; expected 'eap' or 'acdc'")
    bc._check(0 < target <= 1, "target faithfulness", target, "in (0, 1]")
    t0, graph = time.perf_counter(), graph or network_graph(model)
    cand = _candidates(graph, candidates)
    faith = _faithfulness(model, graph, x, metric, baseline)
    if method == "eap":
        masks = _eap_masks(model, graph, x, metric, baseline, cand, faith, target)
    else:
        masks = _acdc_masks(cand, faith, target)
    edges = [(e.name, o, i) for e, m in zip(graph.edges, masks) if m is not None for o, i in m.nonzero().tolist()]
    total = sum(e.linear.weight.numel() for e in graph.edges if e.linear is not None)
    return Circuit(masks=masks, edges=edges, total=total, faithfulness=faith(masks),
                   seconds=time.perf_counter() - t0, method=method)

def compact(model: bc.BioMLP, threshold: float = 0.0) -> bc.BioMLP:
    """A smaller BioMLP computing `model` after `prune(model, threshold)` (up to rounding), without the hidden
    neurons that read no kept neuron (their constant act(bias) folded into the next bias) or feed none."""
    if not isinstance(model, bc.BioMLP):
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
    vocab = None if model.embedding is None else model.embedding.shape[0]
    small = bc.BioMLP([len(k) for k in keep], in_fold=model.in_fold, vocab_size=vocab, fix_inputs=model.fix_inputs,
                   generator=torch.Generator(), dtype=lins[0].weight.dtype).to(lins[0].weight.device)
    small.act, small.out_perm = model.act, model.out_perm.clone()  # its own generator: the caller's RNG is untouched
    if model.embedding is None:
        small.in_perm = model.in_perm.clone()
    else:
        small.embedding = nn.Parameter(model.embedding.detach().clone())
    with torch.no_grad():
        for l, (new, old) in enumerate(zip(small.linears, lins)):
            new.weight.copy_(ws[l][keep[l + 1]][:, keep[l]])
            new.bias.copy_(bs[l][keep[l + 1]])
            new.in_coords, new.out_coords = old.in_coords[keep[l]], old.out_coords[keep[l + 1]]
            new.dist = bc.manhattan(new.out_coords, new.in_coords)
    return small

# -- Circuits against ground truth -------------------------------------------------------------------
class Planted(NamedTuple):
    """A network whose circuit is known (`planted_mlp`): inputs x (B, n_in) on [-1, 1], metric(output (B, n_out))
    -> scalar, and per graph edge the (out, in) bool mask of the planted connections."""
    model: bc.BioMLP
    x: torch.Tensor
    metric: Callable
    labels: list

def planted_mlp(shape, inputs=(0, 2), output: int = 0, tiny: float = 1e-3, batch: int = 256,
                seed: int = 0) -> Planted:
    """A ReLU BioMLP whose every connection is non-zero but whose metric, mean(output[:, output] * s) with
    s = sum of x[:, inputs], runs through one planted chain: the inputs -> one neuron per hidden layer -> the
    output, all weights 1, every chain neuron kept in ReLU's linear range by its bias. The other hidden neurons are
    half live, half dead. A live one reads every live neuron below at U(-2, 2) / fan-in and writes only the outputs
    the metric ignores; a dead one has dense U(-2, 2) weights in and out, stronger than the chain's (so |w| alone
    does not find the chain), and a bias that keeps it at 0 for every x in [-1, 1]. The rest (live neurons into
    the chain or the read output) get tiny * N(0, 1). So ablating a dead or ignored connection changes nothing, a
    tiny one changes the metric by O(tiny), a planted one by O(1); with a chain of at most 5 inputs each planted
    connection carries over 10% of the signal."""
    bc._check(isinstance(shape, (list, tuple)) and len(shape) >= 3 and all(bc._is_int(w) for w in shape)
              and all(w >= 3 for w in shape[1:-1]), "shape", shape,
              "a list of int layer widths with at least one hidden layer, every hidden layer at least 3 wide")
    bc._check(isinstance(inputs, (list, tuple)) and 1 <= len(set(inputs)) == len(inputs) <= 5
              and all(bc._is_int(i, 0, shape[0]) for i in inputs), "inputs", inputs,
              f"1 to 5 distinct input indices in [0, {shape[0]})")
    bc._check(bc._is_int(output, 0, shape[-1]), "output", output, f"an output index in [0, {shape[-1]})")
    bc._number("tiny", tiny)
    bc._int("batch", batch)
    g = torch.Generator().manual_seed(bc._int("seed", seed, 0))
    model = bc.BioMLP(shape, activation="relu", generator=g)
    # per row: the chain's position(s), and which positions are live (a dead neuron's output is exactly 0)
    chain, live = [torch.tensor(inputs)], [torch.ones(shape[0], dtype=torch.bool)]
    for w in shape[1:-1]:
        perm = torch.randperm(w, generator=g)
        chain.append(perm[:1])
        live.append(torch.zeros(w, dtype=torch.bool).index_fill_(0, perm[:(w + 1) // 2], True))
    chain.append(torch.tensor([output]))
    live.append(torch.ones(shape[-1], dtype=torch.bool))
    bound = torch.ones(shape[0])  # per neuron of the row below, the largest |activation| for x in [-1, 1]
    labels = []
    with torch.no_grad():
        for k, lin in enumerate(model.linears):
            n_out, n_in = lin.weight.shape
            into_chain = torch.zeros(n_out, dtype=torch.bool).index_fill_(0, chain[k + 1], True)
            planted = into_chain[:, None] & torch.zeros(n_in, dtype=torch.bool).index_fill_(0, chain[k], True)
            dense = torch.rand(n_out, n_in, generator=g) * 4 - 2
            w = torch.where(into_chain[:, None], tiny * torch.randn(n_out, n_in, generator=g),
                            dense / int(live[k].sum()))  # live -> live, off the chain
            w = torch.where(planted, 1.0, w)
            w = torch.where(~live[k + 1][:, None] | ~live[k][None, :], dense, w)  # dead: dense, carry nothing
            reach = w.abs() @ bound
            last = k == len(model.linears) - 1
            bias = torch.zeros(n_out) if last else torch.where(live[k + 1], reach + 1, -reach - 1)
            lin.weight.copy_(w)
            lin.bias.copy_(bias)
            bound = torch.where(live[k + 1], reach + bias.abs(), 0.0)
            labels.append(planted)
    x = torch.rand(batch, shape[0], generator=g) * 2 - 1
    s = x[:, list(inputs)].sum(1)
    return Planted(model, x, lambda out: (out[:, output] * s).mean(), labels)

def _scored(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Flat float scores and bool labels from per-edge lists of (out, in) tensors (None: an identity edge,
    skipped), as `edge_attribution` and `Circuit.masks` give them, or from two arrays of one length."""
    def per_edge(vs):  # a list of tensors and Nones, not a list of numbers
        return isinstance(vs, (list, tuple)) and any(v is None or np.ndim(v) > 0 for v in vs)

    def flat(vs):
        if per_edge(vs):
            parts = [np.asarray(v, dtype=float).ravel() for v in vs if v is not None]
            return np.concatenate(parts) if parts else np.zeros(0)
        return np.asarray(vs, dtype=float).ravel()

    if per_edge(scores) and per_edge(labels):
        shapes = [[None if v is None else tuple(np.shape(v)) for v in vs] for vs in (scores, labels)]
        bc._check(shapes[0] == shapes[1], "the labels' per-edge shapes", shapes[1], f"those of the scores, {shapes[0]}")
    s, y = flat(scores), flat(labels)
    bc._check(len(s) == len(y), "the number of labels", len(y), f"the number of scores, {len(s)}")
    bc._check(np.isfinite(s).all(), "scores", s[~np.isfinite(s)][:3], "finite numbers")
    bc._check(np.isin(y, (0, 1)).all(), "labels", np.unique(y)[:4], "bools (True: in the true circuit)")
    y = y.astype(bool)
    bc._check(0 < y.sum() < len(y), "labels", f"{int(y.sum())} positives of {len(y)}",
              "at least one positive and one negative")
    return s, y

def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of scores ranking the true circuit: the chance that a connection of the circuit
    outscores one outside it, ties counting half (the Mann-Whitney U statistic over n_pos * n_neg). scores,
    labels: per-edge lists of (out, in) tensors (None: identity edge) or arrays (n,); a bool circuit mask
    as scores gives (TPR + TNR) / 2, its one operating point."""
    s, y = _scored(scores, labels)
    _, group, counts = np.unique(s, return_inverse=True, return_counts=True)
    rank = (np.cumsum(counts) - (counts - 1) / 2)[group]  # 1-based, ties at their mean rank
    pos, neg = int(y.sum()), int((~y).sum())
    return float((rank[y].sum() - pos * (pos + 1) / 2) / (pos * neg))

class Roc(NamedTuple):
    """An ROC curve: fpr, tpr (k + 1,): (0, 0), then the rates among the connections scoring at least each of the
    k distinct scores, highest first, up to (1, 1)."""
    fpr: np.ndarray
    tpr: np.ndarray

def roc_curve(scores, labels) -> Roc:
    """The ROC curve of `roc_auc`'s arguments; its trapezoid area is their AUC."""
    s, y = _scored(scores, labels)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last of each run of equal scores
    tp, fp = np.cumsum(y)[ends], np.cumsum(~y)[ends]
    return Roc(np.r_[0, fp] / fp[-1], np.r_[0, tp] / tp[-1])

# -- Modularity --------------------------------------------------------------------------------------
# How modular a network is, as a number (Newman's Q of its |W| graph against a shuffled null), and how small its
# circuits are (the faithfulness of EAP's top-k circuits against k). studies/locality_vs_sparsity.py compares
# training methods with both.

def _edge_weights(graph: bc.Graph, threshold: float) -> list:
    """Per BioLinear edge of `graph`, (edge, |W| (out, in) float64 numpy) with what `surviving` drops set to 0."""
    return [(e, (e.linear.weight.detach().abs().cpu().double() * m).numpy())
            for e, m in zip(graph.edges, surviving(graph, threshold)) if e.linear is not None]

def _unit_graph(graph: bc.Graph, weights: list):
    """The undirected networkx graph on (row index, unit) of the weights of `_edge_weights`: a connection adds
    its |w| to the edge between its two units (fold copies are one unit, as in `find_modules`)."""
    import networkx as nx

    offset = np.cumsum([0] + [int(r.unit.max()) + 1 for r in graph.rows])
    keys, vals = [], []
    for e, w in weights:
        o, i = w.nonzero()
        dst = offset[e.dst] + graph.rows[e.dst].unit.numpy()[o]
        src = offset[e.src] + graph.rows[e.src].unit[e.src_cols()].numpy()[i]
        keys.append(src * offset[-1] + dst)  # src row < dst row: each unordered pair has one key
        vals.append(w[o, i])
    keys, vals = np.concatenate(keys), np.concatenate(vals)
    pairs, where = np.unique(keys, return_inverse=True)
    total = np.bincount(where, weights=vals)
    row = np.searchsorted(offset, np.arange(offset[-1]), side="right") - 1
    name = [(int(r), int(n - offset[r])) for n, r in enumerate(row)]
    g = nx.Graph()
    g.add_nodes_from(name)
    g.add_weighted_edges_from((name[a], name[b], float(t)) for a, b, t in zip(pairs // offset[-1],
                                                                                pairs % offset[-1], total))
    return g

def weight_graph(model: nn.Module, threshold: float = 0.0, graph: bc.Graph | None = None):
    """The |W| graph of a model as an undirected weighted networkx.Graph. Nodes: (row index, unit) for every
    neuron of the rows of model.graph(); edge weight: the sum of |W_ij| over the BioLinear connections between
    two units (identity skips are not connections), with |w| < threshold * its layer's max |w| dropped."""
    graph = network_graph(model, graph)
    return _unit_graph(graph, _edge_weights(graph, threshold))

@dataclass
class Modularity:
    """Newman modularity of a network's |W| graph (see `modularity`). communities: the Louvain communities of the
    connected neurons, each a sorted list of (row index, unit), largest first (isolated neurons, which leave Q
    unchanged, are left out); null_q: Q of each shuffled network; z: `z_score(q, null_mean, null_std)`, NaN where
    every shuffled network gives the same Q."""
    q: float
    communities: list
    null_mean: float
    null_std: float
    z: float
    null_q: list
    threshold: float
    seed: int

    def __str__(self):
        z = f"z = {self.z:.1f}" if math.isfinite(self.z) else "z undefined (every draw gives the same Q)"
        return (f"Q {self.q:.3f} ({len(self.communities)} communities); shuffled within layers {self.null_mean:.3f} "
                f"+- {self.null_std:.3f} over {len(self.null_q)} draws: {z}")

NULL_STD_FLOOR = 1e-9  # Q lies in [-1/2, 1]; shuffles whose Q differ by less differ by float rounding alone


def z_score(q: float, null_mean: float, null_std: float) -> float:
    """(q - null_mean) / null_std, or NaN when null_std <= NULL_STD_FLOOR: when every shuffled network gives the
    same Q (Louvain finds the same partition of each, as for some dense networks), the null has no spread, and a
    z of 1e14 (a difference over a rounding error) or inf would say nothing about how unusual q is."""
    return (q - null_mean) / null_std if null_std > NULL_STD_FLOOR else math.nan

def _louvain(g, seed: int) -> tuple:
    """(Q, communities) of the seeded Louvain partition of g (weights 'weight', resolution 1)."""
    import networkx as nx

    if g.size(weight="weight") <= 0:
        raise ValueError("the network has no connection left (every |w| is 0 or below the threshold): its "
                         "modularity is undefined")
    comms = nx.community.louvain_communities(g, weight="weight", seed=seed)
    return nx.community.modularity(g, comms, weight="weight"), comms

def modularity(model: nn.Module, threshold: float = 0.0, n_null: int = 20, seed: int = 0,
               graph: bc.Graph | None = None) -> Modularity:
    """Weighted Newman modularity Q = sum_c [w_c / m - (d_c / 2m)^2] (w_c: weight inside community c, d_c: its
    total degree, m: all weight) of `weight_graph(model, threshold)`, partitioned by Louvain with `seed`. Null:
    the same network with the entries of each weight matrix permuted (n_null draws from numpy's generator at
    `seed`), so each layer keeps its weights and only their placement is random. Q alone flatters deep chains of
    layers (communities of consecutive layers score well at random); the null keeps that part, so z does not."""
    bc._number("threshold", threshold, 0, 1), bc._int("n_null (shuffled draws)", n_null, 2), bc._int("seed", seed, 0)
    graph = network_graph(model, graph)
    weights = _edge_weights(graph, threshold)
    g = _unit_graph(graph, weights)
    q, comms = _louvain(g, seed)
    rng = np.random.default_rng(seed)
    null = [_louvain(_unit_graph(graph, [(e, rng.permutation(w.ravel()).reshape(w.shape)) for e, w in weights]),
                     seed)[0] for _ in range(n_null)]
    mean, std = float(np.mean(null)), float(np.std(null, ddof=1))
    comms = sorted((sorted(c) for c in comms if len(c) > 1 or g.degree(next(iter(c)), weight="weight") > 0),
                   key=lambda c: (-len(c), c))
    return Modularity(float(q), comms, mean, std, z_score(float(q), mean, std), [float(v) for v in null], threshold,
                      seed)

@dataclass
class CircuitCurve:
    """Faithfulness of EAP circuits against their size (see `circuit_curve`). sizes[k] connections kept (the
    top by `edge_attribution`) give faithfulness[k]; total: every BioLinear connection; candidates: the non-zero
    ones; size_at: {target: the size of `discover_circuit(..., target, 'eap')`}; auc: the area under
    faithfulness, clipped to [0, 1], against size / total, on [0, 1] (1: one connection would be enough)."""
    sizes: list
    faithfulness: list
    total: int
    candidates: int
    size_at: dict
    auc: float
    seconds: float

    def __str__(self):
        at = ", ".join(f"{s} at faithfulness {t:g}" for t, s in self.size_at.items())
        return f"EAP circuits of {self.total} connections: {at}; area under the curve {self.auc:.4f}"

def _curve_sizes(n: int, points: int) -> np.ndarray:
    """Every size 0..n if n < points, else about `points` sizes, half evenly spaced and half log-spaced (circuits
    of a sparse network are a small fraction of it)."""
    if n < points:
        return np.arange(n + 1)
    return np.unique(np.concatenate([np.linspace(0, n, points // 2), np.geomspace(1, n, points // 2)]).round()
                     ).astype(int)

def circuit_curve(model: nn.Module, x: torch.Tensor, metric, targets=(0.9, 0.99),
                  baseline: torch.Tensor | None = None, points: int = 200,
                  graph: bc.Graph | None = None) -> CircuitCurve:
    """How faithfulness grows with the size of EAP's circuits: the top-k non-zero connections by
    `edge_attribution` for k on `_curve_sizes` (every k below `points` candidates), scored by
    `circuit_faithfulness`; beyond the candidates every zero weight is added to no effect (faithfulness 1). x: a
    batch (B, ...) as model(x) takes it; metric(output) -> scalar tensor and baseline (None: mean ablation, or a
    corrupted x) as in `discover_circuit`, whose EAP circuits give size_at. auc: trapezoidal area under
    (size / total, faithfulness clipped to [0, 1]): a partial circuit of a dense network can overshoot the full
    one's metric or fall far below the empty one's (faithfulness 3 or -100), and one such size would outweigh the
    rest of the curve; clipped, it counts as a faithful circuit or as none."""
    bc._int("points", points, 2)
    bc._check(isinstance(targets, (tuple, list)) and targets and all(bc._is_real(t, 0, 1) and t > 0 for t in targets),
              "targets", targets, "a non-empty list of faithfulness targets in (0, 1]")
    t0, graph = time.perf_counter(), network_graph(model, graph)
    scores = edge_attribution(model, x, metric, baseline, graph)
    lins = [k for k, e in enumerate(graph.edges) if e.linear is not None]
    cand = torch.cat([(graph.edges[k].linear.weight.detach().cpu() != 0).flatten() for k in lins])
    flat = torch.where(cand, torch.cat([scores[k].flatten() for k in lins]), -1.0)
    order = flat.argsort(descending=True, stable=True)  # non-candidates (score -1) last
    faith = _faithfulness(model, graph, x, metric, baseline)
    total, n, split = len(flat), int(cand.sum()), [graph.edges[k].linear.weight.numel() for k in lins]

    def value(k):
        keep = torch.zeros(total, dtype=torch.bool)
        keep[order[:k]] = True
        parts = iter(keep.split(split))
        return faith([None if e.linear is None else next(parts).view_as(e.linear.weight) for e in graph.edges])

    sizes = _curve_sizes(n, points).tolist()
    values = [value(k) for k in sizes]
    if n < total:  # the zero weights change nothing: faithfulness stays at the full network's, 1
        sizes, values = sizes + [total], values + [1.0]
    v, frac = np.clip(values, 0.0, 1.0), np.asarray(sizes) / total
    auc = float(((v[1:] + v[:-1]) / 2 * np.diff(frac)).sum())  # the trapezoid rule (numpy < 2 lacks trapezoid)
    size_at = {t: len(discover_circuit(model, x, metric, t, "eap", baseline, graph=graph).edges) for t in targets}
    return CircuitCurve(sizes, values, total, n, size_at, auc, time.perf_counter() - t0)

# -- Plotting ----------------------------------------------------------------------------------------
def _draw_connections(add, collection, graph: bc.Graph, masks: list, points: list, max_lw: float, **kw) -> list:
    """add(collection(...)) per edge: segments between `points` (blue +, red -, alpha and width ~ |w| / max |w|,
    weakest first so that strong ones are on top; identities grey). Returns, per row, a bool per position:
    a drawn learned connection ends there (the other neurons are drawn grey)."""
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
        add(collection(segs.numpy(), colors=rgba.numpy(), linewidths=max_lw * rel.numpy(), **kw))
    return [i | o for i, o in zip(*_ends(graph, masks, skips=False))]

def _check_labels(graph: bc.Graph, **labels):
    """in_labels and image must hold one entry per caller input, out_labels one per caller output."""
    for name, v in labels.items():
        kind = "output" if name == "out_labels" else "input"
        n = max(int(r.caller.max()) + 1 for r in graph.rows if r.kind == kind)
        got = v if v is None else torch.as_tensor(v).numel() if name == "image" else len(v)
        bc._check(got in (None, n), f"the length of {name}", got, f"{n}, one entry per {kind} of the model")

def _neuron_colours(touched: torch.Tensor) -> list:
    return ["k" if t else "0.8" for t in touched.tolist()]

def _row_points(row: bc.Row, y: int, fold_offset: float) -> torch.Tensor:
    """(n, 2) drawing positions of a 1D row at height y, fold copies stacked down to fold_offset lower (Fig 5)."""
    copy = torch.arange(len(row.coords)) // (len(row.coords) // row.fold)
    return torch.stack([row.coords[:, 0].float(), y - fold_offset * copy.float() / max(row.fold - 1, 1)], 1)

def plot_network(model: nn.Module, ax=None, threshold: float = 0.0, graph: bc.Graph | None = None,
                 in_labels=None, out_labels=None, max_lw: float = 2.0, fold_offset: float = 0.3,
                 neuron_size: float = 12.0, masks: list | None = None, in_colors=None,
                 copy_labels: dict | None = None):
    """Draw a 1D network as in the paper and return the axes: dots at (coordinate, row), rows bottom to top, a
    segment per connection with |w| >= threshold * max |w| of its layer (width and alpha ~ |w| / max |w|, blue
    positive, red negative), untouched neurons light grey. neuron_size: dot area (points^2), smaller on dense
    rows. in_labels / out_labels / in_colors: per caller input / output, following in_perm / out_perm. masks:
    per edge an (out, in) bool mask of what to draw (e.g. `Circuit.masks`). copy_labels: {row: a tick per
    fold copy}."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    graph = network_graph(model, graph)
    rows = graph.rows
    _check_labels(graph, in_labels=in_labels, out_labels=out_labels)
    if any(r.coords.shape[1] != 1 for r in rows):
        raise ValueError("plot_network draws 1D ('line') networks; use plot_network_3d for 2D ones")
    if ax is None:
        ax = plt.subplots(figsize=(6, 1.4 * len(rows)))[1]
    pts = [_row_points(r, y, fold_offset) for y, r in enumerate(rows)]
    masks = masks or [None] * len(graph.edges)
    shown = [s if m is None else s & m.cpu() for s, m in zip(surviving(graph, threshold), masks)]
    touched = _draw_connections(ax.add_collection, LineCollection, graph, shown, pts, max_lw)
    # A dot is at most 60% of the gap between neighbours of its row, so that wide rows stay rows of dots.
    pt_per_x = ax.get_position().width * ax.figure.get_figwidth() * 72 / 1.04  # points per unit of x (xlim)
    ticks, names = [], []
    for y, (r, p, t) in enumerate(zip(rows, pts, touched)):
        copies = (copy_labels or {}).get(r.name)
        if copies is not None and len(copies) != r.fold:
            raise ValueError(f"copy_labels[{r.name!r}] names {len(copies)} copies but the row has fold {r.fold}")
        ticks += [y] if copies is None else p[:: len(p) // r.fold, 1].tolist()
        names += [r.name] if copies is None else list(copies)
        colors = _neuron_colours(t)
        if r.kind == "input" and in_colors is not None:
            colors = [in_colors[c] for c in r.caller.tolist()]
        xs = r.coords[:, 0].unique()
        gap = float((xs[1:] - xs[:-1]).min()) if len(xs) > 1 else 1.0
        ax.scatter(p[:, 0], p[:, 1], s=min(neuron_size, (0.6 * gap * pt_per_x) ** 2), c=colors, zorder=3)
        labels = {"input": in_labels, "output": out_labels}.get(r.kind)
        if labels is None:
            continue
        edge = p[:, 1] == (p[:, 1].min() if r.kind == "input" else p[:, 1].max())  # outermost copy only
        for (x, y), c in zip(p[edge].tolist(), r.caller[edge].tolist()):
            below = r.kind == "input"
            ax.text(x, y - 0.1 if below else y + 0.1, str(labels[c]), ha="center",
                    va="top" if below else "bottom", fontsize=8)
    ax.set_yticks(ticks, names)
    ax.set(xticks=[], xlim=(-0.02, 1.02), ylim=(-0.5 - fold_offset * (rows[0].fold > 1), len(rows) - 0.5))
    ax.spines[["top", "right", "bottom"]].set_visible(False)
    return ax

def plot_network_3d(model: nn.Module, ax=None, threshold: float = 0.0, graph: bc.Graph | None = None,
                    image=None, out_labels=None, max_lw: float = 1.0, neuron_size: float = 4.0,
                    cmap: str = "Greys", zoom: float = 1.1):
    """Draw a 2D network (MNIST's grids and ring) in 3D, row k on the plane z = k, as `plot_network` does;
    image: the caller's inputs (e.g. a digit) shown on the input plane; zoom: of the box. Returns the axes."""
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    graph = network_graph(model, graph)
    rows = graph.rows
    _check_labels(graph, image=image, out_labels=out_labels)
    if ax is None:
        ax = plt.figure(figsize=(8, 8)).add_subplot(projection="3d")
    ax.computed_zorder = False  # draw order, not depth: input plane, then connections, then neurons on top
    pts = []
    for z, r in enumerate(rows):
        xy = r.coords.float() if r.coords.shape[1] == 2 else F.pad(r.coords.float(), (0, 1), value=0.5)
        pts.append(torch.cat([xy, torch.full((len(xy), 1), float(z))], 1))
    touched = _draw_connections(ax.add_collection3d, Line3DCollection, graph, surviving(graph, threshold), pts,
                                max_lw, zorder=1)
    for z, (r, p, t) in enumerate(zip(rows, pts, touched)):
        if r.kind == "input" and image is not None:
            vals = torch.as_tensor(image, dtype=torch.float32).flatten()[r.caller]
            ax.scatter(p[:, 0], p[:, 1], p[:, 2], c=vals.numpy(), cmap=cmap, s=3 * neuron_size, marker="s",
                       depthshade=False, zorder=0)
        else:
            ax.scatter(p[:, 0], p[:, 1], p[:, 2], c=_neuron_colours(t), s=neuron_size, depthshade=False, zorder=2)
        if r.kind == "output" and out_labels is not None:
            for (x, y, _), c in zip(p.tolist(), r.caller.tolist()):
                ax.text(0.5 + 1.25 * (x - 0.5), 0.5 + 1.25 * (y - 0.5), z, str(out_labels[c]), ha="center",
                        fontsize=8, zorder=3)
        ax.plot([0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [z] * 5, color="0.85", lw=0.6, zorder=0)  # the plane's edge
        ax.text(-0.04, 1, z, r.name, ha="right", va="center", fontsize=9, zorder=3)  # left of the front corner
    # y runs away from the viewer so that pixel row 0 (the top of an image) is at the back: digits read upright
    ax.set(xlim=(0, 1), ylim=(1, 0), zlim=(0, len(rows) - 1))
    ax.set_box_aspect(None, zoom=zoom)
    ax.set_axis_off()
    return ax

def _new_axes(fig, draw):
    return fig.add_subplot(projection="3d" if draw is plot_network_3d else None)

def snapshot_recorder(snapshots: list):
    """A snapshot_fn for `train`: appends (step, copy of the state_dict) to `snapshots`."""
    def record(step, model):
        snapshots.append((step, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}))
    return record

def _snapshot(snap):
    bc._check(isinstance(snap, (tuple, list)) and len(snap) == 2 and isinstance(snap[1], dict), "a snapshot",
           type(snap).__name__, "a (step, state_dict) pair, as snapshot_recorder records")
    return snap

def draw_snapshot(model: nn.Module, snapshot: tuple, ax=None, draw=None, **draw_kw):
    """Load a recorded (step, state_dict) into `model` (overwriting its weights) and draw it."""
    step, state = _snapshot(snapshot)
    model.load_state_dict(state)
    ax = (draw or plot_network)(model, ax=ax, **draw_kw)
    ax.set_title(f"step {step}")
    return ax

def save_gif(model: nn.Module, snapshots: list, path: str = "figures/training.gif", draw=None, fps: int = 4,
             dpi: int = 80, figsize=(6, 6), **draw_kw) -> str:
    """Render snapshots into an animated GIF (Pillow), a frame each, drawn by a copy of `model`; returns path."""
    import copy

    import matplotlib.pyplot as plt
    from matplotlib.animation import PillowWriter

    bc._check(isinstance(snapshots, (list, tuple)) and len(snapshots) > 0, "snapshots", snapshots if isinstance(
        snapshots, (list, tuple)) else type(snapshots).__name__, "a non-empty list of snapshot_recorder's snapshots")
    bc._int("fps", fps), list(map(_snapshot, snapshots))
    bc._check(str(path).endswith(".gif"), "path", path, "a file name ending in .gif")
    draw, m = draw or plot_network, copy.deepcopy(model)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig = plt.figure(figsize=figsize)
    writer = PillowWriter(fps=fps)
    try:
        with writer.saving(fig, path, dpi):
            for snap in snapshots:
                fig.clf()
                ax = draw_snapshot(m, snap, _new_axes(fig, draw), draw, **draw_kw)
                if ax.name != "3d":
                    fig.tight_layout()  # room for the row names and labels in every frame
                writer.grab_frame()
    finally:
        plt.close(fig)
    return path

def threshold_view(model: nn.Module, threshold: float, metric_fn=None, ax=None, graph: bc.Graph | None = None,
                   draw=None, **draw_kw) -> NetworkReport:
    """Prune at `threshold`, evaluate metric_fn(model), draw, restore; returns the report with its metric."""
    with prune(model, threshold, graph):
        report = analyze(model, threshold, graph)
        report.metric = None if metric_fn is None else bc._float("metric_fn(model)", metric_fn(model))
        (draw or plot_network)(model, ax=ax, threshold=threshold, graph=graph, **draw_kw)
    return report

def threshold_explorer(model: nn.Module, metric_fn=None, graph: bc.Graph | None = None, draw=None,
                       max_threshold: float = 1.0, figsize=(6, 6), **draw_kw):
    """An ipywidgets slider over the pruning threshold above the pruned network and its report. The picture is
    a PNG in an Image widget: capturing plots in Output widgets intermittently deadlocks headless nbclient runs."""
    import html

    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    bc._check(bc._is_real(max_threshold, 0, 1) and max_threshold > 0, "max_threshold", max_threshold,
              "a number in (0, 1]")
    slider = widgets.FloatSlider(value=0.0, min=0.0, max=max_threshold, step=max_threshold / 100,
                                 description="threshold", continuous_update=False, readout_format=".2f")
    image, text = widgets.Image(format="png"), widgets.HTML()

    def update(change=None):
        fig = plt.figure(figsize=figsize)
        report = threshold_view(model, slider.value, metric_fn, _new_axes(fig, draw), graph, draw, **draw_kw)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        image.value = buf.getvalue()
        text.value = f"<pre>{html.escape(str(report))}</pre>"

    slider.observe(update, names="value")
    update()
    return widgets.VBox([slider, image, text])

class Claims:
    """The checked facts of a notebook run: `check` prints 'name: holds' (what nbval compares; the value is
    only recorded), `note` a measured fact (holds None). With a path, the records and the run's fields are
    (re)written there as JSON, for the seed sweep (studies/sweep.py). `for_seed` records the other seeds of an
    ensemble run into the same list, silently."""

    def __init__(self, path=None, **run):
        bc._check(path is None or Path(path).parent.is_dir(), "path", path, "None or a file name in an existing folder")
        self.path, self.run, self.records, self.quiet = path, run, [], False

    def for_seed(self, seed) -> "Claims":
        """Claims that add to these records (and file) under another seed of the same run, printing nothing."""
        other = Claims(self.path, **{**self.run, "seed": seed})
        other.records, other.quiet = self.records, True
        return other

    def _add(self, name: str, holds, value) -> None:
        bc._check(isinstance(name, str) and name, "a claim's name", name, "a non-empty str")
        self.records.append({**self.run, "claim": name, "holds": holds, "value": value})
        if self.path:
            Path(self.path).write_text(json.dumps(self.records, indent=1,
                                                  default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))

    def check(self, name: str, holds, value=None) -> bool:
        holds = bool(bc._check(isinstance(holds, (bool, np.bool_)) or torch.is_tensor(holds) and holds.numel() == 1
                            and holds.dtype == torch.bool, f"claim {name!r}: holds", holds,
                            "a bool (or one-element bool tensor)"))
        self._add(name, holds, value)
        if not self.quiet:
            print(f"{name}: {holds}")
        return holds

    def note(self, name: str, value) -> None:
        self._add(name, None, value)
        if not self.quiet:
            print(f"{name}: {value}")

def record_members(claims: Claims, runs: list, measure) -> None:
    """For each run (anything with a .seed: a bimt_ensemble.Member, or a notebook's bundle of one seed's
    networks), record measure(run) -> [(name, holds, value)] under its seed: a claim, or a note where holds is
    None. Silent: the notebook prints its first seed's claims itself."""
    for run in runs:
        c = claims.for_seed(run.seed)
        for name, holds, value in measure(run):
            c.note(name, value) if holds is None else c.check(name, holds, value)

def seed_table(records: list[dict]) -> str:
    """Per claim (notes skipped), in the order first recorded: at how many of the seeds that recorded it the
    claim holds, as `Rate` (k/n and its Wilson 95% interval). One line a claim; seed None is the authors' seed."""
    counts = {}
    for r in records:
        if r["holds"] is not None:
            kn = counts.setdefault(r["claim"], [0, 0])
            kn[0] += bool(r["holds"])
            kn[1] += 1
    seeds = [str(s) if s is not None else "the authors'" for s in dict.fromkeys(r.get("seed") for r in records)]
    head = f"{len(seeds)} seed{'s' * (len(seeds) != 1)} ({', '.join(seeds)}); per claim, the seeds where it holds:"
    return "\n".join([head] + [f"  {Rate(*kn)!s:>20}  {name}" for name, kn in counts.items()])

def figures_dir() -> Path:
    """figures/ beside bimt_core.py (the repository's), created if needed: where the notebooks save."""
    path = Path(__file__).resolve().parent / "figures"
    path.mkdir(exist_ok=True)
    return path

class Interval(NamedTuple):
    """A confidence interval [lo, hi]: of a rate (`wilson`) or of a mean (`bootstrap_ci`)."""
    lo: float
    hi: float

def wilson(k: int, n: int, z: float = 1.96) -> Interval:
    """The Wilson score interval of a success rate k/n (z = 1.96: 95%). Unlike k/n +- z sqrt(p (1 - p) / n) it
    keeps its coverage at small n and does not collapse to a point at k = 0 or k = n."""
    bc._check(bc._is_int(n), "n, the number of trials,", n, "a positive int (a rate of no trials has no interval)")
    bc._check(bc._is_int(k, 0, n + 1), "k, the number of successes,", k, f"an int in [0, n = {n}]")
    bc._check(bc._is_real(z) and z > 0, "z", z, "a positive number (1.96 for 95%)")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Interval(0.0 if k == 0 else centre - half, 1.0 if k == n else centre + half)  # exact ends, not rounded

def bootstrap_ci(diffs, n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> Interval:
    """Percentile bootstrap interval of the mean of diffs (n,), n >= 2: resampled with replacement n_boot times
    by numpy's generator at seed."""
    d = np.asarray(diffs, dtype=float)
    bc._check(d.ndim == 1 and len(d) >= 2, "diffs", f"{d.size} value(s) of shape {d.shape}",
              "at least two paired differences in a 1-d array")
    bc._int("n_boot", n_boot, 1), bc._int("seed", seed, 0)
    bc._check(bc._is_real(level) and 0 < level < 1, "level", level, "a confidence level in (0, 1)")
    means = d[np.random.default_rng(seed).integers(0, len(d), (n_boot, len(d)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(lo), float(hi))

def sign_test(above: int, below: int) -> float:
    """Exact two-sided sign test: P(a split at least as uneven as above : below | fair coin), ties left out."""
    bc._int("above", above, 0), bc._int("below", below, 0)
    n, k = above + below, min(above, below)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)

MIN_PAIRS = 5  # below this a percentile bootstrap has too few distinct resamples to judge a difference

class PairedDifference(NamedTuple):
    """mean of a - b over n paired seeds, its bootstrap 95% interval [low, high] (None below two pairs, where
    there is none), the exact two-sided sign test's p (ties dropped) and the seeds where a > b, a < b."""
    n: int
    mean: float
    low: float | None
    high: float | None
    p: float
    above: int
    below: int

def paired(a: dict, b: dict, seed: int = 0) -> PairedDifference | None:
    """a - b over the seeds both dicts hold ({seed: value}), bootstrapped at `seed`; None if they share none."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = [a[s] - b[s] for s in seeds]
    low, high = bootstrap_ci(d, seed=seed) if len(d) >= 2 else (None, None)
    above, below = sum(v > 0 for v in d), sum(v < 0 for v in d)
    return PairedDifference(len(d), float(np.mean(d)), low, high, sign_test(above, below), above, below)

def verdict(diff: PairedDifference, larger: str, smaller: str) -> str:
    """What the interval supports: 'supported: ' + larger / smaller (the words for a > b, a < b) when it
    excludes 0, else no difference; no verdict below MIN_PAIRS pairs."""
    if diff.n < MIN_PAIRS:
        return f"too few pairs to judge (< {MIN_PAIRS})"
    if diff.low > 0:
        return f"supported: {larger}"
    if diff.high < 0:
        return f"supported: {smaller}"
    return "not supported (the interval holds 0)"

class Rate(NamedTuple):
    """k successes in n trials; str: '20% (2/10; 6-51%)', the rate, the count and its Wilson 95% interval
    ('-' for n = 0)."""
    k: int
    n: int

    def __str__(self):
        if not self.n:
            return "-"
        lo, hi = wilson(self.k, self.n)
        return f"{self.k / self.n:.0%} ({self.k}/{self.n}; {100 * lo:.0f}-{hi:.0%})"

class ClaimRate(NamedTuple):
    """One claim of the seed sweep: whether it holds in the authors' own run (their seed, their procedure;
    None: not run), and per procedure its `Rate` over the swept seeds that recorded it."""
    notebook: str
    claim: str
    at_authors_seed: bool | None
    rates: dict

def claim_tally(rows: list[dict]) -> list[ClaimRate]:
    """Per claim of the seed sweep's CSV rows (dicts with notebook, seed, procedure, claim, holds), in the
    rows' order; notes (holds '') are skipped. Every procedure of the rows gets a Rate, Rate(0, 0) if none."""
    procedures, at, counts = sorted({r["procedure"] for r in rows}), {}, {}
    for r in rows:
        if not r["holds"]:
            continue
        key, holds = (r["notebook"], r["claim"]), r["holds"] == "True"
        kn = counts.setdefault(key, {p: [0, 0] for p in procedures})
        at.setdefault(key, None)
        if r["seed"] != "authors":
            kn[r["procedure"]][0] += holds
            kn[r["procedure"]][1] += 1
        elif r["procedure"] == "authors":
            at[key] = holds
    return [ClaimRate(*key, at[key], {p: Rate(*c) for p, c in kn.items()}) for key, kn in counts.items()]

def claim_rates(notebook: str | None = None, path=None) -> str:
    """A markdown table of the seed sweep (results/claims_sweep.csv): per claim, whether it holds at the
    authors' seed, and its success rate over the swept seeds per procedure, as k/n with its Wilson 95%
    interval. notebook=None: all, with their names."""
    path = Path(path or Path(__file__).resolve().parent / "results" / "claims_sweep.csv")
    run = f"run: python studies/sweep.py --notebooks {notebook or '...'}"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no seed sweep results; {run}")
    with path.open(newline="") as f:  # holds '' is a note: a measured value, no claim
        rows = [r for r in csv.DictReader(f) if r["holds"] and notebook in (None, r["notebook"])]
    if not rows:
        raise ValueError(f"{path}: no claims of notebook {notebook!r}; {run}")
    tally = claim_tally(rows)
    head = ["notebook"] * (notebook is None) + ["claim", "holds at the authors' seed (authors' procedure)"] + [
        "success rate, %s procedure (k/n; Wilson 95%% interval)" % ("authors'" if p == "authors" else p)
        for p in tally[0].rates]
    body = [[c.notebook] * (notebook is None) + [c.claim, {True: "yes", False: "no", None: "-"}[c.at_authors_seed]]
            + [str(r) for r in c.rates.values()] for c in tally]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, ["---"] * len(head), *body])
