"""Bad inputs to the public API get a clear error that names the argument, what was wrong and what is expected.

Each area is one parametrized test; each case names its error type and a fragment of the message. Before these
checks, most of these cases failed deep inside torch (IndexError, 'mat1 and mat2', zlib.error, ...) or were
accepted silently (a NaN threshold zeroed every weight, BioMLP([4.5, 3]) became [4, 3], an out-of-range neuron
was knocked out nowhere).
"""
import gzip

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import bimt_core as bc
import bimt_data as bd
import bimt_seeing as bs

nan = float("nan")


def mlp(**kw):
    return bc.BioMLP([4, 6, 2], generator=torch.Generator().manual_seed(0), **kw)


def emb():
    return bc.BioMLP([4, 3, 2], in_fold=2, vocab_size=5, generator=torch.Generator().manual_seed(0))


def nan_weight():
    m = mlp()
    with torch.no_grad():
        m.linears[0].weight[0, 0] = nan
    return m


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = bc.BioLinear(3, 2)


class ListGraph(bc.SwappableModel):
    def __init__(self):
        super().__init__()
        self.a = bc.BioLinear(3, 2)

    def graph(self):
        return [self.a]


def layer_with(index, role="incoming", attr="weight", dim=0):
    m = mlp()
    bc.NeuronLayer("h", 6).add(m.linears[0], attr, dim, index, role)


