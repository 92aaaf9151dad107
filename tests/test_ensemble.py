"""Ensemble training (bimt_ensemble) against its oracle: each member equals a single bc.train run with its seed.

Bit for bit: the same weights (torch.equal on every parameter and permutation buffer) and the same history
(losses, cost, metric and swap counts at every evaluation) after 2,000 steps with swaps, under both procedures,
on a regression MLP, an embedding MLP and a transformer, and on a grid / ring MLP with fixed inputs and the
caller's samplers. The kernels allow it everywhere here: the batched products are checked against torch.mm
per member (bimt_ensemble._mm), and activations run member by member (bimt_ensemble._Linear's gap).
"""
import dataclasses
import math
from typing import Callable, NamedTuple

import pytest
import torch
import torch.nn.functional as F

import bimt_core as bc
import bimt_ensemble as be
import bimt_seeing as bs

SEEDS = (0, 1)
AUTHORS = dict(dtype="float64", bias_penalty_from=0.0, **bc.AUTHORS_PROCEDURE)


class Run(NamedTuple):
    """One member's model (fresh from its seed), data, loss and metric, and its task's BIMTConfig fields."""
    model: torch.nn.Module
    train: tuple
    test: tuple
    loss_fn: Callable
    metric_fn: Callable | None = None
    cfg: dict = {}


