"""Does BIMT help automated circuit discovery? Nainani (2024, arXiv:2401.03646) measured on our networks.

Not collected by pytest. Resumable: every finished measurement is a row of results/circuits.csv, and a rerun
skips what is there (trained networks are kept in results/models/, git-ignored).

    .venv/bin/python studies/study_circuits.py            # the study -> results/circuits.csv, results/circuits.md
    .venv/bin/python studies/study_circuits.py --costs    # what BIMT costs -> appended to results/circuits_costs.md
    .venv/bin/python studies/study_circuits.py --summary  # rewrite results/circuits.md from the CSV only

Per task and seed, three variants of the same architecture from the same data split and the same initialisation:
  bimt     the paper's settings (notebooks/modular_addition.ipynb, notebooks/incontext_regression.ipynb):
           connection cost A * d + l0, swaps;
  l1       the same lambda schedule with A = 0 (the cost is l0 * |w|: plain L1), no swaps;
  lambda0  lambda 0, no swaps: plain training.
Our clean procedure throughout (BIMTConfig defaults: float32, torch generators, a swap moves AdamW's state).
Tasks: modular addition p = 59 (the Fig 5 notebook's config, benchmarks/bench_circuits.py) and in-context linear
regression (the Fig 7 transformer; 40,000 steps as in the paper, not the notebook's 16,000).

Circuit discovery (bimt_seeing.discover_circuit) on the test set with mean ablation. Metric: modular addition, the
mean log-probability of the correct class; in-context, minus the MSE of the y2 prediction (output 0 at the last
position) to the true y2. For each trained network:
  - EAP circuits at faithfulness 0.9 and 0.99 (candidates: every non-zero weight): size and seconds;
  - ACDC circuits at 0.9, over every non-zero weight and over the connections >= 1% of their layer's max; a run
    whose estimated time (candidates x one timed forward pass) exceeds --acdc-budget is recorded as not measured;
  - overlap with what BIMT makes visible, the connections >= 5% of their layer's max (the Fig 5 claims'
    threshold): Jaccard index of the connection sets, the fraction of the circuit inside, the fraction of the
    circuit's hidden neurons that are visible neurons, and (modular addition) the fraction of the circuit's
    embedding dims inside bs.embedding_modules(model, 0.05).
"""
import argparse
import csv
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bimt_core as bc  # noqa: E402
import bimt_seeing as bs
from bench_circuits import latency, modadd  # noqa: E402

VARIANTS = {"bimt": {}, "l1": dict(weight_factor=0.0, swap=False), "lambda0": dict(lam=0.0, swap=False)}
TARGETS = (0.9, 0.99)   # EAP faithfulness targets
ACDC_TARGET = 0.9
VISIBLE = 0.05          # what BIMT makes visible: connections >= 5% of their layer's max
ACDC_SMALL = 0.01       # ACDC's restricted candidates: connections >= 1% of their layer's max
FIELDS = ["task", "variant", "seed", "quantity", "value", "note"]


@dataclass
class Task:
    """One experiment: make(seed) -> (model, BIMT config, train, test); the task loss; perf(model, test) -> the
    task's own figure of merit (named perf_name); metric(test) -> the discovery metric on model outputs."""
    name: str
    make: callable
    loss: callable
    perf_name: str
    perf: callable
    metric: callable


def modadd_perf(model, test):
    with torch.no_grad():
        return bc.accuracy(model(test[0]), test[1])


def modadd_metric(test):
    y = test[1]
    return lambda out: out.log_softmax(-1)[torch.arange(len(y)), y].mean()


def sequences(n: int, g: torch.Generator):
    """n sequences of tokens (0, x1), (y1, 0), (0, x2), y_i = w x_i, w ~ U[-1, 1], x_i ~ U[1, 3]:
    tokens (n, 3, 2) and targets (y1, y2) (n, 2), as in notebooks/incontext_regression.ipynb."""
    w = torch.rand(n, generator=g) * 2 - 1
    xs = torch.rand(n, 2, generator=g) * 2 + 1
    tokens = torch.zeros(n, 3, 2)
    tokens[:, 0, 1], tokens[:, 1, 0], tokens[:, 2, 1] = xs[:, 0], w * xs[:, 0], xs[:, 1]
    return tokens, w[:, None] * xs