def check(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("call, exc, match", [
    (lambda: bc.neuron_coords(True), ValueError, "layer width must be a positive integer, got True"),
    (lambda: bc.neuron_coords(4, dtype=torch.long), ValueError, "dtype must be a floating-point torch dtype"),
    (lambda: bc.manhattan(torch.rand(3), torch.rand(3, 1)), ValueError, r"shapes \(3,\) and \(3, 1\)"),
    (lambda: bc.fold_index(5, 2), ValueError, "fold must be a positive int dividing 5, got 2"),
    (lambda: bc.BioLinear(0, 3), ValueError, r"BioLinear's widths must be positive ints, got \(0, 3\)"),
    (lambda: bc.BioLinear(3.5, 2), ValueError, "BioLinear's widths must be positive ints"),
    (lambda: bc.BioLinear(4, 2, dtype=torch.long), ValueError, "dtype must be a floating-point"),
    (lambda: bc.BioLinear(4, 2, generator=0), TypeError, "generator must be a torch.Generator or None, got 0"),
    (lambda: bc.BioLinear(4, 2)(torch.rand(5, 4, dtype=torch.float64)), ValueError,
     r"expects torch.float32 inputs like its weights, got torch.float64; convert them with .to\(torch.float32\)"),
    (lambda: bc.BioLinear(4, 2)(torch.ones(5, 4, dtype=torch.long)), ValueError, "got torch.int64"),
])
def test_geometry_and_layers(call, exc, match):
    check(call, exc, match)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: bc.BioMLP([4.5, 3]), ValueError,
     r"shape must be a list of positive int layer widths, at least an input and an output, got \[4.5, 3\]"),
    (lambda: bc.BioMLP([4, "8", 2]), ValueError, "positive int layer widths"),
    (lambda: bc.BioMLP(4), ValueError,
     "shape must be a list of positive int layer widths, at least an input and an output, got 4"),
    (lambda: bc.BioMLP([4, 3], in_fold=2, vocab_size=0), ValueError, "vocab_size must be a positive int or None, got 0"),
    (lambda: bc.BioMLP([4, 3], in_fold=2, vocab_size=-2), ValueError, "vocab_size must be"),
    (lambda: bc.BioMLP([4, 3], in_fold=2, vocab_size=2.5), ValueError, "vocab_size must be"),
    (lambda: bc.BioMLP([4, 3], fix_inputs="yes"), ValueError, "fix_inputs must be True or False, got 'yes'"),
    (lambda: bc.BioMLP([4, 3], dtype=torch.long), ValueError, "dtype must be a floating-point"),
    (lambda: mlp()(torch.rand(3, 4, dtype=torch.float64)), ValueError, "float32 inputs like its weights, got torch.float64"),
    (lambda: mlp()(torch.ones(3, 4, dtype=torch.long)), ValueError, "got torch.int64"),
    (lambda: mlp()(np.zeros((3, 4), np.float32)), TypeError, "inputs must be a torch.Tensor, got 'ndarray'"),
    (lambda: bc.BioTransformer(2, 2, d_model=True, n_heads=1), ValueError, "d_model must be a positive int, got True"),
    (lambda: bc.BioTransformer(2, 2, layer_norm="no"), ValueError, "layer_norm must be True or False"),
    (lambda: bc.BioTransformer(2, 2, d_model=4)(torch.rand(3, 4, 2, dtype=torch.float64)), ValueError,
     "float32 inputs like its weights, got torch.float64"),
])
def test_models(call, exc, match):
    check(call, exc, match)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: mlp().swap(1, 0, 1, optimizer="adam"), TypeError, "optimizer must be a torch.optim.Optimizer or None"),
    (lambda: mlp().swap(1, -1, 3), ValueError, r"unit index must be an int in \[0, 6\) for layer 'hidden1', got -1"),
    (lambda: mlp().swap(True, 0, 1), ValueError, "layer must be a name or an index"),
    (lambda: layer_with(torch.arange(5)[None]), ValueError,
     r"neuron layer 'h': BioLinear.weight: index must be a long \(copies, 6\) tensor of positions in \[0, 6\)"),
    (lambda: layer_with(torch.arange(6)[None] + 3), ValueError, r"positions in \[0, 6\), got 'torch.int64 \(1, 6\)'"),
    (lambda: layer_with(torch.arange(6.0)[None]), ValueError, "index must be a long"),
    (lambda: layer_with(torch.arange(6)[None], role="inbound"), ValueError,
     "neuron layer 'h': BioLinear.weight: role must be None, 'embedding', or 'incoming' / 'outgoing' for a "
     "BioLinear's weight along dim 0 / 1, got 'inbound'"),
    (lambda: layer_with(torch.arange(6)[None], role="outgoing"), ValueError, "role must be .*, got 'outgoing'"),
    (lambda: layer_with(torch.arange(6)[None], attr="wieght"), ValueError,
     "neuron layer 'h': BioLinear.wieght: dim must be a dim of a tensor attribute, got 0"),
    (lambda: layer_with(torch.arange(6)[None], dim=2), ValueError, "dim must be a dim of a tensor attribute, got 2"),
    (lambda: bc.NeuronLayer("h", 0), ValueError, "neuron layer 'h': n_units must be a positive int"),
])
def test_swapping(call, exc, match):
    check(call, exc, match)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: bc.connection_cost(mlp(), weight_factor=-1.0), ValueError, "weight_factor must be a finite number >= 0, got -1.0"),
    (lambda: bc.connection_cost(mlp(), l0=nan), ValueError, "l0 must be a finite number >= 0, got nan"),
    (lambda: bc.connection_cost(mlp(), weight_factor="1"), ValueError, "weight_factor must be a finite number"),
    (lambda: bc.connection_cost(mlp(), bias_penalty="no"), ValueError, "bias_penalty must be True or False"),
    (lambda: bc.connection_cost("model"), TypeError, "model must be an nn.Module, got 'str'"),
    (lambda: bc.cost_terms(mlp(), l0=-0.1), ValueError, "l0 must be a finite number >= 0"),
    (lambda: bc.sum_terms([]), ValueError, "sum_terms needs the non-empty list of terms of cost_terms"),
    (lambda: bc.relocate(mlp(), -1), ValueError, r"top_k \(units tried per layer\) must be an int >= 0, got -1"),
    (lambda: bc.relocate(mlp(), 2.5), ValueError, "top_k .* must be an int >= 0, got 2.5"),
    (lambda: bc.relocate(mlp(), True), ValueError, "top_k .* got True"),
    (lambda: bc.relocate(nan_weight(), 5), FloatingPointError, "the connection cost is nan: a weight is not finite"),
    (lambda: bc.relocate(mlp(), 5, weight_factor=-1.0), ValueError, "weight_factor must be a finite number >= 0"),
    (lambda: bc.relocate(mlp(), 5, optimizer="adam"), TypeError, "optimizer must be a torch.optim.Optimizer"),
    (lambda: bc.relocate(Plain(), 5), TypeError, r"Plain cannot be swapped: it needs a neuron_layers\(\) method"),
])
def test_cost_and_relocate(call, exc, match):
    check(call, exc, match)


