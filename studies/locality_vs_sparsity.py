"""Locality or sparsity? Does BIMT's wiring cost make networks more modular, and their circuits smaller, than
sparsity alone does at the same accuracy?

Not collected by pytest. Resumable: every finished run is one row of results/locality_vs_sparsity.csv.

    python studies/locality_vs_sparsity.py --tasks independence compositionality --resume   # runs, then summary
    python studies/locality_vs_sparsity.py --tasks modadd --seeds 0-4 --jobs 2 --resume
    python studies/locality_vs_sparsity.py --tasks mnist --arms l1_swap l1_local --ensemble 10 --jobs 2 --resume
    python studies/locality_vs_sparsity.py --summary        # only rewrite results/locality_vs_sparsity.md
    python studies/locality_vs_sparsity.py --export         # seed-0 networks -> results/locality_vs_sparsity_seed0.npz

Arms, at each task's paper settings (the notebooks' configs, our clean procedure), A the paper's weight factor:
  bimt        the connection cost A d + l0 and swaps (full BIMT);
  l1_swap     cost l0 alone (A = 0), swaps that minimise the cost with the paper's A (the paper's 'L1 + swap');
  l1_local    cost A d + l0, no swaps;
  l1          cost l0 alone, no swaps, the same lambda: a weaker penalty than BIMT's A d + l0;
  l1_matched  cost l0 alone, no swaps, lambda times a factor found by a search (below) so that it keeps as many
              connections (>= 5% of their layer's max) as bimt: the fair test of locality beyond sparsity;
  wd          lambda 0, AdamW weight decay (decoupled, on every parameter): the largest of 0.01, 0.1 and 1 (AdamW's
              default, a common value, the grokking value) whose network still learns the task in the search;
  lam0        lambda 0, no swaps: plain training.
Seed s of every arm starts from the same initial weights, data and batches (all drawn from seed s). In exact
arithmetic l1_swap would train l1's network with its neurons permuted (its loss ignores positions, and a swap moves
AdamW's state with the neurons), so beyond the wiring the two differ only as far as rounding, summed in another
order, makes their trajectories part.

The searches run once per task at a seed outside the study (--search-seed, default 1000), each run a row of
results/locality_vs_sparsity_search.csv: bimt's connections there are the target; lambda walks a grid of factors
sqrt(2)^k from 1 until the l1 network's connections cross the target, and the factor of the two bracketing runs
whose count is nearer (in log) is used; the count need not fall steadily as lambda grows, so a walk whose count
moves away from the target twice in a row stops there and uses the nearest factor it tried. The weight decay is
the largest candidate that learns at that seed.

Per run: the task's figure of merit on the test set and whether it learned the task (regression: R^2 >= 0.95 on
the test set; classification: test accuracy >= 0.9); the connections >= 5% of their layer's max and their wiring
length (bs.analyze, as the Fig 3 ablation counts them); the connected input-to-output components there; the
weighted Newman modularity Q of the whole |W| graph with a seeded Louvain partition and its z-score against the
same network with each weight matrix shuffled (bs.modularity: a very sparse network, shuffled, falls apart into
small pieces whose Q is high, so its z can be negative); and circuits found by EAP with mean ablation on the
test set, the metric minus the task loss: their size at faithfulness 0.9 and 0.99 and the area under faithfulness
(clipped to [0, 1]) against size / all connections (bs.circuit_curve), ACDC's at 0.9 where it has at most --acdc-max candidates.

The summary compares only runs that learned the task: per arm the mean and range of each quantity, and the paired
differences bimt - l1_matched, bimt - l1, bimt - wd and bimt - lam0 (and, for the wiring, the ablation's pairs)
over the seeds where both learned, each with a seeded bootstrap 95% interval of the mean and an exact two-sided
sign test. Runs go seed by seed, so that a partial study is already paired; --jobs runs several at once, each
process on one thread. With --ensemble E, up to E seeds of one task and arm train at once as an ensemble
(bimt_ensemble.train_seeds): each member ends where its single run ends, so the rows are the same but for the
seconds, which are the ensemble's time shared equally.
"""
import argparse
import math
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import bimt_core as bc  # noqa: E402
import bimt_data as bd  # noqa: E402
import bimt_ensemble as be  # noqa: E402
import bimt_seeing as bs  # noqa: E402
from sweep import git_commit, parse_seeds, read_rows, write_rows  # noqa: E402

THRESHOLD = 0.05           # connections >= 5% of their layer's max count (the notebooks' claims threshold)
TARGETS = (0.9, 0.99)      # EAP faithfulness targets
R2_LEARNED, ACC_LEARNED = 0.95, 0.9
LAM_GRID = [float(f"{2 ** (k / 2):.6g}") for k in range(-6, 13)]  # l1_matched's lambda factors 1/8 .. 64, as in the CSV
WD_GRID = (0.01, 0.1, 1.0)
ARMS = ("bimt", "l1_swap", "l1_local", "l1", "l1_matched", "wd", "lam0")
COMPARED = ("l1_matched", "l1", "wd", "lam0")  # bimt - each, in Q and circuit size
ABLATION = (("l1", "l1_local", "locality without swaps"), ("l1", "l1_swap", "swaps without a locality cost"),
            ("l1_local", "bimt", "swaps on top of locality"), ("l1_swap", "bimt", "a locality cost on top of swaps"))
