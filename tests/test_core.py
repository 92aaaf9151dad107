"""Core tests: every check has an oracle (the unswapped model, a naive double loop, brute-force relocation)."""
import copy
import dataclasses
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bimt_core as bc
from helpers import assert_same_relocation, tiny_task

# Each kind of MLP in the paper: (constructor kwargs, input maker).
KINDS = {
    "line": dict(shape=[4, 20, 20, 2]),
    "deep": dict(shape=[4, 8, 8, 8, 8, 1]),
    "folded": dict(shape=[6, 10, 3], in_fold=2),
    "embedding": dict(shape=[16, 12, 12, 7], in_fold=2, vocab_size=7),
    "grid": dict(shape=[16, 9, 9, 4], geometry="grid"),
    "ring": dict(shape=[16, 9, 9, 6], geometry="grid", out_geometry="ring"),
}


def make(kind, seed=0, **over):
    g = torch.Generator().manual_seed(seed)
    return bc.BioMLP(**{**KINDS[kind], **over}, generator=g)


def inputs(model, n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    if model.embedding is not None:
        return torch.randint(model.embedding.shape[0], (n, model.in_fold), generator=g)
    return torch.randn(n, model.shape[0], generator=g)


# ---------------------------------------------------------------------------------------------- geometry

def test_line_coords_follow_the_formula():
    c = bc.neuron_coords(4)
    assert c.shape == (4, 1)
    assert c[:, 0].tolist() == pytest.approx([1 / 8, 3 / 8, 5 / 8, 7 / 8])


def test_folded_coords_repeat_per_copy():
    c = bc.neuron_coords(6, fold=2)[:, 0]
    assert c.tolist() == pytest.approx([1 / 6, 3 / 6, 5 / 6] * 2)


def test_grid_coords_are_cell_centres():
    c = bc.neuron_coords(9, "grid")
    assert c.shape == (9, 2)
    assert c[0].tolist() == pytest.approx([1 / 6, 1 / 6])
    assert c[5].tolist() == pytest.approx([5 / 6, 3 / 6])  # column 2, row 1


def test_ring_coords_lie_on_circle_of_radius_quarter():
    c = bc.neuron_coords(10, "ring")
    r = ((c - 0.5) ** 2).sum(1).sqrt()
    assert torch.allclose(r, torch.full((10,), 0.25))
    assert len({tuple(p) for p in c.round(decimals=5).tolist()}) == 10


def test_ring_angles_are_the_authors():
    """Their MNIST notebook: theta = linspace(2 pi / 20, 2 pi (1 - 1/20), 10), (0.5 + cos/4, 0.5 + sin/4)."""
    theta = np.linspace(2 * np.pi / 20, 2 * np.pi * (1 - 1 / 20), 10)
    theirs = torch.from_numpy(np.stack([0.5 + np.cos(theta) / 4, 0.5 + np.sin(theta) / 4], 1))
    assert torch.allclose(bc.neuron_coords(10, "ring", dtype=torch.float64), theirs, rtol=0, atol=1e-15)


@pytest.mark.parametrize("call, match", [
    (lambda: bc.neuron_coords(10, fold=3), "fold must be a positive integer dividing the layer width 10, got 3"),
    (lambda: bc.neuron_coords(10, "grid"), "perfect-square"),
    (lambda: bc.neuron_coords(0), "positive integer"),
    (lambda: bc.neuron_coords(-3), "positive integer"),
    (lambda: bc.neuron_coords(4, "cube"), "unknown geometry"),
    (lambda: bc.BioMLP([4, 0, 2]), "positive"),
    (lambda: bc.BioMLP([4]), "at least an input and an output"),
    (lambda: bc.BioMLP([5, 9, 2], in_fold=2), "dividing the layer width 5"),
    (lambda: bc.BioMLP([16, 10, 4], geometry="grid"), "perfect-square"),
    (lambda: bc.BioMLP([4, 4, 2], activation="swish"), "unknown activation"),
    (lambda: bc.BioMLP([4, 4, 3], out_geometry="ring"), "same space"),
])
def test_bad_geometry_and_layers_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_manhattan_distance_in_2d():
    d = bc.manhattan(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.25, 0.5], [1.0, 1.0]]))
    assert d[0].tolist() == pytest.approx([0.75, 2.0])


