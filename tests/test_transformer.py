"""BioTransformer: shapes, connection cost, function-preserving swaps, and relocate against brute force."""
import copy

import pytest
import torch

from bimt_core import BioLinear, BioTransformer, connection_cost, neuron_coords, relocate
from helpers import brute_force_relocate, float64_oracle  # the oracle: every candidate, whole cost recomputed

pytestmark = pytest.mark.usefixtures("one_thread")
COST = dict(weight_factor=2.0, l0=0.5, agg="mean")  # Fig 7's cost settings


def make(n_heads=1, layer_norm=False, seed=0, **kw):
    """A small float64 transformer; LayerNorm affine parameters randomised so that swapping them matters."""
    g = torch.Generator().manual_seed(seed)
    shape = dict(in_dim=2, out_dim=3, d_model=8, n_blocks=2, d_mlp=16) | kw
    m = BioTransformer(n_heads=n_heads, layer_norm=layer_norm, generator=g, **shape).double()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1 + 0.5 * torch.randn(mod.weight.shape, generator=g, dtype=torch.float64))
                mod.bias.copy_(0.5 * torch.randn(mod.bias.shape, generator=g, dtype=torch.float64))
    return m


def inputs(m, batch=5, seq=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq, m.in_dim, generator=g, dtype=torch.float64)


def test_fig7_shape():
    m = BioTransformer(2, 2, d_model=32, n_blocks=2, n_heads=1, d_mlp=128,
                       generator=torch.Generator().manual_seed(0))
    x = torch.randn(64, 3, 2)
    assert m(x).shape == (64, 3, 2)
    lins = [mod for mod in m.modules() if isinstance(mod, BioLinear)]
    assert len(lins) == 2 + 4 * 2 and lins[-1] is m.unembed  # the output linear is "the last layer"
    assert not any(isinstance(mod, torch.nn.LayerNorm) for mod in m.modules())  # the paper's run: no LayerNorm
    assert [nl.name for nl in m.neuron_layers()] == [
        "input", "residual", "block0.heads", "block0.head0", "block0.mlp_hidden",
        "block1.heads", "block1.head0", "block1.mlp_hidden", "output"]


def test_same_generator_seed_same_model():
    a, b = make(seed=3), make(seed=3)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_causal():
    m = make(n_heads=2)
    x = inputs(m)
    x2 = x.clone()
    x2[:, -1] += 1.0
    y, y2 = m(x), m(x2)
    assert torch.equal(y[:, :-1], y2[:, :-1])  # earlier positions never see later tokens
    assert not torch.allclose(y[:, -1], y2[:, -1])


def test_qkv_coordinates_folded():
    m = make(n_heads=2)
    line = neuron_coords(8)
    for blk in m.blocks:
        assert torch.equal(blk.qkv.out_coords, line.repeat(3, 1))  # q, k, v of channel c at c's place
        assert torch.equal(blk.qkv.in_coords, line) and torch.equal(blk.attn_out.out_coords, line)


def test_connection_cost_counts_every_linear():
    m = make(n_heads=2)
    expected = 0.0
    for lin in [m.embed_in] + [l for b in m.blocks for l in (b.qkv, b.attn_out, b.mlp_in, b.mlp_out)] + [m.unembed]:
        d = (lin.out_coords[:, None, 0] - lin.in_coords[None, :, 0]).abs()
        expected += (lin.weight.abs() * (2.0 * d + 0.5)).mean()
    assert connection_cost(m, **COST).item() == pytest.approx(expected.item(), rel=1e-6)  # dist is float32


@pytest.mark.parametrize("n_heads", [1, 2])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_every_swap_preserves_function(n_heads, layer_norm):
    m = make(n_heads, layer_norm)
    x = inputs(m)
    y0 = m(x)
    g = torch.Generator().manual_seed(2)
    for li, nl in enumerate(m.neuron_layers()):
        if nl.n_units < 2:
            continue
        before = copy.deepcopy(m.state_dict())
        for _ in range(3):
            j, k = torch.randperm(nl.n_units, generator=g)[:2].tolist()
            m.swap(li, j, k)
            assert torch.allclose(m(x), y0, atol=1e-12, rtol=0), f"swap in {nl.name} changed the function"
        assert any(not torch.equal(before[n], t) for n, t in m.state_dict().items()), nl.name


