"""Modularity as a number (bs.weight_graph, bs.modularity) and circuit size (bs.circuit_curve).

Oracles: networks built by hand whose modularity follows from Newman's formula in closed form, Q = 1 - sum_c
(d_c / 2m)^2 for communities that are disjoint blocks, and networkx's own modularity of the planted partition; a
network whose weights are already in random places (a fresh initialisation: what the null draws) against the
null; a single linear layer, where each connection's effect on the metric is exactly its weight, so that the
faithfulness of every top-k circuit is a cumulative sum counted by hand.
"""
import math

import networkx as nx
import numpy as np
import pytest
import torch

import bimt_core as bc
import bimt_seeing as bs


def blocks(shape, n_blocks: int, noise: float = 0.0, seed: int = 0) -> bc.BioMLP:
    """A BioMLP whose layers are block diagonal: unit u of a row of width n is in block u * n_blocks // n, weights
    in [0.5, 1.5) inside blocks and below `noise` outside."""
    g = torch.Generator().manual_seed(seed)
    model = bc.BioMLP(shape, generator=g)
    with torch.no_grad():
        for lin in model.linears:
            o, i = lin.weight.shape
            bo, bi = torch.arange(o) * n_blocks // o, torch.arange(i) * n_blocks // i
            inside = torch.rand(o, i, generator=g) + 0.5
            lin.weight.copy_(torch.where(bo[:, None] == bi[None], inside, noise * torch.rand(o, i, generator=g)))
    return model


def block_partition(model: bc.BioMLP, n_blocks: int) -> list[set]:
    """The planted blocks as sets of (row, unit) nodes."""
    return [{(r, u) for r, n in enumerate(model.shape) for u in range(n) if u * n_blocks // n == b}
            for b in range(n_blocks)]


# -- the graph ---------------------------------------------------------------------------------------------


def test_the_graph_holds_every_neuron_and_every_weight():
    model = bc.BioMLP([3, 5, 2], generator=torch.Generator().manual_seed(0))
    g = bs.weight_graph(model)
    assert set(g.nodes) == {(r, u) for r, n in enumerate(model.shape) for u in range(n)}
    for (r, u), (s, v), w in g.edges(data="weight"):
        lo, hi = sorted([(r, u), (s, v)])
        assert hi[0] == lo[0] + 1  # only consecutive rows are joined
        assert w == pytest.approx(abs(float(model.linears[lo[0]].weight.detach()[hi[1], lo[1]])), rel=1e-6)
    assert g.number_of_edges() == 3 * 5 + 5 * 2


def test_fold_copies_are_one_node_whose_edge_adds_their_weights():
    # modular addition's input row: E[a] | E[b], 2 x 4 positions, 4 units
    model = bc.BioMLP([8, 3, 5], in_fold=2, vocab_size=5, generator=torch.Generator().manual_seed(0))
    g = bs.weight_graph(model)
    w = model.linears[0].weight.detach().abs()
    assert sorted(u for r, u in g.nodes if r == 0) == [0, 1, 2, 3]
    for u in range(4):
        for h in range(3):
            assert g[(0, u)][(1, h)]["weight"] == pytest.approx(float(w[h, u] + w[h, u + 4]), rel=1e-6)


def test_identity_skips_are_not_connections():
    model = bc.BioTransformer(2, 2, d_model=4, n_blocks=1, d_mlp=6, generator=torch.Generator().manual_seed(0))
    graph = model.graph()
    g = bs.weight_graph(model)
    total = sum(float(e.linear.weight.detach().abs().sum()) for e in graph.edges if e.linear is not None)
    assert g.size(weight="weight") == pytest.approx(total, rel=1e-6)
    skips = [e for e in graph.edges if e.linear is None]
    assert skips and not any(g.has_edge((e.src, u), (e.dst, u)) for e in skips for u in range(4))


def test_a_threshold_drops_what_analyze_drops():
    model = blocks([8, 8, 4], 2, noise=1e-3)
    g = bs.weight_graph(model, threshold=0.01)
    report = bs.analyze(model, 0.01)
    assert g.number_of_edges() == report.connections == 2 * (4 * 4 + 4 * 2)


# -- modularity ------------------------------------------------------------------------------------------


def test_two_disjoint_blocks_give_the_closed_form_q():
    # inputs 0, 1 -> hidden 0, 1 -> output 0 with weights 1; inputs 2, 3 -> hidden 2, 3 -> output 1 with weights 2
    # (unequal blocks, so that the closed form is not the 1/2 of two equal ones)
    model = bc.BioMLP([4, 4, 2], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.linears[0].weight.copy_(torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2.0]]))
        model.linears[1].weight.copy_(torch.tensor([[1, 1, 0, 0], [0, 0, 2, 2.0]]))
    r = bs.modularity(model, n_null=5)
    planted = block_partition(model, 2)
    assert sorted(map(set, r.communities), key=min) == planted
    g = bs.weight_graph(model)
    two_m = 2 * g.size(weight="weight")
    d = [sum(g.degree(n, weight="weight") for n in c) for c in planted]
    assert d == [12.0, 24.0]  # six unit connections, six of weight 2; each counts at both ends
    assert r.q == pytest.approx(1 - sum((dc / two_m) ** 2 for dc in d), abs=1e-12)
    assert r.q == pytest.approx(4 / 9, abs=1e-12)
    assert r.q == pytest.approx(nx.community.modularity(g, planted, weight="weight"), abs=1e-12)


