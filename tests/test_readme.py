"""The README's quickstart ("BIMT on your own model") runs as written and prints what the README says it prints.

It runs in a fresh interpreter in an empty folder, as a user would run it after `pip install -e .`, so that the
README can never drift from the code.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart() -> tuple[str, str]:
    """The first python block of the section and the text block that shows its output."""
    section = (ROOT / "README.md").read_text().split("## BIMT on your own model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    printed = re.search(r"```text\n(.*?)```", section, re.S).group(1)
    return code, printed


def test_quickstart_runs_as_written(tmp_path):
    code, printed = quickstart()
    assert len(code.strip().splitlines()) <= 12  # the README promises a short quickstart
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["bimt_network.png"]  # it writes what it says, nothing else
    assert (tmp_path / "bimt_network.png").read_bytes()[:4] == b"\x89PNG"
    # which inputs reach which output, and the modules, exactly as the README shows them (the counts after
    # them are floating-point details of one run and may differ on another machine)
    claims = [line.split(" (")[0] for line in printed.splitlines() if line.startswith("  ")]
    assert len(claims) == 4
    for claim in claims:
        assert claim in run.stdout, (claim, run.stdout)
