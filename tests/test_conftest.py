"""The repo's conftest.py: nbval's cells wait NBVAL_OUTPUT_TIMEOUT seconds for their output, not nbval's 5 s."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def root_conftest():
    """The repo's conftest.py as a module (`import conftest` would find tests/conftest.py)."""
    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

PROBE = '''
def pytest_collection_finish(session):
    for item in session.items:
        print("PROBE", type(item).__name__, getattr(item, "output_timeout", None))
'''


def test_nbval_cells_of_a_notebook_get_the_longer_output_timeout(tmp_path):
    # Collect a real notebook the way the README's test command does, with a probe plugin that reports what
    # every collected item will wait for; nothing is executed.
    (tmp_path / "timeout_probe.py").write_text(PROBE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "timeout_probe",
                          "--nbval-lax", "notebooks/two_moons.ipynb"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    probes = [line.split() for line in out.stdout.splitlines() if line.startswith("PROBE")]
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(probes) > 5
    assert {tuple(p[1:]) for p in probes} == {("IPyNbCell", "120")}


ORDER_PROBE = '''
def pytest_collection_finish(session):
    print("REORDER", session.config.getoption("loadscopereorder"))
    for item in session.items:
        print("ITEM", str(item.fspath))
'''


def test_recorded_seconds_sums_the_execution_times_jupyter_wrote_into_each_cell(tmp_path):
    conftest = root_conftest()

    def cell(start, end):
        return {"cell_type": "code", "metadata": {"execution": {"iopub.execute_input": start,
                                                                "shell.execute_reply": end}}}
    nb = {"cells": [cell("2026-01-01T10:00:00.000000Z", "2026-01-01T10:01:30.500000Z"),   # 90.5 s
                    cell("2026-01-01T10:01:31.000000Z", "2026-01-01T10:01:33.250000Z"),   # 2.25 s
                    {"cell_type": "markdown", "metadata": {}}, {"cell_type": "code", "metadata": {}}]}
    (tmp_path / "a.ipynb").write_text(json.dumps(nb))
    (tmp_path / "b.ipynb").write_text(json.dumps({"cells": [{"cell_type": "code", "metadata": {}}]}))
    assert conftest.recorded_seconds(tmp_path / "a.ipynb") == 92.75
    assert conftest.recorded_seconds(tmp_path / "b.ipynb") == 0.0


def test_the_notebooks_are_collected_first_longest_first_and_xdist_keeps_that_order(tmp_path):
    # Collect everything as the README's test command does (nothing runs), with a probe that reports the order.
    conftest = root_conftest()

    (tmp_path / "order_probe.py").write_text(ORDER_PROBE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "order_probe",
                          "--nbval-lax"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "REORDER False" in out.stdout  # pytest.ini: xdist must not re-sort the files by their number of tests
    files = list(dict.fromkeys(line.split()[1] for line in out.stdout.splitlines() if line.startswith("ITEM")))
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert len(notebooks) >= 7
    expect = sorted(notebooks, key=lambda p: -conftest.recorded_seconds(p))
    assert files[:len(notebooks)] == [str(p) for p in expect]
    assert all(f.endswith(".py") for f in files[len(notebooks):]) and len(files) > len(notebooks) + 20