def incontext(seed: int, steps: int = 40000):
    cfg = bc.BIMTConfig(steps=steps, lr=1e-3, lam=1e-3, lam_schedule=((0.25, 10.0), (0.75, 10.0)), weight_factor=2.0,
                        l0=0.5, agg="mean", bias_penalty_from=None, top_k=20, swap_every=200, batch_size=64,
                        eval_every=1000, seed=seed)
    x, y = sequences(10000, torch.Generator().manual_seed(seed))
    model = bc.BioTransformer(2, 2, d_model=32, n_blocks=2, n_heads=1, d_mlp=128,
                              generator=torch.Generator().manual_seed(seed))
    return model, cfg, (x[:8000], y[:8000]), (x[8000:], y[8000:])


def incontext_loss(out, y):
    """MSE of output 0 at the x-token positions 0 and 2 against (y1, y2)."""
    return F.mse_loss(out[:, [0, 2], 0], y)


def incontext_perf(model, test):
    with torch.no_grad():
        return F.mse_loss(model(test[0])[:, 2, 0], test[1][:, 1]).item()


def incontext_metric(test):
    y2 = test[1][:, 1]
    return lambda out: -F.mse_loss(out[:, 2, 0], y2)


def tasks(incontext_steps: int, scale: float = 1.0):
    """The two tasks; scale < 1 shortens every run (development only), schedule at the same fractions."""
    def scaled(make):
        def run(seed):
            model, cfg, train, test = make(seed)
            return model, replace(cfg, steps=max(int(cfg.steps * scale), 1)), train, test
        return run
    return {"modadd": Task("modadd", scaled(modadd), F.cross_entropy, "test_accuracy", modadd_perf, modadd_metric),
            "incontext": Task("incontext", scaled(lambda s: incontext(s, incontext_steps)), incontext_loss,
                              "test_mse_y2", incontext_perf, incontext_metric)}


# ----------------------------------------------------------------------------------------------------------
# Results: one CSV row per (task, variant, seed, quantity), appended as each group of measurements finishes


class Results:
    def __init__(self, path: Path):
        self.path = path
        self.rows = list(csv.DictReader(path.open())) if path.exists() else []

    def done(self, task, variant, seed, group) -> bool:
        return any(r["task"] == task and r["variant"] == variant and r["seed"] == str(seed)
                   and r["quantity"].startswith(group + ".") for r in self.rows)

    def measured(self, task, variant, seed, group) -> bool:
        """done, and not only a 'not measured' record (which a larger --acdc-budget may replace)."""
        return any(r["task"] == task and r["variant"] == variant and r["seed"] == str(seed)
                   and r["quantity"].startswith(group + ".") and r["value"] != "" and
                   not r["note"].startswith("not measured") for r in self.rows)

    def drop(self, task, variant, seed, group) -> None:
        """Remove a group's rows (rewrites the CSV)."""
        self.rows = [r for r in self.rows if not (r["task"] == task and r["variant"] == variant and
                                                  r["seed"] == str(seed) and r["quantity"].startswith(group + "."))]
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            w.writeheader()
            w.writerows(self.rows)

    def add(self, task, variant, seed, group, values: dict, note: str = "") -> None:
        """values: {name: number or None (not measured: say why in note)}."""
        rows = [dict(task=task, variant=variant, seed=str(seed), quantity=f"{group}.{k}",
                     value="" if v is None else f"{v:.6g}", note=note) for k, v in values.items()]
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            if new:
                w.writeheader()
            w.writerows(rows)
        self.rows += rows

    def values(self, task, variant, quantity) -> list:
        return [float(r["value"]) for r in self.rows if (r["task"], r["variant"], r["quantity"]) ==
                (task, variant, quantity) and r["value"] != ""]

    def notes(self, task, variant, quantity) -> set:
        return {r["note"] for r in self.rows if (r["task"], r["variant"], r["quantity"]) ==
                (task, variant, quantity) and r["note"]}