def regression(seed, dtype):
    """The Fig 3 network: [4, 20, 20, 2] on the independence formulas, 100 training points of its seed."""
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(150, 4, generator=g, dtype=dtype) * 2 - 1
    y = torch.stack([(x[:, 0] + x[:, 2]) ** 3, x[:, 1] ** 2 + torch.sin(math.pi * x[:, 3])], 1)
    model = bc.BioMLP([4, 20, 20, 2], generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return Run(model, (x[:100], y[:100]), (x[100:], y[100:]), F.mse_loss)


def modular_addition(seed, dtype, p=11):
    """Figs 5 / 6 in small: (a + b) mod 11 through a learned 11 x 8 embedding, in_fold 2; a split per seed."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.flatten(), b.flatten()], 1)
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    data = x[order], (x[order].sum(1)) % p
    model = bc.BioMLP([16, 20, 20, p], in_fold=2, vocab_size=p, generator=torch.Generator().manual_seed(seed),
                      dtype=dtype)
    cfg = dict(lr=1e-3, lam=0.1, weight_factor=2.0, l0=0.5, agg="mean", embedding_penalty=True, top_k=10)
    return Run(model, tuple(t[:90] for t in data), tuple(t[90:] for t in data), F.cross_entropy, bc.accuracy, cfg)


def transformer(seed, dtype):
    """Fig 7 in small (one block): in-context regression tokens (0, x1), (w x1, 0), (0, x2), batches of 32."""
    g = torch.Generator().manual_seed(100 + seed)
    w, x = torch.rand(300, generator=g, dtype=dtype) * 2 - 1, torch.rand(300, 2, generator=g, dtype=dtype) * 2 + 1
    tokens = torch.zeros(300, 3, 2, dtype=dtype)
    tokens[:, 0, 1], tokens[:, 1, 0], tokens[:, 2, 1] = x[:, 0], w * x[:, 0], x[:, 1]
    y = w[:, None] * x
    model = bc.BioTransformer(2, 2, d_model=8, n_blocks=1, d_mlp=16, generator=torch.Generator().manual_seed(seed),
                              activation="gelu_tanh" if dtype == torch.float64 else "gelu", dtype=dtype)
    cfg = dict(lr=1e-3, weight_factor=2.0, l0=0.5, agg="mean", top_k=10, batch_size=32)
    return Run(model, (tokens[:200], y[:200]), (tokens[200:], y[200:]),
               lambda out, t: F.mse_loss(out[:, [0, 2], 0], t), cfg=cfg)


def pixels(seed, dtype):
    """Fig 8 in small: 4 x 4 'pixels' on a grid (never swapped), a ring of 4 outputs, the MNIST cost."""
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(160, 16, generator=g, dtype=dtype)
    y = (x[:, :8].sum(1) > x[:, 8:].sum(1)).long() + 2 * (x[:, ::2].sum(1) > x[:, 1::2].sum(1)).long()
    model = bc.BioMLP([16, 16, 9, 4], geometry="grid", out_geometry="ring", fix_inputs=True,
                      generator=torch.Generator().manual_seed(seed), dtype=dtype)
    cfg = dict(lr=1e-3, lam=0.01, weight_factor=2.0, l0=0.5, agg="mean", last_layer_l0_only=True, top_k=10,
               swap_every=100, swap_cost={"last_layer_l0_only": False})
    return Run(model, (x[:120], y[:120]), (x[120:], y[120:]), F.cross_entropy, bc.accuracy, cfg)


def epoch_sampler(n, size, seed):
    """The authors' DataLoader order: a fresh permutation of the n rows every epoch."""
    g, order = torch.Generator().manual_seed(seed), None

    def sampler(step):
        nonlocal order
        b = step % (n // size)
        if b == 0:
            order = torch.randperm(n, generator=g)
        return order[b * size:(b + 1) * size]
    return sampler


def config(procedure, seed, steps, **kw):
    return bc.BIMTConfig(steps=steps, eval_every=500, seed=seed, **kw, **(AUTHORS if procedure == "authors" else {}))


def assert_same_run(member, single, hist, single_hist):
    assert hist == single_hist
    assert single_hist["swaps"][-1] > 0  # the runs swapped
    state, single_state = member.state_dict(), single.state_dict()
    assert list(state) == list(single_state)
    for name, t in state.items():
        assert torch.equal(t, single_state[name]), name


@pytest.mark.parametrize("procedure", ["clean", "authors"])
@pytest.mark.parametrize("task, steps, sampled", [(regression, 2000, False), (modular_addition, 2000, False),
                                                  (transformer, 2000, False), (pixels, 600, True)])
def test_each_member_is_its_single_run(task, steps, sampled, procedure):
    dtype = torch.float64 if procedure == "authors" else torch.float32
    runs = [task(seed, dtype) for seed in SEEDS]
    cfgs = [config(procedure, seed, steps, **run.cfg) for seed, run in zip(SEEDS, runs)]
    samplers = [epoch_sampler(len(run.train[0]), 40, seed) for seed, run in zip(SEEDS, runs)] if sampled else None
    loss_fn, metric_fn = runs[0].loss_fn, runs[0].metric_fn
    hists = be.train_ensemble([r.model for r in runs], cfgs, [r.train for r in runs], [r.test for r in runs],
                              loss_fn, metric_fn, samplers, progress=False)
    for seed, run, cfg, hist in zip(SEEDS, runs, cfgs, hists):
        single = task(seed, dtype).model
        sampler = epoch_sampler(len(run.train[0]), 40, seed) if sampled else None
        assert_same_run(run.model, single, hist, bc.train(single, cfg, run.train, run.test, loss_fn, metric_fn,
                                                          progress=False, sampler=sampler))
    first, second = (next(run.model.parameters()) for run in runs)
    assert not torch.equal(first, second)  # two seeds, two different networks


@pytest.mark.parametrize("procedure", ["clean", "authors"])
def test_a_member_without_swaps_beside_one_with_swaps_is_its_single_run(procedure):
    """Fig 7's two arms in one stack: the same seed with swaps and without."""
    dtype = torch.float64 if procedure == "authors" else torch.float32
    runs = [transformer(SEEDS[0], dtype) for _ in range(2)]
    cfgs = [config(procedure, SEEDS[0], 1000, swap=swap, **run.cfg) for swap, run in zip((True, False), runs)]
    hists = be.train_ensemble([r.model for r in runs], cfgs, [r.train for r in runs], [r.test for r in runs],
                              runs[0].loss_fn, progress=False)
    assert hists[0]["swaps"][-1] > 0 and hists[1]["swaps"][-1] == 0
    for run, cfg, hist in zip(runs, cfgs, hists):
        single = transformer(SEEDS[0], dtype)
        single_hist = bc.train(single.model, cfg, single.train, single.test, single.loss_fn, progress=False)
        assert hist == single_hist
        assert all(torch.equal(a, b) for a, b in zip(run.model.state_dict().values(),
                                                     single.model.state_dict().values()))


def test_members_come_out_as_ordinary_models():
    """After training each member owns its tensors (no view of the stack) and reads like its single run."""
    runs = [regression(seed, torch.float32) for seed in SEEDS]
    cfgs = [config("clean", seed, 400) for seed in SEEDS]
    models = [r.model for r in runs]
    be.train_ensemble(models, cfgs, [r.train for r in runs], [r.test for r in runs], F.mse_loss, progress=False)
    single = regression(1, torch.float32).model
    bc.train(single, cfgs[1], runs[1].train, runs[1].test, F.mse_loss, progress=False)
    for m in models:
        for t in [*m.parameters(), m.in_perm, m.out_perm]:
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    assert bs.analyze(models[1], 0.05) == bs.analyze(single, 0.05)
    with torch.no_grad():
        assert torch.equal(models[1](runs[1].test[0]), single(runs[1].test[0]))


@pytest.mark.parametrize("shapes", [(7, 2, 20), (7, 20, 2), (100, 20, 3), (3, 3, 5), (64, 32, 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_linear_is_addmm_per_member(shapes, dtype):
    """Forward, input gradient and weight gradient of the batched linear against F.linear per member, bit for
    bit, on sizes where bmm's kernels differ from mm's (a few rows) and where they agree; with the activation
    after it, whose member sizes here leave remainders of the vector loop."""
    rows, n_in, n_out = shapes
    g = torch.Generator().manual_seed(rows + n_in + n_out)
    x, w, b, grad = (torch.randn(3, *s, generator=g, dtype=dtype)
                     for s in ((rows, n_in), (n_out, n_in), (n_out,), (rows, n_out)))
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    out = F.silu(be._Linear.apply(x, w, b, True))
    out.backward(grad)
    for e in range(3):
        xe, we, be_ = (t.detach()[e].clone().requires_grad_() for t in (x, w, b))
        single = F.silu(F.linear(xe, we, be_))
        single.backward(grad[e])
        assert torch.equal(out[e], single)
        for batched, one in ((x, xe), (w, we), (b, be_)):
            assert torch.equal(batched.grad[e], one.grad)


def bad_inputs():
    """Two regression members, their configs and data, ready to be spoiled one argument at a time."""
    runs = [regression(seed, torch.float32) for seed in SEEDS]
    return dict(models=[r.model for r in runs], cfgs=[config("clean", s, 20) for s in SEEDS],
                train_data=[r.train for r in runs], test_data=[r.test for r in runs], loss_fn=F.mse_loss,
                progress=False)


def spoil(**changes):
    def call():
        kw = bad_inputs()
        for k, f in changes.items():
            kw[k] = f(kw.get(k))
        be.train_ensemble(**kw)
    return call


def other_seed_config(cfgs):
    return [cfgs[0], dataclasses.replace(cfgs[1], lr=1e-2)]


def shorter_data(data):
    return [data[0], (data[1][0][:50], data[1][1][:50])]


@pytest.mark.parametrize("call, exc, match", [
    (spoil(models=lambda m: m[0]), TypeError, "models must be a non-empty list"),
    (spoil(models=lambda m: [m[0], m[0]]), ValueError, "distinct model objects"),
    (spoil(cfgs=lambda c: c[:1]), TypeError, "cfgs must be a list of 2"),
    (spoil(cfgs=other_seed_config), ValueError, r"cfgs\[1\] must be equal to cfgs\[0\] except for seed"),
    (spoil(models=lambda m: [m[0], bc.BioMLP([4, 10, 2])]), ValueError,
     r"models\[1\] must be the architecture of models\[0\], got 'different parameters"),
    (spoil(models=lambda m: [m[0], bc.BioMLP([4, 20, 20, 2], activation="relu")]), ValueError,
     "different activation"),
    (spoil(models=lambda m: [torch.nn.Linear(4, 2)] * 2), ValueError, "distinct model objects"),
    (spoil(models=lambda m: [torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)]), TypeError,
     "must be a BioMLP or BioTransformer"),
    (spoil(models=lambda m: [bc.BioTransformer(4, 2, layer_norm=True) for _ in m]), ValueError,
     "without LayerNorm"),
    (spoil(models=lambda m: [bc.BioMLP([4, 20, 20, 2], dtype=torch.float64) for _ in m]), ValueError,
     "cfg.dtype is float32 but the model's parameters are torch.float64"),
    (spoil(train_data=shorter_data), ValueError, r"train_data\[1\]'s \(inputs, targets\) must be the shapes"),
    (spoil(test_data=lambda d: [d[0], (d[1][0][:, :3], d[1][1])]), ValueError,
     r"BioMLP expects inputs of shape \(batch, 4\)"),
    (spoil(loss_fn=lambda f: (lambda out, y: F.mse_loss(out, y).detach())), ValueError,
     "loss_fn must return a scalar tensor with gradients"),
    (spoil(samplers=lambda s: [lambda step: torch.arange(10), lambda step: torch.arange(12)]), ValueError,
     "the samplers' batch sizes at step 0 must be the same for every member"),
    (spoil(samplers=lambda s: [lambda step: torch.arange(10), lambda step: torch.arange(95, 105)]), ValueError,
     r"sampler\(0\) returned"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_members_that_diverge_without_overflowing_are_each_warned_once_by_name():
    kw = bad_inputs()
    kw["cfgs"] = [dataclasses.replace(c, lr=10.0, lam=0.0) for c in kw["cfgs"]]  # as bc.train's test: a 1e7-fold leap
    with pytest.warns(UserWarning, match="diverging") as caught:
        be.train_ensemble(**kw)
    said = [str(w.message) for w in caught if "diverging" in str(w.message)]
    assert [m.split(":")[0] for m in said] == [f"member {e} (seed {s})" for e, s in enumerate(SEEDS)]
    assert all(" at step 0 (lambda 0): " in m for m in said)


def test_a_diverging_member_is_named_and_every_member_released():
    kw = bad_inputs()
    x, y = kw["train_data"][1]
    kw["train_data"][1] = (x, y.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match=r"train_data\[1\] targets hold nan at index \(0, 0\)"):
        be.train_ensemble(**kw)  # non-finite data is refused before the first step
    kw["train_data"][1] = (x, y.clone().fill_(1e30))  # finite, but its squared error overflows float32
    with pytest.raises(FloatingPointError, match=r"member 1 \(seed 1\): loss became inf at step 0"):
        be.train_ensemble(**kw)
    for m in kw["models"]:
        w = m.linears[0].weight
        assert w.untyped_storage().nbytes() == w.numel() * w.element_size()
