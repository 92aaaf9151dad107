"""The seed sweep: how often does each of the paper's claims hold?

Not collected by pytest. Run from the repository root:
    .venv/bin/python studies/sweep.py                      # everything: 6 notebooks x 11 seeds x 2 procedures
    .venv/bin/python studies/sweep.py --resume             # go on after an interruption (Ctrl-C is safe)
    .venv/bin/python studies/sweep.py --notebooks two_moons --seeds 0-4 --procedures clean
    .venv/bin/python studies/sweep.py --summary            # only redraw the figure and the table from the CSV
    .venv/bin/python studies/sweep.py --scheduler tcp://host:8786   # on a running dask cluster (docs/sweeps.md)
    .venv/bin/python studies/sweep.py --ensemble           # one run per notebook and procedure, all seeds at once

Every notebook runs once per (seed, procedure): the seeds of --seeds and the authors' seed (SEED=None, recorded
as seed "authors"), under the authors' procedure and our clean one, with FIGURES=False (no figure files, GIFs or
widgets). Each run writes its claims (bs.Claims) to a JSON file; as soon as the run ends, its rows are appended
to the CSV (results/claims_sweep.csv): one row per claim, plus a 'run completed' row that is False, with the
error's last line as value, when the run raised. A run already in the CSV is replaced (or, with --resume,
skipped). At the end, and with --summary, the sweep writes figures/claims_sweep.png and results/claims_sweep.md
(docs/robustness.md reads them; each notebook shows its own rows with bs.claim_rates). A notebook whose
`parameters` cell lacks one of the five names is refused before anything runs; --timeout bounds a whole run; a run that records
no claim, or another procedure than it was given, counts as failed.

With --ensemble, a notebook runs once per procedure with all the seeds of --seeds (SEEDS=[...]: trained as one
ensemble, bimt_ensemble.train_seeds), and the authors' seed alone as before. The run's claims are split by the
seed they carry, so the CSV gets the same rows as the per-seed sweep, each seed's seconds being the run's time over
its number of seeds; a run that fails fails every seed of it. A seed equal to the authors' one is compared with the
authors' code wherever it falls in SEEDS, as in its per-seed run. The notebook's parameters cell must also set
SEEDS.

Why papermill rather than bare nbclient: a sweep needs parameters, and papermill (2.7.0, in requirements.txt)
is nbclient plus exactly that: it injects the values after the cell tagged `parameters`, so a notebook keeps its
own defaults for a reader, and a user reruns any one run of the sweep from the shell with the same convention,
e.g. `papermill notebooks/two_moons.ipynb out.ipynb -p SEED 3 -p PROCEDURE clean -p FIGURES False`. With nbclient
we would write that injection ourselves. What it costs is a kernel start per run.

Overhead per run, measured on synthetic notebooks (2 cores, load average 2.3): papermill executing a notebook that
does nothing, kernel start and save included, 1.5 s; one that only imports bimt_core and records a claim, 6.0 s,
since `import bimt_core` (torch) takes 4.0 s in a fresh process (6 s at load 7). That import is paid by any
runner that gives each run a fresh kernel; for the full sweep's 132 runs on 2 workers it adds about 7 minutes.

Parallelism: dask.distributed (pinned in requirements.txt). By default a LocalCluster of --jobs worker processes
(default all cores) with one thread each; with --scheduler ADDRESS, the workers of a running dask cluster, one run
per worker thread. A job (execute) carries the notebook itself, stripped of outputs, and returns the run's CSV
rows, which the sweep appends as each job ends (distributed.as_completed); it executes the notebook in its own
kernel with torch on one thread (bimt_core.train pins it; OMP/MKL are pinned in execute for the rest). The
scheduler and each worker import this module from their own checkout (studies/ on their PYTHONPATH), and a
worker's kernels import bimt_core from it too; it must be at the sweep's commit. Runs are submitted longest-first
(dask's priority) when the CSV holds earlier durations, so the workers finish together.
"""
import argparse
import ast
import contextlib
import csv
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {"symbolic_formulas": "Fig 3", "two_moons": "Fig 4", "modular_addition": "Fig 5",
             "permutation_s4": "Fig 6", "incontext_regression": "Fig 7", "mnist": "Fig 8"}