# ----------------------------------------------------------------------------------------------------------
# Training and measuring one network


def trained(task: Task, variant: str, seed: int, models: Path, results: Results):
    """The trained network of (task, variant, seed), from results/models/ if there, and its test data."""
    model, cfg, train, test = task.make(seed)
    cfg = replace(cfg, **VARIANTS[variant])
    path = models / f"{task.name}-{variant}-seed{seed}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path))
    else:
        t = time.perf_counter()
        hist = bc.train(model, cfg, train, test, task.loss, progress=False)
        seconds = time.perf_counter() - t
        models.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
        if not results.done(task.name, variant, seed, "train"):
            results.add(task.name, variant, seed, "train", {"seconds": seconds, "steps": cfg.steps,
                                                            "swaps": hist["swaps"][-1]})
    if not results.done(task.name, variant, seed, "perf"):
        results.add(task.name, variant, seed, "perf", {task.perf_name: task.perf(model, test)})
    return model, test


def learned(graph: bc.Graph, masks: list) -> torch.Tensor:
    """The connections of the BioLinear edges as one flat bool vector (identity skips left out)."""
    return torch.cat([m.flatten() for e, m in zip(graph.edges, masks) if e.linear is not None])


def hidden_units(graph: bc.Graph, masks: list) -> list:
    """Per hidden row, its active units (bs.active_neurons; a circuit's identity edges are kept as they are)."""
    full = [s if m is None else m for s, m in zip(bs.surviving(graph), masks)]
    return [a for r, a in zip(graph.rows, bs.active_neurons(graph, full)) if r.kind == "hidden"]


def overlap(model, graph: bc.Graph, masks: list, visible: list, modules: list | None) -> dict:
    """How a circuit sits in what BIMT makes visible (`visible`: the masks at threshold VISIBLE)."""
    c, v = learned(graph, masks), learned(graph, visible)
    hc, hv = hidden_units(graph, masks), hidden_units(graph, visible)
    n_hidden = sum(int(h.sum()) for h in hc)
    out = {"jaccard_visible": int((c & v).sum()) / max(int((c | v).sum()), 1),
           "in_visible": int((c & v).sum()) / max(int(c.sum()), 1),
           "hidden": n_hidden, "hidden_in_visible": sum(int((a & b).sum()) for a, b in zip(hc, hv)) / max(n_hidden, 1)}
    if modules is not None:  # the input row's units are the embedding dims (both operand copies are one unit)
        full = [s if m is None else m for s, m in zip(bs.surviving(graph), masks)]
        dims = set(bs.active_neurons(graph, full)[0].nonzero().flatten().tolist())
        inside = set().union(*map(set, modules))
        out |= {"embed_dims": len(dims), "embed_in_modules": len(dims & inside) / max(len(dims), 1)}
    return out


