"""Seeing the modules: metrics on hand-built graphs, pruning, interventions, plots, GIFs, widgets."""

import html

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn as nn
from matplotlib.collections import LineCollection
from PIL import Image

import bimt_core as bc
import bimt_seeing as bs
from helpers import n_segments, set_weights, small_transformer


def two_paths():
    """x0, x2 -> h0 -> y0 and x1, x3 -> h3 -> y1: two modules."""
    m = bc.BioMLP([4, 4, 2], generator=torch.Generator().manual_seed(0))
    return set_weights(m, {(0, 0, 0): 1.0, (0, 0, 2): -0.5, (1, 0, 0): 2.0,
                           (0, 3, 1): 1.0, (0, 3, 3): 0.3, (1, 1, 3): -1.0})


def test_two_disjoint_paths_are_two_modules():
    r = bs.analyze(two_paths())
    assert (r.connections, r.total_connections) == (6, 24)
    assert (r.neurons, r.total_neurons) == (8, 10)  # hidden 1 and 2 have no connections
    assert r.reach == {0: [0, 2], 1: [1, 3]}
    assert [(m.inputs, m.outputs, m.hidden) for m in r.modules] == [
        ([0, 2], [0], {"hidden1": [0]}), ([1, 3], [1], {"hidden1": [3]})]
    assert "inputs [0, 2] -> outputs [0]" in str(r)


def test_wiring_length_matches_a_double_loop():
    m = bc.BioMLP([3, 5, 2], generator=torch.Generator().manual_seed(1))
    naive = 0.0
    for lin in m.linears:
        for o in range(lin.out_features):
            for i in range(lin.in_features):
                naive += abs(lin.weight[o, i].item()) * abs(lin.out_coords[o, 0] - lin.in_coords[i, 0]).item()
    assert bs.analyze(m).wiring == pytest.approx(naive, rel=1e-5)


def test_feature_sharing_tree_is_one_module_with_nested_reach():
    # y0 <- h0 <- x0; y1 <- h0, h1 <- x1; y2 <- h0, h1, h2 <- x2
    m = bc.BioMLP([3, 3, 3])
    entries = {(0, k, k): 1.0 for k in range(3)}
    entries.update({(1, o, h): 1.0 for o in range(3) for h in range(o + 1)})
    r = bs.analyze(set_weights(m, entries))
    assert r.reach == {0: [0], 1: [0, 1], 2: [0, 1, 2]}
    assert len(r.modules) == 1 and r.modules[0].inputs == [0, 1, 2]


def test_threshold_cuts_weak_connections():
    r = bs.analyze(two_paths(), threshold=0.4)  # drops the 0.3 connection (layer max 1.0)
    assert r.connections == 5 and r.reach == {0: [0, 2], 1: [1]}


def test_metrics_report_caller_indices_after_swaps():
    m = two_paths()
    m.swap(0, 0, 3)
    m.swap("hidden1", 0, 1)
    m.swap("output", 0, 1)
    r = bs.analyze(m)
    assert r.reach == {0: [0, 2], 1: [1, 3]}
    assert [(mod.inputs, mod.outputs) for mod in r.modules] == [([0, 2], [0]), ([1, 3], [1])]


def test_folded_embedding_copies_are_one_unit():
    m = bc.BioMLP([4, 3, 2], in_fold=2, vocab_size=5, generator=torch.Generator().manual_seed(0))
    # embedding dim 0 feeds h0 through both copies (positions 0, 2); dim 1 (position 3) feeds h2
    r = bs.analyze(set_weights(m, {(0, 0, 0): 1.0, (0, 0, 2): 1.0, (1, 0, 0): 1.0,
                                   (0, 2, 3): 1.0, (1, 1, 2): 1.0}))
    assert r.total_neurons == 2 + 3 + 2 and r.neurons == 2 + 2 + 2
    assert [(mod.inputs, mod.outputs) for mod in r.modules] == [([0], [0]), ([1], [1])]


