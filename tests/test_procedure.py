"""The two procedures (ours and the authors'), float64 end to end, and train's input checks.

Oracles: nn.Linear / torch.normal under a float64 default dtype (the authors' notebooks), exact coordinates
computed in float64, and a hand-written loop that follows the authors' code step by step.
"""
import dataclasses
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import bimt_core as bc
from helpers import tiny_task


def test_float64_model_draws_the_same_init_as_a_float64_default_dtype():
    """The authors' float64 runs set the default dtype and seed the global RNG; we pass dtype and a generator."""
    ours = bc.BioMLP([64, 50, 50, 59], in_fold=2, vocab_size=59, generator=torch.Generator().manual_seed(4),
                     dtype=torch.float64)
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        torch.manual_seed(4)
        linears = [nn.Linear(64, 50), nn.Linear(50, 50), nn.Linear(50, 59)]
        embedding = torch.normal(0, 1, size=(59, 32))
    finally:
        torch.set_default_dtype(old)
    for a, b in zip(ours.linears, linears):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert torch.equal(ours.embedding, embedding)
    assert torch.get_default_dtype() == old  # and we changed nothing global


def test_float32_init_still_matches_nn_linear():
    ours = bc.BioMLP([4, 20, 20, 2], generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    for a in ours.linears:
        b = nn.Linear(a.in_features, a.out_features)
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


@pytest.mark.parametrize("geometry, out_geometry", [("line", None), ("grid", "ring")])
def test_coordinates_and_lengths_follow_the_dtype_exactly(geometry, out_geometry):
    shape = [16, 9, 4] if geometry == "grid" else [4, 6, 3]
    m = bc.BioMLP(shape, geometry=geometry, out_geometry=out_geometry).double()
    built = bc.BioMLP(shape, geometry=geometry, out_geometry=out_geometry, dtype=torch.float64)
    for a, b in zip(m.linears, built.linears):
        exact = bc.neuron_coords(a.out_features, a.out_geometry, dtype=torch.float64)
        assert a.out_coords.dtype == torch.float64 and torch.equal(a.out_coords, exact)
        assert torch.equal(a.dist, b.dist) and torch.equal(a.dist, bc.manhattan(a.out_coords, a.in_coords))
    assert m.float().linears[0].dist.dtype == torch.float32
    assert torch.equal(m.linears[0].dist, bc.BioMLP(shape, geometry=geometry, out_geometry=out_geometry).linears[0].dist)


def test_float64_cost_matches_exact_geometry():
    """A float64 cost must not carry float32 rounding of positions (~1e-7), far above SWAP_TOL."""
    m = bc.BioMLP([3, 7, 5], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = 0.0
    for lin in m.linears:
        n_out, n_in = lin.weight.shape
        for i in range(n_out):
            for j in range(n_in):
                d = abs((2 * i + 1) / (2 * n_out) - (2 * j + 1) / (2 * n_in))
                exact += abs(float(lin.weight[i, j].detach())) * (2.0 * d + 0.5)
    assert bc.connection_cost(m, weight_factor=2.0, l0=0.5).item() == pytest.approx(exact, rel=1e-13)


def test_tanh_gelu_is_the_authors_approximation():
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    ref = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    t = bc.BioTransformer(2, 2, d_model=4, d_mlp=8, activation="gelu_tanh", dtype=torch.float64)
    assert torch.allclose(t.blocks[0].act(x), ref, atol=1e-15, rtol=0)
    with pytest.raises(ValueError, match="unknown activation"):
        bc.BioTransformer(2, 2, activation="swish")


def authors_loop(model, cfg, data, steps):
    """The authors' training loop, written out: lambda steps, full batch, AdamW, then a swap pass that
    leaves the optimizer's moments where they are and visits ranked positions."""
    x, y = data
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    costs = []
    for step in range(steps):
        lam = cfg.lam_at(step)
        cost = bc.connection_cost(model, **cfg.cost_kwargs(step))
        loss = F.mse_loss(model(x), y) + lam * cost
        costs.append(cost.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % cfg.swap_every == 0:
            bc.relocate(model, cfg.top_k, None, "positions", **cfg.swap_cost_kwargs(step))
    return costs


def test_train_with_the_authors_procedure_equals_their_loop():
    data = tiny_task()
    cfg = bc.BIMTConfig(steps=600, swap_every=100, top_k=10, lam=1e-2, **bc.AUTHORS_PROCEDURE)
    ours = bc.BioMLP([4, 12, 12, 2], generator=torch.Generator().manual_seed(3))
    ref = bc.BioMLP([4, 12, 12, 2], generator=torch.Generator().manual_seed(3))
    hist = bc.train(ours, cfg, data, data, F.mse_loss, progress=False)
    authors_loop(ref, cfg, data, cfg.steps)
    assert hist["swaps"][-1] > 0
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), ref.state_dict().values()))
    clean = bc.BioMLP([4, 12, 12, 2], generator=torch.Generator().manual_seed(3))
    bc.train(clean, dataclasses.replace(cfg, swap_moves_optimizer_state=True, relocate_follow="neurons"),
             data, data, F.mse_loss, progress=False)
    assert not torch.equal(clean.linears[1].weight, ours.linears[1].weight)  # the switches matter