COLUMNS = ["task", "arm", "seed", "lam", "weight_factor", "swap", "weight_decay", "steps", "perf_name", "perf",
           "test_loss", "learned", "connections", "total_connections", "wiring", "q", "q_null_mean", "q_null_std",
           "q_z", "communities", "modules", "eap_size_0.9", "eap_size_0.99", "auc", "eap_seconds", "acdc_size_0.9",
           "acdc_seconds", "train_seconds", "swaps", "commit"]
SEARCH_COLUMNS = ["task", "kind", "seed", "factor", "lam", "weight_decay", "connections", "perf", "learned", "commit"]


# ----------------------------------------------------------------------------------------------------------
# Tasks, as the notebooks set them up (clean procedure)


class Setup(NamedTuple):
    """One run's starting point: the model, its config, (inputs, targets) for training and testing."""
    model: bc.SwappableModel
    cfg: bc.BIMTConfig
    train: tuple
    test: tuple


@dataclass(frozen=True)
class Task:
    """make(seed) -> Setup; loss(out, y) the training loss (minus it is the circuits' metric); perf(model, test) the
    figure of merit (perf_name); learned(perf) whether the network has learned the task; A the paper's weight factor."""
    name: str
    make: Callable
    loss: Callable
    perf_name: str
    perf: Callable
    learned: Callable
    A: float