def test_swaps_move_every_member():
    """The residual layer owns a slice of every BioLinear and LayerNorm; a head owns whole rows and columns."""
    m = make(n_heads=2, layer_norm=True)
    before = copy.deepcopy(m.state_dict())
    m.swap("residual", 0, 5)
    changed = {n for n, t in m.state_dict().items() if not torch.equal(before[n], t)}
    lns = {f"blocks.{b}.ln{i}.{p}" for b in range(2) for i in (1, 2) for p in ("weight", "bias")}
    assert changed == {"embed_in.weight", "embed_in.bias", "unembed.weight", "ln_f.weight", "ln_f.bias"} | lns | {
        f"blocks.{b}.{n}" for b in range(2) for n in
        ("qkv.weight", "attn_out.weight", "attn_out.bias", "mlp_in.weight", "mlp_out.weight", "mlp_out.bias")}
    m.swap("block1.heads", 0, 1)
    W = m.blocks[1].qkv.weight.detach().view(3, 2, 4, 8)  # (q|k|v, head, channel, d_model)
    W0 = before["blocks.1.qkv.weight"].view(3, 2, 4, 8)[..., [5, 1, 2, 3, 4, 0, 6, 7]]
    assert torch.equal(W[:, 0], W0[:, 1]) and torch.equal(W[:, 1], W0[:, 0])


def test_inconsistent_swap_is_detected():
    """Negative control: moving only the q|k|v input columns of a residual neuron changes the function, so
    the preservation tests above would catch a member left out of a neuron layer."""
    m = make(n_heads=2)
    x = inputs(m)
    y0 = m(x)
    with torch.no_grad():
        m.blocks[0].qkv.weight[:, [0, 5]] = m.blocks[0].qkv.weight[:, [5, 0]]
    assert not torch.allclose(m(x), y0, atol=1e-6)


def test_input_output_swaps_keep_caller_order():
    m = make()
    x = inputs(m)
    y0 = m(x)
    m.swap("input", 0, 1)
    m.swap("output", 0, 2)
    assert m.in_perm.tolist() == [1, 0] and m.out_perm.tolist() == [2, 1, 0]
    assert torch.allclose(m(x), y0, atol=1e-12, rtol=0)


@pytest.mark.parametrize("n_heads,layer_norm,top_k,cost", [
    (1, False, 20, COST),
    (2, True, 3, dict(weight_factor=1.0, l0=0.1, agg="sum")),
])
def test_relocate_equals_brute_force(n_heads, layer_norm, top_k, cost):
    fast = make(n_heads, layer_norm, seed=5).float()
    slow = float64_oracle(fast)
    n_fast = relocate(fast, top_k, **cost)
    n_slow = brute_force_relocate(slow, top_k, **cost)
    assert n_fast == n_slow > 0
    for name, t in slow.state_dict().items():
        if t.is_floating_point():
            assert torch.allclose(fast.state_dict()[name].double(), t, atol=1e-7, rtol=0), name
        else:
            assert torch.equal(fast.state_dict()[name], t), name
    assert connection_cost(fast, **cost).item() == pytest.approx(connection_cost(slow, **cost).item(), rel=1e-6)


@pytest.mark.parametrize("n_heads", [1, 2])
def test_relocate_preserves_function_and_lowers_cost(n_heads):
    m = make(n_heads, layer_norm=True, seed=7)
    x = inputs(m)
    y0, c0 = m(x), connection_cost(m, **COST).item()
    assert relocate(m, 20, **COST) > 0
    c1 = connection_cost(m, **COST).item()
    assert torch.allclose(m(x), y0, atol=1e-12, rtol=0)
    assert c1 < c0
    relocate(m, 20, **COST)
    assert connection_cost(m, **COST).item() <= c1


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"d_model must be divisible by n_heads \(4\), got 10"):
        BioTransformer(2, 2, d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="n_blocks must be a positive int"):
        BioTransformer(2, 2, n_blocks=0)
    m = make()
    with pytest.raises(ValueError, match=r"shape \(batch, seq, 2\)"):
        m(torch.zeros(5, 4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"shape \(batch, seq, 2\)"):
        m(torch.zeros(5, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="no neuron layer named"):
        m.swap("block9.heads", 0, 1)
    with pytest.raises(ValueError, match="unit index"):
        m.swap("block0.head0", 0, 8)


def test_swaps_carry_adam_state():
    """On the task loss alone (the connection cost depends on position by design), training after swaps, with
    the optimizer's moments moved too, computes what training without them does."""
    a = make(n_heads=2, layer_norm=True)
    b = copy.deepcopy(a)
    x = inputs(a)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0) for m in (a, b)]

    def step(m, opt):
        loss = m(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for m, opt in zip((a, b), opts):
        step(m, opt)
    for name, j, k in (("residual", 1, 6), ("block0.heads", 0, 1), ("block1.head1", 0, 3),
                       ("block0.mlp_hidden", 2, 9), ("output", 0, 2)):
        a.swap(name, j, k, optimizer=opts[0])
    for m, opt in zip((a, b), opts):
        step(m, opt)
    assert torch.allclose(a(x), b(x), atol=1e-10, rtol=0)