def test_weights_in_random_places_score_near_zero_and_like_the_null():
    # a fresh initialisation draws every weight of a layer from one distribution: a shuffled network already
    for seed in range(3):
        r = bs.modularity(bc.BioMLP([8, 24, 24, 8], generator=torch.Generator().manual_seed(seed)), n_null=10,
                          seed=seed)
        assert 0 <= r.q < 0.15
        assert abs(r.z) < 3
        assert len(r.null_q) == 10 and r.null_std > 0


def test_planted_blocks_are_found_and_far_above_the_null():
    model = blocks([16, 32, 32, 4], 4, noise=1e-3)
    r = bs.modularity(model, n_null=10)
    assert sorted(map(set, r.communities), key=min) == block_partition(model, 4)
    assert r.q == pytest.approx(0.75, abs=0.01)  # four blocks of nearly equal weight: 1 - 4 (1/4)^2
    assert r.null_mean < 0.35
    assert r.z > 20


def test_a_null_without_spread_gives_no_z():
    # every weight of a layer equal: each shuffle is the network itself, so every draw gives the same Q
    model = bc.BioMLP([4, 6, 3], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for k, lin in enumerate(model.linears):
            lin.weight.fill_(0.5 + k)
    r = bs.modularity(model, n_null=5)
    assert len(set(r.null_q)) == 1 and r.null_std == 0 and r.q == r.null_mean
    assert math.isnan(r.z) and "z undefined (every draw gives the same Q)" in str(r)


def test_z_is_undefined_below_the_floor_of_float_rounding_only():
    # transformer runs gave null std 1.1e-16 with Q 0.014 above the null mean: z 1.3e14 before this rule
    assert math.isnan(bs.z_score(0.5753, 0.5608, 1.14e-16)) and math.isnan(bs.z_score(0.5, 0.5, 0.0))
    assert bs.z_score(0.5753, 0.5608, 1e-5) == pytest.approx(1450.0)
    assert bs.z_score(0.2, 0.3, 0.05) == pytest.approx(-2.0)


def test_same_seed_same_numbers_other_seed_other_null():
    model = blocks([8, 8, 4], 2, noise=0.1)
    a, b = bs.modularity(model, n_null=5, seed=3), bs.modularity(model, n_null=5, seed=3)
    assert a == b
    c = bs.modularity(model, n_null=5, seed=4)
    assert c.null_q != a.null_q
    assert c.q == pytest.approx(a.q, abs=0.05)


def test_modularity_reads_a_str():
    text = str(bs.modularity(blocks([4, 4, 2], 2), n_null=3))
    assert text.startswith("Q 0.") and "2 communities" in text and "3 draws" in text


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_null=1), "n_null"), (dict(threshold=1.5), "threshold"), (dict(seed=-1), "seed"),
    (dict(n_null=2.5), "n_null")])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bs.modularity(blocks([4, 4, 2], 2), **kwargs)


