"""Tasks, models and oracles that several test files share (fixtures are in tests/conftest.py)."""
import copy
import math

import pytest
import torch
from matplotlib.collections import LineCollection

import bimt_core as bc


def tiny_task(n=64, seed=0, dtype=torch.float32):
    """(x, y): x (n, 4) uniform in [-1, 1); y (n, 2) = ((x0 + x2)^3, x1^2 + sin(pi x3)), two independent parts."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 4, generator=g, dtype=dtype) * 2 - 1
    return x, torch.stack([(x[:, 0] + x[:, 2]) ** 3, x[:, 1] ** 2 + torch.sin(math.pi * x[:, 3])], 1)


def set_weights(model, entries):
    """Zero every BioLinear's weight and bias, then set {(linear, out, in): value}; linear: an index into
    model.linears (BioMLP) or a submodule's name."""
    with torch.no_grad():
        for lin in bc._linears(model):
            lin.weight.zero_()
            if lin.bias is not None:
                lin.bias.zero_()
        for (key, o, i), v in entries.items():
            lin = model.linears[key] if isinstance(key, int) else model.get_submodule(key)
            lin.weight[o, i] = v
    return model


def small_transformer():
    """Two blocks of two heads on an 8-wide stream, float32, seeded."""
    return bc.BioTransformer(2, 2, d_model=8, n_blocks=2, n_heads=2, d_mlp=16,
                             generator=torch.Generator().manual_seed(0))


def n_segments(ax):
    """The connections drawn on ax: segments of its line collections."""
    ax.figure.canvas.draw()  # a Line3DCollection projects its segments at draw time
    return sum(len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection))


def brute_force_relocate(model, top_k, follow="neurons", **cost_kwargs):
    """Oracle: the authors' procedure. For each candidate, swap, recompute the WHOLE cost, swap back.
    A swap must beat the current cost by SWAP_TOL of the starting total (bimt_core.relocate's rule).
    follow 'neurons': visit each ranked unit where it now is; 'positions': the position it was ranked at."""
    swaps = 0
    tol = bc.SWAP_TOL * bc.connection_cost(model, **cost_kwargs).item()
    for li, nl in enumerate(model.neuron_layers()):
        if nl.fixed or nl.n_units < 2:
            continue
        score = torch.zeros(nl.n_units, dtype=torch.float64)
        for m in nl.members:
            if m.role is not None:
                w = getattr(m.module, m.attr).detach().abs().double()
                for u in range(nl.n_units):
                    score[u] += w.index_select(m.dim, m.index[:, u]).sum()
        order = torch.argsort(score, descending=True, stable=True)[:top_k].tolist()
        where = list(range(nl.n_units))
        for u in order:
            j = where[u] if follow == "neurons" else u
            base = bc.connection_cost(model, **cost_kwargs).item()
            costs = []
            for k in range(nl.n_units):
                if k == j:
                    costs.append(math.inf)
                    continue
                model.swap(li, j, k)
                costs.append(bc.connection_cost(model, **cost_kwargs).item())
                model.swap(li, j, k)
            k = min(range(nl.n_units), key=costs.__getitem__)
            if costs[k] < base - tol:
                model.swap(li, j, k)
                moved = {v: p for v, p in enumerate(where)}
                for v, p in moved.items():
                    if p == j:
                        where[v] = k
                    elif p == k:
                        where[v] = j
                swaps += 1
    return swaps


def float64_oracle(m):
    """A float64 copy of m that keeps m's own (float32-rounded) geometry, so that both see the same lengths:
    .double() alone would recompute them exactly, and the two would then be different cost functions."""
    oracle = copy.deepcopy(m).double()
    for a, b in zip(bc._linears(m), bc._linears(oracle)):
        b.in_coords, b.out_coords, b.dist = a.in_coords.double(), a.out_coords.double(), a.dist.double()
    return oracle


def assert_same_relocation(m, top_k, follow="neurons", **kw):
    """Relocate m and, from the same start, a float64_oracle of it by brute force: the same swaps, the same
    weights afterwards and the same cost. Returns the number of swaps."""
    oracle = float64_oracle(m)
    n_fast = bc.relocate(m, top_k, follow=follow, **kw)
    n_brute = brute_force_relocate(oracle, top_k, follow, **kw)
    assert n_fast == n_brute
    for (name, a), (_, b) in zip(m.state_dict().items(), oracle.state_dict().items()):
        if a.is_floating_point():
            assert torch.equal(a.double(), b), name  # the same swaps move the same float32 values
        else:
            assert torch.equal(a, b), name
    assert bc.connection_cost(m, **kw).item() == pytest.approx(bc.connection_cost(oracle, **kw).item(), rel=1e-6)
    return n_fast