# ---------------------------------------------------------------------------------------------- forward

def test_wrong_input_width_raises():
    m = make("line")
    with pytest.raises(ValueError, match=r"shape \(batch, 4\), got \(8, 5\)"):
        m(torch.zeros(8, 5))
    with pytest.raises(ValueError, match="width 4"):
        m.linears[0](torch.zeros(8, 3))


def test_bad_tokens_raise():
    m = make("embedding")
    with pytest.raises(ValueError, match="long tokens of shape"):
        m(torch.zeros(8, 2))
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 7\)"):
        m(torch.full((3, 2), 7))


def test_init_is_seeded_by_the_generator_only():
    a, b, c = make("line", seed=3), make("line", seed=3), make("line", seed=4)
    assert torch.equal(a.linears[1].weight, b.linears[1].weight)
    assert not torch.equal(a.linears[1].weight, c.linears[1].weight)


# ---------------------------------------------------------------------------------------------- swapping

@pytest.mark.parametrize("kind", list(KINDS))
def test_random_swaps_preserve_the_function(kind):
    m = make(kind)
    x = inputs(m)
    ref = m(x).detach()
    before = copy.deepcopy(m.state_dict())
    g = torch.Generator().manual_seed(5)
    for li, nl in enumerate(m.neuron_layers()):
        for _ in range(6 if nl.n_units > 1 else 0):
            j, k = torch.randperm(nl.n_units, generator=g)[:2].tolist()
            m.swap(li, j, k)
    assert any(not torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert torch.allclose(m(x), ref, atol=1e-6, rtol=1e-5)


def test_swap_really_exchanges_both_neurons():
    # The tuple-swap aliasing bug (`w[j], w[k] = w[k], w[j]` on views) would copy one row onto both.
    m = make("line")
    w = m.linears[0].weight.detach().clone()
    m.swap(1, 2, 7)
    got = m.linears[0].weight.detach()
    assert torch.equal(got[2], w[7]) and torch.equal(got[7], w[2])
    assert not torch.equal(got[2], got[7])


def test_folded_swap_moves_every_copy_and_embedding_column():
    m = make("embedding")
    w, e = m.linears[0].weight.detach().clone(), m.embedding.detach().clone()
    m.swap("input", 1, 5)
    got = m.linears[0].weight.detach()
    assert torch.equal(got[:, 1], w[:, 5]) and torch.equal(got[:, 9], w[:, 13])
    assert torch.equal(m.embedding[:, 1], e[:, 5])


def test_output_swap_updates_out_perm_not_callers_order():
    m = make("line")
    m.swap("output", 0, 1)
    assert m.out_perm.tolist() == [1, 0]
    m2 = make("line", fix_inputs=False)
    m2.swap("input", 0, 3)
    assert m2.in_perm.tolist() == [3, 1, 2, 0]


def test_fixed_inputs_cannot_be_swapped_and_are_skipped_by_relocate():
    m = make("grid", fix_inputs=True)
    with pytest.raises(ValueError, match="fixed"):
        m.swap("input", 0, 1)
    w0 = m.linears[0].weight.detach().clone()
    bc.relocate(m, top_k=4)
    assert torch.equal(m.in_perm, torch.arange(16))
    # input columns never move; only row permutations (hidden swaps) may have happened
    assert torch.equal(m.linears[0].weight.detach().sort(0).values, w0.sort(0).values)


@pytest.mark.parametrize("call, match", [
    (lambda m: m.swap(9, 0, 1), "layer must be a name or an index"),
    (lambda m: m.swap("hidden7", 0, 1), "no neuron layer named"),
    (lambda m: m.swap(1, 0, 20), r"unit index must be an int in \[0, 20\)"),
])
def test_bad_swap_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call(make("line"))


@pytest.mark.parametrize("kind", ["line", "embedding", "ring"])
def test_permute_units_equals_the_same_swaps_one_by_one(kind):
    a, b = make(kind), make(kind)
    x = inputs(a)
    ref = a(x).detach()
    layer = 1 if kind != "embedding" else 0
    n = a.neuron_layers()[layer].n_units
    perm = list(range(n))
    for j, k in [(0, 3), (3, n - 1), (1, 2)]:
        b.swap(layer, j, k)
        perm[j], perm[k] = perm[k], perm[j]
    bc.permute_units(a, layer, torch.tensor(perm))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert torch.allclose(a(x), ref, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="must be an integer permutation"):
        bc.permute_units(a, layer, torch.zeros(n, dtype=torch.long))


def test_swap_permutes_adam_state_with_the_weights():
    m = make("line")
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    F.mse_loss(m(inputs(m)), torch.zeros(32, 2)).backward()
    opt.step()
    state = opt.state[m.linears[0].weight]["exp_avg"].clone()
    m.swap(1, 0, 3, optimizer=opt)
    got = opt.state[m.linears[0].weight]["exp_avg"]
    assert torch.equal(got[0], state[3]) and torch.equal(got[3], state[0])


# ---------------------------------------------------------------------------------------------- connection cost

def naive_cost(model, A, l0, agg, bias, emb, last_l0):
    """Oracle: a plain double loop over every weight, positions recomputed from the formulas."""
    total = 0.0
    lins = list(model.linears)
    for li, lin in enumerate(lins):
        W = lin.weight.detach().double()
        n_out, n_in = W.shape
        terms = 0.0
        for i in range(n_out):
            for j in range(n_in):
                d = sum(abs(float(a) - float(b)) for a, b in zip(lin.out_coords[i], lin.in_coords[j]))
                a = 0.0 if (last_l0 and li == len(lins) - 1) else A
                terms += abs(float(W[i, j])) * (a * d + l0)
        total += terms / (W.numel() if agg == "mean" else 1)
        if bias:
            total += sum(abs(float(b)) * l0 for b in lin.bias.detach()) / (n_out if agg == "mean" else 1)
    if emb and model.embedding is not None:
        E = model.embedding.detach()
        total += float(E.abs().sum()) * l0 / (E.numel() if agg == "mean" else 1)
    return total


@pytest.mark.parametrize("kind", ["line", "folded", "embedding", "grid", "ring"])
@pytest.mark.parametrize("agg", ["sum", "mean"])
def test_connection_cost_equals_naive_double_loop(kind, agg):
    m = make(kind)
    for A, l0, bias, emb, last in [(1.0, 0.1, False, False, False), (2.0, 0.5, True, True, True)]:
        got = bc.connection_cost(m, weight_factor=A, l0=l0, agg=agg, bias_penalty=bias,
                                 embedding_penalty=emb, last_layer_l0_only=last)
        assert got.item() == pytest.approx(naive_cost(m, A, l0, agg, bias, emb, last), rel=1e-5)


def test_connection_cost_has_gradients_and_rejects_bad_agg():
    m = make("line")
    bc.connection_cost(m).backward()
    assert m.linears[0].weight.grad is not None and m.linears[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="agg must be 'sum' or 'mean'"):
        bc.connection_cost(m, agg="max")


def test_state_dict_round_trip_restores_everything():
    m = make("ring")
    bc.relocate(m, top_k=5, weight_factor=2.0, l0=0.5)
    for li in (0, 3):
        m.swap(li, 0, 2)
    x = inputs(m)
    m2 = bc.BioMLP(**KINDS["ring"])
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2(x), m(x))
    assert torch.equal(m2.in_perm, m.in_perm) and torch.equal(m2.out_perm, m.out_perm)
    assert {"linears.0.in_coords", "linears.2.out_coords", "in_perm", "out_perm"} <= set(m.state_dict())


