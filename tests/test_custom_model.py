"""BIMT on an architecture of one's own, through the public protocol only (docs/custom-architectures.md).

SkipMLP is no BioMLP chain: an input linear writes a residual stream, an MLP block adds to it through a skip
connection, an output linear reads it. Oracles: the unswapped model's outputs, brute-force relocation, weights
set by hand, segments counted by hand.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import bimt_core as bc
import bimt_seeing as bs
from helpers import assert_same_relocation, n_segments, set_weights

pytestmark = pytest.mark.usefixtures("one_thread")


class SkipMLP(bc.SwappableModel):
    """x (B, n_in) -> r = W_in x (B, d) -> r' = r + W_down silu(W_up r) -> y = W_out r' (B, n_out).

    Four swappable layers: input (n_in), residual (d), hidden (m), output (n_out). The residual layer is
    written by W_in and W_down and read by W_up and W_out: moving one of its neurons moves a row of each
    writer and a column of each reader, and keeps r and r' aligned, so the skip stays an identity.
    """

    def __init__(self, n_in=4, d=6, m=8, n_out=2, generator=None, dtype=None):
        super().__init__()
        kw = dict(generator=generator, dtype=dtype)
        self.w_in, self.up = bc.BioLinear(n_in, d, **kw), bc.BioLinear(d, m, **kw)
        self.down, self.w_out = bc.BioLinear(m, d, **kw), bc.BioLinear(d, n_out, **kw)
        self.register_buffer("in_perm", torch.arange(n_in))    # caller's input at each input position
        self.register_buffer("out_perm", torch.arange(n_out))  # caller's output at each output position

    def embed(self, x):
        """(B, n_in) caller features -> input-row activations in position order."""
        return x.index_select(1, self.in_perm)

    def forward_internal(self, h, record=None):
        """Position order in and out; record receives each row of graph(), bottom to top."""
        rec = (record if record is not None else []).append
        rec(h)
        r = self.w_in(h)
        rec(r)
        hidden = F.silu(self.up(r))
        rec(hidden)
        r = r + self.down(hidden)
        rec(r)
        y = self.w_out(r)
        rec(y)
        return y

    def neuron_layers(self):
        def units(n):  # one copy of each unit: unit u owns position u
            return bc.fold_index(n, 1)

        n_in, d, m, n_out = self.w_in.in_features, self.w_in.out_features, self.up.out_features, self.w_out.out_features
        inp, res = bc.NeuronLayer("input", n_in), bc.NeuronLayer("residual", d)
        hid, out = bc.NeuronLayer("hidden", m), bc.NeuronLayer("output", n_out)
        inp.add(self, "in_perm", 0, units(n_in))  # role None: carried along
        inp.outgoing(self.w_in, units(n_in))
        for lin in (self.w_in, self.down):      # writers of the stream: rows and biases
            res.incoming(lin, units(d))
        for lin in (self.up, self.w_out):       # readers of the stream: columns
            res.outgoing(lin, units(d))
        hid.incoming(self.up, units(m))
        hid.outgoing(self.down, units(m))
        out.incoming(self.w_out, units(n_out))
        out.add(self, "out_perm", 0, units(n_out))
        return [inp, res, hid, out]

    def graph(self):
        rows = [bc.Row("input", self.w_in.in_coords, "input", caller=self.in_perm),
                bc.Row("residual", self.w_in.out_coords), bc.Row("hidden", self.up.out_coords),
                bc.Row("residual'", self.down.out_coords),
                bc.Row("output", self.w_out.out_coords, "output", caller=self.out_perm)]
        return bc.Graph(rows, [("w_in", self.w_in, 0, 1), ("up", self.up, 1, 2), ("down", self.down, 2, 3),
                               ("skip", None, 1, 3), ("w_out", self.w_out, 3, 4)])


def make(seed=0, **kw):
    return SkipMLP(generator=torch.Generator().manual_seed(seed), **kw)


def inputs(n=32, seed=1):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))


def task(seed=0):
    x = inputs(64, seed)
    return x, torch.stack([x[:, 0] * x[:, 1], x[:, 2] + x[:, 3]], 1)


def trained(seed=0):
    """Briefly trained with the connection cost and no swaps, so that weights are not i.i.d. and swaps matter."""
    m = make(seed)
    cfg = bc.BIMTConfig(steps=60, lr=1e-2, lam=1e-2, lam_schedule=(), weight_factor=2.0, swap=False)
    bc.train(m, cfg, task(seed), task(seed), F.mse_loss, progress=False)
    return m


def test_random_swaps_preserve_the_function():
    m = make()
    x = inputs()
    ref = m(x).detach()
    g = torch.Generator().manual_seed(5)
    for nl in m.neuron_layers():
        for _ in range(5):
            j, k = torch.randperm(nl.n_units, generator=g)[:2].tolist()
            m.swap(nl.name, j, k)
    assert not torch.equal(m.in_perm, torch.arange(4)) and not torch.equal(m.out_perm, torch.arange(2))
    assert torch.allclose(m(x), ref, atol=1e-6, rtol=1e-5)
    bc.permute_units(m, "residual", torch.tensor([5, 4, 3, 2, 1, 0]))
    assert torch.allclose(m(x), ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("follow", ["neurons", "positions"])
@pytest.mark.parametrize("seed", [0, 1])
def test_relocate_equals_brute_force(seed, follow):
    m = trained(seed)
    x = inputs()
    ref = m(x).detach()
    kw = dict(weight_factor=2.0, l0=0.1 if seed else 0.5, agg="mean" if seed else "sum")
    cost0 = bc.connection_cost(m, **kw).item()
    assert assert_same_relocation(m, 4, follow, **kw) > 0
    assert bc.connection_cost(m, **kw).item() < cost0
    assert torch.allclose(m(x), ref, atol=1e-5, rtol=1e-4)


def two_modules():
    """x0, x1 -> residual 0 -> y0, straight through the skip; x2, x3 -> residual 5 -> hidden 3 -> residual 4
    -> y1, through the MLP block."""
    return set_weights(make(), {("w_in", 0, 0): 1.0, ("w_in", 0, 1): -1.0, ("w_out", 0, 0): 1.0,
                                ("w_in", 5, 2): 1.0, ("w_in", 5, 3): 0.5, ("up", 3, 5): 2.0,
                                ("down", 4, 3): 1.0, ("w_out", 1, 4): -1.0})


def test_analyze_finds_the_hand_set_modules_through_the_skip():
    m = two_modules()
    r = bs.analyze(m)
    assert (r.connections, r.total_connections) == (8, 4 * 6 + 6 * 8 + 8 * 6 + 6 * 2)  # the skip is not counted
    assert r.reach == {0: [0, 1], 1: [2, 3]}
    assert [(mod.inputs, mod.outputs, mod.hidden) for mod in r.modules] == [
        ([0, 1], [0], {"residual": [0], "residual'": [0]}),
        ([2, 3], [1], {"residual": [5], "hidden": [3], "residual'": [4]})]
    # swaps move neurons, never the modules the caller sees
    m.swap("input", 0, 3)
    m.swap("residual", 0, 5)
    m.swap("output", 0, 1)
    r = bs.analyze(m)
    assert r.reach == {0: [0, 1], 1: [2, 3]}
    assert [(mod.inputs, mod.outputs) for mod in r.modules] == [([0, 1], [0]), ([2, 3], [1])]
    # a knock-out of the hidden neuron cuts output 1 from its inputs, as zeroing its outgoing weight does
    x = inputs()
    with bs.intervene(m, neurons={"hidden": [3]}):
        knocked = m(x)
    with bs.intervene(m, weights={2: (slice(None), 3)}):
        assert torch.equal(knocked, m(x))
    assert (knocked[:, 1] == 0).all() and not (m(x)[:, 1] == 0).all()


def test_train_relocates_and_activations_follow_the_graph():
    (x, _), m = task(), make()
    h = bc.train(m, bc.BIMTConfig(steps=100, swap_every=25, eval_every=50), task(), task(), F.mse_loss, progress=False)
    assert h["swaps"][-1] > 0
    acts = m.activations(x)
    assert [a.shape[1] for a in acts] == [len(r.coords) for r in m.graph().rows] == [4, 6, 8, 6, 2]
    assert torch.equal(acts[-1].index_select(1, torch.argsort(m.out_perm)), m(x))


def test_plot_network_draws_every_connection_and_the_skip():
    ax = bs.plot_network(two_modules(), in_labels=list("abcd"), out_labels=["y0", "y1"])
    assert n_segments(ax) == 8 + 6  # the hand-set weights and the six identity connections of the skip
    assert [t.get_text() for t in ax.get_yticklabels()] == ["input", "residual", "hidden", "residual'", "output"]
    assert sorted(t.get_text() for t in ax.texts) == ["a", "b", "c", "d", "y0", "y1"]


class PlainBioLinears(nn.Module):
    """BioLinears in an nn.Module that describes neither its neuron layers nor its graph."""

    def __init__(self):
        super().__init__()
        self.a, self.b = bc.BioLinear(4, 6), bc.BioLinear(6, 2)

    def forward(self, x):
        return self.b(F.silu(self.a(x)))


@pytest.mark.parametrize("call, match", [
    (lambda m: bc.relocate(m, 5), r"PlainBioLinears cannot be swapped: it needs a neuron_layers\(\) method"),
    (lambda m: bc.permute_units(m, 0, torch.arange(4)), "cannot be swapped"),
    (lambda m: bs.analyze(m), r"PlainBioLinears cannot be analysed or drawn: it needs a graph\(\) method"),
    (lambda m: bs.plot_network(m), "cannot be analysed or drawn"),
    (lambda m: bc.train(m, bc.BIMTConfig(steps=2), (torch.rand(8, 4), torch.rand(8, 2)),
                        (torch.rand(8, 4), torch.rand(8, 2)), F.mse_loss, progress=False), "cannot be swapped"),
])
def test_a_plain_module_of_biolinears_gets_a_clear_type_error(call, match):
    m = PlainBioLinears()
    assert bc.connection_cost(m).item() > 0  # the cost needs only BioLinears
    with pytest.raises(TypeError, match=match):
        call(m)
