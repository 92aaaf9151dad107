"""The statistics over seeds in bimt_seeing's claims section: the bootstrap interval of a mean, the exact sign
test, paired differences over shared seeds and the verdict their interval supports (studies/locality_vs_sparsity.py
and notebooks/locality_vs_sparsity.ipynb use them).

Oracles: the exact bootstrap distribution of a mean, enumerated over every resample of four numbers; the sign
test's binomial tails counted by hand.
"""
import itertools

import numpy as np
import pytest

import bimt_seeing as bs


def test_the_bootstrap_interval_matches_the_enumerated_bootstrap_distribution():
    d = [0.3, -0.1, 0.8, 0.2]
    means = np.sort([np.mean(c) for c in itertools.product(d, repeat=4)])  # all 4^4 equally likely resamples
    exact = np.quantile(means, [0.025, 0.975])
    lo, hi = bs.bootstrap_ci(d, n_boot=40000, seed=1)
    step = 0.1 / 4  # the resampled means lie on a grid of 0.025
    assert lo == pytest.approx(exact[0], abs=step + 1e-9) and hi == pytest.approx(exact[1], abs=step + 1e-9)
    assert bs.bootstrap_ci(d, seed=1) == bs.bootstrap_ci(d, seed=1)  # seeded
    assert bs.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)


def test_a_bootstrap_needs_two_differences():
    with pytest.raises(ValueError, match="at least two"):
        bs.bootstrap_ci([1.0])


@pytest.mark.parametrize("call, match", [
    (lambda: bs.bootstrap_ci([[1.0, 2.0], [3.0, 4.0]]), "1-d array"),
    (lambda: bs.bootstrap_ci([1.0, 2.0], level=1.0), "level must be a confidence level"),
    (lambda: bs.bootstrap_ci([1.0, 2.0], n_boot=0), "n_boot must be a positive int"),
    (lambda: bs.sign_test(-1, 3), "above must be an int >= 0"),
    (lambda: bs.sign_test(2, 1.5), "below must be an int >= 0")])
def test_bad_statistics_inputs_say_what_is_expected(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("above, below, p", [
    (10, 0, 2 / 1024),                      # 2 * (1/2)^10
    (8, 2, 2 * (1 + 10 + 45) / 1024),        # 2 * P(X <= 2), X ~ Bin(10, 1/2): 0.109375
    (2, 8, 2 * (1 + 10 + 45) / 1024),
    (5, 5, 1.0), (3, 2, 1.0), (0, 0, 1.0),  # the doubled tail of an even split exceeds 1
    (9, 1, 2 * 11 / 1024)])
def test_the_sign_test_is_the_exact_binomial_tail(above, below, p):
    assert bs.sign_test(above, below) == pytest.approx(p, rel=1e-12)


def test_paired_differences_use_the_shared_seeds_only():
    a, b = {0: 1.0, 1: 3.0, 2: 2.0, 5: 9.0}, {0: 0.5, 1: 3.5, 2: 1.0, 7: 0.0}
    d = bs.paired(a, b)
    assert (d.n, d.above, d.below) == (3, 2, 1)
    assert d.mean == pytest.approx((0.5 - 0.5 + 1.0) / 3)
    assert d.low <= d.mean <= d.high
    assert d.p == bs.sign_test(2, 1)
    assert bs.paired({0: 1.0}, {1: 1.0}) is None
    one = bs.paired({0: 1.0}, {0: 0.0})
    assert one.low is None and bs.verdict(one, "up", "down").startswith("too few pairs")
    assert bs.verdict(bs.PairedDifference(4, 1.0, 0.5, 1.5, 0.125, 4, 0), "up", "down").startswith("too few")


def test_the_verdict_follows_the_interval():
    def diff(low, high):
        return bs.PairedDifference(10, (low + high) / 2, low, high, 0.01, 9, 1)

    assert bs.verdict(diff(0.1, 0.3), "higher", "lower") == "supported: higher"
    assert bs.verdict(diff(-0.3, -0.1), "higher", "lower") == "supported: lower"
    assert bs.verdict(diff(-0.1, 0.3), "higher", "lower").startswith("not supported")