@pytest.mark.parametrize("lam_schedule", [((0.5, 0.0),), ((0.0, 0.0),)])
def test_train_skips_the_cost_at_lambda_0_without_changing_the_run(lam_schedule):
    # the oracle adds 0 * cost to the loss at every step, as train did before it skipped the cost at lambda 0
    data = tiny_task()
    cfg = bc.BIMTConfig(steps=400, swap_every=100, top_k=10, lam=1e-2, lam_schedule=lam_schedule, eval_every=50,
                        **bc.AUTHORS_PROCEDURE)
    ours = bc.BioMLP([4, 12, 12, 2], generator=torch.Generator().manual_seed(5))
    ref = bc.BioMLP([4, 12, 12, 2], generator=torch.Generator().manual_seed(5))
    hist = bc.train(ours, cfg, data, data, F.mse_loss, progress=False)
    costs = authors_loop(ref, cfg, data, cfg.steps)
    assert hist["lam"][-1] == 0 and hist["swaps"][-1] > 0
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), ref.state_dict().values()))
    assert hist["cost"] == [costs[s] for s in hist["step"]]


def test_train_uses_a_given_sampler():
    data = tiny_task(n=50)
    seen = []

    def sampler(step):
        seen.append(step)
        return torch.arange(step % 5, 50, 5)

    cfg = bc.BIMTConfig(steps=7, swap=False)
    bc.train(bc.BioMLP([4, 5, 2]), cfg, data, data, F.mse_loss, progress=False, sampler=sampler)
    assert seen == list(range(7))


def test_train_in_float64_end_to_end():
    data = tiny_task(dtype=torch.float64)
    m = bc.BioMLP([4, 8, 2], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = bc.train(m, bc.BIMTConfig(steps=50, swap_every=25, dtype="float64"), data, data, F.mse_loss, progress=False)
    assert m.linears[0].weight.dtype == torch.float64 and h["test_loss"][-1] < h["test_loss"][0]


@pytest.mark.parametrize("make, data, cfg, match", [
    (lambda: bc.BioMLP([4, 8, 2]), tiny_task(dtype=torch.float64), bc.BIMTConfig(steps=1),
     r"train_data inputs are torch.float64 but the model trains in float32"),
    (lambda: bc.BioMLP([4, 8, 2]), tiny_task(), bc.BIMTConfig(steps=1, dtype="float64"),
     r"cfg.dtype is float64 but the model's parameters are torch.float32"),
    (lambda: bc.BioMLP([4, 8, 2], dtype=torch.float64), tiny_task(), bc.BIMTConfig(steps=1),
     r"cfg.dtype is float32 but the model's parameters are torch.float64"),
    (lambda: bc.BioMLP([4, 8, 2]), (torch.zeros(0, 4), torch.zeros(0, 2)), bc.BIMTConfig(steps=1),
     r"0 inputs and 0 targets"),
    (lambda: bc.BioMLP([4, 8, 2]), torch.zeros(3, 4), bc.BIMTConfig(steps=1), r"\(inputs, targets\) pair"),
])
def test_train_rejects_bad_data_clearly(make, data, cfg, match):
    with pytest.raises(ValueError, match=match):
        bc.train(make(), cfg, data, data, F.mse_loss, progress=False)


@pytest.mark.parametrize("kw, match", [
    (dict(steps=0), "steps must be a positive int"),
    (dict(steps=2.5), "steps must be a positive int"),
    (dict(lr=0.0), "lr must be a finite number > 0"),
    (dict(lam=-1e-3), "lam must be a finite number >= 0"),
    (dict(l0=float("nan")), "l0 must be a finite number >= 0"),
    (dict(lam_schedule=((1.5, 10.0),)), "lam_schedule must be"),
    (dict(agg="max"), "agg must be 'sum' or 'mean'"),
    (dict(bias_penalty_from=2.0), "bias_penalty_from must be a fraction"),
    (dict(swap_every=0), "swap_every must be a positive int"),
    (dict(top_k=-1), "top_k must be an int >= 0"),
    (dict(batch_size=0), "batch_size must be a positive int or None"),
    (dict(eval_every=0), "eval_every must be a positive int"),
    (dict(threads=0), "threads must be a positive int or None"),
    (dict(dtype="float16"), "dtype must be 'float32' or 'float64'"),
    (dict(relocate_follow="units"), "relocate_follow must be 'neurons' or 'positions'"),
    (dict(swap_cost={"A": 1.0}), "swap_cost keys must be among"),
])
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        bc.BIMTConfig(**kw)


@pytest.mark.parametrize("threads", [1, 2, None])
def test_train_uses_cfg_threads_and_restores_the_count(threads):
    # The caller's count differs from cfg.threads, so that neither using nor restoring it can pass by default;
    # metric_fn runs inside train and reports the count there. None: train leaves the caller's count.
    before, outside = torch.get_num_threads(), 3
    torch.set_num_threads(outside)
    try:
        hist = bc.train(bc.BioMLP([4, 5, 2]), bc.BIMTConfig(steps=3, eval_every=1, threads=threads), tiny_task(),
                        tiny_task(), F.mse_loss, metric_fn=lambda o, t: torch.get_num_threads(), progress=False)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert hist["metric"] == [threads or outside] * 3
    assert after == outside
