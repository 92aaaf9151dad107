"""pytest hooks shared by the unit tests (tests/) and the nbval runs of the notebooks (notebooks/)."""

# After a cell's reply, nbval reads the cell's output messages with a fixed 5 s wait for each one (nbval has
# no option for it). A 40,000-step training cell streams its progress bar, and when the kernel is slow to
# flush it (other processes on the cores, a slow disk), a wait of 5 s fails a correct notebook with "Timeout of 5 seconds
# exceeded waiting for output". A longer wait changes no check: the outputs compared are the same.
NBVAL_OUTPUT_TIMEOUT = 120  # seconds

try:
    from nbval.plugin import IPyNbCell
except ImportError:  # without nbval there are no notebook items to adjust
    IPyNbCell = ()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if isinstance(item, IPyNbCell):
            item.output_timeout = NBVAL_OUTPUT_TIMEOUT