PARAMETERS = {"SEED", "PROCEDURE", "FAST", "FIGURES", "CLAIMS_JSON"}  # every notebook's parameters cell has these
ENSEMBLE_PARAMETERS = PARAMETERS | {"SEEDS"}  # and these for --ensemble
COLUMNS = ["notebook", "seed", "procedure", "claim", "holds", "value", "seconds", "commit"]
AUTHORS_SEED = "authors"  # the seed column of the run with SEED=None
RUN_COMPLETED = "run completed"


# ----------------------------------------------------------------------------------------------------------
# The CSV


def parse_seeds(tokens: list[str]) -> list[int]:
    """['0-9'], ['0', '3'], ['0,3,5-7'] -> the sorted distinct seeds."""
    seeds = set()
    for part in filter(None, ",".join(tokens).split(",")):
        lo, dash, hi = part.partition("-")
        try:
            seeds.update(range(int(lo), int(hi) + 1) if dash else [int(lo)])
        except ValueError:
            raise argparse.ArgumentTypeError(f"seed {part!r}: expected an integer or a range like 0-9") from None
    return sorted(seeds)


def read_rows(path: Path, columns: list = COLUMNS) -> list[dict]:
    """The rows of a results CSV with these columns (other studies pass theirs); none if there is no file."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != columns:
            sys.exit(f"{path}: columns {reader.fieldnames}, expected {columns}; move it away or pass another --out")
        return list(reader)


def write_rows(path: Path, rows: list[dict], append: bool = False, columns: list = COLUMNS) -> None:
    """Append (the header first if the file is new), or replace the file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not append or not path.is_file() or path.stat().st_size == 0
    target = path.with_suffix(".tmp") if not append else path
    with target.open("a" if append else "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    if not append:
        os.replace(target, path)


def procedure_label(procedure: str) -> str:
    return "authors'" if procedure == "authors" else procedure


def run_key(row: dict) -> tuple[str, str, str]:
    return row["notebook"], row["seed"], row["procedure"]


def sort_rows(rows: list[dict]) -> list[dict]:
    """Figure order, then procedure, then the authors' seed before 0, 1, ...; a run's claims keep their order."""
    order = {nb: i for i, nb in enumerate(NOTEBOOKS)}
    return sorted(rows, key=lambda r: (order.get(r["notebook"], len(order)), r["notebook"], r["procedure"],
                                       -1 if r["seed"] == AUTHORS_SEED else int(r["seed"])))


def as_text(value) -> str:
    """A claim's value as the CSV holds it: strings as they are, no value as '', anything else as JSON."""
    return value if isinstance(value, str) else "" if value is None else json.dumps(value)


def run_rows(key: tuple, records: list[dict], seconds: float, error: str | None, commit: str) -> list[dict]:
    """The CSV rows of one run: 'run completed' first, then the claims the notebook recorded (even when a later
    cell raised: they were measured). holds is 'True', 'False', or '' for a note (a measured value, no claim)."""
    base = dict(zip(("notebook", "seed", "procedure"), key), seconds=f"{seconds:.1f}", commit=commit)
    return [{**base, "claim": RUN_COMPLETED, "holds": str(error is None), "value": error or ""}] + [
        {**base, "claim": r["claim"], "holds": "" if r["holds"] is None else str(bool(r["holds"])),
         "value": as_text(r.get("value"))} for r in records]


# ----------------------------------------------------------------------------------------------------------
# One run (on a dask worker)


class Job(NamedTuple):
    """One run, as a worker receives it: everything it needs except the repository, which the worker has."""
    key: tuple[str, str, str]  # (notebook stem, seed or 'authors' or the seeds joined by ',', procedure)
    notebook: str              # the notebook's JSON, outputs stripped: no worker reads the sweep's own files
    fast: bool
    timeout: float             # seconds the whole run may take
    commit: str                # the sweep's checkout (git_commit); a worker at another commit refuses the job
    seeds: tuple | None = None  # an ensemble run's seeds (the notebook's SEEDS); None: the one seed of key


class Run(NamedTuple):
    """What a worker sends back when a run ends."""
    key: tuple[str, str, str]
    rows: list[dict]           # the run's CSV rows (run_rows)
    seconds: float
    error: str | None          # the error's last line; None: the run completed
    executed: str | None       # the executed notebook's JSON when the run failed (what went wrong); else None


def last_line(error: BaseException) -> str:
    """The last line of the traceback, 'ValueError: message', on one line (a message's own lines joined)."""
    ename, evalue = getattr(error, "ename", type(error).__name__), getattr(error, "evalue", str(error))
    message = " / ".join(str(evalue).splitlines())
    return textwrap.shorten(f"{ename}: {message}", 300, placeholder=" ...")


def strip_outputs(path: Path) -> str:
    """A notebook's JSON without its outputs: what papermill needs, 30-50 kB instead of the committed figures'
    0.1-2 MB, sent once per job."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nbformat.writes(nb)


def execute(job: Job) -> Run:
    """Run one notebook with papermill on this worker, in a scratch folder that is removed afterwards.
    --timeout bounds the whole run: each cell may take what is left of it (nbclient's timeout_func).
    A failure inside the notebook is a result (Run.error); a worker whose checkout is at another commit than the
    sweep's raises instead, and the sweep stops: its rows would describe code that did not run."""
    import nbformat
    import papermill
    from nbclient.exceptions import CellTimeoutError

    here = git_commit()
    if here != job.commit:
        raise RuntimeError(f"the worker on {platform.node()} has {ROOT} at commit {here}, the sweep runs commit "
                           f"{job.commit}: check out the sweep's commit there (and commit local changes first)")
    # Inherited by the kernel: one thread for BLAS/OpenMP (the worker's other jobs share the cores), and this
    # checkout's bimt_core ahead of any other install of it
    paths = [str(ROOT)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                      PYTHONPATH=os.pathsep.join(dict.fromkeys(filter(None, paths))))
    # papermill warns on every run that it cannot parse `FAST = os.environ.get(...) == "1"`; check_notebooks
    # has checked the parameters cell once, and a run that fails still says why in its row
    logging.getLogger("papermill").setLevel(logging.ERROR)
    stem, seed, procedure = job.key
    with tempfile.TemporaryDirectory(prefix="bimt_sweep_") as scratch:
        out, claims_json = Path(scratch) / f"{stem}.ipynb", Path(scratch) / "claims.json"
        params = dict(SEED=None if seed == AUTHORS_SEED or job.seeds else int(seed), PROCEDURE=procedure,
                      FAST=job.fast, FIGURES=False, CLAIMS_JSON=str(claims_json))
        if job.seeds:
            params["SEEDS"] = list(job.seeds)
        start, deadline, error = time.perf_counter(), time.monotonic() + job.timeout, None
        try:
            # The kernel starts in the scratch folder (nbclient's resources path; papermill's own cwd= would
            # chdir the whole worker process, under its other threads' runs). It writes to the worker's terminal
            # (for a LocalCluster, the sweep's): errors only, so that start-up warnings do not run over the bar.
            papermill.execute_notebook(nbformat.reads(job.notebook, as_version=4), out, parameters=params,
                                       kernel_name="python3", language="python", progress_bar=False,
                                       resources={"metadata": {"path": scratch}},
                                       extra_arguments=["--IPKernelApp.log_level=ERROR"],
                                       timeout_func=lambda cell: max(1.0, deadline - time.monotonic()))
        except CellTimeoutError:
            error = f"TimeoutError: the run took longer than --timeout {job.timeout} s"
        except Exception as e:  # a failed run is a result: record it and go on
            error = last_line(e)
        seconds = time.perf_counter() - start
        try:  # Claims rewrites the whole list at every record; a run killed mid-write leaves no readable list
            records = json.loads(claims_json.read_text())
        except (OSError, ValueError):
            records = []
        procedures = {r.get("procedure") for r in records} - {procedure}
        if error is None and not records:
            error = "the run recorded no claims: does the notebook pass CLAIMS_JSON to bs.Claims?"
        elif error is None and procedures:
            error = f"the notebook recorded procedure {procedures.pop()!r}, not the {procedure!r} it was given"
        executed = out.read_text() if error is not None and out.is_file() else None
    if not job.seeds:
        return Run(job.key, run_rows(job.key, records, seconds, error, job.commit), seconds, error, executed)
    rows = []  # per seed, the rows its own run would give: its claims, a share of the time, the run's error
    for s in job.seeds:
        mine = [r for r in records if r.get("seed") == s]
        failed = error or (None if mine else f"the run recorded no claims for seed {s}")
        rows += run_rows((stem, str(s), procedure), mine, seconds / len(job.seeds), failed, job.commit)
    return Run(job.key, rows, seconds, error, executed)


# ----------------------------------------------------------------------------------------------------------
# The sweep


def check_notebooks(folder: Path, stems: list[str], required: set = PARAMETERS) -> None:
    """Every notebook must exist and define the required parameters: without a `parameters` cell papermill would
    inject SEED above the notebook's own `SEED = None`, and every 'seed' would silently be the authors' one."""
    import nbformat

    problems = []
    for stem in stems:
        path = folder / f"{stem}.ipynb"
        if not path.is_file():
            problems.append(f"{path}: no such notebook")
            continue
        cells = [c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
        assigned = {t.id for c in cells for node in ast.walk(ast.parse(c.source)) if isinstance(node, ast.Assign)
                    for t in node.targets if isinstance(t, ast.Name)}  # papermill's own parser skips `a == b`
        missing = required - assigned
        if not cells:
            problems.append(f"{path}: no cell tagged 'parameters'")
        elif missing:
            problems.append(f"{path}: its cell tagged 'parameters' does not set {', '.join(sorted(missing))}")
    if problems:
        sys.exit(f"cannot sweep (each notebook needs a parameters cell with {', '.join(sorted(required))}):\n"
                 + "\n".join(problems))


def git_commit(root: Path = ROOT) -> str:
    """The code that produced a row: the commit, '+dirty' with uncommitted changes to tracked files outside
    results/ and figures/ (what the sweeps and the notebooks write: a sweep that has appended its first rows still
    runs the commit it started at)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True).stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results",
                  ":(exclude)figures")
    return (git("rev-parse", "--short=10", "HEAD") or "unknown") + "+dirty" * bool(changed)


def median_seconds(rows: list[dict]) -> dict:
    """(notebook, procedure) -> median wall time of a run, from the 'run completed' rows."""
    times = {}
    for r in rows:
        if r["claim"] == RUN_COMPLETED:
            times.setdefault((r["notebook"], r["procedure"]), []).append(float(r["seconds"]))
    return {k: statistics.median(v) for k, v in times.items()}


@contextlib.contextmanager
def connect(scheduler: str | None, workers: int) -> Iterator:
    """Yields a dask Client of the running cluster at `scheduler`, or of a LocalCluster of `workers` processes
    with one thread each, closed on leaving. A worker thread runs one job, so one kernel, at a time."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler)
        except OSError as e:
            sys.exit(f"--scheduler {scheduler}: no dask scheduler answered ({e}); start one with `dask scheduler` "
                     f"and pass the address it prints, e.g. tcp://host:8786")
        with client:
            yield client
        return
    # The worker processes inherit an ignored Ctrl-C: it is the sweep's, which then closes the cluster (else every
    # worker prints its own KeyboardInterrupt). Dask's errors are shown, not its warnings: on a busy machine they
    # are about slow event loops and slow shutdowns, over the progress bar. No dashboard: it needs bokeh, which
    # requirements.txt leaves out.
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
    finally:
        signal.signal(signal.SIGINT, handler)
    with cluster, Client(cluster) as client:
        yield client


def sweep(args) -> None:
    from distributed import as_completed
    from tqdm import tqdm

    check_notebooks(args.notebook_dir, args.notebooks, ENSEMBLE_PARAMETERS if args.ensemble else PARAMETERS)
    seeds = ([AUTHORS_SEED] if args.authors_seed else []) + [str(s) for s in args.seeds]
    keys = [(nb, s, p) for nb in args.notebooks for p in args.procedures for s in seeds]
    old = read_rows(args.out)
    done = {run_key(r) for r in old}
    if args.resume:
        todo = [k for k in keys if k not in done]
    else:
        todo, replaced = keys, set(keys) & done
        if replaced:
            print(f"replacing the rows of {len(replaced)} earlier runs in {args.out} (--resume keeps them)")
            write_rows(args.out, [r for r in old if run_key(r) not in replaced])
    longest = median_seconds(old)
    todo.sort(key=lambda k: -longest.get((k[0], k[2]), float("inf")))  # unknown durations first
    print(f"runs to do: {len(todo)} of {len(keys)} (notebooks {' '.join(args.notebooks)}; seeds {' '.join(seeds)}; "
          f"procedures {' '.join(args.procedures)}); the other {len(keys) - len(todo)} are already in {args.out}")
    if not todo:
        return
    commit, tmp = git_commit(), tempfile.mkdtemp(prefix="bimt_sweep_")
    notebooks = {stem: strip_outputs(args.notebook_dir / f"{stem}.ipynb") for stem in args.notebooks}
    jobs = [Job(k, notebooks[k[0]], args.fast, args.timeout, commit) for k in todo if not args.ensemble]
    if args.ensemble:  # the swept seeds of a notebook and procedure in one job; the authors' seed alone
        groups = {}
        for stem, seed, procedure in todo:
            groups.setdefault((stem, procedure, seed == AUTHORS_SEED), []).append(seed)
        for (stem, procedure, authors), group in groups.items():
            seeds = None if authors else tuple(int(s) for s in group)
            jobs.append(Job((stem, ",".join(group), procedure), notebooks[stem], args.fast, args.timeout, commit,
                            seeds))
        jobs.sort(key=lambda j: -longest.get((j.key[0], j.key[2]), float("inf")) * len(j.seeds or [0]))
    print(f"FAST={args.fast}, FIGURES=False, timeout {args.timeout:.0f} s per run; commit {commit}; one kernel per "
          f"job, torch on 1 thread (bimt_core.train), OMP_NUM_THREADS=MKL_NUM_THREADS=1; the executed notebooks of "
          f"failed runs go to {tmp}")
    start, seconds, failed = time.perf_counter(), {}, 0
    try:
        with connect(args.scheduler, min(args.jobs, len(jobs))) as client:
            threads = client.nthreads()
            print(f"dask {'scheduler ' + args.scheduler if args.scheduler else 'LocalCluster'}: workers "
                  f"{len(threads)}, threads {sum(threads.values())}" + ("" if threads else
                  f"; the runs wait until a worker joins (`dask worker {args.scheduler}`)"))
            # priority: dask starts the longest runs first, so that the workers finish together
            futures = {client.submit(execute, job, pure=False, priority=len(jobs) - i): job
                       for i, job in enumerate(jobs)}
            bar = tqdm(as_completed(futures), total=len(jobs), unit="run", smoothing=0)
            for future in bar:
                stem, seed, procedure = futures[future].key
                try:
                    run = future.result()
                except Exception as e:  # raised outside the notebook: a worker's fault, not a result of the run
                    sys.exit(f"\nstopped: a worker could not run {stem} seed {seed} {procedure}: {last_line(e)}\n"
                             f"The scheduler and the workers need this commit of the repository, with studies/ on "
                             f"their PYTHONPATH (docs/sweeps.md). The runs that ended are in {args.out}; --resume "
                             f"goes on.")
                write_rows(args.out, run.rows, append=True)
                seconds.setdefault((stem, procedure), []).append(run.seconds / len(futures[future].seeds or [0]))
                if run.error:
                    failed += 1
                    kept = Path(tmp) / f"{stem}_seed{seed}_{procedure}.ipynb"
                    if run.executed:
                        kept.write_text(run.executed)
                    bar.write(f"FAILED {stem} seed {seed} {procedure} after {run.seconds:.0f} s: {run.error}"
                              + (f" ({kept})" if run.executed else ""))
                bar.set_postfix_str(f"{stem} seed {seed} {procedure} {run.seconds:.0f} s, {failed} failed",
                                    refresh=False)
    except KeyboardInterrupt:
        sys.exit(f"\ninterrupted after {sum(map(len, seconds.values()))} of {len(jobs)} runs, all recorded in "
                 f"{args.out}; run again with --resume to go on")
    print(f"{len(jobs)} runs in {time.perf_counter() - start:.0f} s wall time, {failed} failed; median run time:")
    for (stem, procedure), secs in sorted(seconds.items()):
        print(f"  {stem:22s} {procedure:8s} {statistics.median(secs):6.1f} s  (runs: {len(secs)})")
    if not failed:
        shutil.rmtree(tmp)
    write_rows(args.out, sort_rows(read_rows(args.out)))  # one canonical order: diffs between sweeps read well


# ----------------------------------------------------------------------------------------------------------
# The summary: README table and figure


def number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def distribution(values: list[str]) -> str:
    """'2 (6 seeds), 3 (4 seeds)'; for more than four distinct numbers, their median and range."""
    if not values:
        return "-"
    nums = [number(v) for v in values]
    if len(set(values)) > 4 and None not in nums:
        return f"median {statistics.median(nums):.3g}, range {min(nums):.3g} to {max(nums):.3g} ({len(nums)} seeds)"
    return ", ".join(f"{v} ({c} seed{'s' * (c > 1)})" for v, c in Counter(values).most_common())


def notes_table(rows: list[dict]) -> str:
    """Markdown: the measured values (holds None) at the authors' seed and over the swept seeds."""
    procedures, notes = sorted({r["procedure"] for r in rows}), {}
    for r in rows:
        if not r["holds"]:
            notes.setdefault((r["notebook"], r["claim"]), []).append(r)
    head = ["notebook", "value", "at the authors' seed (authors' procedure)"] + [
        f"over the seeds, {procedure_label(p)} procedure" for p in procedures]
    lines = [head, ["---"] * len(head)]
    for (nb, name), rs in notes.items():
        at = [r["value"] for r in rs if r["seed"] == AUTHORS_SEED and r["procedure"] == "authors"]
        lines.append([nb, name, at[0] if at else "-"] + [
            distribution([r["value"] for r in rs if r["seed"] != AUTHORS_SEED and r["procedure"] == p])
            for p in procedures])
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in lines)


def plot(table: list, path: Path, subtitle: str):
    """One row per claim (bs.ClaimRate), grouped by notebook: a bar per procedure (the share of swept seeds at
    which the claim holds, with its Wilson 95% interval as an error bar; k/n at the right) and a mark for the
    authors' own run (their seed, their procedure). A notebook's 'run completed' row is drawn only when one of
    its runs crashed (the crash is what lowers the n's). Saves the figure at path and returns it (closed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import bimt_seeing as bs

    procedures = list(table[0].rates) if table else []
    colours = dict(zip(procedures, ["#dd8452", "#4c72b0", "#8172b3", "#55a868"]))
    crashed = {c.notebook for c in table if c.claim == RUN_COMPLETED and
               (c.at_authors_seed is False or any(k < n for k, n in c.rates.values()))}
    items, notebook = [], None  # top to bottom: ('notebook', stem) headers and ('claim', ClaimRate) rows
    for entry in table:
        if entry.claim == RUN_COMPLETED and entry.notebook not in crashed:
            continue
        if entry.notebook != notebook:
            notebook = entry.notebook
            items.append(("notebook", notebook))
        items.append(("claim", entry))
    labels = [textwrap.wrap(item.claim, 60, max_lines=2, placeholder=" ...") for kind, item in items if kind == "claim"]
    left, width, right, top, row = 0.3 + 0.068 * max(map(len, sum(labels, [""]))), 5.0, 1.7, 1.3, 0.36
    height = top + row * len(items) + 0.6
    fig = plt.figure(figsize=(left + width + right, height))
    ax = fig.add_axes([left / fig.get_figwidth(), 0.6 / height, width / fig.get_figwidth(), row * len(items) / height])
    at_x = [1.03 + i * 0.6 / width for i in range(len(procedures) + 1)]  # text columns right of the bars, 0.6 in
    side = ax.get_yaxis_transform()  # x in axes units, y in rows
    bar = 0.76 / max(1, len(procedures))
    errors = {p: [] for p in procedures}  # (y, rate, lo, hi) of each bar with n > 0
    for y, (kind, item) in enumerate(items):
        if kind == "notebook":
            ax.text(-0.02, y, f"{NOTEBOOKS[item]}: {item}" if item in NOTEBOOKS else item, transform=side,
                    ha="right", va="center", weight="bold", fontsize=10)
            if y:
                ax.axhline(y - 0.5, color="0.75", lw=0.8, clip_on=False, xmin=-left / width, xmax=1 + right / width)
            continue
        ax.text(-0.02, y, "\n".join(textwrap.wrap(item.claim, 60, max_lines=2, placeholder=" ...")), transform=side,
                ha="right", va="center", fontsize=9, color="0.45" if item.claim == RUN_COMPLETED else "black",
                style="italic" if item.claim == RUN_COMPLETED else "normal")
        for i, (p, (k, n)) in enumerate(item.rates.items()):
            y_bar = y + (i - (len(procedures) - 1) / 2) * bar
            ax.barh(y_bar, k / n if n else 0, height=bar * 0.92, color=colours[p])
            if n:
                errors[p].append((y_bar, k / n, *bs.wilson(k, n)))
            ax.text(at_x[i], y, f"{k}/{n}" if n else "-", transform=side, ha="left", va="center", fontsize=9,
                    color=colours[p], weight="bold")
        mark, colour = {True: ("\u2713", "#2f855a"), False: ("\u2717", "#c53030"), None: ("-", "0.5")}[item.at_authors_seed]
        ax.text(at_x[-1] + 0.03, y, mark, transform=side, ha="center", va="center", fontsize=13,
                color=colour, weight="bold")
    for p, bars in errors.items():
        if bars:
            ys, rates, los, his = zip(*bars)  # one errorbar container per procedure, in procedure order
            ax.errorbar(rates, ys, xerr=[[r - lo for r, lo in zip(rates, los)], [hi - r for r, hi in zip(rates, his)]],
                        fmt="none", ecolor="0.15", elinewidth=0.9, capsize=2)
    for i, p in enumerate(procedures):
        ax.text(at_x[i], -0.6, procedure_label(p), transform=side, ha="left", va="bottom", fontsize=8, color=colours[p])
    ax.text(at_x[-1] + 0.03, -0.6, "authors'\nrun", transform=side, ha="center", va="bottom",
            fontsize=8)
    ax.set_ylim(len(items) - 0.5, -0.5)
    ax.set_xlim(0, 1)
    ax.set_yticks([])
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1], ["0%", "25%", "50%", "75%", "100%"])
    ax.grid(axis="x", color="0.88", lw=0.8)
    ax.set_axisbelow(True)
    ax.set_xlabel("share of seeds at which the claim holds")
    for spine in ("top", "right", "left"):
        ax.spines[spine].set_visible(False)
    fig.text(0.01, 1 - 0.25 / height, "How often do the paper's claims hold?", fontsize=13, weight="bold", va="top")
    fig.text(0.01, 1 - 0.6 / height, subtitle, fontsize=9, va="top", color="0.3")
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colours[p]) for p in procedures],
              labels=[f"{procedure_label(p)} procedure" for p in procedures], frameon=False,
              loc="lower left", bbox_to_anchor=(0, 1 + 0.1 / (row * len(items))), ncol=len(procedures), fontsize=9,
              borderaxespad=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


def summarize(csv_path: Path, figure: Path, table_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import bimt_seeing as bs

    rows = read_rows(csv_path)
    if not rows:
        sys.exit(f"{csv_path}: no rows to summarize")
    seeds = sorted({int(r["seed"]) for r in rows if r["seed"] != AUTHORS_SEED})
    contiguous = seeds == list(range(seeds[0], seeds[-1] + 1)) if seeds else False
    swept = f"{len(seeds)} seeds ({f'{seeds[0]}-{seeds[-1]}' if contiguous else ', '.join(map(str, seeds))})"
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text(
        f"Claims over up to {swept} per procedure (k/n: the runs of each notebook that recorded the claim, with "
        f"the Wilson 95% interval of the success rate), and at the authors' seed (generated by studies/sweep.py "
        f"from {csv_path.name}).\n\n{bs.claim_rates(path=csv_path)}\n\nMeasured values (no pass/fail):\n\n"
        f"{notes_table(rows)}\n")
    plot(bs.claim_tally(rows), figure,
         f"Bars: share of the swept seeds (up to {swept}) at which each claim holds, per procedure; whiskers: its "
         f"Wilson 95% interval.\n\u2713 / \u2717: it holds / fails in the authors' own run (their seed, their "
         f"procedure).")
    print(f"wrote {table_path} and {figure}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebooks", nargs="+", default=list(NOTEBOOKS), metavar="STEM",
                        help="notebooks/<STEM>.ipynb (default: all six)")
    parser.add_argument("--seeds", nargs="+", default=["0-9"], help="e.g. 0-9, or 0 3 7, or 0-4,8")
    parser.add_argument("--authors-seed", action=argparse.BooleanOptionalAction, default=True,
                        help="also run SEED=None once per notebook and procedure (seed 'authors')")
    parser.add_argument("--procedures", nargs="+", default=["authors", "clean"], choices=["authors", "clean"])
    parser.add_argument("--jobs", type=int, default=os.cpu_count(),
                        help="worker processes of the LocalCluster, one run each at a time (default: all cores)")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="run on the dask cluster at ADDRESS (e.g. tcp://host:8786) instead of a LocalCluster; "
                             "its workers need this commit of the repository (docs/sweeps.md)")
    parser.add_argument("--out", type=Path, help="the CSV (default results/claims_sweep.csv)")
    parser.add_argument("--resume", action="store_true", help="skip the runs already in --out")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one run may take (default 1800)")
    parser.add_argument("--fast", action="store_true",
                        help="FAST=True, for development: the defaults of --out, --figure, --table end in _fast")
    parser.add_argument("--summary", action="store_true", help="only write the figure and the table from --out")
    parser.add_argument("--figure", type=Path, help="the figure (default figures/claims_sweep.png)")
    parser.add_argument("--table", type=Path, help="the markdown tables (default results/claims_sweep.md)")
    parser.add_argument("--notebook-dir", type=Path, default=ROOT / "notebooks", help="where the STEMs are")
    parser.add_argument("--ensemble", action="store_true",
                        help="one run per notebook and procedure, its seeds trained as one ensemble (SEEDS=[...]); "
                             "the same rows as a run per seed")
    args = parser.parse_args(argv)
    try:
        args.seeds = parse_seeds(args.seeds)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: expected at least 1 worker process")
    fast = "_fast" * args.fast  # a development sweep never overwrites the committed results
    args.out = args.out or ROOT / "results" / f"claims_sweep{fast}.csv"
    args.figure = args.figure or ROOT / "figures" / f"claims_sweep{fast}.png"
    args.table = args.table or ROOT / "results" / f"claims_sweep{fast}.md"
    if not args.summary:
        sweep(args)
    summarize(args.out, args.figure, args.table)


if __name__ == "__main__":
    # Run as the module `sweep`, not as `__main__`: dask then sends the job function by reference, and each worker
    # imports it, with ROOT and git_commit, from its own checkout rather than receiving a copy of this one's
    import sweep

    sweep.main()
