"""BIMT in a training loop the user writes: the README's loop, `penalty` and `swap_pass` against their oracles,
and `train`'s optimizer, scheduler, DataLoader and continuation against hand-written loops of those pieces."""
import copy
import dataclasses
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import bimt_core as bc

ROOT = Path(__file__).resolve().parents[1]


def readme_loop() -> str:
    section = (ROOT / "README.md").read_text().split("## In your own training loop", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def one_thread():
    # train runs on cfg.threads = 1; the hand-written loops must use the same kernels to match it bit for bit
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def adamw(cfg):
    return lambda params: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)


def same_weights(a, b) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))


def test_readme_loop_runs_as_written_and_equals_train(one_thread):
    code = readme_loop()
    assert len([line for line in code.splitlines() if line.strip()]) <= 15
    assert "bc.train" not in code  # the loop is plain PyTorch plus the two BIMT calls
    ran = {}
    exec(code, ran)
    setup = code.split("\nopt = ", 1)[0]  # the README's own data, model and config, built afresh
    again = {}
    exec(setup, again)
    cfg = again["cfg"]
    hist = bc.train(again["model"], cfg, (again["x"], again["y"]), (again["x"], again["y"]), F.mse_loss,
                    progress=False, optimizer=adamw(cfg),
                    scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps))
    assert hist.swaps[-1] > 0  # the comparison covers swaps that moved the optimizer's state
    assert same_weights(ran["model"], again["model"])
    assert torch.equal(ran["model"].out_perm, again["model"].out_perm)


def task(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 4, generator=g) * 2 - 1
    return x, torch.stack([x[:, 0] * x[:, 1], x[:, 2] + x[:, 3] ** 2], 1)


def model(seed=0):
    return bc.BioMLP([4, 12, 12, 2], generator=torch.Generator().manual_seed(seed))


CFG = bc.BIMTConfig(steps=120, lr=1e-2, swap_every=20, eval_every=30, lam=1e-2,
                    lam_schedule=((0.25, 10.0), (0.75, 0.0)), bias_penalty_from=0.5)


@pytest.mark.parametrize("step", [0, 29, 30, 59, 60, 89, 90, 119])
def test_penalty_is_lambda_times_the_cost_of_its_phase(step):
    m = model()
    expected = CFG.lam_at(step) * bc.connection_cost(m, **CFG.cost_kwargs(step))
    got = bc.penalty(m, CFG, step)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6, abs=0)
    assert got.requires_grad == (CFG.lam_at(step) != 0)  # lambda 0: exactly zero, no gradient to pay for


def test_swap_pass_is_relocate_when_due_and_moves_the_optimizer_state():
    (x, y), cfg = task(), CFG
    m = model()
    opt = torch.optim.AdamW(m.parameters(), lr=cfg.lr)
    F.mse_loss(m(x), y).backward()
    opt.step()  # the optimizer now has state to move
    before = copy.deepcopy((m, opt))
    ref, ref_opt = copy.deepcopy((m, opt))
    assert bc.swap_pass(m, cfg, opt, 18) == 0 and same_weights(m, ref)  # not due: step + 1 = 19
    n = bc.swap_pass(m, cfg, opt, 19)
    assert n == bc.relocate(ref, cfg.top_k, ref_opt, cfg.relocate_follow, **cfg.swap_cost_kwargs(19)) > 0
    assert same_weights(m, ref)
    for p, q in zip(m.parameters(), ref.parameters()):
        assert torch.equal(opt.state[p]["exp_avg"], ref_opt.state[q]["exp_avg"])
    # the authors' procedure makes the same swaps and leaves the moments where they were
    authors, authors_opt = copy.deepcopy(before)
    assert bc.swap_pass(authors, dataclasses.replace(cfg, swap_moves_optimizer_state=False), authors_opt, 19) == n
    assert same_weights(authors, m)
    stayed = [torch.equal(authors_opt.state[p]["exp_avg"], before[1].state[q]["exp_avg"])
              for p, q in zip(authors.parameters(), before[0].parameters())]
    moved = [not torch.equal(authors_opt.state[p]["exp_avg"], opt.state[q]["exp_avg"])
             for p, q in zip(authors.parameters(), m.parameters())]
    assert all(stayed) and any(moved)


