"""Circuit discovery (edge attribution patching, ACDC), faithfulness and compaction, against known answers."""

import time

import pytest
import torch
import torch.nn.functional as F

import bimt_core as bc
import bimt_seeing as bs
from helpers import n_segments, set_weights, small_transformer

RELEVANT = [("linears.0", 0, 0), ("linears.0", 0, 2), ("linears.1", 0, 0)]


def two_paths_task():
    """x0, x2 -> h0 -> y0 and x1, x3 -> h3 -> y1 (the stronger weights); the metric reads y0 only: the log-prob
    of sign(x0 - x2) under y0 as a logit. Dropping any connection of the first path costs faithfulness."""
    m = set_weights(bc.BioMLP([4, 4, 2], activation="tanh"), {
        (0, 0, 0): 1.0, (0, 0, 2): -1.0, (1, 0, 0): 3.0, (0, 3, 1): 5.0, (0, 3, 3): 3.0, (1, 1, 3): -4.0})
    x = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
    label = torch.sign(x[:, 0] - x[:, 2])
    return m, x, lambda out: F.logsigmoid(label * out[:, 0]).mean()


@pytest.mark.parametrize("method", ["eap", "acdc"])
@pytest.mark.parametrize("target", [0.75, 0.9, 1.0])
def test_known_circuit_comes_back_exactly(method, target):
    m, x, metric = two_paths_task()
    t0 = time.perf_counter()
    c = bs.discover_circuit(m, x, metric, target=target, method=method)
    elapsed = time.perf_counter() - t0  # oracle of the search's time: the whole call, timed outside
    assert c.edges == RELEVANT
    assert c.faithfulness == 1.0  # the other path never reaches y0: its ablation changes nothing
    assert c.total == 24 and c.method == method and 0 < c.seconds <= elapsed
    assert str(c).startswith(f"{method} circuit: 3/24 connections, faithfulness 1.000")


def test_irrelevant_path_scores_zero_and_magnitude_disagrees():
    m, x, metric = two_paths_task()
    s = bs.edge_attribution(m, x, metric)
    assert s[0][3].abs().sum() == 0 and s[1][1].abs().sum() == 0
    assert (s[0][0, [0, 2]] > 0).all() and s[1][0, 0] > 0
    with bs.prune(m, 0.9):  # magnitude keeps the irrelevant path's 5 -> -4 instead
        assert bs.analyze(m).reach == {0: [], 1: [1]}


def mean_inputs(model, x):
    """Per linear, its input's mean over the batch in the full model (what mean ablation reads)."""
    with torch.no_grad():
        return [a.mean(0) for a in model.activations(x)[:-1]]


def edited(model, masks, abar):
    """Oracle of mean ablation by weight edits: W -> W*M and b -> b + (W*(1-M)) abar."""
    out = bc.BioMLP(model.shape, activation="tanh").double()
    with torch.no_grad():
        for new, old, m, a in zip(out.linears, model.linears, masks, abar):
            new.weight.copy_(old.weight * m)
            new.bias.copy_(old.bias + (old.weight * ~m) @ a)
    return out


def random_task(seed=0):
    g = torch.Generator().manual_seed(seed)
    m = bc.BioMLP([3, 6, 5, 3], activation="tanh", generator=g).double()
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.randint(3, (40,), generator=g)
    return m, x, lambda out: out.log_softmax(-1)[torch.arange(len(y)), y].mean()


def test_attribution_matches_finite_difference():
    # Move one connection's input from its mean (t = 0) to its clean value (t = 1) by weight edits:
    # W_ji -> t W_ji, b_j -> b_j + (1 - t) W_ji abar_i. The score is |d metric / dt| at t = 1.
    m, x, metric = random_task()
    scores, abar, eps = bs.edge_attribution(m, x, metric), mean_inputs(m, x), 1e-5
    for layer, j, i in [(0, 2, 1), (0, 5, 0), (1, 3, 4), (2, 0, 2), (2, 2, 4)]:
        f = []
        for t in (1 + eps, 1 - eps):
            e = edited(m, [torch.ones_like(lin.weight, dtype=torch.bool) for lin in m.linears], abar)
            w = m.linears[layer].weight[j, i].item()
            with torch.no_grad():
                e.linears[layer].weight[j, i] = t * w
                e.linears[layer].bias[j] += (1 - t) * w * abar[layer][i]
            f.append(metric(e(x)).item())
        assert scores[layer][j, i].item() == pytest.approx(abs(f[0] - f[1]) / (2 * eps), rel=1e-6)


