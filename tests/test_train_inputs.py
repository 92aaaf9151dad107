"""Mistakes at train's boundary: each gets a clear error (or a warning saying what will not happen) before the
first step, naming what was wrong and what is expected. One case per mistake."""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import bimt_core as bc

N = 16


def inputs():
    return torch.rand(N, 4, generator=torch.Generator().manual_seed(0))


def targets(cols=2):
    return torch.rand(N, cols, generator=torch.Generator().manual_seed(1))


def labels(hi=2, dtype=torch.long):
    return torch.randint(0, hi, (N,), generator=torch.Generator().manual_seed(2)).to(dtype)


def with_value(t, index, value):
    t = t.clone()
    t[index] = value
    return t


def train(data=None, test=None, loss=F.mse_loss, model=None, **kw):
    """train 3 steps of a 4-8-2 BioMLP (swaps every step) on data, tested on test (default: data)."""
    cfg = kw.pop("cfg", bc.BIMTConfig(steps=3, swap_every=1))
    data = data if data is not None else (inputs(), targets())
    m = model or bc.BioMLP([4, 8, 2], generator=torch.Generator().manual_seed(0))
    return bc.train(m, cfg, data, test if test is not None else data, loss, progress=False, **kw)


def spent_iterator():
    return iter([(inputs(), targets())])


