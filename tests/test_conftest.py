"""The repo's conftest.py: nbval's cells wait NBVAL_OUTPUT_TIMEOUT seconds for their output, not nbval's 5 s."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

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
