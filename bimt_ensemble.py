"""Ensemble training: E independent BIMT runs, one per seed, in one batched step.

BIMT's outcomes depend on the seed, so one run decides nothing. The networks are small enough that a training
step costs more in framework overhead per operation than in arithmetic, so E members are trained together:
their parameters are stacked along a new leading dimension, and one batched forward (`torch.baddbmm` on
(E, out, in) weights), one backward and one AdamW step serve them all. AdamW is elementwise, so each member's
moments are its own. Everything else stays per member: initial weights (the models passed in), data, batches,
swaps (each member's `bc.relocate` is its own decision) and the swap rule for the optimizer's state.

While training, every member's parameters and in_perm / out_perm buffers are views of the stacked tensors, so
`bc.relocate` and `bc.permute_units` work on a member unchanged; afterwards each member owns its tensors again,
an ordinary model that every bimt_seeing function reads. Each member ends bit for bit where `bc.train` with its
seed ends (tests/test_ensemble.py): the batched kernels do the same arithmetic per member as the single ones,
with one exception handled by `_Linear`'s gap. Covered: BioMLP (plain, with an embedding, grid / ring geometry) and
BioTransformer without LayerNorm.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import bimt_core as bc

__all__ = ["VECTOR_BLOCK_BYTES", "Member", "seed_list", "stacked_cost", "train_arms", "train_ensemble",
           "train_seeds"]

# An elementwise CPU kernel runs its vector loop over blocks of two vectors (at most 2 x 512 bits) and the rest
# with scalar code, whose exp / erf can differ from the vector ones in the last bit. One member's activations
# alone can end in such a remainder; stacked, it would fall in a vector block. See `_Linear`'s `gap`.
VECTOR_BLOCK_BYTES = 128


_AGREES: dict = {}  # (shapes, strides, dtype, threads) -> whether bmm reproduces mm there


def _mm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(E, n, k) @ (E, k, m) (+ bias (E, m)) -> (E, n, m): per member torch.mm / torch.addmm, bit for bit. One
    bmm where it does the same arithmetic, else a loop over members. bmm picks its kernel by shape and layout,
    never by value (its own loop under 400 multiply-adds, MKL's batched gemm whose small-matrix kernels can
    differ from mm's), so one random probe per shape settles it."""
    key = (a.shape, a.stride(), b.shape, b.stride(), bias is None, a.dtype, torch.get_num_threads())
    if key not in _AGREES:
        g = torch.Generator().manual_seed(0)  # the probe leaves torch's global generator alone
        pa, pb, pc = (torch.empty_like(t).copy_(torch.randn(t.shape, generator=g, dtype=t.dtype))
                      for t in (a, b, a.new_empty(len(a), b.shape[2]) if bias is None else bias))
        pc = None if bias is None else pc
        _AGREES[key] = torch.equal(_bmm(pa, pb, pc), _loop(pa, pb, pc))
    return (_bmm if _AGREES[key] else _loop)(a, b, bias)


def _bmm(a, b, bias):
    return torch.bmm(a, b) if bias is None else torch.baddbmm(bias[:, None], a, b)


def _loop(a, b, bias):
    return torch.stack([torch.mm(x, y) if bias is None else torch.addmm(c, x, y)
                        for x, y, c in zip(a, b, [None] * len(a) if bias is None else bias)])


class _Linear(torch.autograd.Function):
    """F.linear per member: x (E, R, in), weight (E, out, in), bias (E, out) or None -> (E, R, out), forward
    addmm(bias, x, weight^T) and addmm's own backward (dx = g weight, dweight = g^T x, dbias = g summed over
    rows). Autograd's bmm backward would form dweight as (x^T g)^T, which rounds differently. gap: the output
    is a view with a gap after each member when a member's size is not a multiple of VECTOR_BLOCK_BYTES, so
    that an activation applied to it runs member by member, each ending in the remainder it has alone."""

    @staticmethod
    def forward(ctx, x, weight, bias, gap):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        out = _mm(x, weight.transpose(1, 2), bias)
        n = out[0].numel()
        if not gap or n * out.element_size() % VECTOR_BLOCK_BYTES == 0:
            return out
        return out.new_empty(len(out), n + 1)[:, :n].view(out.shape).copy_(out)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        return (_mm(g, weight) if need[0] else None, _mm(g.transpose(1, 2), x) if need[1] else None,
                g.sum(1) if ctx.has_bias and need[2] else None, None)


