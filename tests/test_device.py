"""The quickstart, a swap and a circuit on each device present: train runs where the model is (its data moved
there), and each result equals the CPU's. On a machine without a GPU only the CPU cases run."""
import copy
import re

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from test_circuits import RELEVANT, two_paths_task  # noqa: E402
from test_readme import quickstart  # noqa: E402

import bimt_core as bc  # noqa: E402
import bimt_seeing as bs  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def run_quickstart(device: str) -> dict:
    """The README's quickstart with its model moved to device; returns its variables."""
    code = quickstart()[0]
    built = "model = bc.BioMLP([4, 20, 20, 2], generator=g)"
    assert built in code
    namespace = {}
    exec(code.replace(built, built + f".to({device!r})"), namespace)
    return namespace


@pytest.mark.parametrize("device", DEVICES)
def test_quickstart_trains_where_the_model_is(device, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ran = run_quickstart(device)
    printed = capsys.readouterr().out
    model, hist = ran["model"], ran["model"].bimt_history
    assert {p.device.type for p in model.parameters()} == {device}
    assert (tmp_path / "bimt_network.png").exists()
    assert hist.test_loss[-1] < 0.1 * hist.test_loss[0] and hist.swaps[-1] > 0
    # the modules the README reports, found on this device too
    assert re.findall(r"output \d reads inputs \[.*\]", printed) == ["output 0 reads inputs [0, 1]",
                                                                      "output 1 reads inputs [2, 3]"]


@pytest.mark.parametrize("device", DEVICES)
def test_a_swap_pass_on_the_device_equals_the_cpu_one(device):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 4, generator=g)
    cpu = bc.BioMLP([4, 12, 12, 2], generator=g)
    opt = torch.optim.AdamW(cpu.parameters(), lr=1e-2)
    for _ in range(30):  # some training, so that the optimizer holds moments to move
        opt.zero_grad()
        (F.mse_loss(cpu(x), x[:, :2] * x[:, 2:]) + 1e-2 * bc.connection_cost(cpu)).backward()
        opt.step()
    there, there_opt = copy.deepcopy((cpu, opt))
    there.to(device)
    there_opt.load_state_dict(opt.state_dict())  # the state follows the parameters' device
    with torch.no_grad():
        before = there(x.to(device))
    n = bc.relocate(there, 10, there_opt)
    assert n == bc.relocate(cpu, 10, opt) > 0
    with torch.no_grad():
        assert torch.allclose(there(x.to(device)), before, atol=1e-6, rtol=0)  # a swap keeps the function
    for (name, a), b in zip(cpu.state_dict().items(), there.state_dict().values()):
        assert torch.equal(a, b.cpu()), name
    for p, q in zip(cpu.parameters(), there.parameters()):
        assert torch.equal(opt.state[p]["exp_avg"], there_opt.state[q]["exp_avg"].cpu())


@pytest.mark.parametrize("device", DEVICES)
def test_a_known_circuit_comes_back_on_the_device(device):
    m, x, metric = two_paths_task()
    c = bs.discover_circuit(m.to(device), x.to(device), lambda out: metric(out.cpu()), target=0.9)
    assert c.edges == RELEVANT and c.faithfulness == pytest.approx(1.0, abs=1e-6)