def test_a_network_without_connections_has_no_modularity():
    model = blocks([4, 4, 2], 2)
    with torch.no_grad():
        for lin in model.linears:
            lin.weight.zero_()
    with pytest.raises(ValueError, match="no connection left"):
        bs.modularity(model, n_null=2)


def test_a_model_that_does_not_describe_itself_is_refused():
    with pytest.raises(TypeError, match="graph"):
        bs.modularity(torch.nn.Linear(2, 2))


# -- circuit size ----------------------------------------------------------------------------------------


def linear(weights) -> bc.BioMLP:
    """One BioLinear, no activation: output = sum_i w_i x_i + b."""
    model = bc.BioMLP([len(weights), 1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.linears[0].weight.copy_(torch.tensor([weights]))
    return model


def test_the_curve_of_a_linear_layer_is_the_cumulative_share_of_its_weights():
    # inputs 1, corrupted baseline 0, metric the mean output: keeping connection i adds exactly w_i
    w = [0.5, 4.0, 0.0, 2.0, 1.0, 8.0]
    model = linear(w)
    c = bs.circuit_curve(model, torch.ones(3, 6), lambda out: out.mean(), baseline=torch.zeros(3, 6))
    kept = np.cumsum([0.0] + sorted(w, reverse=True)[:5]) / sum(w)  # 0, 8, 12, 14, 15, 15.5 of 15.5
    assert c.total == 6 and c.candidates == 5
    assert c.sizes == [0, 1, 2, 3, 4, 5, 6]
    assert c.faithfulness == pytest.approx(list(kept) + [1.0], abs=1e-6)
    assert c.size_at == {0.9: 3, 0.99: 5}  # 14 / 15.5 = 0.903; 15 / 15.5 = 0.968 < 0.99
    f = list(kept) + [1.0]
    by_hand = sum((f[k] + f[k + 1]) / 2 for k in range(6)) / 6
    assert c.auc == pytest.approx(by_hand, abs=1e-6)
    assert "3 at faithfulness 0.9" in str(c)


def test_the_area_counts_an_overshooting_circuit_as_a_faithful_one():
    # contributions 4, -2, 1 of 3: the top-1 circuit overshoots (4/3), the top-2 falls back (2/3)
    c = bs.circuit_curve(linear([4.0, -2.0, 1.0]), torch.ones(2, 3), lambda out: out.mean(),
                         baseline=torch.zeros(2, 3))
    assert c.faithfulness == pytest.approx([0, 4 / 3, 2 / 3, 1], abs=1e-6)  # raw
    clipped = [0, 1, 2 / 3, 1]
    assert c.auc == pytest.approx(sum((clipped[k] + clipped[k + 1]) / 2 for k in range(3)) / 3, abs=1e-6)


def test_a_large_network_is_sampled_from_nothing_to_every_candidate():
    model = bc.BioMLP([4, 20, 20, 2], generator=torch.Generator().manual_seed(0))
    x = torch.rand(50, 4, generator=torch.Generator().manual_seed(1))

    def metric(out):
        return -(out ** 2).mean()

    c = bs.circuit_curve(model, x, metric, points=40)
    assert c.candidates == c.total == 520
    assert c.sizes[0] == 0 and c.sizes[-1] == 520 and c.sizes == sorted(set(c.sizes))
    assert 20 <= len(c.sizes) <= 41
    assert c.faithfulness[0] == pytest.approx(0.0, abs=1e-9) and c.faithfulness[-1] == pytest.approx(1.0, abs=1e-6)
    for t in (0.9, 0.99):
        assert c.size_at[t] == len(bs.discover_circuit(model, x, metric, t).edges)


@pytest.mark.parametrize("kwargs, match", [
    (dict(points=1), "points"), (dict(targets=(0.9, 1.2)), "targets"), (dict(targets=()), "targets")])
def test_bad_curve_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bs.circuit_curve(linear([1.0, 2.0]), torch.ones(2, 2), lambda out: out.mean(), baseline=torch.zeros(2, 2),
                         **kwargs)