def test_prune_restore_round_trip():
    m = bc.BioMLP([3, 8, 8, 2], generator=torch.Generator().manual_seed(2))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    y = m(x)
    expected = bs.analyze(m, 0.5)
    rec = bs.prune(m, 0.5)
    for lin in m.linears:
        w = lin.weight.detach().abs()
        assert ((w == 0) | (w >= 0.5 * w.max())).all()
    assert (rec.connections, rec.neurons) == (expected.connections, expected.neurons)
    assert rec.connections == sum(int((lin.weight != 0).sum()) for lin in m.linears)
    bs.restore(m, rec)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    with bs.prune(m, 0.9):
        assert not torch.allclose(m(x), y)
    assert torch.equal(m(x), y)


def test_intervention_knocks_out_and_restores_on_exception():
    m = bc.BioMLP([3, 6, 2], generator=torch.Generator().manual_seed(4))
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(5))
    y = m(x)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(RuntimeError, match="inside"):
        with bs.intervene(m, weights={0: (torch.tensor([0, 1]), torch.tensor([2, 2]))}, neurons={"hidden1": [1, 4]}):
            assert m.linears[0].weight[0, 2] == 0
            raise RuntimeError("inside")
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert torch.equal(m(x), y)
    assert not m.linears[1]._forward_pre_hooks
    # oracle: knocking out hidden neurons = zeroing their outgoing weights
    with bs.intervene(m, neurons={"hidden1": [1, 4]}):
        knocked = m(x)
    with bs.intervene(m, weights={1: (slice(None), [1, 4])}):
        assert torch.allclose(knocked, m(x))
    with bs.intervene(m, neurons={"output": [0]}, value=3.0):
        assert torch.equal(m(x)[:, 0], torch.full((4,), 3.0))
    with bs.intervene(m, neurons={"input": [m.in_perm.tolist().index(1)]}):  # caller feature 1 -> its position
        assert torch.allclose(m(x), m(x * torch.tensor([1.0, 0.0, 1.0])))


def test_intervention_on_embedding_dims():
    m = bc.BioMLP([4, 3, 2], in_fold=2, vocab_size=5, generator=torch.Generator().manual_seed(0))
    tok = torch.tensor([[1, 2], [3, 4]])
    y = m(tok)
    with bs.intervene(m, embedding_dims=[1]):
        assert (m.embedding[:, 1] == 0).all()
        with bs.intervene(m, neurons={"input": [1]}):  # the same unit, knocked out through both copies
            hooked = m(tok)
        assert torch.allclose(hooked, m(tok))
    assert torch.equal(m(tok), y)


def test_plot_1d_segments_and_threshold():
    m = bc.BioMLP([4, 6, 6, 3], generator=torch.Generator().manual_seed(0))
    assert n_segments(bs.plot_network(m)) == 4 * 6 + 6 * 6 + 6 * 3
    expected = bs.analyze(m, 0.5).connections
    assert n_segments(bs.plot_network(m, threshold=0.5)) == expected < 78


def test_plot_dots_fit_their_row_and_untouched_neurons_are_grey():
    ax = bs.plot_network(two_paths(), threshold=0.4)  # drops x3's only connection (0.3 of the layer max)
    inputs, hidden, outputs = [c for c in ax.collections if not isinstance(c, LineCollection)]
    grey = matplotlib.colors.to_rgba("0.8")
    assert [tuple(c) == grey for c in inputs.get_facecolors()] == [False, False, False, True]
    assert [tuple(c) == grey for c in hidden.get_facecolors()] == [False, True, True, False]
    assert not any(tuple(c) == grey for c in outputs.get_facecolors())
    # a row of 128 on a 4-inch axes: dots shrink below 60% of the gap between neighbours; narrow rows keep theirs
    fig, ax = plt.subplots(figsize=(4, 4))
    bs.plot_network(bc.BioMLP([4, 128, 2], generator=torch.Generator().manual_seed(0)), ax=ax, neuron_size=12.0)
    sizes = [c.get_sizes()[0] for c in ax.collections if not isinstance(c, LineCollection)]
    gap_pt = ax.get_position().width * 4 * 72 / 1.04 / 128
    assert sizes[0] == sizes[2] == 12.0
    assert sizes[1] == pytest.approx((0.6 * gap_pt) ** 2) and sizes[1] < 12.0