def measure(task: Task, variant: str, seed: int, model, test, results: Results, budget: float) -> None:
    """Every group of circuit measurements of one trained network that the CSV does not hold yet."""
    graph, x, metric = bs.network_graph(model), test[0], task.metric(test)
    visible = bs.surviving(graph, VISIBLE)
    modules = bs.embedding_modules(model, VISIBLE) if getattr(model, "embedding", None) is not None else None

    def add(group, values, note=""):
        results.add(task.name, variant, seed, group, values, note)
        shown = ", ".join(f"{k} {'n/m' if v is None else f'{v:.4g}'}" for k, v in values.items())
        print(f"  {task.name} {variant} seed {seed} {group}: {shown}{' (' + note + ')' if note else ''}", flush=True)

    if not results.done(task.name, variant, seed, "visible"):
        r = bs.analyze(model, VISIBLE, graph)
        values = {"connections": r.connections, "total": r.total_connections, "hidden": r.hidden_neurons,
                  "components": len(r.modules),  # connected input -> output components
                  "faithfulness": bs.circuit_faithfulness(model, visible, x, metric, graph=graph)}
        if modules is not None:
            values |= {"modules": len(modules), "module_dims": sum(map(len, modules))}
        add("visible", values)
    for target in TARGETS:
        group = f"eap@{target}"
        if not results.done(task.name, variant, seed, group):
            c = bs.discover_circuit(model, x, metric, target, "eap", graph=graph)
            add(group, {"size": len(c.edges), "faithfulness": c.faithfulness, "seconds": c.seconds}
                | overlap(model, graph, c.masks, visible, modules))
    nonzero = [None if e.linear is None else e.linear.weight.detach() != 0 for e in graph.edges]
    small = [None if e.linear is None else m for e, m in zip(graph.edges, bs.surviving(graph, ACDC_SMALL))]
    for group, cand, what in ((f"acdc@{ACDC_TARGET}", nonzero, "every non-zero weight"),
                              (f"acdc1%@{ACDC_TARGET}", small, f"connections >= {ACDC_SMALL:g} of their layer's max")):
        if results.measured(task.name, variant, seed, group):
            continue
        n = int(learned(graph, cand).sum())
        per_pass = forward_seconds(model, graph, x, metric, cand)
        if n * per_pass > budget:
            if not results.done(task.name, variant, seed, group):
                add(group, {"candidates": n, "size": None, "faithfulness": None, "seconds": None},
                    f"not measured: {n} candidates x {per_pass * 1e3:.1f} ms = ~{n * per_pass:.0f} s > budget "
                    f"{budget:.0f} s")
            continue
        if results.done(task.name, variant, seed, group):  # not measured before, affordable now
            results.drop(task.name, variant, seed, group)
        c = bs.discover_circuit(model, x, metric, ACDC_TARGET, "acdc", candidates=cand, graph=graph)
        add(group, {"candidates": n, "size": len(c.edges), "faithfulness": c.faithfulness, "seconds": c.seconds}
            | overlap(model, graph, c.masks, visible, modules), f"candidates: {what}")


def forward_seconds(model, graph, x, metric, masks, repeats: int = 5) -> float:
    """Median seconds of one ablated forward pass (what ACDC pays per candidate)."""
    faith = bs._faithfulness(model, graph, x, metric, None)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        faith(masks)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ----------------------------------------------------------------------------------------------------------
# Summary: median [min, max] over seeds, per task, quantity and variant


ROWS = {  # (quantity, label, format)
    "modadd": [("perf.test_accuracy", "test accuracy", ".3f")],
    "incontext": [("perf.test_mse_y2", "test MSE of y2 (predicting 0: ~1.44)", ".2e")],
}
COMMON = [
    ("train.seconds", "training time (s, one thread)", ".0f"),
    ("visible.connections", "connections >= 5% of layer max ('visible')", ".0f"),
    ("visible.faithfulness", "faithfulness of the visible network", ".3f"),
    ("visible.components", "input-to-output components of the visible network", ".0f"),
    ("eap@0.9.size", "**EAP circuit size at faithfulness 0.9**", ".0f"),
    ("eap@0.99.size", "**EAP circuit size at faithfulness 0.99**", ".0f"),
    ("acdc@0.9.size", "**ACDC circuit size at 0.9** (all non-zero candidates)", ".0f"),
    ("acdc1%@0.9.size", "**ACDC circuit size at 0.9** (candidates >= 1% of max)", ".0f"),
    ("acdc1%@0.9.candidates", "ACDC candidates >= 1% of max", ".0f"),
    ("eap@0.9.seconds", "EAP discovery time at 0.9 (s)", ".2f"),
    ("eap@0.99.seconds", "EAP discovery time at 0.99 (s)", ".2f"),
    ("acdc@0.9.seconds", "ACDC discovery time at 0.9, all candidates (s)", ".1f"),
    ("acdc1%@0.9.seconds", "ACDC discovery time at 0.9, candidates >= 1% (s)", ".1f"),
    ("eap@0.9.hidden", "hidden neurons in the EAP@0.9 circuit", ".0f"),
    ("visible.hidden", "visible hidden neurons", ".0f"),
    ("eap@0.9.jaccard_visible", "Jaccard(EAP@0.9 circuit, visible connections)", ".3f"),
    ("eap@0.9.in_visible", "fraction of EAP@0.9 circuit inside the visible connections", ".3f"),
    ("eap@0.9.hidden_in_visible", "fraction of EAP@0.9 circuit's hidden neurons that are visible", ".3f"),
    ("acdc1%@0.9.jaccard_visible", "Jaccard(ACDC1%@0.9 circuit, visible connections)", ".3f"),
]
MODADD_MODULES = [
    ("visible.modules", "embedding modules at 5% (bs.embedding_modules)", ".0f"),
    ("visible.module_dims", "embedding dims in those modules (of 32)", ".0f"),
    ("eap@0.9.embed_dims", "embedding dims the EAP@0.9 circuit reads", ".0f"),
    ("eap@0.9.embed_in_modules", "fraction of those inside the modules", ".3f"),
    ("eap@0.99.embed_dims", "embedding dims the EAP@0.99 circuit reads", ".0f"),
    ("eap@0.99.embed_in_modules", "fraction of those inside the modules", ".3f"),
]