def hand_loop(m, cfg, batches, opt, sched=None):
    """The loop of the README, on given batches; returns the swaps it made."""
    swaps = 0
    for step, (xb, yb) in zip(range(cfg.steps), batches):
        loss = F.mse_loss(m(xb), yb) + bc.penalty(m, cfg, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        swaps += bc.swap_pass(m, cfg, opt, step)
    return swaps


def repeat(batches, steps):
    return [batches[i % len(batches)] for i in range(steps)]


def test_a_dataloader_trains_as_its_batches_in_a_hand_loop(one_thread):
    x, y = task()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)
    ours, ref = model(), model()
    hist = bc.train(ours, CFG, loader, loader, F.mse_loss, progress=False, optimizer=adamw(CFG))
    swaps = hand_loop(ref, CFG, repeat(list(loader), CFG.steps), adamw(CFG)(ref.parameters()))
    assert same_weights(ours, ref) and hist.swaps[-1] == swaps > 0
    with torch.no_grad():  # the test loss is over all the batches of test_data
        assert hist.test_loss[-1] == pytest.approx(F.mse_loss(ours(x), y).item(), rel=1e-6)


def test_optimizer_and_scheduler_factories_are_used(one_thread):
    data = task()
    sgd = lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9)  # noqa: E731
    step_lr = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.5)  # noqa: E731
    ours, ref = model(), model()
    bc.train(ours, CFG, data, data, F.mse_loss, progress=False, optimizer=sgd, scheduler=step_lr)
    opt = sgd(ref.parameters())
    hand_loop(ref, CFG, repeat([data], CFG.steps), opt, step_lr(opt))
    assert same_weights(ours, ref)
    assert not same_weights(ours, model())


def test_a_second_call_continues_and_appends_its_history(one_thread):
    data, later = task(), bc.BIMTConfig(steps=50, lr=5e-3, swap_every=25, eval_every=20)
    ours, ref = model(), model()
    first = bc.train(ours, CFG, data, data, F.mse_loss, progress=False, optimizer=adamw(CFG))
    steps_before = list(first.step)
    hist = bc.train(ours, later, data, data, F.mse_loss, progress=False, optimizer=adamw(later))
    assert hist is first is ours.bimt_history
    assert hist.step == steps_before + [120, 140, 160, 169] and steps_before == [0, 30, 60, 90, 119]
    assert hist["step"] is hist.step and set(hist) == {"step", "train_loss", "test_loss", "metric", "cost", "lam",
                                                      "swaps"}
    assert all(len(v) == len(hist.step) for v in hist.values())
    # the oracle: the first schedule with its optimizer, then the second from its start with a new one
    swaps = hand_loop(ref, CFG, repeat([data], CFG.steps), adamw(CFG)(ref.parameters()))
    assert hist.swaps[len(steps_before) - 1] == swaps
    swaps += hand_loop(ref, later, repeat([data], later.steps), adamw(later)(ref.parameters()))
    assert same_weights(ours, ref) and hist.swaps[-1] == swaps
    assert hist.swaps == sorted(hist.swaps)  # cumulative
    assert hist.lam == [CFG.lam_at(s) for s in steps_before] + [later.lam_at(s) for s in (0, 20, 40, 49)]


def test_batches_drawn_by_train_are_new_in_a_continuation():
    data = task()
    cfg = bc.BIMTConfig(steps=3, batch_size=8, swap=False)
    seen = []
    m = model()
    bc.train(m, cfg, data, data, lambda o, y: seen.append(y.clone()) or F.mse_loss(o, y), progress=False)
    bc.train(m, cfg, data, data, lambda o, y: seen.append(y.clone()) or F.mse_loss(o, y), progress=False)
    train_batches = [t for t in seen if len(t) == 8]
    assert len(train_batches) == 6
    assert not any(torch.equal(a, b) for a, b in zip(train_batches[:3], train_batches[3:]))
