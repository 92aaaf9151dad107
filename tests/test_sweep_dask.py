"""The seed sweep on dask.distributed (studies/sweep.py): real clusters, real kernels, two tiny notebooks.

Each synthetic notebook has the five sweep parameters and records what it was given, so the CSV rows are checked
against the command line that made them: a seed, a procedure, FAST, FIGURES=False, and which bimt_seeing the
kernel imported (this checkout's, not another install's). One notebook raises after its claim, so the failed-run
path goes through the cluster too.
"""
import csv
import json
import os
import signal
from pathlib import Path

import dask
import nbformat
import pytest
from distributed import Client, LocalCluster

import bimt_seeing
import sweep

PARAMETERS = 'SEED = None\nPROCEDURE = "authors"\nFAST = False\nFIGURES = True\nCLAIMS_JSON = None'
RECORD = """import bimt_seeing as bs
claims = bs.Claims(CLAIMS_JSON, notebook={stem!r}, seed=SEED, procedure=PROCEDURE)
claims.check("given FAST", FAST, value=SEED)
claims.note("figures", FIGURES)
claims.note("bimt_seeing", bs.__file__)"""

# Without torch, so its kernel starts in a second: what it records is the seed and the folder it ran in
LIGHT = """import json, os
json.dump([{"claim": "given SEED", "holds": True, "value": SEED, "procedure": PROCEDURE},
           {"claim": "folder", "holds": None, "value": os.getcwd(), "procedure": PROCEDURE}], open(CLAIMS_JSON, "w"))"""


def write_notebook(folder: Path, stem: str, raises: bool = False, light: bool = False) -> None:
    cells = [nbformat.v4.new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell(LIGHT if light else RECORD.format(stem=stem))]
    if raises:
        cells.append(nbformat.v4.new_code_cell('raise ValueError("broken on purpose")'))
    nbformat.write(nbformat.v4.new_notebook(cells=cells), folder / f"{stem}.ipynb")


@pytest.fixture
def notebooks(tmp_path, monkeypatch):
    write_notebook(tmp_path, "steady")
    write_notebook(tmp_path, "broken", raises=True)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # the executed notebooks of failed runs land here
    return tmp_path


def arguments(folder: Path, *extra: str) -> list[str]:
    return ["--notebook-dir", str(folder), "--no-authors-seed", "--procedures", "clean", "--fast",
            "--out", str(folder / "sweep.csv"), "--figure", str(folder / "sweep.png"),
            "--table", str(folder / "sweep.md"), *extra]


def runs(path: Path) -> dict[tuple, dict]:
    """(notebook, seed, procedure) -> {claim: (holds, value)}, and every row's commit is the sweep's."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["commit"] for r in rows} == {sweep.git_commit()}
    table = {}
    for r in rows:
        table.setdefault(sweep.run_key(r), {})[r["claim"]] = (r["holds"], r["value"])
    return table


def expected_rows(seed: int, error: str | None = None) -> dict:
    return {"run completed": (str(error is None), error or ""), "given FAST": ("True", str(seed)),
            "figures": ("", "false"), "bimt_seeing": ("", bimt_seeing.__file__)}


def test_two_workers_of_a_running_cluster_run_both_notebooks_and_resume_skips_a_finished_run(notebooks, capsys):
    write_notebook(notebooks, "finished")  # in the CSV already: --resume must not run it
    earlier = {"notebook": "finished", "seed": "3", "procedure": "clean", "claim": "run completed", "holds": "True",
               "value": "", "seconds": "1.0", "commit": sweep.git_commit()}
    sweep.write_rows(notebooks / "sweep.csv", [earlier])
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        sweep.main(arguments(notebooks, "--notebooks", "steady", "broken", "finished", "--seeds", "3", "--resume",
                             "--scheduler", cluster.scheduler_address))
    assert f"dask scheduler {cluster.scheduler_address}: workers 2, threads 2" in capsys.readouterr().out
    assert runs(notebooks / "sweep.csv") == {
        ("steady", "3", "clean"): expected_rows(3),
        ("broken", "3", "clean"): expected_rows(3, "ValueError: broken on purpose"),
        ("finished", "3", "clean"): {"run completed": ("True", "")}}
    kept = list(notebooks.glob("bimt_sweep_*/broken_seed3_clean.ipynb"))  # the failed run's executed notebook
    assert len(kept) == 1
    assert "broken on purpose" in json.dumps(nbformat.read(kept[0], as_version=4).cells[-1].outputs)


def test_two_threads_of_one_worker_run_two_notebooks_each_in_its_own_folder(notebooks):
    write_notebook(notebooks, "light", light=True)
    with (LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster,
          Client(cluster) as client):
        before = client.run(os.getcwd)
        sweep.main(arguments(notebooks, "--notebooks", "light", "--seeds", "5-6", "--scheduler",
                             cluster.scheduler_address))
        assert client.run(os.getcwd) == before  # the worker process never changed folder under its threads
    table = runs(notebooks / "sweep.csv")
    assert {seed: claims["given SEED"] for (_, seed, _), claims in table.items()} == {"5": ("True", "5"),
                                                                                    "6": ("True", "6")}
    folders = {Path(claims["folder"][1]) for claims in table.values()}
    assert len(folders) == 2 and all(f.name.startswith("bimt_sweep_") and not f.exists() for f in folders)


def test_the_default_cluster_is_one_single_threaded_process_per_job_and_leaves_ctrl_c_to_the_sweep():
    ours = signal.getsignal(signal.SIGINT)
    with sweep.connect(None, 2) as client:
        assert sorted(client.nthreads().values()) == [1, 1]
        pids = client.run(os.getpid)
        assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
        assert set(client.run(signal.getsignal, signal.SIGINT).values()) == {signal.SIG_IGN}
    assert signal.getsignal(signal.SIGINT) is ours


def test_a_worker_at_another_commit_stops_the_sweep_and_records_nothing(notebooks, monkeypatch):
    commits = iter(["commit-of-the-sweep", "commit-of-the-worker"])  # first the sweep's, then the worker's
    monkeypatch.setattr(sweep, "git_commit", lambda: next(commits))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with pytest.raises(SystemExit, match="(?s)could not run steady seed 3 clean: RuntimeError: .*at commit "
                                             "commit-of-the-worker, the sweep runs commit commit-of-the-sweep"):
            sweep.main(arguments(notebooks, "--notebooks", "steady", "--seeds", "3",
                                 "--scheduler", cluster.scheduler_address))
    assert not (notebooks / "sweep.csv").is_file()


def test_an_address_without_a_scheduler_is_a_clear_error(notebooks):
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(SystemExit, match="--scheduler tcp://127.0.0.1:1: no dask scheduler answered"):
            sweep.main(arguments(notebooks, "--notebooks", "steady", "--seeds", "3",
                                 "--scheduler", "tcp://127.0.0.1:1"))


def test_jobs_must_be_positive(notebooks, capsys):
    with pytest.raises(SystemExit):
        sweep.main(arguments(notebooks, "--notebooks", "steady", "--jobs", "0"))
    assert "--jobs 0: expected at least 1 worker process" in capsys.readouterr().err
