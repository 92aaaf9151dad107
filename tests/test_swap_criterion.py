"""The swap pass may minimise a different wiring cost than the loss pays (the 'L1 + swap' ablation of Fig 3)."""
import dataclasses

import torch
import torch.nn.functional as F

import bimt_core as bc
from helpers import tiny_task


def run(cfg):
    model = bc.BioMLP([4, 12, 12, 2], generator=torch.Generator().manual_seed(0))
    data = tiny_task()
    return model, bc.train(model, cfg, data, data, F.mse_loss, progress=False)


def test_swap_cost_kwargs_override_only_what_swap_cost_names():
    cfg = bc.BIMTConfig(steps=100, weight_factor=0.0, swap_cost={"weight_factor": 1.0})
    assert cfg.cost_kwargs(80)["weight_factor"] == 0.0
    assert cfg.swap_cost_kwargs(80) == {**cfg.cost_kwargs(80), "weight_factor": 1.0}
    assert bc.BIMTConfig(weight_factor=2.0).swap_cost_kwargs(5) == bc.BIMTConfig(weight_factor=2.0).cost_kwargs(5)
    mnist = bc.BIMTConfig(last_layer_l0_only=True, swap_cost={"last_layer_l0_only": False})
    assert mnist.cost_kwargs()["last_layer_l0_only"] and not mnist.swap_cost_kwargs()["last_layer_l0_only"]


def test_plain_l1_never_swaps_but_a_wiring_swap_criterion_does():
    cfg = bc.BIMTConfig(steps=400, swap_every=50, eval_every=100, lam=1e-2, weight_factor=0.0)
    _, h_l1 = run(cfg)
    assert h_l1["swaps"][-1] == 0  # with A = 0 every placement costs the same
    _, h_swap = run(dataclasses.replace(cfg, swap_cost={"weight_factor": 1.0}))
    assert h_swap["swaps"][-1] > 0


def test_loss_and_swap_pass_get_their_own_weight_factor(monkeypatch):
    seen = {"loss": set(), "swap": set()}
    terms, relocate = bc.cost_terms, bc.relocate
    swapping = []  # non-empty inside relocate, which builds its own cost terms

    def spy_terms(model, **kw):
        seen["swap" if swapping else "loss"].add(kw["weight_factor"])
        return terms(model, **kw)

    def spy_relocate(model, top_k, optimizer=None, follow="neurons", **kw):
        swapping.append(1)
        try:
            return relocate(model, top_k, optimizer, follow, **kw)
        finally:
            swapping.pop()

    monkeypatch.setattr(bc, "cost_terms", spy_terms)
    monkeypatch.setattr(bc, "relocate", spy_relocate)
    run(bc.BIMTConfig(steps=100, swap_every=50, weight_factor=0.0, swap_cost={"weight_factor": 1.0}))
    assert seen == {"loss": {0.0}, "swap": {1.0}}