def cell(vals: list, fmt: str) -> str:
    if not vals:
        return "n/m"
    med = format(statistics.median(vals), fmt)
    return med if len(vals) == 1 or min(vals) == max(vals) else f"{med} [{min(vals):{fmt}}, {max(vals):{fmt}}]"


def summary(results: Results) -> str:
    lines = ["# Automated circuit discovery on BIMT, L1 and lambda-0 networks (studies/study_circuits.py)", "",
             "Median [min, max] over seeds; n/m: not measured (see the notes below). Mean ablation on the test set.", ""]
    for task in ("modadd", "incontext"):
        seeds = sorted({r["seed"] for r in results.rows if r["task"] == task}, key=int)
        if not seeds:
            continue
        steps = sorted({int(v) for v in results.values(task, "bimt", "train.steps")})
        lines += [f"## {task} (seeds {', '.join(seeds)}; {' / '.join(map(str, steps))} steps)", "",
                  "| quantity | " + " | ".join(VARIANTS) + " |", "|---|" + "---|" * len(VARIANTS)]
        total = results.values(task, "bimt", "visible.total")
        for q, label, fmt in ROWS[task] + COMMON + (MODADD_MODULES if task == "modadd" else []):
            label = label + (f" (of {int(total[0])})" if total and q.endswith(".size") else "")
            lines.append(f"| {label} | " + " | ".join(cell(results.values(task, v, q), fmt) for v in VARIANTS) + " |")
        lines.append("")
        for v in VARIANTS:
            for q in ("acdc@0.9.size", "acdc1%@0.9.size"):
                lines += [f"- {v}, {q}: {n}" for n in sorted(results.notes(task, v, q)) if n.startswith("not measured")]
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Costs: training time per step, peak memory, inference latency and compaction


def plain_loop(model, cfg, train, loss_fn, steps: int) -> float:
    """Plain training without bimt_core: the task loss and the same AdamW, same batches. Seconds per step."""
    x, y = train
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, foreach=True)
    t = time.perf_counter()
    for _ in range(steps):
        idx = slice(None) if cfg.batch_size is None else torch.randint(len(x), (cfg.batch_size,), generator=gen)
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t) / steps


def train_seconds(model, cfg, train, test, loss_fn) -> float:
    t = time.perf_counter()
    bc.train(model, cfg, train, test, loss_fn, progress=False)
    return (time.perf_counter() - t) / cfg.steps