# ---------------------------------------------------------------------------------------------- relocate

def trained(kind, steps=60, seed=0, **over):
    """A briefly trained model, so that weights are not i.i.d. and swaps matter."""
    m = make(kind, seed=seed, **over)
    x = inputs(m, n=64, seed=seed)
    target = torch.randn(64, m.shape[-1], generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.mse_loss(m(x), target) + 1e-2 * bc.connection_cost(m, weight_factor=2.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m


@pytest.mark.parametrize("follow", ["neurons", "positions"])
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relocate_equals_brute_force(kind, seed, follow):
    m = trained(kind, seed=seed)
    kw = dict(weight_factor=2.0 if seed else 1.0, l0=0.5 if seed else 0.1, agg="mean" if seed % 2 else "sum",
              last_layer_l0_only=seed == 2)
    cost0 = bc.connection_cost(m, **kw).item()
    x = inputs(m)
    ref = m(x).detach()
    n = assert_same_relocation(m, top_k=5, follow=follow, **kw)
    assert n > 0  # otherwise the comparison proves little
    assert bc.connection_cost(m, **kw).item() < cost0
    assert torch.allclose(m(x), ref, atol=1e-5, rtol=1e-4)


def test_relocate_equals_brute_force_on_mnist_shape():
    g = torch.Generator().manual_seed(0)
    m = bc.BioMLP([784, 100, 100, 10], geometry="grid", out_geometry="ring", fix_inputs=True, generator=g)
    x = torch.rand(100, 784, generator=g)
    y = F.one_hot(torch.randint(10, (100,), generator=g), 10).float()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    for _ in range(20):
        loss = F.mse_loss(m(x), y) + 0.1 * bc.connection_cost(m, weight_factor=2.0, l0=0.5, agg="mean")
        opt.zero_grad()
        loss.backward()
        opt.step()
    # top_k kept small: the oracle recomputes 89k-weight costs for every candidate.
    n = assert_same_relocation(m, top_k=3, weight_factor=2.0, l0=0.5, agg="mean", last_layer_l0_only=True)
    assert n > 0
    # the last layer pays l0 only, so every output swap is an exact tie: rounding must not move outputs
    assert torch.equal(m.out_perm, torch.arange(10))


def test_following_positions_is_a_different_procedure():
    """The two orders agree until a ranked unit is moved by an earlier swap; on this network they part."""
    a = trained("line", seed=1)
    b = copy.deepcopy(a)
    bc.relocate(a, 20, follow="neurons", weight_factor=2.0)
    bc.relocate(b, 20, follow="positions", weight_factor=2.0)
    assert not torch.equal(a.linears[1].weight, b.linears[1].weight)
    with pytest.raises(ValueError, match="follow must be 'neurons' or 'positions'"):
        bc.relocate(a, 5, follow="units")


def test_swap_without_optimizer_leaves_adam_state_at_its_positions():
    m = make("line")
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    F.mse_loss(m(inputs(m)), torch.zeros(32, 2)).backward()
    opt.step()
    state = {k: v.clone() for k, v in opt.state[m.linears[0].weight].items()}
    bc.permute_units(m, 1, torch.tensor([3, 1, 2, 0] + list(range(4, 20))))  # no optimizer: the authors' swaps
    assert all(torch.equal(opt.state[m.linears[0].weight][k], v) for k, v in state.items())


# ---------------------------------------------------------------------------------------------- training

def test_lambda_schedule_and_bias_switch():
    cfg = bc.BIMTConfig(steps=100, lam=1e-3, lam_schedule=((0.25, 10.0), (0.75, 0.1)), bias_penalty_from=0.75)
    assert [cfg.lam_at(s) for s in (0, 24, 25, 74, 75, 99)] == pytest.approx([1e-3, 1e-3, 1e-2, 1e-2, 1e-3, 1e-3])
    assert not cfg.cost_kwargs(74)["bias_penalty"] and cfg.cost_kwargs(75)["bias_penalty"]
    assert not dataclasses.replace(cfg, bias_penalty_from=None).cost_kwargs(99)["bias_penalty"]


def test_same_seed_gives_identical_history():
    cfg = bc.BIMTConfig(steps=120, swap_every=40, eval_every=20, seed=3, batch_size=16)
    data = tiny_task()
    runs = []
    for _ in range(2):
        m = make("line", seed=3)
        runs.append((bc.train(m, cfg, data, data, F.mse_loss, progress=False), m.state_dict()))
    (h1, s1), (h2, s2) = runs
    assert h1 == h2
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert h1["step"] == list(range(0, 120, 20)) + [119]
    assert h1["swaps"][-1] > 0
    assert h1["test_loss"][-1] < h1["test_loss"][0]


def test_train_calls_snapshots_and_records_metric():
    # oracle: the metric recomputed on the test data from the snapshot taken at the same step
    snaps = []
    cfg = bc.BIMTConfig(steps=30, eval_every=10, swap_every=10, top_k=2)
    train, test = tiny_task(seed=0), tiny_task(n=32, seed=1)
    model = make("line")
    hist = bc.train(model, cfg, train, test, F.mse_loss, metric_fn=lambda o, t: (o - t).abs().mean(),
                    snapshot_fn=lambda step, m: snaps.append((step, copy.deepcopy(m.state_dict()))),
                    snapshot_every=10, progress=False)
    assert [step for step, _ in snaps] == hist["step"] == [0, 10, 20, 29]
    recomputed = []
    for _, state in snaps:
        model.load_state_dict(state)
        with torch.no_grad():
            recomputed.append((model(test[0]) - test[1]).abs().mean().item())
    assert hist["metric"] == pytest.approx(recomputed, rel=1e-6)
    assert len(set(hist["metric"])) == 4  # the metric follows the training, not a constant


def test_a_diverging_run_stops_with_step_lambda_and_both_loss_terms():
    # lr 1e30: the first update makes every weight about 1e30, so the outputs overflow at step 1
    x, y = tiny_task()
    cfg = bc.BIMTConfig(steps=10, lr=1e30, lam=0.02, lam_schedule=(), swap=False)
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 1 \(lambda 0.02\): task loss nan, "
                                                 r"penalty \d.*e\+\d+\. The weights diverged: try a lower lr"):
        bc.train(make("line"), cfg, (x, y), (x, y), F.mse_loss, progress=False)


def test_a_run_that_diverges_without_overflowing_is_warned_once_with_step_and_lambda():
    # lr 10: AdamW moves every weight by about lr at the first update, so the test loss leaps about 1e7-fold, and
    # the outputs saturate at a loss near 4e6 that never turns non-finite: no error, so a warning must say it
    x, y = tiny_task()
    model, cfg = make("line"), bc.BIMTConfig(steps=300, lr=10.0, lam=0.0, swap=False, eval_every=100)
    with torch.no_grad():
        before = F.mse_loss(model(x), y).item()
    with pytest.warns(UserWarning, match=rf"the test loss rose from {before:.3g} to \d\.\d+e\+0\d at step 0 \(lambda "
                                         r"0\): the weights are diverging; try a lower lr \(cfg.lr=10\)") as caught:
        hist = bc.train(model, cfg, (x, y), (x, y), F.mse_loss, progress=False)
    assert len([w for w in caught if "diverging" in str(w.message)]) == 1  # said once, not at every evaluation
    assert hist.test_loss[0] > 1e3 * before and hist.test_loss[-1] > 1e2 * before  # it did diverge, and stayed so


def test_a_sane_run_and_its_continuation_at_a_higher_lambda_are_not_called_diverging():
    x, y = tiny_task()
    model = make("line")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bc.train(model, bc.BIMTConfig(steps=300, lr=1e-2, lam=0.0, swap=False), (x, y), (x, y), F.mse_loss,
                 progress=False)
        # a tenfold lambda raises the test loss far above its trained value, not above the worst one seen
        hist = bc.train(model, bc.BIMTConfig(steps=300, lr=1e-2, lam=1.0, lam_schedule=(), swap=False), (x, y), (x, y),
                        F.mse_loss, progress=False)
    assert hist.test_loss[-1] > 10 * min(hist.test_loss)


def test_train_rejects_mismatched_data():
    x, y = tiny_task()
    with pytest.raises(ValueError, match="64 inputs and 10 targets"):
        bc.train(make("line"), bc.BIMTConfig(steps=1), (x, y[:10]), (x, y), F.mse_loss, progress=False)