@pytest.mark.parametrize("call, exc, match", [
    # non-finite data, named with its first bad index
    (lambda: train((with_value(inputs(), (3, 1), float("nan")), targets())), ValueError,
     r"train_data inputs hold nan at index \(3, 1\) \(the first of 1\); BIMT needs finite data"),
    (lambda: train((inputs(), with_value(targets(), (5, 0), float("inf")))), ValueError,
     r"train_data targets hold inf at index \(5, 0\)"),
    (lambda: train(test=(inputs(), with_value(targets(), (7, 1), float("-inf")))), ValueError,
     r"test_data targets hold -inf at index \(7, 1\)"),
    (lambda: train(DataLoader(TensorDataset(with_value(inputs(), (9, 2), float("nan")), targets()), batch_size=8),
                   test=(inputs(), targets())), ValueError,
     r"train_data inputs of step 1 hold nan at index \(1, 2\)"),
    # targets whose shape would broadcast against the outputs'
    (lambda: train((inputs(), targets()[:, 0]), model=bc.BioMLP([4, 8, 1])), ValueError,
     r"outputs torch.float32 \(16, 1\) and test_data targets torch.float32 \(16,\) would broadcast into a wrong "
     r"loss. Expected: a regression loss \(F.mse_loss\) takes float targets shaped like the outputs"),
    (lambda: train((inputs(), targets(1))), ValueError, r"targets torch.float32 \(16, 1\) would broadcast"),
    # a loss_fn that raises, re-raised with the shapes, dtypes and what each kind of loss expects
    (lambda: train((inputs(), targets(3))), ValueError,
     r"loss_fn failed on outputs torch.float32 \(16, 2\) and test_data targets torch.float32 \(16, 3\) "
     r"\(RuntimeError: The size of tensor a \(2\) must match .*\). Expected: a regression loss"),
    (lambda: train((inputs(), labels())), ValueError,
     r"loss_fn failed on outputs torch.float32 \(16, 2\) and test_data targets torch.int64 \(16,\) in \[0, 1\] "
     r".*a classification loss \(F.cross_entropy\) int64 labels in \[0, 2\) of shape \(16,\)"),
    (lambda: train((inputs(), labels().float()), loss=F.cross_entropy), ValueError,
     r"targets torch.float32 \(16,\) \(RuntimeError: expected target dtype to be Long"),
    (lambda: train((inputs(), labels(hi=5)), loss=F.cross_entropy), ValueError,
     r"targets torch.int64 \(16,\) in \[0, 4\] \(IndexError: Target [234] is out of bounds.\). Expected: .*"
     r"int64 labels in \[0, 2\)"),
    (lambda: train((inputs(), labels(dtype=torch.int32)), loss=F.cross_entropy), ValueError,
     r"targets torch.int32 \(16,\) in \[0, 1\] \(RuntimeError: expected target dtype to be Long"),
    (lambda: train(loss=nn.MSELoss), TypeError,
     r"loss_fn must be a function or a loss module instance, e.g. F.mse_loss or nn.MSELoss\(\) .*not the class"),
    # cross-entropy reads float targets as class probabilities: regression targets would train silently
    (lambda: train(loss=F.cross_entropy), ValueError,
     r"cross-entropy reads float targets as class probabilities \(>= 0, summing to 1 over dim 1\), which these "
     r"are not: outputs torch.float32 \(16, 2\) and test_data targets torch.float32 \(16, 2\)"),
    (lambda: train(loss=nn.CrossEntropyLoss()), ValueError, "cross-entropy reads float targets as class probabilities"),
    # iterables of batches
    (lambda: train(spent_iterator(), test=(inputs(), targets())), ValueError,
     r"train_data yielded no batch for step 1: a spent iterator has no second pass \(pass a DataLoader"),
    (lambda: train([inputs(), inputs(), targets()], test=(inputs(), targets())), ValueError,
     r"train_data's batch for step 0 must be an \(inputs, targets\) pair of tensors, or an iterable of such batches "
     r"\(a DataLoader\), got 'Tensor'"),
    (lambda: train(DataLoader(TensorDataset(inputs(), targets()), batch_size=4), test=(inputs(), targets()),
                   sampler=lambda s: torch.arange(4)), ValueError,
     r"sampler and cfg.batch_size must be None when train_data yields its own batches"),
    (lambda: train(inputs()), ValueError, r"train_data must be an \(inputs, targets\) pair of tensors, or an iterable"),
    (lambda: train(test=[]), ValueError, r"test_data must be an \(inputs, targets\) pair of tensors"),
    # the optimizer and scheduler factories
    (lambda: train(optimizer=torch.optim.AdamW([torch.zeros(1, requires_grad=True)])), TypeError,
     r"optimizer must be a function or None, got AdamW"),
    (lambda: train(optimizer=lambda params: list(params)), TypeError,
     r"optimizer\(params\) must be a torch.optim.Optimizer, got \[Parameter"),
    (lambda: train(scheduler="cosine"), TypeError, r"scheduler must be a function or None, got 'cosine'"),
])
def test_each_mistake_gets_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("cfg, match", [
    (bc.BIMTConfig(steps=3, swap_every=200), r"no swap will happen: swap_every=200 > steps=3 \(swap=False says so\)"),
    (bc.BIMTConfig(steps=3, swap_every=1, top_k=0), r"no swap will happen: top_k=0 tries no unit"),
    (bc.BIMTConfig(steps=3, swap_every=1, top_k=9), r"top_k=9 exceeds every swappable layer's width \(at most 8 "
                                                    r"units\): each swap pass tries every unit, as top_k=8 would"),
])
def test_settings_that_do_nothing_are_warned_about(cfg, match):
    with pytest.warns(UserWarning, match=match):
        train(cfg=cfg)


def test_settings_that_act_are_not_warned_about():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(cfg=bc.BIMTConfig(steps=3, swap_every=1, top_k=8))  # as wide as the widest layer: every unit
        train(cfg=bc.BIMTConfig(steps=3, swap_every=200, swap=False))


def test_what_is_right_passes():
    # the same checks accept class probabilities for cross-entropy, integer labels, and (N, C) float targets
    probs = torch.softmax(targets(), 1)
    assert len(train((inputs(), probs), loss=F.cross_entropy).step) == 2
    assert len(train((inputs(), labels()), loss=F.cross_entropy).step) == 2
    assert len(train((inputs(), labels().float()[:, None].expand(N, 2).contiguous())).step) == 2


def test_a_loss_that_turns_non_finite_names_the_batch_data_before_the_weights():
    # a batch with a NaN reaches the loss only at its step: the data are blamed, not the learning rate
    x = with_value(inputs(), (12, 0), float("nan"))
    batches = [(x[:8], targets()[:8]), (x[8:], targets()[8:])]
    with pytest.raises(ValueError, match=r"train_data inputs of step 1 hold nan at index \(4, 0\)"):
        train(batches, test=(inputs(), targets()))