def _r2(pred: torch.Tensor, y: torch.Tensor) -> float:
    """1 - SSE / SST over every output together."""
    return 1.0 - float(((pred - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def formula_setup(shape: tuple, formula: Callable, seed: int, **cfg) -> Setup:
    """Fig 3 (notebooks/symbolic_formulas.ipynb): 100 train and 100 test points uniform on [-1, 1]^4."""
    x = torch.rand(200, shape[0], generator=torch.Generator().manual_seed(seed)) * 2 - 1
    y = torch.stack(formula(*x.T), 1)
    model = bc.BioMLP(shape, generator=torch.Generator().manual_seed(seed))
    return Setup(model, bc.BIMTConfig(seed=seed, **cfg), (x[:100], y[:100]), (x[100:], y[100:]))


def independence(seed: int) -> Setup:
    return formula_setup((4, 20, 20, 2), lambda x1, x2, x3, x4: [(x1 + x3) ** 3, x2 ** 2 + torch.sin(math.pi * x4)],
                         seed)


def compositionality(seed: int) -> Setup:
    return formula_setup((4, 20, 20, 20, 20, 1), lambda x1, x2, x3, x4: [((x1 - x2) ** 2 + (x3 - x4) ** 2).sqrt()],
                         seed, lam_schedule=((0.25, 3.0),))


def modadd(seed: int) -> Setup:
    """Fig 5 (notebooks/modular_addition.ipynb): (a + b) mod 59, 80% of the pairs for training."""
    p = 59
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.flatten(), b.flatten()], 1)
    y = (x[:, 0] + x[:, 1]) % p
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n = int(0.8 * len(x))
    cfg = bc.BIMTConfig(steps=20000, lr=1e-3, lam=0.1, lam_schedule=((0.25, 10.0), (0.75, 0.1)), weight_factor=2.0,
                        l0=0.5, agg="mean", bias_penalty_from=0.75, embedding_penalty=True, top_k=30, swap_every=200,
                        eval_every=1000, seed=seed)
    model = bc.BioMLP([64, 50, 50, p], in_fold=2, vocab_size=p, generator=torch.Generator().manual_seed(seed))
    return Setup(model, cfg, (x[order[:n]], y[order[:n]]), (x[order[n:]], y[order[n:]]))


def incontext(seed: int) -> Setup:
    """Fig 7 (notebooks/incontext_regression.ipynb): tokens (0, x1), (y1, 0), (0, x2), y_i = w x_i, w ~ U[-1, 1],
    x_i ~ U[1, 3]; 8,000 training and 2,000 test sequences; 40,000 steps as in the paper."""
    g = torch.Generator().manual_seed(seed)
    w, xs = torch.rand(10000, generator=g) * 2 - 1, torch.rand(10000, 2, generator=g) * 2 + 1
    tokens = torch.zeros(10000, 3, 2)
    tokens[:, 0, 1], tokens[:, 1, 0], tokens[:, 2, 1] = xs[:, 0], w * xs[:, 0], xs[:, 1]
    y = w[:, None] * xs
    cfg = bc.BIMTConfig(steps=40000, lr=1e-3, lam=1e-3, lam_schedule=((0.25, 10.0), (0.75, 10.0)), weight_factor=2.0,
                        l0=0.5, agg="mean", bias_penalty_from=None, top_k=20, swap_every=200, batch_size=64,
                        eval_every=1000, seed=seed)
    model = bc.BioTransformer(2, 2, d_model=32, n_blocks=2, n_heads=1, d_mlp=128,
                              generator=torch.Generator().manual_seed(seed))
    return Setup(model, cfg, (tokens[:8000], y[:8000]), (tokens[8000:], y[8000:]))


def mnist(seed: int) -> Setup:
    """Fig 8 (notebooks/mnist.ipynb): the shipped 5,000 digits, the same 1,000 test digits for every seed."""
    x_tr, y_tr, x_te, y_te = bd.load_mnist(n_test=1000, seed=0)
    cfg = bc.BIMTConfig(steps=40000, lr=1e-3, lam=0.01, lam_schedule=((0.25, 10.0), (0.5, 10.0)), weight_factor=2.0,
                        l0=0.5, agg="mean", bias_penalty_from=None, last_layer_l0_only=True, top_k=30,
                        swap_every=500, batch_size=100, eval_every=500, seed=seed)
    model = bc.BioMLP((784, 100, 100, 10), geometry="grid", out_geometry="ring", fix_inputs=True,
                      generator=torch.Generator().manual_seed(seed))
    return Setup(model, cfg, (x_tr, y_tr), (x_te, y_te))


def regression_r2(model, test) -> float:
    with torch.no_grad():
        return _r2(model(test[0]), test[1])


def incontext_loss(out, y):
    """MSE of output 0 at the x-token positions 0 and 2 against (y1, y2)."""
    return F.mse_loss(out[:, [0, 2], 0], y)


def incontext_r2(model, test) -> float:
    """R^2 of the in-context prediction of y2 (output 0 at the last position)."""
    with torch.no_grad():
        return _r2(model(test[0])[:, 2:, 0], test[1][:, 1:])


def test_accuracy(model, test) -> float:
    with torch.no_grad():
        return bc.accuracy(model(test[0]), test[1])


def mse_onehot(out, y):
    return F.mse_loss(out, F.one_hot(y, out.shape[-1]).to(out.dtype))  # the paper's loss for MNIST


def _r2_learned(r2: float) -> bool:
    return r2 >= R2_LEARNED


def _acc_learned(acc: float) -> bool:
    return acc >= ACC_LEARNED


TASKS = {
    "independence": Task("independence", independence, F.mse_loss, "test_r2", regression_r2, _r2_learned, 1.0),
    "compositionality": Task("compositionality", compositionality, F.mse_loss, "test_r2", regression_r2,
                             _r2_learned, 1.0),
    "modadd": Task("modadd", modadd, F.cross_entropy, "test_accuracy", test_accuracy, _acc_learned, 2.0),
    "incontext": Task("incontext", incontext, incontext_loss, "test_r2_y2", incontext_r2, _r2_learned, 2.0),
    "mnist": Task("mnist", mnist, mse_onehot, "test_accuracy", test_accuracy, _acc_learned, 2.0),
}


def arm_config(cfg: bc.BIMTConfig, arm: str, A: float, lam_factor: float | None = None,
               weight_decay: float | None = None) -> bc.BIMTConfig:
    """The task's paper config changed for an arm; lam_factor (l1_matched) and weight_decay (wd) from the search."""
    if arm in ("l1_matched", "wd") and (lam_factor if arm == "l1_matched" else weight_decay) is None:
        raise ValueError(f"arm {arm!r} needs its searched {'lam_factor' if arm == 'l1_matched' else 'weight_decay'}")
    change = {"bimt": {}, "l1_swap": dict(weight_factor=0.0, swap_cost={"weight_factor": A}),
              "l1_local": dict(swap=False), "l1": dict(weight_factor=0.0, swap=False),
              "l1_matched": dict(weight_factor=0.0, swap=False, lam=cfg.lam * (lam_factor or 1.0)),
              "wd": dict(lam=0.0, swap=False, weight_decay=weight_decay or 0.0), "lam0": dict(lam=0.0, swap=False)}
    if arm not in change:
        raise ValueError(f"unknown arm {arm!r}; expected one of {', '.join(ARMS)}")
    return replace(cfg, **change[arm])


def scaled(cfg: bc.BIMTConfig, scale: float) -> bc.BIMTConfig:
    """Fewer steps (development only): the schedule's fractions are kept, swaps and evaluations as often."""
    return cfg if scale == 1 else replace(cfg, steps=max(int(cfg.steps * scale), 2))


# ----------------------------------------------------------------------------------------------------------
# One run


class Trained(NamedTuple):
    """A trained network, the seconds its training took and the swaps made."""
    model: bc.SwappableModel
    seconds: float
    swaps: int


def train(task: Task, setup: Setup, cfg: bc.BIMTConfig, model_path: Path | None = None) -> Trained:
    """setup.model trained with cfg, or its trained weights loaded from model_path when that file exists."""
    return train_seeds(task, [(setup, cfg)], [model_path])[0]


def train_seeds(task: Task, runs: list, model_paths: list) -> list[Trained]:
    """Each (setup, cfg) of runs (one arm at several seeds) trained, or loaded from its model_path (a file, None:
    not kept) when that file exists. Those to train go as one ensemble (bimt_ensemble.train_seeds: each member
    ends where bc.train ends at its seed; a single one is bc.train); each is credited an equal share of the time."""
    done = {}
    for i, ((setup, _), path) in enumerate(zip(runs, model_paths)):
        if path is not None and path.is_file():
            saved = torch.load(path)
            setup.model.load_state_dict(saved["state"])
            done[i] = Trained(setup.model, saved["seconds"], saved["swaps"])
    todo = [i for i in range(len(runs)) if i not in done]
    if todo:
        t = time.perf_counter()
        members = be.train_seeds(lambda i: (runs[i][0].model, runs[i][1], runs[i][0].train, runs[i][0].test), todo,
                                 task.loss, progress=False)
        share = (time.perf_counter() - t) / len(todo)
        for i, m in zip(todo, members):
            done[i] = Trained(m.model, share, m.hist["swaps"][-1])
            if model_paths[i] is not None:
                model_paths[i].parent.mkdir(parents=True, exist_ok=True)
                torch.save(dict(state=m.model.state_dict(), seconds=share, swaps=done[i].swaps), model_paths[i])
    return [done[i] for i in range(len(runs))]


def measure(task: Task, model, test, seed: int, n_null: int, acdc_max: int) -> dict:
    """The CSV fields of one trained network (see the module docstring)."""
    graph, x, y = bs.network_graph(model), test[0], test[1]

    def metric(out):
        return -task.loss(out, y)

    perf = task.perf(model, test)
    with torch.no_grad():
        test_loss = float(task.loss(model(x), y))
    rep = bs.analyze(model, THRESHOLD, graph)
    mod = bs.modularity(model, 0.0, n_null, seed, graph)
    curve = bs.circuit_curve(model, x, metric, TARGETS, graph=graph)
    row = dict(perf_name=task.perf_name, perf=perf, test_loss=test_loss, learned=task.learned(perf),
               connections=rep.connections, total_connections=rep.total_connections, wiring=rep.wiring, q=mod.q,
               q_null_mean=mod.null_mean, q_null_std=mod.null_std, q_z=mod.z, communities=len(mod.communities),
               modules=len(rep.modules), auc=curve.auc, eap_seconds=curve.seconds,
               **{f"eap_size_{t}": curve.size_at[t] for t in TARGETS})
    if curve.candidates <= acdc_max:
        c = bs.discover_circuit(model, x, metric, TARGETS[0], "acdc", graph=graph)
        row.update({f"acdc_size_{TARGETS[0]}": len(c.edges), "acdc_seconds": c.seconds})
    return row


def model_file(folder, key) -> Path:
    """Where a run's trained weights are kept (git-ignored), so that a crash after training costs no retraining."""
    return Path(folder) / f"{key['task']}-{key['arm']}-seed{key['seed']}.pt"


def as_text(v) -> str:
    return "" if v is None else str(v) if isinstance(v, (bool, str, int)) else f"{v:.6g}"


def run_seeds(job: dict) -> list[dict]:
    """Train and measure one task and arm at job['seeds'] (one ensemble when there are several): their CSV rows."""
    torch.set_num_threads(1)
    task, arm = TASKS[job["task"]], job["arm"]
    setups = [task.make(seed) for seed in job["seeds"]]
    cfgs = [scaled(arm_config(su.cfg, arm, task.A, job.get("lam_factor"), job.get("weight_decay")), job["scale"])
            for su in setups]
    paths = [model_file(job["models"], dict(task=task.name, arm=arm, seed=seed)) for seed in job["seeds"]]
    rows = []
    for seed, setup, cfg, done in zip(job["seeds"], setups, cfgs, train_seeds(task, list(zip(setups, cfgs)), paths)):
        row = dict(task=task.name, arm=arm, seed=seed, lam=cfg.lam, weight_factor=cfg.weight_factor, swap=cfg.swap,
                   weight_decay=cfg.weight_decay, steps=cfg.steps, train_seconds=done.seconds, swaps=done.swaps,
                   commit=job["commit"], **measure(task, done.model, setup.test, seed, job["n_null"],
                                                   job["acdc_max"]))
        rows.append({k: as_text(row.get(k)) for k in COLUMNS})
    return rows


def jobs_of(todo: list[tuple], ensemble: int) -> list[tuple]:
    """The (task, arm, seeds) jobs of the (task, arm, seed) runs to do: one seed each, or, with ensemble > 1, the
    seeds of a task and arm in groups of at most `ensemble`, trained at once; in the order of their first run."""
    if ensemble < 1:
        raise ValueError(f"an ensemble has at least 1 member, got {ensemble}")
    groups = {}
    for t, a, s in todo:
        groups.setdefault((t, a), []).append(s)
    size = ensemble
    return sorted(((t, a, seeds[i:i + size]) for (t, a), seeds in groups.items() for i in range(0, len(seeds), size)),
                  key=lambda job: todo.index((job[0], job[1], job[2][0])))


# ----------------------------------------------------------------------------------------------------------
# Seed-0 networks for drawing: one small committed file, since the trained weights (*.pt) are not committed


def export_seed0(models: Path, path: Path) -> list[tuple]:
    """Write the state_dicts of seed 0 of every task and arm whose trained weights are in `models` into one .npz
    at `path`, keyed 'task/arm/param', keeping the networks already there of the other tasks and arms (a study
    extended by a task in another checkout); returns the (task, arm) pairs written, in TASKS and ARMS order."""
    arrays, done = {}, []
    for task in TASKS:
        for arm in ARMS:
            file = model_file(models, dict(task=task, arm=arm, seed=0))
            if file.is_file():
                for name, value in torch.load(file)["state"].items():
                    arrays[f"{task}/{arm}/{name}"] = value.numpy()
                done.append((task, arm))
    if not done:
        raise FileNotFoundError(f"{models}: no trained seed-0 weights (*-seed0.pt) to export; run the study first")
    if Path(path).is_file():
        with np.load(path) as saved:
            arrays = {k: saved[k] for k in saved.files if tuple(k.split("/")[:2]) not in done} | arrays
    np.savez_compressed(path, **arrays)
    return done


def load_seed0(path: Path = ROOT / "results" / "locality_vs_sparsity_seed0.npz") -> dict:
    """{task: {arm: model}}: the seed-0 networks of `export_seed0`, each rebuilt as its task makes it at seed 0
    (TASKS[task].make(0).model) with the saved weights loaded, in TASKS and ARMS order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no exported seed-0 networks; run: python studies/locality_vs_sparsity.py "
                                f"--export")
    with np.load(path) as saved:
        states = {}
        for key in saved.files:
            task, arm, name = key.split("/", 2)
            if task not in TASKS or arm not in ARMS:
                raise ValueError(f"{path}: key {key!r} names task {task!r} and arm {arm!r}; expected a task of "
                                 f"{', '.join(TASKS)} and an arm of {', '.join(ARMS)}")
            states.setdefault(task, {}).setdefault(arm, {})[name] = torch.from_numpy(saved[key])
    nets = {}
    for task in (t for t in TASKS if t in states):
        for arm in (a for a in ARMS if a in states[task]):
            model = TASKS[task].make(0).model
            model.load_state_dict(states[task][arm])
            nets.setdefault(task, {})[arm] = model
    return nets


# ----------------------------------------------------------------------------------------------------------
# The CSVs


def run_key(row: dict) -> tuple:
    return row["task"], row["arm"], str(row["seed"])


def plan(path: Path, keys: list[tuple], resume: bool) -> list[tuple]:
    """The (task, arm, seed) runs to do: with resume those not in the CSV, else all of them, their old rows
    removed from the CSV first (a rerun replaces a run)."""
    rows = read_rows(path, COLUMNS)
    done = {run_key(r) for r in rows}
    if resume:
        return [k for k in keys if (k[0], k[1], str(k[2])) not in done]
    wanted = {(t, a, str(s)) for t, a, s in keys}
    if done & wanted:
        write_rows(path, [r for r in rows if run_key(r) not in wanted], columns=COLUMNS)
    return list(keys)


# ----------------------------------------------------------------------------------------------------------
# The searches: l1_matched's lambda factor and wd's weight decay, at a seed outside the study


def search_run(task: Task, kind: str, seed: int, scale: float, factor: float | None = None,
               weight_decay: float | None = None) -> dict:
    setup = task.make(seed)
    cfg = scaled(arm_config(setup.cfg, {"l1": "l1_matched"}.get(kind, kind), task.A, factor, weight_decay), scale)
    model = train(task, setup, cfg).model
    perf = task.perf(model, setup.test)
    return dict(task=task.name, kind=kind, seed=seed, factor=factor, lam=cfg.lam, weight_decay=cfg.weight_decay,
                connections=bs.analyze(model, THRESHOLD).connections, perf=perf, learned=task.learned(perf))


def matched_factor(target: int, connections: dict) -> float:
    """Of the searched factors ({factor: connections kept}, walked from 1 by `next_factor`), the one nearest the
    target in log among the last two: the pair that brackets it; if none does, the nearest of all (the last on a
    tie)."""
    up = connections[1.0] > target
    walked = sorted(connections, reverse=not up)  # from 1 towards the target
    crossed = next((i for i, f in enumerate(walked) if (connections[f] <= target) == up), None)
    return min(walked[::-1] if crossed is None else walked[crossed - 1: crossed + 1],  # ties: the walk's end
               key=lambda f: _gap(connections[f], target))


def _gap(count: int, target: int) -> float:
    return abs(math.log(max(count, 1) / max(target, 1)))


def next_factor(target: int, connections: dict) -> float | None:
    """The next factor of LAM_GRID to try (from 1, towards the target), or None when the target is bracketed, the
    grid ends, or the count has moved away from the target at each of the last two steps: connections kept need
    not fall monotonically as lambda grows (on modular addition they turn back up)."""
    if 1.0 not in connections:
        return 1.0
    up = connections[1.0] > target  # too many connections: a stronger penalty
    i = LAM_GRID.index(1.0)
    step, gaps = (1 if up else -1), []
    while 0 <= i < len(LAM_GRID) and LAM_GRID[i] in connections:
        if (connections[LAM_GRID[i]] <= target) == up:
            return None
        gaps.append(_gap(connections[LAM_GRID[i]], target))
        if len(gaps) >= 3 and gaps[-3] < gaps[-2] < gaps[-1]:
            return None
        i += step
    return LAM_GRID[i] if 0 <= i < len(LAM_GRID) else None


def chosen_weight_decay(runs: dict) -> float:
    """The largest weight decay of WD_GRID whose run learned the task (runs: {weight decay: learned}); the
    smallest if none did (the arm then fails the task, and the summary says so)."""
    learned = [wd for wd in WD_GRID if runs[wd]]
    return max(learned) if learned else min(WD_GRID)


def search(task: Task, path: Path, seed: int, scale: float, commit: str) -> dict:
    """{'lam_factor': ..., 'weight_decay': ...} for a task, running what the search CSV does not hold yet."""
    rows = [r for r in read_rows(path, SEARCH_COLUMNS) if r["task"] == task.name and r["seed"] == str(seed)]

    def record(run):
        row = {k: as_text(run.get(k)) for k in SEARCH_COLUMNS} | {"commit": commit}
        write_rows(path, [row], append=True, columns=SEARCH_COLUMNS)
        rows.append(row)
        print(f"  search {task.name} {run['kind']}: factor {as_text(run['factor'])}, weight decay "
              f"{as_text(run['weight_decay'])}: {run['connections']} connections, {task.perf_name} {run['perf']:.4g}",
              flush=True)

    if not any(r["kind"] == "bimt" for r in rows):
        record(search_run(task, "bimt", seed, scale))
    target = int(next(r for r in rows if r["kind"] == "bimt")["connections"])
    while True:
        conns = {float(r["factor"]): int(r["connections"]) for r in rows if r["kind"] == "l1"}
        factor = next_factor(target, conns)
        if factor is None:
            break
        record(search_run(task, "l1", seed, scale, factor=factor))
    for wd in WD_GRID:
        if not any(r["kind"] == "wd" and float(r["weight_decay"]) == wd for r in rows):
            record(search_run(task, "wd", seed, scale, weight_decay=wd))
    wd_runs = {float(r["weight_decay"]): r["learned"] == "True" for r in rows if r["kind"] == "wd"}
    return dict(lam_factor=matched_factor(target, conns), weight_decay=chosen_weight_decay(wd_runs))


# ----------------------------------------------------------------------------------------------------------
# The summary


QUANTITIES = [  # (column, label, format, which direction is better for bimt or None)
    ("perf", "figure of merit", ".4g", None),
    ("connections", f"connections >= {THRESHOLD:g} of layer max", ".0f", None),
    ("wiring", "wiring length", ".3g", None),
    ("q", "modularity Q", ".3f", "higher"),
    ("q_z", "z of Q against shuffled layers", ".1f", None),
    ("communities", "Louvain communities", ".1f", None),
    ("modules", "connected modules", ".1f", None),
    ("eap_size_0.9", "EAP circuit size at 0.9", ".0f", "smaller"),
    ("eap_size_0.99", "EAP circuit size at 0.99", ".0f", "smaller"),
    ("auc", "area under faithfulness vs size", ".4f", "higher"),
    ("acdc_size_0.9", "ACDC circuit size at 0.9", ".0f", None),
]
DIFFERENCES = ("q", "eap_size_0.9", "eap_size_0.99", "auc")


def value(row: dict, column: str) -> float:
    """A row's number in `column`; q_z is recomputed from q and its null by `bs.z_score`, so that rows written
    before z had its rule for a null without spread (inf, or 1e14 over a rounding error) read as NaN too."""
    if column == "q_z":
        return bs.z_score(float(row["q"]), float(row["q_null_mean"]), float(row["q_null_std"]))
    return float(row[column])


def values(rows: list[dict], task: str, arm: str, column: str, learned_only: bool = True) -> dict:
    """{seed: value} of a column for one task and arm (runs that learned the task only, by default)."""
    return {int(r["seed"]): value(r, column) for r in rows if r["task"] == task and r["arm"] == arm and r[column]
            and (r["learned"] == "True" or not learned_only)}


def spread(vals, fmt: str) -> str:
    """mean [min, max] of the finite values, and how many were undefined (NaN: a z without a null spread)."""
    vals = list(vals)
    v = [x for x in vals if math.isfinite(x)]
    undefined = f" ({len(vals) - len(v)} undefined)" if len(v) < len(vals) else ""
    if not v:
        return "-" + undefined
    return (f"{np.mean(v):{fmt}} [{min(v):{fmt}}, {max(v):{fmt}}]" if len(v) > 1 else f"{v[0]:{fmt}}") + undefined


def diff_cell(d: bs.PairedDifference | None, fmt: str) -> str:
    if d is None:
        return "no pairs"
    ci = "" if d.low is None else f" [{d.low:+{fmt}}, {d.high:+{fmt}}]"
    return f"{d.mean:+{fmt}}{ci}"


def task_summary(rows: list[dict], task: str, searched: list[dict]) -> list[str]:
    arms = [a for a in ARMS if any(r["task"] == task and r["arm"] == a for r in rows)]
    seeds = sorted({int(r["seed"]) for r in rows if r["task"] == task})
    steps = sorted({r["steps"] for r in rows if r["task"] == task})
    perf_name = next(r["perf_name"] for r in rows if r["task"] == task)
    out = [f"## {task} (seeds {', '.join(map(str, seeds))}; {' / '.join(steps)} steps)", ""]
    search_rows = [r for r in searched if r["task"] == task]
    if search_rows:
        bimt = next((r for r in search_rows if r["kind"] == "bimt"), None)
        l1 = ", ".join(f"x{float(r['factor']):.3g}: {r['connections']}" for r in search_rows if r["kind"] == "l1")
        wd = ", ".join(f"{r['weight_decay']}: {r['perf']}" + ("" if r["learned"] == "True" else " (not learned)")
                       for r in search_rows if r["kind"] == "wd")
        used = {a: sorted({r[k] for r in rows if r["task"] == task and r["arm"] == a})
                for a, k in (("l1_matched", "lam"), ("wd", "weight_decay"))}
        uses = {a: ", ".join(v) or f"(no {a} run in the study yet)" for a, v in used.items()}
        out += [f"Search at seed {search_rows[0]['seed']}: bimt keeps {bimt['connections'] if bimt else '?'} "
                f"connections; l1 with lambda x factor keeps {l1}; l1_matched uses lambda {uses['l1_matched']}. "
                f"Weight decay -> {perf_name}: {wd}; wd uses {uses['wd']}.", ""]
    head = ["arm", "learned (Wilson 95%)"] + [label if col != "perf" else perf_name for col, label, _, _ in QUANTITIES]
    out += ["Mean [min, max] over the runs that learned the task.", "",
            "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in arms:
        runs = [r for r in rows if r["task"] == task and r["arm"] == arm]
        k = sum(r["learned"] == "True" for r in runs)
        lo, hi = bs.wilson(k, len(runs))
        out.append(f"| {arm} | {k}/{len(runs)} [{lo:.2f}, {hi:.2f}] | " + " | ".join(
            spread(values(rows, task, arm, col).values(), fmt) for col, _, fmt, _ in QUANTITIES) + " |")
    failed = {arm: [r["seed"] for r in rows if r["task"] == task and r["arm"] == arm and r["learned"] != "True"]
              for arm in arms}
    failures = [f"{arm} did not learn the task at seed(s) {', '.join(seeds)}" for arm, seeds in failed.items() if seeds]
    supported = []  # filled by `comparison`
    out += ["", "Paired differences bimt - arm over the seeds where both learned the task: mean [bootstrap 95% "
            "interval]; sign test: seeds bimt above : below, exact two-sided p.", "",
            "| bimt - | quantity | pairs | difference | above : below | p | what the interval supports |",
            "|---|---|---|---|---|---|---|"]
    words = {"higher": ("bimt higher (better)", "bimt lower (worse)"),
             "smaller": ("bimt larger (worse)", "bimt smaller (better)")}
    for other in [a for a in COMPARED if a in arms and "bimt" in arms]:
        for col, label, fmt, better in (q for q in QUANTITIES if q[0] in DIFFERENCES):
            out.append(comparison(rows, task, ("bimt", other), col, label, fmt, words[better], supported))
    out += sparsity_and_q(rows, task)
    out += ["", "Ablation: which shortens the wiring? wiring(a) - wiring(b) over the seeds where both learned; "
            "positive: b's wiring is shorter.", "",
            "| a - b | the effect of | pairs | difference | a above : below b | p | what the interval supports |",
            "|---|---|---|---|---|---|---|"]
    for a, b, effect in ABLATION:
        if a in arms and b in arms:
            out.append(comparison(rows, task, (a, b), "wiring", effect, ".3g", (f"{b} shorter", f"{b} longer"),
                                  supported))
    out += ["", "In words: " + "; ".join(failures or ["every run learned the task"]) + ". " + (
        "Supported by the intervals: " + "; ".join(supported) + "." if supported else
        "No difference between bimt and another arm, nor between the ablation's arms, is supported by the intervals.")]
    return out + [""]


def sparsity_and_q(rows: list[dict], task: str) -> list[str]:
    """Does Q follow the number of connections kept, within plain L1 (l1 and l1_matched, the runs that learned)?
    If it does not, a mismatch in connections between bimt and l1_matched cannot explain a difference in Q."""
    pairs = [(c, values(rows, task, arm, "q")[s]) for arm in ("l1", "l1_matched")
             for s, c in values(rows, task, arm, "connections").items()]
    if len(pairs) < bs.MIN_PAIRS or len({c for c, _ in pairs}) < 2:
        return []
    c, q = np.array(pairs, dtype=float).T
    r, slope = np.corrcoef(c, q)[0, 1], np.polyfit(c, q, 1)[0]
    return ["", f"Q against connections within plain L1 (l1 and l1_matched, {len(pairs)} runs that learned, "
                f"{c.min():.0f} to {c.max():.0f} connections): Pearson r {r:+.2f}, slope {100 * slope:+.3f} Q per 100 "
                f"connections."]


def comparison(rows: list[dict], task: str, arms: tuple, col: str, label: str, fmt: str, words: tuple,
               supported: list) -> str:
    """The table row of the paired difference arms[0] - arms[1] in a column; a difference the interval supports is
    also appended to `supported`, in words (words: what a > b and a < b mean)."""
    a, b = arms
    d = bs.paired(values(rows, task, a, col), values(rows, task, b, col))
    if d is None:
        return f"| {b if a == 'bimt' else f'{a} - {b}'} | {label} | 0 | no pairs | - | - | - |"
    said = bs.verdict(d, *words)
    if said.startswith("supported"):
        supported.append(f"{a} - {b} in {label}: {diff_cell(d, fmt)} over {d.n} seeds, {said[len('supported: '):]}")
    first = b if a == "bimt" else f"{a} - {b}"
    return f"| {first} | {label} | {d.n} | {diff_cell(d, fmt)} | {d.above} : {d.below} | {d.p:.3g} | {said} |"


def summary(rows: list[dict], searched: list[dict]) -> str:
    tasks = [t for t in dict.fromkeys(r["task"] for r in rows)]
    commits = sorted({r["commit"] for r in rows})
    hours = sum(float(r["train_seconds"]) + float(r["eap_seconds"]) + float(r["acdc_seconds"] or 0)
                for r in rows) / 3600
    lines = ["# Locality or sparsity? (studies/locality_vs_sparsity.py)", "",
             f"{len(rows)} runs ({', '.join(tasks)}); code {', '.join(commits)}; {hours:.1f} CPU hours of training "
             f"and circuit discovery (one thread per run). Arms, measures and tests: see the study's docstring. "
             f"A difference is called supported only when its bootstrap 95% interval excludes 0, and judged only "
             f"over at least {bs.MIN_PAIRS} pairs of seeds.", ""]
    for task in tasks:
        lines += task_summary(rows, task, searched)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------


class _Serial:
    """The Pool interface, in this process (--jobs 1)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap_unordered(fn, jobs):
        return map(fn, jobs)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["independence", "compositionality"], choices=list(TASKS))
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--seeds", nargs="+", default=["0-9"], help="e.g. 0-9, or 0 3 7, or 0-4,8")
    ap.add_argument("--search-seed", type=int, default=1000, help="the seed of the searches (outside the study)")
    ap.add_argument("--jobs", type=int, default=1, help="jobs at once, each a process on one thread")
    ap.add_argument("--ensemble", type=int, default=1, metavar="E", help="train up to E seeds of a task and arm "
                    "as one ensemble (bimt_ensemble: each the run it would be alone, in one batched step; the speed-up "
                    "depends on the network, docs/performance.md); default 1, a run per seed")
    ap.add_argument("--resume", action="store_true", help="skip the runs already in the CSV")
    ap.add_argument("--summary", action="store_true", help="only rewrite the summary from the CSV")
    ap.add_argument("--export", action="store_true", help="only write the seed-0 networks of the trained weights "
                    "into <out>_seed0.npz (the notebook draws them)")
    ap.add_argument("--n-null", type=int, default=20, help="shuffled networks per modularity z-score")
    ap.add_argument("--acdc-max", type=int, default=10000, help="ACDC runs on networks with at most this many "
                    "non-zero connections")
    ap.add_argument("--fast", action="store_true", help="1/100 of the steps (development only): files end in _fast")
    ap.add_argument("--out", type=Path, help="the CSV (default results/locality_vs_sparsity.csv)")
    args = ap.parse_args(argv)
    for name in ("jobs", "ensemble"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    try:
        args.seeds = parse_seeds(args.seeds)
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    fast = "_fast" * args.fast  # a development run never touches the study's files
    args.out = args.out or ROOT / "results" / f"locality_vs_sparsity{fast}.csv"
    search_csv = args.out.with_name(args.out.stem + "_search.csv")
    models = args.out.parent / "models" / args.out.stem  # git-ignored (*.pt)
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # inherited by --jobs' processes
    torch.set_num_threads(1)
    if args.export:
        npz = args.out.with_name(args.out.stem + "_seed0.npz")
        done = export_seed0(models, npz)
        print(f"wrote {npz}: seed 0 of {', '.join(f'{t}/{a}' for t, a in done)}")
        return
    if not args.summary:
        commit, scale = git_commit(), 0.01 if args.fast else 1.0
        keys = [(t, a, s) for s in args.seeds for t in args.tasks for a in args.arms]  # seed-major: paired early
        todo = plan(args.out, keys, args.resume)
        if not args.resume:  # a rerun trains afresh
            for t, a, s in todo:
                model_file(models, dict(task=t, arm=a, seed=s)).unlink(missing_ok=True)
        print(f"runs to do: {len(todo)} of {len(keys)}; torch {torch.__version__}, 1 thread per run, {args.jobs} "
              f"process(es); commit {commit}; results in {args.out}", flush=True)
        tuned = {t: search(TASKS[t], search_csv, args.search_seed, scale, commit)
                 for t in dict.fromkeys(k[0] for k in todo if k[1] in ("l1_matched", "wd"))}
        for t, v in tuned.items():
            print(f"{t}: l1_matched lambda factor {v['lam_factor']:.3g}, wd weight decay {v['weight_decay']:g}")
        jobs = [dict(task=t, arm=a, seeds=seeds, scale=scale, models=str(models), commit=commit,
                     n_null=args.n_null, acdc_max=args.acdc_max, **tuned.get(t, {}))
                for t, a, seeds in jobs_of(todo, args.ensemble)]
        start, i = time.perf_counter(), 0
        with multiprocessing.get_context("spawn").Pool(args.jobs) if args.jobs > 1 else _Serial() as pool:
            for rows in pool.imap_unordered(run_seeds, jobs):
                write_rows(args.out, rows, append=True, columns=COLUMNS)
                for row in rows:
                    i += 1
                    print(f"[{i}/{len(todo)}, {(time.perf_counter() - start) / 60:.1f} min] {row['task']} "
                          f"{row['arm']} seed {row['seed']}: {row['perf_name']} {row['perf']}, learned "
                          f"{row['learned']}, {row['connections']} connections, Q {row['q']} (z {row['q_z']}), "
                          f"EAP@0.9 {row['eap_size_0.9']}, AUC {row['auc']}", flush=True)
    rows = read_rows(args.out, COLUMNS)
    if not rows:
        sys.exit(f"{args.out}: no runs to summarise")
    text = summary(rows, read_rows(search_csv, SEARCH_COLUMNS))
    args.out.with_suffix(".md").write_text(text + "\n")
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