def _permute_last(h: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """h (E, ..., n) with the last dim of member e reordered by index[e] (E, n) (None: as it is): index_select
    per member, a copy, so skipping it changes no bit."""
    return h if index is None else h.gather(-1, index.view(len(index), *[1] * (h.dim() - 2), -1).expand(h.shape))


class _MemberState(torch.optim.Optimizer):
    """Member e's slice of the ensemble's AdamW moments, keyed by the member's own parameters: what
    `bc.permute_units` moves on a swap when swap_moves_optimizer_state is on. It never steps."""

    def __init__(self, ensemble: "_Ensemble", optimizer: torch.optim.Optimizer, e: int):
        params = [ensemble.models[e].get_parameter(name) for name in ensemble.params]
        super().__init__(params, {})
        for p, stacked in zip(params, ensemble.params.values()):
            self.state[p] = {k: v[e] for k, v in optimizer.state[stacked].items()
                             if torch.is_tensor(v) and v.shape == stacked.shape}


class _Ensemble:
    """The stacked parameters (name -> (E, *shape) leaf) and permutation buffers of E models of one
    architecture, whose own tensors are views of them until `release`."""

    def __init__(self, models: list):
        self.models, m0 = models, models[0]
        self.params = {name: nn.Parameter(torch.stack([m.get_parameter(name).detach() for m in models]))
                       for name, _ in m0.named_parameters()}
        self.perms = {name: torch.stack([getattr(m, name) for m in models]) for name in ("in_perm", "out_perm")
                      if getattr(m0, name) is not None}
        self.stacked_of = {p: self.params[name] for name, p in m0.named_parameters()}
        for e, m in enumerate(models):
            for name, stacked in self.params.items():
                m.get_parameter(name).data = stacked.data[e]
            for name, stacked in self.perms.items():
                setattr(m, name, stacked[e])
        self.refresh()

    def refresh(self) -> None:
        """After swaps: the index that reorders each member's inputs (in_perm) and outputs (argsort of out_perm),
        None where every member's is the identity (e.g. fixed pixels)."""
        self.order = {}
        for name, perm in self.perms.items():
            index = perm if name == "in_perm" else torch.argsort(perm, dim=-1)
            self.order[name] = None if torch.equal(index, torch.arange(perm.shape[1]).expand_as(index)) else index

    def release(self) -> None:
        """Give every member its own copy of its tensors back (a view would keep the whole stack alive)."""
        for m in self.models:
            for name in self.params:
                p = m.get_parameter(name)
                p.data = p.data.clone()
            for name in self.perms:
                setattr(m, name, getattr(m, name).clone())

    def cost_terms(self, **cost_kwargs) -> list:
        """`bc.cost_terms` of member 0 with each tensor replaced by its stack: positions, hence the coefficients,
        are the same in every member."""
        return [(self.stacked_of[t], coef, factor) for t, coef, factor in bc.cost_terms(self.models[0], **cost_kwargs)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (E, B, ...) caller inputs -> (E, B, ...) outputs in the caller's order, member e by member e's
        weights: the members' `forward`, batched."""
        m0 = self.models[0]
        if isinstance(m0, bc.BioTransformer):
            h = self._transformer(_permute_last(x, self.order["in_perm"]))
        elif m0.embedding is None:
            h = self._mlp(_permute_last(x, self.order["in_perm"]))
        else:
            table = self.params["embedding"]  # (E, vocab, d): member e's token t is row e * vocab + t
            offsets = table.shape[1] * torch.arange(len(table))
            h = self._mlp(table.flatten(0, 1)[x + offsets.view(-1, *[1] * (x.dim() - 1))].flatten(2))
        return _permute_last(h, self.order["out_perm"])

    def _lin(self, name: str, h: torch.Tensor, gap: bool = False) -> torch.Tensor:
        """BioLinear `name` on h (E, ..., in) -> (E, ..., out); gap: an activation follows (see `_Linear`)."""
        w = self.params[name + ".weight"]
        out = _Linear.apply(h.reshape(len(h), -1, h.shape[-1]), w, self.params.get(name + ".bias"), gap)
        return out.view(*h.shape[:-1], w.shape[1])

    def _mlp(self, h: torch.Tensor) -> torch.Tensor:
        """BioMLP.forward_internal: input row (E, B, n0) -> output row (E, B, nL)."""
        m0 = self.models[0]
        for i in range(len(m0.linears) - 1):
            h = m0.act(self._lin(f"linears.{i}", h, gap=True))
        return self._lin(f"linears.{len(m0.linears) - 1}", h)

    def _transformer(self, x: torch.Tensor) -> torch.Tensor:
        """BioTransformer.forward_internal without LayerNorm: (E, B, T, in_dim) -> (E, B, T, out_dim)."""
        m0 = self.models[0]
        E, B, T, _ = x.shape
        C, nh = m0.d_model, m0.n_heads
        h = self._lin("embed_in", x)
        for b, blk in enumerate(m0.blocks):
            qkv = self._lin(f"blocks.{b}.qkv", h).view(E * B, T, 3 * C)
            q, k, v = (t.view(E * B, T, nh, C // nh).transpose(1, 2) for t in qkv.split(C, dim=-1))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            h = h + self._lin(f"blocks.{b}.attn_out", y.transpose(1, 2).reshape(E, B, T, C))
            h = h + self._lin(f"blocks.{b}.mlp_out", blk.act(self._lin(f"blocks.{b}.mlp_in", h, gap=True)))
        return self._lin("unembed", h)


def stacked_cost(terms: list) -> torch.Tensor:
    """`bc.sum_terms` per member of stacked terms (tensor (E, ...), coef, factor) -> (E,)."""
    cost = None
    for t, coef, factor in terms:
        dims = tuple(range(1, t.dim()))
        c = t.abs().sum(dims) if coef is None else (t.abs() * coef).sum(dims)
        c = c if factor == 1.0 else factor * c
        cost = c if cost is None else cost + c
    return cost


def _describe(m: nn.Module) -> dict:
    """What must agree between members for one batched forward to serve them all."""
    lins = [mod for mod in m.modules() if isinstance(mod, bc.BioLinear)]
    acts = [m.act] if isinstance(m, bc.BioMLP) else [blk.act for blk in m.blocks]
    probe = torch.linspace(-4, 4, 17, dtype=lins[0].weight.dtype)  # activations are functions: compare values
    return dict(type=type(m), parameters=[(n, tuple(p.shape), p.dtype) for n, p in m.named_parameters()],
                coordinates=[(lin.in_coords.tolist(), lin.out_coords.tolist()) for lin in lins],
                activation=[act(probe).tolist() for act in acts], fix_inputs=getattr(m, "fix_inputs", None),
                n_heads=getattr(m, "n_heads", None))


def _check_member(e: int, model: nn.Module, cfg: bc.BIMTConfig, loss_fn, metric_fn, sampler, train_pair,
                  test_pair) -> float:
    """`bc.train`'s checks before its first step, for member e; returns loss_fn on its test data."""
    device = bc._check_run(model, cfg, loss_fn, metric_fn=metric_fn, sampler=sampler)
    if cfg.swap:
        bc._neuron_layers(model)  # a model that cannot swap fails now, not after swap_every steps
    bc._tensors(f"train_data[{e}]", train_pair, cfg.torch_dtype, device)
    x_te, y_te = bc._tensors(f"test_data[{e}]", test_pair, cfg.torch_dtype, device)
    with torch.no_grad():
        return bc._loss_probe(loss_fn, model(x_te), y_te, f"test_data[{e}]").item()


def _check_members(models, cfgs, train_data, test_data, loss_fn, metric_fn, samplers) -> list[float]:
    """Clear errors for members that one batched step cannot serve, then `bc.train`'s checks per member; returns
    each member's test loss before training."""
    bc._check(isinstance(models, (list, tuple)) and len(models) > 0, "models", type(models).__name__,
              "a non-empty list of models", TypeError)
    E = len(models)
    bc._check(len({id(m) for m in models}) == E, "models", [type(m).__name__ for m in models],
              "distinct model objects (each member trains in place)")
    for name, v in dict(cfgs=cfgs, train_data=train_data, test_data=test_data, samplers=samplers).items():
        bc._check(isinstance(v, (list, tuple)) and len(v) == E or name == "samplers" and v is None, name,
                  type(v).__name__, f"a list of {E} (one per model)" + " or None" * (name == "samplers"), TypeError)
    probes = []
    for e, m in enumerate(models):
        bc._check(type(m) in (bc.BioMLP, bc.BioTransformer), f"models[{e}]", type(m).__name__,
                  "a BioMLP or BioTransformer (the forwards train_ensemble batches); train others with bc.train",
                  TypeError)
        bc._check(not any(isinstance(mod, nn.LayerNorm) for mod in m.modules()), f"models[{e}]",
                  "a BioTransformer with layer_norm=True", "a BioTransformer without LayerNorm (layer_norm=False)")
        probes.append(_check_member(e, m, cfgs[e], loss_fn, metric_fn, None if samplers is None else samplers[e],
                                    train_data[e], test_data[e]))
    first, unseeded = _describe(models[0]), dataclasses.replace(cfgs[0], seed=0, swap=False)
    for e in range(1, E):
        differs = [k for k, v in _describe(models[e]).items() if v != first[k]]
        bc._check(not differs, f"models[{e}]", f"different {', '.join(differs)}", "the architecture of models[0]")
        bc._check(type(cfgs[e]) is type(cfgs[0]) and dataclasses.replace(cfgs[e], seed=0, swap=False) == unseeded,
                  f"cfgs[{e}]", cfgs[e], f"equal to cfgs[0] except for seed and swap ({cfgs[0]!r})")
        for name, data in (("train_data", train_data), ("test_data", test_data)):
            shapes = [(tuple(t.shape), t.dtype) for t in data[e]]
            bc._check(shapes == [(tuple(t.shape), t.dtype) for t in data[0]], f"{name}[{e}]'s (inputs, targets)",
                      shapes, f"the shapes and dtypes of {name}[0]'s (one stacked batch serves all members)")
    return probes


def _default_sampler(n: int, cfg: bc.BIMTConfig):
    """`bc.train`'s batches: cfg.batch_size rows with replacement from a generator seeded with cfg.seed."""
    gen = torch.Generator().manual_seed(cfg.seed)
    return lambda step: torch.randint(n, (cfg.batch_size,), generator=gen)


def _batches(train_data: list, X: torch.Tensor, Y: torch.Tensor, samplers: list, step: int) -> tuple:
    """(E, B, ...) inputs and targets: member e's rows samplers[e](step) of its own data."""
    idx = [s(step) for s in samplers]
    if all(torch.is_tensor(i) and i.dtype == torch.long and i.shape == idx[0].shape == (len(i),) for i in idx):
        try:  # one gather for all members
            rows, cols = torch.arange(len(X))[:, None], torch.stack(idx)
            return X[rows, cols], Y[rows, cols]
        except IndexError:
            pass  # a member's indices are out of range: bc._rows below says which
    pairs = [bc._rows(x, y, i, step) for (x, y), i in zip(train_data, idx)]
    sizes = [len(xb) for xb, _ in pairs]
    bc._check(len(set(sizes)) == 1, f"the samplers' batch sizes at step {step}", sizes,
              "the same for every member (one stacked batch serves all)")
    return torch.stack([xb for xb, _ in pairs]), torch.stack([yb for _, yb in pairs])


def _task_loss(loss_fn, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    task = loss_fn(out, y)
    if not (torch.is_tensor(task) and task.dim() == 0 and task.requires_grad):
        raise ValueError(f"loss_fn must return a scalar tensor with gradients (e.g. F.mse_loss(out, y)), got {task!r}")
    return task


def train_ensemble(models: list, cfgs: list, train_data: list, test_data: list, loss_fn, metric_fn=None,
                   samplers: list | None = None, progress: bool = True, snapshot_fns: list | None = None,
                   snapshot_every: int | None = None) -> list[dict]:
    """`bc.train` for E members at once: models (E models of one architecture, trained in place), cfgs (E
    BIMTConfigs equal except for seed and swap: members with swaps and members without can share a stack), train_data / test_data (E (inputs, targets) pairs of equal shapes),
    samplers (None, or E sampler(step) -> batch indices), snapshot_fns (None, or E snapshot_fn(step, model) or
    None). Member e follows bc.train(models[e], cfgs[e], train_data[e], test_data[e], loss_fn, metric_fn,
    sampler=samplers[e], snapshot_fn=snapshot_fns[e], snapshot_every=snapshot_every) and its history is returned
    in that format, one per member. loss_fn and metric_fn see one member's outputs and targets at a time."""
    from tqdm.auto import tqdm

    refs = _check_members(models, cfgs, train_data, test_data, loss_fn, metric_fn, samplers)  # as bc.train's ref
    bc._check(snapshot_fns is None or isinstance(snapshot_fns, (list, tuple)) and len(snapshot_fns) == len(models),
              "snapshot_fns", type(snapshot_fns).__name__, f"None or a list of {len(models)} (one per model)",
              TypeError)
    for e, fn in enumerate(snapshot_fns or []):
        bc._check(fn is None or callable(fn), f"snapshot_fns[{e}]", fn, "None or a function (step, model)", TypeError)
        bc._check(fn is None or bc._is_int(snapshot_every), "snapshot_every", snapshot_every,
                  "a positive int when a snapshot function is given")
    cfg, E = cfgs[0], len(models)
    (X, Y), (X_te, Y_te) = ([torch.stack(ts) for ts in zip(*data)] for data in (train_data, test_data))
    if samplers is None and cfg.batch_size is not None:
        samplers = [_default_sampler(X.shape[1], c) for c in cfgs]
    hists, swaps, phases = [bc.History() for _ in models], [0] * E, set(cfg.phase_starts())
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    ens = _Ensemble(models)
    try:
        opt = torch.optim.AdamW(ens.params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)  # train's
        bar = tqdm(range(cfg.steps), disable=not progress, mininterval=0.5)
        for step in bar:
            if step in phases:
                lam, terms = cfg.lam_at(step), ens.cost_terms(**cfg.cost_kwargs(step))
            xb, yb = (X, Y) if samplers is None else _batches(train_data, X, Y, samplers, step)
            task = torch.stack([_task_loss(loss_fn, o, y) for o, y in zip(ens(xb).unbind(0), yb.unbind(0))])
            last = step == cfg.steps - 1
            evaluate = step % cfg.eval_every == 0 or last
            with torch.set_grad_enabled(lam != 0):  # as in bc.train: no cost gradient at lambda 0
                cost = stacked_cost(terms) if lam or evaluate else None
            loss = task + lam * cost if lam else task
            if not torch.isfinite(loss).all():
                e = int((~torch.isfinite(loss)).nonzero()[0])
                raise FloatingPointError(f"member {e} (seed {cfgs[e].seed}): loss became {loss[e].item()} at step "
                                         f"{step} (lambda={lam:g}, task loss {task[e].item():.4g}, cost "
                                         f"{stacked_cost(terms)[e].item():.4g}); try a lower lr or lambda")
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()  # each member's loss receives gradient 1, as in its own run
            opt.step()
            if any(c.swap for c in cfgs) and (step + 1) % cfg.swap_every == 0:
                for e, m in enumerate(models):
                    if cfgs[e].swap:
                        state = _MemberState(ens, opt, e) if cfg.swap_moves_optimizer_state else None
                        swaps[e] += bc.relocate(m, cfg.top_k, state, cfg.relocate_follow,
                                                **cfg.swap_cost_kwargs(step))
                ens.refresh()
            for fn, m in zip(snapshot_fns or [], models):
                if fn is not None and (step % snapshot_every == 0 or last):
                    fn(step, m)
            if evaluate:
                with torch.no_grad():
                    for e, (hist, out) in enumerate(zip(hists, ens(X_te).unbind(0))):
                        metric = None if metric_fn is None else bc._float("metric_fn's result", metric_fn(out, Y_te[e]))
                        for k, v in dict(step=step, train_loss=task[e].item(), test_loss=loss_fn(out, Y_te[e]).item(),
                                         metric=metric, cost=cost[e].item(), lam=lam, swaps=swaps[e]).items():
                            hist[k].append(v)
                        if hist.test_loss[-1] > 1e3 * refs[e]:  # said once per member, as in bc.train
                            warnings.warn(f"member {e} (seed {cfgs[e].seed}): the test loss rose from {refs[e]:.3g} to "
                                          f"{hist.test_loss[-1]:.3g} at step {step} (lambda {lam:g}): the weights are "
                                          f"diverging; try a lower lr (cfg.lr={cfg.lr:g}) or lambda", stacklevel=2)
                            refs[e] = math.inf
                bar.set_postfix(worst_test=f"{max(h['test_loss'][-1] for h in hists):.2e}", refresh=False)
    finally:
        ens.release()
        torch.set_num_threads(threads)
    return hists


class Member(NamedTuple):
    """One seed's run: the seed it was asked for, its trained model, its history, and the config and data it
    trained on (test_data: what its claims are measured on)."""
    seed: int | None
    model: nn.Module
    hist: bc.History
    cfg: bc.BIMTConfig
    train_data: tuple
    test_data: tuple


def seed_list(seed: int | None, seeds: list | None) -> list:
    """A notebook's runs from its SEED and SEEDS parameters: [seed] (None: the authors' seed) without seeds,
    else the seeds, distinct ints, the first one drawn."""
    if seeds is None:
        return [seed]
    bc._check(seed is None, "SEED", seed, "None when SEEDS is given (SEEDS lists every seed of the run)")
    bc._check(isinstance(seeds, (list, tuple)) and len(seeds) > 0 and all(bc._is_int(s, 0) for s in seeds)
              and len(set(seeds)) == len(seeds), "SEEDS", seeds, "None or a non-empty list of distinct ints >= 0"
              + " (papermill passes a list with -y 'SEEDS: [0, 1]', not -p)" * isinstance(seeds, str))
    return list(seeds)


def train_seeds(make, seeds: list, loss_fn, metric_fn=None, sampler=None, snapshot_fn=None,
                snapshot_every: int | None = None, progress: bool = True) -> list[Member]:
    """One run per seed, each made by make(seed) -> (model, cfg, train_data, test_data) with train_data and
    test_data (inputs, targets) pairs; sampler(cfg) -> a bc.train sampler or None (its default batches). One seed:
    bc.train, as a notebook without SEEDS runs. Several: one ensemble (train_ensemble), each member ending where
    bc.train ends at its seed. snapshot_fn(step, model) records the first seed's run only (the one drawn).
    Returns the Members in the order of seeds."""
    return train_arms(lambda arm, seed: make(seed), [None], seeds, loss_fn, metric_fn, sampler, snapshot_fn,
                      snapshot_every, progress)[None]


def train_arms(make, arms: list, seeds: list, loss_fn, metric_fn=None, sampler=None, snapshot_fn=None,
               snapshot_every: int | None = None, progress: bool = True) -> dict:
    """train_seeds for arms that differ only in whether they swap: one run per arm and seed, made by
    make(arm, seed) -> (model, cfg, train_data, test_data), the configs of all runs equal except for seed and swap.
    One run: bc.train. Several: one ensemble, each member ending where bc.train ends on its own.
    snapshot_fn(step, model) records the first arm's first seed. Returns {arm: its Members in the order of seeds}."""
    bc._check(isinstance(seeds, (list, tuple)) and len(seeds) > 0, "seeds", seeds, "a non-empty list", TypeError)
    bc._check(isinstance(arms, (list, tuple)) and len(arms) > 0 and len(set(arms)) == len(arms), "arms", arms,
              "a non-empty list of distinct arms", TypeError)
    keys = [(arm, s) for arm in arms for s in seeds]
    runs = [make(arm, s) for arm, s in keys]
    for (arm, s), run in zip(keys, runs):
        call = f"make({s!r})" if arms == [None] else f"make({arm!r}, {s!r})"
        bc._check(isinstance(run, tuple) and len(run) == 4, call, type(run).__name__ if not isinstance(
            run, tuple) else f"a tuple of {len(run)}", "a tuple (model, cfg, train_data, test_data)", TypeError)
    models, cfgs, train_data, test_data = (list(t) for t in zip(*runs))
    samplers = None if sampler is None else [sampler(c) for c in cfgs]
    if len(runs) == 1:
        hists = [bc.train(models[0], cfgs[0], train_data[0], test_data[0], loss_fn, metric_fn=metric_fn,
                          snapshot_fn=snapshot_fn, snapshot_every=snapshot_every, progress=progress,
                          sampler=None if samplers is None else samplers[0])]
    else:
        samplers = None if samplers is None or all(s is None for s in samplers) else samplers
        hists = train_ensemble(models, cfgs, train_data, test_data, loss_fn, metric_fn, samplers, progress,
                               [snapshot_fn] + [None] * (len(runs) - 1), snapshot_every)
    members = [Member(s, *fields) for (_, s), *fields in zip(keys, models, hists, cfgs, train_data, test_data)]
    return {arm: [m for (a, _), m in zip(keys, members) if a == arm] for arm in arms}