def enter(**kw):
    """Enter an intervention on a fresh model: the checks run on entry, so the body is never reached."""
    model = kw.pop("model", None) or mlp()
    with bs.intervene(model, **kw):
        pytest.fail(f"intervene accepted {kw}")


@pytest.mark.parametrize("call, exc, match", [
    (lambda: bs.analyze(mlp(), -0.1), ValueError, r"threshold must be a number in \[0, 1\], got -0.1"),
    (lambda: bs.analyze(mlp(), 1.5), ValueError, r"threshold must be a number in \[0, 1\], got 1.5"),
    (lambda: bs.analyze(mlp(), nan), ValueError, r"threshold must be a number in \[0, 1\], got nan"),
    (lambda: bs.analyze(mlp(), "0.1"), ValueError, "threshold must be a number"),
    (lambda: bs.analyze(mlp(), graph="g"), TypeError, "graph must be a bc.Graph"),
    (lambda: bs.analyze(ListGraph()), TypeError, "graph must be a bc.Graph .*, got 'list'"),
    (lambda: bs.analyze(Plain()), TypeError, r"Plain cannot be analysed or drawn: it needs a graph\(\) method"),
    (lambda: bs.prune(mlp(), nan), ValueError, r"threshold must be a number in \[0, 1\], got nan"),
    (lambda: bs.prune(mlp(), -1), ValueError, "threshold must be a number"),
    (lambda: bs.prune(mlp(), 2), ValueError, "threshold must be a number"),
    (lambda: bs.embedding_modules(emb(), nan), ValueError, "threshold must be a number"),
    (lambda: bs.restore(mlp(), {"nope": torch.zeros(1)}), ValueError,
     "the saved tensors of BioMLP must be its parameters, by name and shape, got {'nope'"),
    (lambda: bs.restore(mlp(), {"linears.0.weight": torch.zeros(2, 2)}), ValueError, "got {'linears.0.weight'"),
    (lambda: bs.restore(mlp(), 5), TypeError, "record must be a Pruned record or a {name: tensor} dict, got 'int'"),
    (lambda: enter(neurons={"hidden1": [99]}), ValueError, r"neurons\['hidden1'\] must be positions in \[0, 6\), got \[99\]"),
    (lambda: enter(neurons={"hidden1": [-1]}), ValueError, r"neurons\['hidden1'\] must be positions"),
    (lambda: enter(neurons={"hidden1": [0.5]}), ValueError, r"neurons\['hidden1'\] must be positions"),
    (lambda: enter(neurons={7: [0]}), ValueError, r"row must be a name among \['input', 'hidden1', 'output'\] or an index"),
    (lambda: enter(weights={5: torch.ones(6, 4, dtype=torch.bool)}), ValueError,
     "a key of weights must be the index of an edge with a BioLinear, one of {0: 'linears.0', 1: 'linears.1'}, got 5"),
    (lambda: enter(weights={"linears.0": None}), ValueError, "a key of weights must be the index of an edge"),
    (lambda: enter(weights={0: torch.ones(3, 3, dtype=torch.bool)}), ValueError,
     r"weights\[0\] \(edge 'linears.0'\) does not fit the \(6, 4\) tensor it indexes"),
    (lambda: enter(embedding_dims=[0]), ValueError, "embedding_dims must be None: BioMLP has no token embedding"),
    (lambda: enter(model=emb(), embedding_dims=[9]), ValueError, r"embedding_dims \[9\] does not fit the \(5, 2\) tensor"),
    (lambda: enter(neurons={"hidden1": [0]}, value="0"), ValueError, "value must be a number, got '0'"),
])
def test_analysis_and_interventions(call, exc, match):
    check(call, exc, match)