def test_plot_folded_draws_stacked_copies():
    m = bc.BioMLP([8, 5, 3], in_fold=2, vocab_size=4, generator=torch.Generator().manual_seed(0))
    ax = bs.plot_network(m, in_labels=[f"e{u}" for u in range(4)])
    assert n_segments(ax) == 8 * 5 + 5 * 3
    inputs = ax.collections[-3].get_offsets()  # the input-row dots
    assert len(inputs) == 8 and sorted(set(inputs[:, 1].round(3))) == [-0.3, 0.0]
    assert sorted(t.get_text() for t in ax.texts) == ["e0", "e1", "e2", "e3"]  # one label per unit


def test_plot_labels_every_fold_copy_and_colours_inputs():
    m = bc.BioMLP([8, 5, 3], in_fold=2, vocab_size=4, generator=torch.Generator().manual_seed(0))
    colours = ["red", "green", "blue", "orange"]  # one per embedding dim (an embedding column is its position)
    ax = bs.plot_network(m, in_colors=colours, copy_labels={"input": ["a", "b"]})
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "hidden1", "output"]
    assert list(ax.get_yticks()) == pytest.approx([0.0, -0.3, 1.0, 2.0])
    dots = ax.collections[-3]
    assert (dots.get_facecolors() == matplotlib.colors.to_rgba_array(colours * 2)).all()  # both copies
    plain = bc.BioMLP([3, 4, 2], generator=torch.Generator().manual_seed(0))
    plain.swap("input", 0, 2)  # colours follow in_perm: position 0 now holds input 2
    dots = bs.plot_network(plain, in_colors=["red", "green", "blue"]).collections[-3]
    assert (dots.get_facecolors() == matplotlib.colors.to_rgba_array(["blue", "green", "red"])).all()
    with pytest.raises(ValueError, match="fold 2"):
        bs.plot_network(m, copy_labels={"input": ["a"]})


def test_plot_2d_in_3d():
    m = bc.BioMLP([16, 9, 4], geometry="grid", out_geometry="ring", fix_inputs=True,
                  generator=torch.Generator().manual_seed(0))
    ax = bs.plot_network_3d(m, image=torch.arange(16.0).view(4, 4), out_labels=list("abcd"))
    assert n_segments(ax) == 16 * 9 + 9 * 4
    assert sorted(t.get_text() for t in ax.texts) == sorted(["input", "hidden1", "output", *"abcd"])  # rows, outputs
    with pytest.raises(ValueError, match="plot_network_3d"):
        bs.plot_network(m)


def test_plot_3d_neurons_above_connections_and_untouched_neurons_grey():
    m = bc.BioMLP([16, 9, 4], geometry="grid", out_geometry="ring", fix_inputs=True)
    with torch.no_grad():
        for lin in m.linears:
            lin.weight.zero_()
        m.linears[0].weight[4, 5] = m.linears[1].weight[2, 4] = 1.0  # pixel 5 -> hidden 4 -> output 2
    ax = bs.plot_network_3d(m)
    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    inputs, hidden, outputs = [c for c in ax.collections if not isinstance(c, LineCollection)]
    black = matplotlib.colors.to_rgba("k")
    assert [i for i, c in enumerate(hidden.get_facecolors()) if tuple(c) == black] == [4]
    assert [i for i, c in enumerate(outputs.get_facecolors()) if tuple(c) == black] == [2]
    assert [i for i, c in enumerate(inputs.get_facecolors()) if tuple(c) == black] == [5]
    # drawn in order, not by depth: every neuron on top of every connection; no axis box, the rows named in text
    assert not ax.computed_zorder and max(c.get_zorder() for c in lines) < hidden.get_zorder()
    assert not ax.axison and {"input", "hidden1", "output"} <= {t.get_text() for t in ax.texts}

def test_labels_follow_permutations_after_swaps():
    m = bc.BioMLP([3, 4, 3], generator=torch.Generator().manual_seed(0))
    m.swap("input", 0, 2)
    m.swap("output", 1, 2)
    ax = bs.plot_network(m, in_labels=["a", "b", "c"], out_labels=["u", "v", "w"])
    left_to_right = [t.get_text() for t in sorted(ax.texts, key=lambda t: (t.get_position()[1], t.get_position()[0]))]
    assert left_to_right == ["c", "b", "a", "u", "w", "v"]


