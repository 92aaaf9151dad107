"""pytest hooks shared by the unit tests (tests/) and the nbval runs of the notebooks (notebooks/)."""
import json
from datetime import datetime
from pathlib import Path

# After a cell's reply, nbval reads the cell's output messages with a fixed 5 s wait for each one (nbval has
# no option for it). A 40,000-step training cell streams its progress bar, and when the kernel is slow to
# flush it (other processes on the cores, a slow disk), a wait of 5 s fails a correct notebook with "Timeout of 5 seconds
# exceeded waiting for output". A longer wait changes no check: the outputs compared are the same.
NBVAL_OUTPUT_TIMEOUT = 120  # seconds

try:
    from nbval.plugin import IPyNbCell
except ImportError:  # without nbval there are no notebook items to adjust
    IPyNbCell = ()


def recorded_seconds(path) -> float:
    """The seconds a notebook's cells took when it was last executed and committed, from the start and end
    times Jupyter records in each cell's metadata (0 for a notebook that records none)."""
    total = 0.0
    for cell in json.loads(Path(path).read_text()).get("cells", []):
        times = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in times and "shell.execute_reply" in times:
            start, end = (datetime.fromisoformat(times[k].replace("Z", "+00:00"))
                          for k in ("iopub.execute_input", "shell.execute_reply"))
            total += (end - start).total_seconds()
    return total


def pytest_collection_modifyitems(config, items):
    # Under `-n 2 --dist loadfile` each file goes whole to one process, in the order collected (pytest.ini turns
    # off xdist's reordering by test count). The notebooks take minutes each and the unit test files seconds, so
    # the notebooks go first, the longest first, and the unit tests fill in behind them: the two processes then
    # finish close together instead of one running the longest notebook alone at the end.
    cost = {}
    for item in items:
        if isinstance(item, IPyNbCell):
            item.output_timeout = NBVAL_OUTPUT_TIMEOUT
            path = Path(str(item.fspath))
            if path not in cost:
                cost[path] = recorded_seconds(path)
    items.sort(key=lambda it: -cost.get(Path(str(it.fspath)), -1.0))  # stable: a file's cells keep their order