def rows():
    return mlp().graph().rows


def lin(i):
    return mlp().linears[i]


@pytest.mark.parametrize("call, exc, match", [
    (lambda: mlp().graph().index(7), ValueError, "row must be a name among .* or an index in \\[0, 3\\), got 7"),
    (lambda: mlp().graph().upto("nope"), ValueError, "row must be a name among"),
    (lambda: bc.Row("r", torch.rand(3, 1), "middle"), ValueError, "row 'r': kind must be 'input' or 'hidden' or 'output'"),
    (lambda: bc.Row("r", torch.rand(3, 1), fold=2), ValueError, "row 'r': fold must be a positive int dividing 3, got 2"),
    (lambda: bc.Row("r", torch.rand(3)), ValueError, r"row 'r': coords must be an \(n, d\) tensor"),
    (lambda: bc.Row("r", torch.rand(3, 1), unit=torch.arange(2)), ValueError, "row 'r': unit must be one unit per position"),
    (lambda: bc.Graph(rows(), [("e", lin(0), 0, 9)]), ValueError,
     r"edge 0 \('e'\): \(src, dst\) must be row indices, src < dst < 3 .* got \(0, 9\)"),
    (lambda: bc.Graph(rows(), [("e", lin(1), 0, 1), ("f", lin(1), 1, 2)]), ValueError,
     r"edge 0 \('e'\): \(inputs, outputs\) must be \(4, 6\): the widths of rows 'input' .* and 'hidden1', got \(6, 2\)"),
    (lambda: bc.Graph(rows(), [("f", lin(1), 1, 2), ("e", lin(0), 0, 1)]), ValueError,
     "its source row must be written by no later edge"),
    (lambda: bc.Graph(rows()[1:], [("f", lin(1), 0, 1)]), ValueError,
     "a graph's row kinds must be one 'input' row and at least one 'output' row"),
    (lambda: bc.Graph(rows(), [("e", lin(0), 0, 1), ("s", None, 0, 1), ("f", lin(1), 1, 2)]), ValueError,
     r"edge 1 \('s'\): \(inputs, outputs\) must be \(4, 6\)"),
    (lambda: bc.Graph(rows(), [("e", nn.Linear(4, 6), 0, 1)]), TypeError, r"edge 0 \('e'\): linear must be a BioLinear"),
    (lambda: bc.Graph(rows(), [("e", lin(0), 0, 1, torch.tensor([0, 1, 2, 9]))]), ValueError,
     r"edge 0 \('e'\): cols must be None or a tensor of positions in \[0, 4\)"),
    (lambda: bc.Graph([*rows()[:2], bc.Row("hidden1", torch.rand(6, 1)), rows()[2]],
                      [("e", lin(0), 0, 1), ("s", None, 1, 2), ("f", lin(1), 2, 3)]), ValueError,
     r"a graph's row names must be unique \(rows are looked up by name\); \['hidden1'\] repeat, got \['input', "
     r"'hidden1', 'hidden1', 'output'\]"),
    (lambda: bc.Row("input", torch.rand(4, 1), "input"), ValueError,
     r"row 'input': caller must be the caller's index at each of its 4 positions \(input and output rows\), got None"),
])
def test_graph(call, exc, match):
    check(call, exc, match)


def snaps():
    s = []
    m = mlp()
    bs.snapshot_recorder(s)(0, m)
    return m, s