class ToyTransformerGraph(nn.Module):
    """A stand-in for a transformer's graph hook: an MLP block on a residual stream with a skip."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = bc.BioLinear(2, 4, generator=g)
        self.up = bc.BioLinear(4, 6, generator=g)
        self.down = bc.BioLinear(6, 4, generator=g)
        self.unembed = bc.BioLinear(4, 2, generator=g)
        self.register_buffer("in_perm", torch.arange(2))
        self.register_buffer("out_perm", torch.arange(2))

    def graph(self):
        rows = [bc.Row("input", self.embed.in_coords, "input", caller=self.in_perm, unit=torch.arange(2)),
                bc.Row("residual", self.embed.out_coords), bc.Row("mlp", self.up.out_coords),
                bc.Row("residual'", self.down.out_coords),
                bc.Row("output", self.unembed.out_coords, "output", caller=self.out_perm)]
        return bc.Graph(rows, [("embed", self.embed, 0, 1), ("up", self.up, 1, 2), ("down", self.down, 2, 3),
                               ("skip", None, 1, 3), ("unembed", self.unembed, 3, 4)])


def test_graph_hook_for_other_models():
    t = ToyTransformerGraph()
    ax = bs.plot_network(t)
    assert n_segments(ax) == 8 + 24 + 24 + 4 + 8
    assert [tick.get_text() for tick in ax.get_yticklabels()] == ["input", "residual", "mlp", "residual'", "output"]
    r = bs.analyze(t)
    assert (r.connections, r.total_connections) == (64, 64) and r.neurons == 2 + 4 + 6 + 4 + 2
    assert r.reach == {0: [0, 1], 1: [0, 1]} and len(r.modules) == 1
    with bs.intervene(t, weights={2: torch.ones(4, 6, dtype=torch.bool)}):  # the MLP writes nothing
        r = bs.analyze(t)
        assert r.reach == {0: [0, 1], 1: [0, 1]}  # still through the skip
        assert r.modules[0].hidden == {"residual": [0, 1, 2, 3], "residual'": [0, 1, 2, 3]}
    with bs.prune(t, 0.99) as rec:
        assert rec.connections == 4  # the strongest weight of each of the four BioLinears


def test_gif_has_one_frame_per_snapshot(tmp_path):
    m = bc.BioMLP([2, 4, 1], generator=torch.Generator().manual_seed(0))
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    cfg = bc.BIMTConfig(steps=25, swap_every=10, top_k=2, eval_every=10)
    snaps = []
    bc.train(m, cfg, (x, x.sum(1, keepdim=True)), (x, x.sum(1, keepdim=True)), nn.functional.mse_loss,
             snapshot_fn=bs.snapshot_recorder(snaps), snapshot_every=10, progress=False)
    assert [s for s, _ in snaps] == [0, 10, 20, 24]
    w_end = m.linears[0].weight.clone()
    path = bs.save_gif(m, snaps, str(tmp_path / "figs" / "train.gif"), fps=5, dpi=40, figsize=(3, 3))
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 4
    assert torch.equal(m.linears[0].weight, w_end)  # the caller's model is untouched


def test_threshold_view_and_widgets_build():
    m = two_paths()
    before = m.linears[0].weight.clone()
    r = bs.threshold_view(m, 0.4, metric_fn=lambda model: float(model.linears[0].weight.count_nonzero()))
    assert r.connections == 5 and r.metric == 3.0
    assert torch.equal(m.linears[0].weight, before)
    w = bs.threshold_explorer(m, metric_fn=lambda model: 1.0)
    slider, image, text = w.children
    first = image.value
    assert first[:4] == b"\x89PNG" and "threshold 0:" in text.value
    slider.value = 0.5
    expected = bs.analyze(m, 0.5)  # oracle: the report of the network at the slider's threshold
    expected.metric = 1.0
    assert image.value != first and text.value == f"<pre>{html.escape(str(expected))}</pre>"
    assert torch.equal(m.linears[0].weight, before)  # the explorer prunes for the picture only


def test_transformer_graph_is_drawn_by_sublayer():
    t = small_transformer()
    ax = bs.plot_network(t, in_labels=["a", "b"], out_labels=["y", "z"])
    per_block = 8 * 24 + 8 * 8 + 8 + 8 * 16 + 16 * 8 + 8  # qkv, attn_out (reads v), skip, mlp, skip
    assert n_segments(ax) == 2 * 8 + 2 * per_block + 8 * 2
    assert [tick.get_text() for tick in ax.get_yticklabels()] == [
        "input", "embed", "attention0", "residual0.attn", "mlp0", "residual0.mlp",
        "attention1", "residual1.attn", "mlp1", "residual1.mlp", "output"]
    r = bs.analyze(t)
    assert r.total_connections == sum(lin.weight.numel() for lin in bc._linears(t))
    assert r.total_neurons == 2 + 8 + 2 * (8 + 8 + 16 + 8) + 2  # q|k|v of a channel is one unit
    assert r.reach == {0: [0, 1], 1: [0, 1]}


def test_transformer_modules_through_skips_and_knockouts():
    t = small_transformer()
    with torch.no_grad():
        for lin in bc._linears(t):
            lin.weight.zero_()
        t.embed_in.weight[0, 0] = t.embed_in.weight[5, 1] = 1.0  # x0 -> residual 0, x1 -> residual 5
        t.unembed.weight[0, 0] = t.unembed.weight[1, 5] = 1.0     # residual 0 -> y0, residual 5 -> y1
        t.blocks[0].mlp_in.weight[3, 5] = t.blocks[0].mlp_out.weight[5, 3] = 0.5  # an MLP detour for x1
    t.swap("residual", 0, 7)
    r = bs.analyze(t)
    assert r.reach == {0: [0], 1: [1]}
    assert [(m.inputs, m.outputs) for m in r.modules] == [([0], [0]), ([1], [1])]
    assert r.modules[1].hidden["mlp0"] == [3]
    x = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(1))
    with bs.intervene(t, neurons={"mlp0": list(range(16))}):  # oracle: zeroing the MLP's output weights
        knocked = t(x)
    with bs.intervene(t, weights={5: torch.ones(8, 16, dtype=torch.bool)}):  # edge 5: blocks.0.mlp_out
        assert torch.allclose(knocked, t(x))


def test_a_neuron_of_the_last_residual_row_is_knocked_out_by_name():
    # Every row of a transformer's graph has its own name, so that a name reaches the row it names, not the
    # first of several. Oracle: the forward pass written out, with neuron j zeroed where the unembedding reads it.
    t, j = small_transformer(), 5
    t.swap("residual", 0, j)  # positions, not the initial order, are what a knock-out names
    x = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(2))
    names = [r.name for r in t.graph().rows]
    assert [n for n in names if n.startswith("residual")] == [
        "residual0.attn", "residual0.mlp", "residual1.attn", "residual1.mlp"]
    with torch.no_grad():
        h = t.embed_in(t.embed(x))
        for blk in t.blocks:
            h = h + blk.attention(blk.ln1(h))
            h = h + blk.mlp(blk.ln2(h))
        zeroed = t.ln_f(h).index_fill(-1, torch.tensor([j]), 0.0)
        oracle = t.unembed(zeroed).index_select(-1, torch.argsort(t.out_perm))
        clean, clean_rows = t(x), t.activations(x)
        with bs.intervene(t, neurons={"residual1.mlp": [j]}):
            knocked, rows = t(x), t.activations(x)
    assert torch.allclose(knocked, oracle, atol=1e-6)
    assert not torch.allclose(knocked, clean, atol=1e-3)
    # only the output changes: the first residual row and everything it feeds compute as before
    assert all(torch.equal(a, b) for a, b in zip(rows[:-1], clean_rows[:-1]))
    with torch.no_grad(), bs.intervene(t, neurons={"residual0.attn": [j]}):  # the first row: its readers change
        first = t.activations(x)
    assert not torch.allclose(first[names.index("mlp0")], clean_rows[names.index("mlp0")])
    with pytest.raises(ValueError, match=r"row must be a name among \['input', 'embed', 'attention0', 'residual0"):
        with bs.intervene(t, neurons={"residual": [j]}):
            pytest.fail("an ambiguous row name was accepted")
