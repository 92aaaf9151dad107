"""BIMT on a model the user already has: `from_sequential` keeps an MLP's function exactly and the result trains
with swaps; what it cannot convert gets an error pointing to the protocol; without swaps a plain module of
BioLinears trains; and the minimal example in SwappableModel's docstring is a working model."""
import re
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import bimt_core as bc
import bimt_seeing as bs


def trained_mlp(act: nn.Module, dtype=torch.float32) -> nn.Sequential:
    """A plain PyTorch MLP after a few plain training steps, in eval mode (its dropout off)."""
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(5, 16), act, nn.Dropout(0.1), nn.Linear(16, 8), act, nn.Identity(),
                        nn.Linear(8, 3)).to(dtype)
    x, opt = torch.randn(64, 5, dtype=dtype), torch.optim.Adam(seq.parameters(), lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        F.mse_loss(seq(x), x[:, :3].sin()).backward()
        opt.step()
    return seq.eval()


@pytest.mark.parametrize("act, name", [(nn.ReLU(), "relu"), (nn.SiLU(), "silu"), (nn.GELU(), "gelu"),
                                       (nn.GELU(approximate="tanh"), "gelu_tanh"), (nn.Tanh(), "tanh")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_converted_model_computes_the_same_outputs(act, name, dtype):
    seq = trained_mlp(act, dtype)
    rng = torch.get_rng_state()
    bio = bc.from_sequential(seq)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left alone
    x = torch.randn(100, 5, dtype=dtype)
    assert bio.shape == [5, 16, 8, 3] and torch.equal(bio.act(x), act(x))
    assert torch.equal(bio(x), seq(x))
    assert bio.linears[0].weight.dtype == dtype and bio.linears[0].weight is not seq[0].weight  # a copy


def test_a_single_linear_and_the_geometry_arguments():
    lin = nn.Sequential(nn.Linear(16, 4))
    bio = bc.from_sequential(lin, geometry="grid", out_geometry="ring", fix_inputs=True)
    x = torch.randn(7, 16)
    assert torch.equal(bio(x), lin(x))
    assert bio.linears[0].in_coords.shape == (16, 2) and bio.neuron_layers()[0].fixed


def test_the_converted_model_trains_with_bimt():
    seq = trained_mlp(nn.SiLU())
    bio = bc.from_sequential(seq)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 5, generator=g)
    y = x[:, :3].sin()
    before = bc.connection_cost(bio).item()
    hist = bc.train(bio, bc.BIMTConfig(steps=400, lr=5e-3, lam=1e-2, swap_every=50), (x, y), (x, y), F.mse_loss,
                    progress=False)
    assert hist.swaps[-1] > 0 and hist.cost[-1] < 0.5 * before and hist.test_loss[-1] < hist.test_loss[0]


HOW = "from_sequential converts nn.Linear layers with one elementwise activation"


@pytest.mark.parametrize("seq, exc, match", [
    (nn.Linear(4, 2), TypeError, "seq must be an nn.Sequential: " + HOW),
    (nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Linear(4, 2)), ValueError,
     r"seq\[0\] must be an nn.Linear: .*for convolutions, attention, .* subclass bc.SwappableModel, got Conv1d"),
    (nn.Sequential(nn.Linear(4, 8), nn.MultiheadAttention(8, 2), nn.Linear(8, 2)), ValueError,
     r"seq\[1\] must be an elementwise activation: .*got MultiheadAttention"),
    (nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)), ValueError,
     r"seq\[1\] must be an elementwise activation: .*got LayerNorm"),
    (nn.Sequential(nn.Linear(4, 8), nn.Softmax(-1), nn.Linear(8, 2)), ValueError,
     r"seq\[1\] must be an elementwise activation: .*got Softmax"),
    (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2)), ValueError,
     r"seq\[3\] must be ReLU\(\) like seq\[1\] \(a BioMLP has one activation\), got Tanh\(\)"),
    (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(7, 2)), ValueError,
     r"seq\[2\].in_features must be seq\[0\].out_features, 8, got 7"),
    (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.Sigmoid()), ValueError,
     r"seq must be nn.Linear, activation, ..., nn.Linear \(odd in length\)"),
    (nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2), nn.Linear(2, 2)), ValueError,
     r"seq\[1\] must be an elementwise activation: .*got Linear"),
    (nn.Sequential(), ValueError, r"seq must be nn.Linear, activation, ..., nn.Linear"),
    (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2, bias=False)), ValueError,
     r"seq's Linear layers' biases must be all present or all absent, got \[True, False\]"),
])
def test_what_cannot_be_converted_is_named(seq, exc, match):
    with pytest.raises(exc, match=match):
        bc.from_sequential(seq)


def biolinears():
    return nn.Sequential(bc.BioLinear(4, 8, generator=torch.Generator().manual_seed(0)), nn.SiLU(),
                         bc.BioLinear(8, 2, generator=torch.Generator().manual_seed(1)))


def test_biolinears_in_a_sequential_train_without_swaps():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 4, generator=g)
    y = torch.stack([x[:, 0] * x[:, 1], x[:, 2]], 1)
    m, cfg = biolinears(), bc.BIMTConfig(steps=200, lr=1e-2, swap=False)
    hist = bc.train(m, cfg, (x, y), (x, y), F.mse_loss, progress=False)
    assert hist.test_loss[-1] < hist.test_loss[0] and hist.swaps[-1] == 0
    # the cost of the last step, before its update
    assert hist.cost[-1] == pytest.approx(bc.connection_cost(m, **cfg.cost_kwargs(199)).item(), rel=0.02)
    with pytest.raises(TypeError, match=r"Sequential cannot be swapped: .*bc.from_sequential converts an MLP.*"
                                        r"cfg.swap=False \(the cost needs only BioLinears\)"):
        bc.train(biolinears(), bc.BIMTConfig(steps=2), (x, y), (x, y), F.mse_loss, progress=False)


def docstring_model():
    """A class made of SwappableModel's docstring example, with a forward of its own."""
    example = re.search(r"\n\n( {8}def neuron_layers.*?)\n\n {4}\S", bc.SwappableModel.__doc__, re.S).group(1)

    class Example(bc.SwappableModel):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.a, self.b = bc.BioLinear(3, 6, generator=g), bc.BioLinear(6, 2, generator=g)

        def forward(self, x):
            return self.b(F.relu(self.a(x)))

    methods = {}
    exec(textwrap.dedent(example), {"bc": bc, "torch": torch}, methods)
    for name, f in methods.items():
        setattr(Example, name, f)
    return Example(), sorted(methods)


def test_the_docstring_example_swaps_and_is_analysed():
    m, methods = docstring_model()
    assert methods == ["graph", "neuron_layers"]
    x = torch.randn(20, 3)
    before = m(x)
    m.swap("hidden", 0, 5)
    assert torch.allclose(m(x), before, atol=1e-6, rtol=0) and not torch.equal(m.a.weight, docstring_model()[0].a.weight)
    report = bs.analyze(m)
    assert report.reach == {0: [0, 1, 2], 1: [0, 1, 2]}  # dense weights: every input reaches every output
    cfg = bc.BIMTConfig(steps=60, lr=1e-2, swap_every=20, top_k=6)
    y = torch.stack([x[:, 0], x[:, 1] * x[:, 2]], 1)
    hist = bc.train(m, cfg, (x, y), (x, y), F.mse_loss, progress=False)
    assert hist.swaps[-1] > 0