@pytest.mark.parametrize("call, exc, match", [
    (lambda: bs.plot_network(mlp(), in_labels=["a"]), ValueError,
     "the length of in_labels must be 4, one entry per input of the model, got 1"),
    (lambda: bs.plot_network(mlp(), out_labels=["a"] * 5), ValueError, "the length of out_labels must be 2"),
    (lambda: bs.plot_network(mlp(), threshold=nan), ValueError, "threshold must be a number"),
    (lambda: bs.plot_network_3d(mlp(), image=torch.rand(3)), ValueError, "the length of image must be 4"),
    (lambda: bs.plot_network_3d(mlp(), out_labels=["a"]), ValueError, "the length of out_labels must be 2"),
    (lambda: bs.save_gif(mlp(), [], "x.gif"), ValueError, "snapshots must be a non-empty list of snapshot_recorder's"),
    (lambda: bs.save_gif(*snaps(), "x.gif", fps=0), ValueError, "fps must be a positive int, got 0"),
    (lambda: bs.save_gif(*snaps(), "x.png"), ValueError, "path must be a file name ending in .gif, got 'x.png'"),
    (lambda: bs.save_gif(mlp(), [mlp().state_dict()], "x.gif"), ValueError,
     r"a snapshot must be a \(step, state_dict\) pair, as snapshot_recorder records, got 'OrderedDict'"),
    (lambda: bs.draw_snapshot(mlp(), mlp().state_dict()), ValueError, r"a snapshot must be a \(step, state_dict\) pair"),
    (lambda: bs.threshold_explorer(mlp(), max_threshold=0), ValueError, r"max_threshold must be a number in \(0, 1\]"),
    (lambda: bs.threshold_explorer(mlp(), max_threshold=2), ValueError, "max_threshold must be"),
    (lambda: bs.threshold_view(mlp(), 1.5), ValueError, "threshold must be a number"),
    (lambda: bs.threshold_view(mlp(), 0.5, metric_fn=lambda m: torch.ones(2)), ValueError,
     r"metric_fn\(model\) must be a number, got tensor"),
])
def test_plotting(call, exc, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written: every case fails before the file is opened
    check(call, exc, match)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kw, match", [
    (dict(lam_schedule=((0.5, -1.0),)), r"lam_schedule must be \(fraction in \[0, 1\], multiplier >= 0\) pairs"),
    (dict(lam_schedule=((0.5, nan),)), "lam_schedule must be"),
    (dict(lam_schedule=None), "lam_schedule must be .*, got None"),
    (dict(lr=True), "lr must be a finite number > 0, got True"),
    (dict(seed="a"), "seed must be an int >= 0, got 'a'"),
    (dict(seed=1.5), "seed must be an int >= 0, got 1.5"),
    (dict(swap_cost={"weight_factor": -1.0}), "weight_factor must be a finite number >= 0, got -1.0"),
    (dict(swap_cost={"agg": "max"}), "agg must be 'sum' or 'mean', got 'max'"),
    (dict(swap_cost="weight_factor"), "swap_cost keys must be among"),
    (dict(swap="yes"), "swap must be True or False, got 'yes'"),
    (dict(embedding_penalty=1), "embedding_penalty must be True or False, got 1"),
    (dict(batch_size=2.0), "batch_size must be a positive int or None, got 2.0"),
])
def test_config(kw, match):
    check(lambda: bc.BIMTConfig(**kw), ValueError, match)


X, Y = torch.rand(16, 4), torch.rand(16, 2)


