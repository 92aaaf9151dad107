"""Circuit discovery against a planted ground truth: ROC AUC, time and peak memory per method, the measures
Nainani 2024 (arXiv:2401.03646) reports. Not collected by pytest.

    python benchmarks/bench_planted.py [--threads 1] [--seeds 0 1 2] [--out results/planted_circuits.md]

About 3 minutes of CPU on one core, most of it ACDC on the largest network (one forward pass per connection).

Each network is `bs.planted_mlp` (every connection non-zero; one chain of weight-1 connections from inputs
x0, x2 to output 0 carries the metric; dense strong weights into and out of dead neurons, dense weights to the
outputs the metric ignores, and tiny * N(0, 1) weights from the other live neurons into the chain) at a few
sizes and two distractor strengths: tiny = 1e-3 and 0.3 (live distractors feeding the chain at almost a third
of its weights). Per method, at faithfulness target 0.9 with mean ablation:
- EAP: AUC of the `edge_attribution` scores against the planted labels; the circuit of `discover_circuit`.
- ACDC: `discover_circuit(method='acdc')` returns a set, not a ranking, so its AUC is that of its one operating
  point, (TPR + TNR) / 2.
"exact" counts the seeds whose circuit is the planted set, connection for connection. Time: the circuit's
`seconds`, after one discovery on a small network has paid torch's one-time costs. Peak memory: the resident
memory the discovery added above what the process held when it began (Linux VmHWM, reset through
/proc/self/clear_refs), each (network, method, seed) in a fresh process forked from the benchmark's, so that
memory freed by one run cannot hide the next one's. tracemalloc would miss it: torch allocates tensors outside
Python's allocator. All runs of a table are forked from one process, one at a time, with torch's threads
pinned and printed.
"""
import argparse
import multiprocessing
import os
import pathlib
import statistics
import sys
from typing import NamedTuple

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import bimt_seeing as bs  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHAPES = [[8, 16, 16, 4], [8, 32, 32, 32, 4], [16, 64, 64, 8], [32, 128, 128, 16]]
TINY = [1e-3, 0.3]
METHODS = ["eap", "acdc"]
TARGET = 0.9


class Job(NamedTuple):
    shape: tuple
    tiny: float
    method: str
    seed: int


class Run(NamedTuple):
    job: Job
    auc: float
    exact: bool
    size: int  # connections in the circuit
    total: int  # connections in the network
    faithfulness: float
    seconds: float
    peak_mib: float  # resident memory added by the discovery


def status_kib(field: str) -> int:
    """A 'VmRSS'-like line of /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def run(job: Job) -> Run:
    """One discovery in this (freshly forked) process."""
    warm = bs.planted_mlp([4, 3, 2], seed=job.seed)  # torch's one-time costs (first autograd pass) are no method's
    bs.discover_circuit(warm.model, warm.x, warm.metric, target=TARGET, method=job.method)
    p = bs.planted_mlp(list(job.shape), tiny=job.tiny, seed=job.seed)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak resident memory, to the current resident memory
    start = status_kib("VmRSS")
    c = bs.discover_circuit(p.model, p.x, p.metric, target=TARGET, method=job.method)
    peak = status_kib("VmHWM") - start
    scores = bs.edge_attribution(p.model, p.x, p.metric) if job.method == "eap" else c.masks
    exact = all(torch.equal(m, label) for m, label in zip(c.masks, p.labels))
    return Run(job, bs.roc_auc(scores, p.labels), exact, len(c.edges), c.total, c.faithfulness, c.seconds, peak / 1024)


def table(runs: list[Run]) -> str:
    """Markdown: one row per (network, tiny, method); the time ratio ACDC / EAP on the ACDC rows."""
    groups = {}
    for r in runs:
        groups.setdefault(r.job._replace(seed=None), []).append(r)
    median_seconds = {key: statistics.median(r.seconds for r in rs) for key, rs in groups.items()}
    head = ["network", "connections", "tiny", "method", "ROC AUC (min over seeds)", "exact (seeds; Wilson 95%)",
            "circuit size (median)", "faithfulness (min)", "time, s (median)", "time vs EAP",
            "peak memory, MiB (median)"]
    lines = [head, ["---"] * len(head)]
    for key, rs in groups.items():
        eap = median_seconds[key._replace(method="eap")]
        lines.append([str(list(key.shape)), str(rs[0].total), f"{key.tiny:g}", key.method.upper(),
                      f"{min(r.auc for r in rs):.4f}", str(bs.Rate(sum(r.exact for r in rs), len(rs))),
                      f"{statistics.median(r.size for r in rs):g}", f"{min(r.faithfulness for r in rs):.3f}",
                      f"{median_seconds[key]:.3g}", f"{median_seconds[key] / eap:.0f}x",
                      f"{statistics.median(r.peak_mib for r in rs):.1f}"])
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def summary(runs: list[Run]) -> str:
    """Per method, over every network and seed: the lowest AUC, exact recoveries, time against EAP, memory."""
    eap = {r.job._replace(method="eap"): r.seconds for r in runs if r.job.method == "eap"}
    lines = []
    for method in METHODS:
        rs = [r for r in runs if r.job.method == method]
        ratios = [r.seconds / eap[r.job._replace(method="eap")] for r in rs]
        lines.append(f"- {method.upper()}: lowest ROC AUC {min(r.auc for r in rs):.4f}; the planted circuit exactly "
                     f"in {bs.Rate(sum(r.exact for r in rs), len(rs))} runs; {min(r.seconds for r in rs):.3g} to "
                     f"{max(r.seconds for r in rs):.3g} s" + (f", {min(ratios):.0f}x to {max(ratios):.0f}x EAP's "
                                                              f"time on the same network" if method != "eap" else "")
                     + f"; peak memory {min(r.peak_mib for r in rs):.1f} "
                     f"to {max(r.peak_mib for r in rs):.1f} MiB for {min(r.total for r in rs)} to "
                     f"{max(r.total for r in rs)} connections.")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="planted_mlp seeds (default 0 1 2)")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "results" / "planted_circuits.md")
    args = ap.parse_args()
    if not pathlib.Path("/proc/self/clear_refs").exists():
        sys.exit("this benchmark reads peak memory from Linux's /proc/self/status; run it on Linux")
    torch.set_num_threads(args.threads)
    env = (f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} torch thread(s) "
           f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), {os.cpu_count()} cores")
    print(env)
    jobs = [Job(tuple(s), t, m, seed) for s in SHAPES for t in TINY for m in METHODS for seed in args.seeds]
    runs = []
    with multiprocessing.get_context("fork").Pool(1, maxtasksperchild=1) as pool:  # a fresh process per run
        for r in pool.imap(run, jobs):
            print(f"  {str(list(r.job.shape)):20s} tiny {r.job.tiny:<6g} {r.job.method:4s} seed {r.job.seed}: AUC "
                  f"{r.auc:.4f}, {r.size}/{r.total} connections, exact {r.exact}, {r.seconds:.3g} s, "
                  f"{r.peak_mib:.1f} MiB", flush=True)
            runs.append(r)
    text = f"{summary(runs)}\n\n{table(runs)}"
    print(text)
    args.out.write_text(
        f"# Circuit discovery against a planted ground truth\n\nGenerated by `python benchmarks/bench_planted.py "
        f"--threads {args.threads} --seeds {' '.join(map(str, args.seeds))}` ({env}).\n\n"
        f"{__doc__.split(chr(10) * 2, 3)[3].strip()}\n\nSeeds {', '.join(map(str, args.seeds))} per row; target "
        f"faithfulness {TARGET}.\n\n{text}\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