def step_times(task: Task, steps: int, rounds: int) -> dict:
    """Seconds per training step, median over alternating rounds in this process: bc.train with BIMT, bc.train
    with lambda 0 and no swaps (the study's control: it still evaluates the cost, times 0), and `plain_loop`."""
    times = {"bimt": [], "lambda0": [], "plain": []}
    for _ in range(rounds):
        for name in times:
            model, cfg, train, test = task.make(0)
            cfg = replace(cfg, steps=steps, eval_every=steps, **VARIANTS.get(name, {}))
            times[name].append(plain_loop(model, cfg, train, task.loss, steps) if name == "plain"
                               else train_seconds(model, cfg, train, test, task.loss))
    return {k: statistics.median(v) for k, v in times.items()}


def memory_child(task: Task, variant: str, steps: int) -> None:
    """Run in a fresh process by peak_memory: build, then train `steps` steps ('idle': none)."""
    torch.set_num_threads(1)
    model, cfg, train, test = task.make(0)
    cfg = replace(cfg, steps=steps, **VARIANTS.get(variant, {}))
    if variant == "plain":
        plain_loop(model, cfg, train, task.loss, steps)
    elif variant != "idle":
        bc.train(model, cfg, train, test, task.loss, progress=False)


def peak_memory(task: str, variant: str, steps: int, incontext_steps: int) -> float:
    """Peak resident memory (MiB) of a fresh process that trains one variant: ru_maxrss of that child alone, read
    by os.wait4 (Linux reports KiB). It includes Python and torch themselves: compare with the 'idle' child."""
    p = subprocess.Popen([sys.executable, __file__, "--memory-child", task, variant, str(steps),
                          "--incontext-steps", str(incontext_steps)])
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"memory child {task} {variant} exited with {p.returncode}")
    return usage.ru_maxrss / 1024


def costs(args, all_tasks: dict, models: Path, results: Results) -> str:
    seed = args.seeds[0]
    lines = [f"## Costs, {datetime.now():%Y-%m-%d %H:%M} (studies/study_circuits.py --costs)", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs, load average "
             f"{os.getloadavg()[0]:.1f} at the start. Trained networks: seed {seed} of the study.", ""]
    for name, task in all_tasks.items():
        t = step_times(task, args.cost_steps, args.rounds)
        lines += [f"### {name}", "",
                  f"Time per training step (median of {args.rounds} alternating rounds of {args.cost_steps} steps "
                  f"in one process; BIMT swaps every 200 steps, included):", "",
                  "| bc.train, BIMT | bc.train, lambda 0 | plain PyTorch loop | BIMT / lambda 0 | BIMT / plain |",
                  "|---|---|---|---|---|",
                  f"| {t['bimt'] * 1e3:.2f} ms | {t['lambda0'] * 1e3:.2f} ms | {t['plain'] * 1e3:.2f} ms | "
                  f"{t['bimt'] / t['lambda0']:.2f}x | {t['bimt'] / t['plain']:.2f}x |", ""]
        mem = {v: peak_memory(name, v, args.memory_steps, args.incontext_steps)
               for v in ("idle", "plain", "lambda0", "bimt")}
        lines += [f"Peak resident memory of a fresh process training {args.memory_steps} steps (ru_maxrss via "
                  f"os.wait4; 'idle' builds data and model and does not train):", "",
                  "| idle | plain loop | bc.train, lambda 0 | bc.train, BIMT | BIMT - plain |", "|---|---|---|---|---|",
                  f"| {mem['idle']:.1f} MiB | {mem['plain']:.1f} MiB | {mem['lambda0']:.1f} MiB | "
                  f"{mem['bimt']:.1f} MiB | {mem['bimt'] - mem['plain']:+.1f} MiB |", ""]
        lines += inference(task, seed, models, results)
    return "\n".join(lines)


