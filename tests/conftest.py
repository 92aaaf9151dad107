"""Fixtures shared by the unit tests; functions they share (tasks, oracles) are in tests/helpers.py."""
import matplotlib
import pytest
import torch

matplotlib.use("Agg")  # before any test imports pyplot: the tests draw off screen
import matplotlib.pyplot as plt  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    """Every figure a test draws is closed after it, so that figures never pile up across tests."""
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread while a module's tests run: their models are tiny, and more threads only add overhead."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
