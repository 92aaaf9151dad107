"""Circuit discovery against ground truth: networks with a planted circuit among dense distractor weights
(bs.planted_mlp), the ROC AUC that scores a ranking of connections against it (bs.roc_auc, bs.roc_curve), and
the independence task of Fig 3, whose first output must be found to read x1 and x3 alone."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bimt_core as bc
import bimt_seeing as bs


def pairwise_auc(scores, labels):
    """The definition, pair by pair: P(a positive outscores a negative) + P(tie) / 2."""
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    diff = s[y][:, None] - s[~y][None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def test_auc_of_a_hand_ranked_example():
    # positives 0.9, 0.7, 0.6 against negatives 0.8, 0.5, 0.4: 0.9 beats 3, 0.7 beats 2, 0.6 beats 2 -> 7 of 9
    assert bs.roc_auc([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1, 0, 1, 1, 0, 0]) == pytest.approx(7 / 9, rel=1e-12)
    # a tie counts half: the positive 1.0 ties the negative 1.0 and beats the 0.0 -> (0.5 + 1) / 2
    assert bs.roc_auc([1.0, 1.0, 0.0], [True, False, False]) == pytest.approx(0.75, rel=1e-12)
    assert bs.roc_auc([3, 2, 1], [1, 0, 0]) == 1.0 and bs.roc_auc([3, 2, 1], [0, 0, 1]) == 0.0


def test_auc_is_the_pairwise_definition_and_the_area_under_the_curve():
    rng = np.random.default_rng(0)
    for _ in range(5):
        scores = rng.integers(0, 6, 40).astype(float)  # many ties
        labels = rng.random(40) < 0.3
        auc = bs.roc_auc(scores, labels)
        assert auc == pytest.approx(pairwise_auc(scores, labels), rel=1e-12)
        curve = bs.roc_curve(scores, labels)
        assert np.trapezoid(curve.tpr, curve.fpr) == pytest.approx(auc, rel=1e-12)
        assert (np.diff(curve.fpr) >= 0).all() and (np.diff(curve.tpr) >= 0).all()
        assert len(curve.fpr) == len(np.unique(scores)) + 1


def test_roc_curve_of_the_hand_example():
    curve = bs.roc_curve([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1, 0, 1, 1, 0, 0])
    assert curve.fpr == pytest.approx([0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1])
    assert curve.tpr == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 1, 1, 1])


def test_per_edge_lists_score_like_their_flat_concatenation():
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(3, 4, generator=g), None, torch.rand(2, 3, generator=g)]
    labels = [torch.rand(3, 4, generator=g) < 0.3, None, torch.rand(2, 3, generator=g) < 0.3]
    flat = torch.cat([scores[0].flatten(), scores[2].flatten()]), torch.cat([labels[0].flatten(), labels[2].flatten()])
    assert bs.roc_auc(scores, labels) == bs.roc_auc(*flat)


@pytest.mark.parametrize("scores, labels, match", [
    ([1.0, 2.0], [True, True], "one positive and one negative"),
    ([1.0, 2.0], [False, False], "one positive and one negative"),
    ([1.0, 2.0, 3.0], [True, False], "number of scores, 3"),
    ([1.0, math.nan], [True, False], "finite"),
    ([1.0, 2.0], [0.5, 1.0], "bools"),
    ([torch.zeros(2, 3)], [torch.zeros(3, 2, dtype=torch.bool)], "per-edge shapes"),
])
def test_auc_refuses_what_it_cannot_score(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        bs.roc_auc(scores, labels)


SHAPES = [[4, 3, 2], [8, 16, 16, 4], [12, 24, 24, 24, 6]]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_planted_network_is_dense_and_its_chain_carries_the_metric(shape, seed):
    p = bs.planted_mlp(shape, inputs=(0, 2), seed=seed)
    weights = [lin.weight.detach() for lin in p.model.linears]
    assert all((w != 0).all() for w in weights)  # no connection is missing: the distractors are everywhere
    assert [int(m.sum()) for m in p.labels] == [2] + [1] * (len(shape) - 2)
    assert all((w[m] == 1).all() for w, m in zip(weights, p.labels))
    # the planted connections alone keep the metric, up to the tiny weights
    assert bs.circuit_faithfulness(p.model, p.labels, p.x, p.metric) == pytest.approx(1.0, abs=0.01)
    # |w| does not find the chain: the dead neurons' distractors are stronger than its weights of 1
    assert bs.roc_auc([w.abs() for w in weights], p.labels) < 0.8


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_eap_ranks_the_planted_connections_first(shape, seed):
    p = bs.planted_mlp(shape, inputs=(0, 2), seed=seed)
    scores = bs.edge_attribution(p.model, p.x, p.metric)
    assert bs.roc_auc(scores, p.labels) == 1.0
    planted = torch.cat([s[m] for s, m in zip(scores, p.labels)])
    others = torch.cat([s[~m] for s, m in zip(scores, p.labels)])
    assert planted.min() > 100 * others.max()  # a margin, not a near tie: tiny weights score O(tiny)


@pytest.mark.parametrize("method", ["eap", "acdc"])
@pytest.mark.parametrize("shape", SHAPES)
def test_discovery_returns_exactly_the_planted_circuit(method, shape):
    p = bs.planted_mlp(shape, inputs=(1, 2, 3), output=1, seed=2)
    c = bs.discover_circuit(p.model, p.x, p.metric, target=0.9, method=method)
    assert all(torch.equal(m, label) for m, label in zip(c.masks, p.labels))
    assert bs.roc_auc(c.masks, p.labels) == 1.0  # a set's one operating point: TPR 1, FPR 0


@pytest.mark.parametrize("bad, match", [
    (dict(shape=[4, 2, 2]), "at least 3 wide"),
    (dict(shape=[4, 2]), "at least one hidden layer"),
    (dict(inputs=(0, 0)), "distinct input indices"),
    (dict(inputs=(0, 4)), r"\[0, 4\)"),
    (dict(inputs=tuple(range(6)), shape=[8, 6, 2]), "1 to 5"),
    (dict(output=2), r"output index in \[0, 2\)"),
    (dict(tiny=-1.0), "tiny"),
])
def test_planted_network_refuses_bad_requests(bad, match):
    with pytest.raises(ValueError, match=match):
        bs.planted_mlp(**(dict(shape=[4, 6, 2]) | bad))


def inputs_read(model, masks, output):
    """The caller's inputs with a path in masks to the caller's output `output`."""
    graph = bs.network_graph(model)
    out = graph.rows[-1]
    return bs.reach_matrices(graph, masks)[-1][out.caller == output].any(0).nonzero().flatten().tolist()


@pytest.fixture(scope="module")
def independence():
    """The README quickstart's recipe on Fig 3's independence task (y1 = (x1+x3)^3, y2 = x2^2 + sin(pi x4)):
    a [4, 20, 20, 2] BioMLP, 2000 steps of BIMT (a few seconds); returns the model and the test split."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 4, generator=g) * 2 - 1
    y = torch.stack([(x[:, 0] + x[:, 2]) ** 3, x[:, 1] ** 2 + torch.sin(math.pi * x[:, 3])], 1)
    model = bc.BioMLP([4, 20, 20, 2], generator=g)
    bc.train(model, bc.BIMTConfig(steps=2000, lr=1e-2, swap_every=100, seed=0), (x[:150], y[:150]),
             (x[150:], y[150:]), F.mse_loss, progress=False)
    return model, x[150:], y[150:]


@pytest.mark.parametrize("method", ["eap", "acdc"])
def test_the_first_output_of_the_independence_task_reads_x1_and_x3_alone(independence, method):
    model, x, y = independence
    assert model.in_perm.tolist() != [0, 1, 2, 3] or model.out_perm.tolist() != [0, 1]  # swaps moved neurons

    # The output's product with its target, not the MSE: the trained network sits near the MSE's optimum,
    # where its gradient, and so EAP's first-order scores, are noise.
    def metric(out):
        return (out[:, 0] * y[:, 0]).mean()

    c = bs.discover_circuit(model, x, metric, target=0.9, method=method)
    assert c.faithfulness >= 0.9
    assert inputs_read(model, c.masks, output=0) == [0, 2]