def inference(task: Task, seed: int, models: Path, results: Results) -> list:
    """Latency of the dense trained networks (BIMT vs lambda 0) and, for BioMLPs, of compact(model, threshold)."""
    bimt, test = trained(task, "bimt", seed, models, results)
    plain, _ = trained(task, "lambda0", seed, models, results)
    _, _, train, _ = task.make(seed)
    batches = {"1": test[0][:1], f"{len(test[0])} (test)": test[0], f"{len(test[0]) + len(train[0])} (all)":
               torch.cat([train[0], test[0]])}
    nets = {"BIMT": bimt, "lambda 0": plain}
    if isinstance(bimt, bc.BioMLP):
        nets |= {f"{n} compact({t:g})": bs.compact(m, t) for t in (VISIBLE, 0.01) for n, m in
                 (("BIMT", bimt), ("lambda 0", plain))}
    rows = ["Inference (median of 200 interleaved calls per batch, no_grad; speedup = BIMT dense time / this "
            f"network's time; {task.perf_name} on the test set):", "",
            f"| network | hidden widths | {task.perf_name} | " + " | ".join(f"batch {b}" for b in batches) + " |",
            "|---|---|---|" + "---|" * len(batches)]
    times = {b: latency(list(nets.values()), xb, repeats=200) for b, xb in batches.items()}
    for k, (n, m) in enumerate(nets.items()):
        widths = m.shape[1:-1] if isinstance(m, bc.BioMLP) else "same as BIMT"
        cells = [f"{times[b][k] * 1e6:.0f} us ({times[b][0] / times[b][k]:.2f}x)" for b in batches]
        rows.append(f"| {n} | {widths} | {task.perf(m, test):.4g} | " + " | ".join(cells) + " |")
    if not isinstance(bimt, bc.BioMLP):
        rows.append(f"\ncompact() supports BioMLP only: not measured for the {task.name} transformer.")
    return rows + [""]


# ----------------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["modadd", "incontext"], choices=["modadd", "incontext"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--incontext-steps", type=int, default=40000, help="the paper's 40,000; the schedule scales")
    ap.add_argument("--acdc-budget", type=float, default=900.0, help="seconds an ACDC run may be estimated to take")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    ap.add_argument("--fast", action="store_true", help="1/20 of the steps (development only; use another --out)")
    ap.add_argument("--summary", action="store_true", help="only rewrite circuits.md from circuits.csv")
    ap.add_argument("--costs", action="store_true", help="the cost tables, appended to circuits_costs.md")
    ap.add_argument("--cost-steps", type=int, default=600, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timed rounds")
    ap.add_argument("--memory-steps", type=int, default=2000, help="steps of each peak-memory child")
    ap.add_argument("--memory-child", nargs=3, metavar=("TASK", "VARIANT", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)  # small networks on a shared CPU (bc.train pins 1 thread as well)
    all_tasks = tasks(args.incontext_steps, 0.05 if args.fast else 1.0)
    if args.memory_child:
        task, variant, steps = args.memory_child
        return memory_child(all_tasks[task], variant, int(steps))
    args.out.mkdir(parents=True, exist_ok=True)
    results, models = Results(args.out / "circuits.csv"), args.out / "models"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); results in {args.out}", flush=True)
    if args.costs:
        text = costs(args, {k: all_tasks[k] for k in args.tasks}, models, results)
        with (args.out / "circuits_costs.md").open("a") as f:
            f.write(text + "\n")
        print(text)
        return
    if not args.summary:
        for name in args.tasks:
            print(f"{name}: {all_tasks[name].make(args.seeds[0])[1]}; variants {VARIANTS}", flush=True)
        t0 = time.perf_counter()
        for seed in args.seeds:  # seed-major: a partial study already covers every task and variant
            for name in args.tasks:
                for variant in VARIANTS:
                    t = time.perf_counter()
                    model, test = trained(all_tasks[name], variant, seed, models, results)
                    measure(all_tasks[name], variant, seed, model, test, results, args.acdc_budget)
                    print(f"{name} {variant} seed {seed}: {time.perf_counter() - t:.0f} s "
                          f"(study so far {(time.perf_counter() - t0) / 60:.1f} min)", flush=True)
    text = summary(results)
    (args.out / "circuits.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