def test_faithfulness_matches_weight_edit_oracle():
    m, x, metric = random_task(1)
    abar = mean_inputs(m, x)
    full, empty = (metric(edited(m, [torch.full_like(lin.weight, v, dtype=torch.bool) for lin in m.linears],
                                     abar)(x)).item() for v in (True, False))
    assert full == pytest.approx(metric(m(x)).item(), rel=1e-12)
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        masks = [torch.rand(lin.weight.shape, generator=g) < 0.5 for lin in m.linears]
        oracle = (metric(edited(m, masks, abar)(x)).item() - empty) / (full - empty)
        assert bs.circuit_faithfulness(m, masks, x, metric) == pytest.approx(oracle, rel=1e-9)
    everything = [torch.ones_like(lin.weight, dtype=torch.bool) for lin in m.linears]
    assert bs.circuit_faithfulness(m, everything, x, metric) == 1.0
    assert bs.circuit_faithfulness(m, [~k for k in everything], x, metric) == 0.0


def test_transformer_scores_with_a_zero_baseline_are_weight_times_gradient():
    # Without biases every BioLinear reads 0 when the input is 0, so abar = 0 and the score of W_ji is
    # |W_ji dmetric/dW_ji|: an oracle from ordinary backprop, for every edge (attn_out reads the v copy).
    t = bc.BioTransformer(2, 2, d_model=8, n_blocks=2, n_heads=2, d_mlp=16, bias=False,
                          generator=torch.Generator().manual_seed(0))
    x = torch.randn(6, 4, 2, generator=torch.Generator().manual_seed(1))
    target = torch.randn(6, 4, 2, generator=torch.Generator().manual_seed(2))

    def metric(out):
        return -F.mse_loss(out, target)

    scores = bs.edge_attribution(t, x, metric, baseline=torch.zeros_like(x))
    metric(t(x)).backward()
    graph = bs.network_graph(t)
    assert [s is None for s in scores] == [e.linear is None for e in graph.edges]
    for e, s in zip(graph.edges, scores):
        if e.linear is not None:
            assert s.shape == e.linear.weight.shape
            assert torch.allclose(s, (e.linear.weight * e.linear.weight.grad).abs(), rtol=1e-4, atol=1e-9)


def test_transformer_circuits():
    t = small_transformer()
    x = torch.randn(8, 3, 2, generator=torch.Generator().manual_seed(0))
    target = x.flip(-1)

    def metric(out):
        return -F.mse_loss(out, target)

    graph = bs.network_graph(t)
    full = [None if e.linear is None else torch.ones_like(e.linear.weight, dtype=torch.bool) for e in graph.edges]
    assert bs.circuit_faithfulness(t, full, x, metric) == 1.0
    assert bs.circuit_faithfulness(t, [m if m is None else ~m for m in full], x, metric) == 0.0
    eap = bs.discover_circuit(t, x, metric, target=0.9)
    assert 0.9 <= eap.faithfulness and len(eap.edges) < eap.total == 1056
    assert bs.circuit_faithfulness(t, eap.masks, x, metric) == pytest.approx(eap.faithfulness)
    strong = bs.surviving(graph, 0.3)
    acdc = bs.discover_circuit(t, x, metric, target=0.9, method="acdc", candidates=strong)
    assert acdc.faithfulness >= 0.9
    assert all(m is None or not (m & ~s).any() for m, s in zip(acdc.masks, strong))  # only candidates
    # surviving() gives identity edges an eye mask: they stay identity edges (None), for EAP as for ACDC
    assert [m is None for m in acdc.masks] == [e.linear is None for e in graph.edges]
    eap_strong = bs.discover_circuit(t, x, metric, target=0.9, candidates=strong)
    assert [m is None for m in eap_strong.masks] == [e.linear is None for e in graph.edges]
    assert eap_strong.faithfulness >= 0.9 and all(m is None or not (m & ~s).any()
                                                  for m, s in zip(eap_strong.masks, strong))