def train(model=None, cfg=None, data=(X, Y), test=None, loss=F.mse_loss, **kw):
    cfg = cfg or bc.BIMTConfig(steps=3, eval_every=1)
    return bc.train(model or mlp(), cfg, data, test or data, loss, progress=False, **kw)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: train(sampler=lambda s: torch.tensor([0, 99])), ValueError,
     r"sampler\(0\) returned tensor\(\[ 0, 99\]\); expected a non-empty 1-D tensor of row indices in \[0, 16\)"),
    (lambda: train(sampler=lambda s: torch.tensor([0.0, 1.0])), ValueError, r"sampler\(0\) returned tensor\(\[0., 1.\]\)"),
    (lambda: train(sampler=lambda s: None), ValueError, r"sampler\(0\) returned None"),
    (lambda: train(sampler=lambda s: torch.tensor([], dtype=torch.long)), ValueError, r"sampler\(0\) returned tensor\(\[\]"),
    (lambda: train(sampler=lambda s: 3), ValueError, r"sampler\(0\) returned 3"),
    (lambda: train(loss=lambda o, y: F.mse_loss(o, y, reduction="none")), ValueError,
     r"loss_fn's result must be a scalar tensor with gradients \(e.g. F.mse_loss\(out, y\)\), got tensor\("),
    (lambda: train(loss=lambda o, y: F.mse_loss(o, y).item()), ValueError, "loss_fn's result must be a scalar tensor"),
    (lambda: train(loss=lambda o, y: F.mse_loss(o, y).detach()), ValueError, "loss_fn's result must be a scalar tensor"),
    (lambda: train(loss="mse"), TypeError, r"loss_fn must be a function or a loss module instance.*, got 'mse'"),
    (lambda: train(sampler=[0, 1]), TypeError, r"sampler must be a function or None, got \[0, 1\]"),
    (lambda: train(metric_fn=lambda o, y: (o - y).abs().mean(0)), ValueError, "metric_fn's result must be a number, got tensor"),
    (lambda: train(cfg={"steps": 3}), TypeError, "cfg must be a BIMTConfig, got 'dict'"),
    (lambda: train(snapshot_fn=lambda s, m: None), ValueError,
     "snapshot_every must be a positive int when snapshot_fn is given, got None"),
    (lambda: train(data=(torch.ones(16, 4, dtype=torch.long), Y)), ValueError, "float32 inputs like its weights, got torch.int64"),
    (lambda: train(model=Plain()), TypeError, "Plain cannot be swapped"),
])
def test_train(call, exc, match):
    check(call, exc, match)


def read(tmp_path, name, blob):
    (tmp_path / name).write_bytes(blob)
    return bd.read_idx(tmp_path / name)


def corrupt_gzip():
    blob = bytearray(gzip.compress((0x801).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"\x01\x02\x03"))
    blob[12:16] = b"\xff\xff\xff\xff"  # inside the deflate stream: zlib fails, not gzip's own checks
    return bytes(blob)


@pytest.mark.parametrize("call, exc, match", [
    (lambda p: bs.Claims().check("x", torch.tensor([True, False])), ValueError,
     r"claim 'x': holds must be a bool \(or one-element bool tensor\), got tensor"),
    (lambda p: bs.Claims().check("x", None), ValueError, "claim 'x': holds must be a bool .*, got None"),
    (lambda p: bs.Claims().check(3, True), ValueError, "a claim's name must be a non-empty str, got 3"),
    (lambda p: bs.Claims(p / "no" / "c.json"), ValueError, "path must be None or a file name in an existing folder"),
    (lambda p: read(p, "c.gz", corrupt_gzip()), ValueError, r"c.gz: corrupt or truncated gzip data \(Error -3"),
    (lambda p: bd.load_mnist(n_test=2.5), ValueError, r"n_test must be an int in \(0, 5000\), got 2.5"),
    (lambda p: bd.load_mnist(seed="a"), ValueError, "seed must be an int >= 0, got 'a'"),
    (lambda p: bc.accuracy(torch.rand(8, 3), torch.zeros(8, 1, dtype=torch.long)), ValueError,
     r"labels' shape must be the logits' shape without the class dim, \(8,\), got \(8, 1\)"),
])
def test_claims_data_and_metrics(call, exc, match, tmp_path):
    check(lambda: call(tmp_path), exc, match)


def test_checks_accept_what_they_should():
    """The other side: numpy integers and floats are numbers, a 0-d bool tensor is a claim, NaN is no fraction."""
    assert bc.BIMTConfig(steps=np.int64(5), lr=np.float32(1e-3)).steps == 5
    assert bs.Claims().check("holds", torch.tensor(True)) and not bs.Claims().check("fails", np.bool_(False))
    assert bs.analyze(mlp(), np.float64(0.5)).threshold == 0.5
    m, x = mlp(), torch.rand(3, 4, generator=torch.Generator().manual_seed(0))
    y = m(x)
    with bs.intervene(m, neurons={"hidden1": []}, value=float("inf")):  # no positions, any number: no change
        assert torch.equal(m(x), y)