def test_corrupted_baseline_empty_circuit_is_the_corrupted_run():
    # Ablating every connection to a corrupted run's values reproduces that run; so does ablating the input
    # linear alone, since all later values follow from the residual stream it writes.
    t = small_transformer()
    x, xc, r = torch.randn(3, 5, 3, 2, generator=torch.Generator().manual_seed(3))

    def metric(out):
        return (out * r).mean()  # linear in the output: a first-order change shows

    graph = bs.network_graph(t)
    masks = [None if e.linear is None else torch.full_like(e.linear.weight, e.name != "embed_in", dtype=torch.bool)
             for e in graph.edges]
    assert bs.circuit_faithfulness(t, masks, x, metric, baseline=xc) == pytest.approx(0.0, abs=1e-5)
    masks[0][0, 0] = True  # one input connection back: no longer the corrupted run
    assert bs.circuit_faithfulness(t, masks, x, metric, baseline=xc) > 1e-3


def test_plot_draws_only_the_circuit():
    m, x, metric = two_paths_task()
    c = bs.discover_circuit(m, x, metric)
    assert n_segments(bs.plot_network(m, masks=c.masks)) == 3
    t = small_transformer()
    xt = torch.randn(8, 3, 2, generator=torch.Generator().manual_seed(0))
    ct = bs.discover_circuit(t, xt, lambda out: -F.mse_loss(out, xt.flip(-1)))
    skips = 4 * 8  # identity edges are drawn as they are
    assert n_segments(bs.plot_network(t, masks=ct.masks)) == len(ct.edges) + skips


@pytest.mark.parametrize("bad, match", [
    (dict(method="greedy"), "unknown method"),
    (dict(target=0.0), r"\(0, 1\]"),
    (dict(target=1.5), r"\(0, 1\]"),
    (dict(metric=lambda out: out[:, 0]), "scalar tensor"),
    (dict(metric=lambda out: 0.5), "scalar tensor"),
    (dict(metric=lambda out: out.sum() * 0), "full and the empty circuit"),
    (dict(baseline=torch.zeros(3, 4)), "shape of x"),
    (dict(x=torch.zeros(8, 3)), r"shape \(batch, 4\)"),
    (dict(candidates=[None]), r"candidates must be None or one \(out, in\) bool mask per graph edge \(2\), "
                              r"got '1 masks'"),
])
def test_clear_errors(bad, match):
    m, x, metric = two_paths_task()
    kw = dict(x=x, metric=metric) | bad
    with pytest.raises(ValueError, match=match):
        bs.discover_circuit(m, **kw)


MLP_KINDS = {
    "1d": dict(shape=[3, 12, 12, 2]),
    "folded": dict(shape=[6, 12, 10, 4], in_fold=2),
    "embedding": dict(shape=[8, 12, 12, 5], in_fold=2, vocab_size=5),
    "grid_ring": dict(shape=[16, 9, 9, 4], geometry="grid", out_geometry="ring", fix_inputs=True),
}


def mlp_inputs(m, g):
    if m.embedding is not None:
        return torch.randint(len(m.embedding), (32, m.in_fold), generator=g)
    return torch.randn(32, m.shape[0], generator=g)


@pytest.mark.parametrize("kind", MLP_KINDS)
def test_compact_equals_pruned_original(kind):
    g = torch.Generator().manual_seed(0)
    m = bc.BioMLP(generator=g, **MLP_KINDS[kind])
    with torch.no_grad():
        m.linears[0].weight[:, :1] *= 10  # one strong input: the others' connections fall under the threshold
        m.linears[1].weight[:2] = 0       # hidden2 neurons 0, 1 read nothing: constants folded forward
        m.linears[1].bias[:2] = 2.0
    m.swap("hidden1", 0, 5)
    x = mlp_inputs(m, g)
    for threshold in (0.0, 0.3, 0.6):
        with bs.prune(m, threshold):
            expected, active = m(x), bs.analyze(m).neurons
        c = bs.compact(m, threshold)
        assert torch.allclose(c(x), expected, atol=1e-6)
        assert (c.shape[0], c.shape[-1]) == (m.shape[0], m.shape[-1])
        assert bs.analyze(c).neurons <= active  # compact also drops neurons that feed only dead ones
        assert sum(c.shape[1:-1]) < sum(m.shape[1:-1])  # at least the two constants are gone
        for new, old in zip(c.linears[1:], m.linears[1:]):  # kept neurons stay where they were
            assert torch.isin(new.in_coords, old.in_coords).all()


def test_compact_rejects_other_models_and_constant_networks():
    with pytest.raises(TypeError, match="supports BioMLP"):
        bs.compact(small_transformer(), 0.1)
    m = set_weights(bc.BioMLP([2, 3, 2]), {(0, 0, 0): 1.0, (1, 1, 2): 1.0})  # no path from input to output
    with pytest.raises(ValueError, match="constant"):
        bs.compact(m)
