"""The locality-vs-sparsity study's statistics, searches, arms and resumable CSV (studies/locality_vs_sparsity.py).

Oracles: the exact bootstrap distribution of a mean, enumerated over every resample of four numbers; the sign
test's binomial tails and a Wilson interval counted by hand; hand-made connection counts for the lambda search;
a manual AdamW loop for the weight-decay arm. The end-to-end runs are 200 steps (--fast).
"""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bimt_core as bc
import locality_vs_sparsity as lvs

# -- statistics ------------------------------------------------------------------------------------------


def test_the_bootstrap_interval_matches_the_enumerated_bootstrap_distribution():
    d = [0.3, -0.1, 0.8, 0.2]
    means = np.sort([np.mean(c) for c in itertools.product(d, repeat=4)])  # all 4^4 equally likely resamples
    exact = np.quantile(means, [0.025, 0.975])
    lo, hi = lvs.bootstrap_ci(d, n_boot=40000, seed=1)
    step = 0.1 / 4  # the resampled means lie on a grid of 0.025
    assert lo == pytest.approx(exact[0], abs=step + 1e-9) and hi == pytest.approx(exact[1], abs=step + 1e-9)
    assert lvs.bootstrap_ci(d, seed=1) == lvs.bootstrap_ci(d, seed=1)  # seeded
    assert lvs.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)


def test_a_bootstrap_needs_two_differences():
    with pytest.raises(ValueError, match="at least two"):
        lvs.bootstrap_ci([1.0])


@pytest.mark.parametrize("above, below, p", [
    (10, 0, 2 / 1024),                      # 2 * (1/2)^10
    (8, 2, 2 * (1 + 10 + 45) / 1024),        # 2 * P(X <= 2), X ~ Bin(10, 1/2): 0.109375
    (2, 8, 2 * (1 + 10 + 45) / 1024),
    (5, 5, 1.0), (3, 2, 1.0), (0, 0, 1.0),  # the doubled tail of an even split exceeds 1
    (9, 1, 2 * 11 / 1024)])
def test_the_sign_test_is_the_exact_binomial_tail(above, below, p):
    assert lvs.sign_test(above, below) == pytest.approx(p, rel=1e-12)


def test_wilson_intervals_counted_by_hand():
    # 2/10: p = 0.2, z = 1.96: (0.2 + 0.19208 -+ 1.96 sqrt(0.016 + 0.0096040)) / 1.38415
    assert lvs.wilson(2, 10) == pytest.approx((0.0567, 0.5098), abs=1e-4)
    assert lvs.wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert lvs.wilson(0, 0) == (0.0, 1.0)


def test_paired_differences_use_the_shared_seeds_only():
    a, b = {0: 1.0, 1: 3.0, 2: 2.0, 5: 9.0}, {0: 0.5, 1: 3.5, 2: 1.0, 7: 0.0}
    d = lvs.paired(a, b)
    assert (d.n, d.above, d.below) == (3, 2, 1)
    assert d.mean == pytest.approx((0.5 - 0.5 + 1.0) / 3)
    assert d.low <= d.mean <= d.high
    assert d.p == lvs.sign_test(2, 1)
    assert lvs.paired({0: 1.0}, {1: 1.0}) is None
    one = lvs.paired({0: 1.0}, {0: 0.0})
    assert one.low is None and lvs.verdict(one, "up", "down").startswith("too few pairs")
    assert lvs.verdict(lvs.PairedDifference(4, 1.0, 0.5, 1.5, 0.125, 4, 0), "up", "down").startswith("too few")


def test_the_verdict_follows_the_interval():
    def diff(low, high):
        return lvs.PairedDifference(10, (low + high) / 2, low, high, 0.01, 9, 1)

    assert lvs.verdict(diff(0.1, 0.3), "higher", "lower") == "supported: higher"
    assert lvs.verdict(diff(-0.3, -0.1), "higher", "lower") == "supported: lower"
    assert lvs.verdict(diff(-0.1, 0.3), "higher", "lower").startswith("not supported")


# -- the searches -----------------------------------------------------------------------------------------


def walk(target: int, count) -> tuple[list, float]:
    """Run the search loop on a made-up count(factor): the factors tried, in order, and the one chosen."""
    conns = {}
    while (f := lvs.next_factor(target, conns)) is not None:
        conns[f] = count(f)
    return list(conns), lvs.matched_factor(target, conns)


def test_the_lambda_search_walks_up_until_it_brackets_the_target():
    tried, chosen = walk(150, lambda f: round(400 / f))  # 400, 283, 200, 141 at 1, 1.41, 2, 2.83
    assert tried == [1.0, 1.41421, 2.0, 2.82843]
    assert chosen == 2.82843  # |log(141 / 150)| = 0.06 < |log(200 / 150)| = 0.29


def test_the_lambda_search_walks_down_when_same_lambda_is_already_sparser():
    tried, chosen = walk(22, {1.0: 18, 0.707107: 21, 0.5: 23, 0.353553: 30}.get)
    assert tried == [1.0, 0.707107, 0.5]
    assert chosen == 0.5  # 23 is nearer 22 than 21 in log


def test_the_lambda_search_stops_at_the_end_of_the_grid():
    tried, chosen = walk(1, lambda f: 1000)
    assert tried == [f for f in lvs.LAM_GRID if f >= 1] and chosen == lvs.LAM_GRID[-1]


def test_the_largest_weight_decay_that_learns_is_used():
    assert lvs.chosen_weight_decay({0.01: True, 0.1: True, 1.0: False}) == 0.1
    assert lvs.chosen_weight_decay({0.01: False, 0.1: False, 1.0: False}) == 0.01


# -- arms and tasks ----------------------------------------------------------------------------------------


def test_each_arm_changes_what_it_says():
    base = lvs.independence(0).cfg
    arms = {a: lvs.arm_config(base, a, 1.0, lam_factor=2.0, weight_decay=0.1) for a in lvs.ARMS}
    assert arms["bimt"] == base
    swap = arms["l1_swap"]
    assert (swap.weight_factor, swap.swap, swap.swap_cost) == (0.0, True, {"weight_factor": 1.0})
    assert (arms["l1_local"].weight_factor, arms["l1_local"].swap) == (1.0, False)
    assert (arms["l1"].weight_factor, arms["l1"].swap, arms["l1"].lam) == (0.0, False, base.lam)
    assert arms["l1_matched"].lam == 2 * base.lam and arms["l1_matched"].weight_factor == 0.0
    assert (arms["wd"].lam, arms["wd"].weight_decay, arms["wd"].swap) == (0.0, 0.1, False)
    assert (arms["lam0"].lam, arms["lam0"].weight_decay, arms["lam0"].swap) == (0.0, 0.0, False)
    with pytest.raises(ValueError, match="needs its searched lam_factor"):
        lvs.arm_config(base, "l1_matched", 1.0)
    with pytest.raises(ValueError, match="unknown arm"):
        lvs.arm_config(base, "l2", 1.0, 1.0, 1.0)


def test_seed_s_of_every_arm_starts_from_the_same_weights_and_data():
    a, b = lvs.compositionality(3), lvs.compositionality(3)
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert torch.equal(a.train[0], b.train[0]) and torch.equal(a.test[1], b.test[1])
    assert not torch.equal(a.train[0], lvs.compositionality(4).train[0])


def test_the_weight_decay_arm_is_adamw_with_decay():
    setup = lvs.independence(0)
    cfg = bc.BIMTConfig(steps=30, lam=0.0, swap=False, weight_decay=0.5, seed=0)
    manual = lvs.independence(0).model
    bc.train(setup.model, cfg, setup.train, setup.test, F.mse_loss, progress=False)
    opt = torch.optim.AdamW(manual.parameters(), lr=cfg.lr, weight_decay=0.5, foreach=True)
    for _ in range(30):
        opt.zero_grad()
        F.mse_loss(manual(setup.train[0]), setup.train[1]).backward()
        opt.step()
    for p, q in zip(setup.model.parameters(), manual.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="weight_decay"):
        bc.BIMTConfig(weight_decay=-0.1)


# -- the CSV: one row per run, resumable ------------------------------------------------------------------


def rows(path):
    return lvs.read_rows(path, lvs.COLUMNS)


def test_resume_skips_done_runs_and_a_rerun_replaces_them(tmp_path):
    path = tmp_path / "study.csv"
    old = [{c: "" for c in lvs.COLUMNS} | dict(task="independence", arm=a, seed=str(s), perf=str(s))
           for a in ("bimt", "lam0") for s in (0, 1)]
    lvs.write_rows(path, old, columns=lvs.COLUMNS)
    keys = [("independence", a, s) for s in (0, 1, 2) for a in ("bimt", "lam0")]
    assert lvs.plan(path, keys, resume=True) == [("independence", "bimt", 2), ("independence", "lam0", 2)]
    assert rows(path) == old  # resume leaves the CSV alone
    assert lvs.plan(path, keys[:2], resume=False) == keys[:2]  # seed 0 again: its rows go, the others stay
    assert [(r["arm"], r["seed"]) for r in rows(path)] == [("bimt", "1"), ("lam0", "1")]


def test_the_study_runs_resumes_and_summarises(tmp_path, capsys):
    out = tmp_path / "study.csv"
    argv = ["--fast", "--tasks", "independence", "--arms", "bimt", "l1", "lam0", "--seeds", "0-1", "--out", str(out),
            "--n-null", "3"]
    lvs.main(argv)
    first = rows(out)
    assert sorted((r["arm"], r["seed"]) for r in first) == [(a, s) for a in ("bimt", "l1", "lam0") for s in "01"]
    for r in first:
        assert r["steps"] == "200" and r["commit"] and r["learned"] in ("True", "False")
        assert 0 < int(r["eap_size_0.9"]) <= int(r["eap_size_0.99"]) <= int(r["total_connections"]) == 520
        assert 0 < float(r["auc"]) and r["acdc_size_0.9"] and math.isfinite(float(r["q"]))
    assert {r["lam"] for r in first if r["arm"] == "lam0"} == {"0"}
    lvs.main(argv[:-2] + ["--n-null", "3", "--resume"])
    assert rows(out) == first  # nothing left to do
    assert "runs to do: 0 of 6" in capsys.readouterr().out
    # the same run again from scratch gives the same numbers (but for the seconds)
    lvs.main(argv[:1] + ["--tasks", "independence", "--arms", "lam0", "--seeds", "1", "--out", str(out),
                         "--n-null", "3"])
    again = rows(out)[-1]
    before = next(r for r in first if (r["arm"], r["seed"]) == ("lam0", "1"))
    timing = {"train_seconds", "eap_seconds", "acdc_seconds"}
    assert {k: v for k, v in again.items() if k not in timing} == {k: v for k, v in before.items() if k not in timing}
    text = out.with_suffix(".md").read_text()
    assert "## independence (seeds 0, 1; 200 steps)" in text
    assert "| bimt |" in text and "| lam0 | modularity Q |" in text and "| l1 - l1_local |" not in text


def test_a_csv_of_another_study_is_refused(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("task,arm,seed\n")
    with pytest.raises(SystemExit, match="expected"):
        lvs.plan(path, [("independence", "bimt", 0)], resume=True)


def test_the_summary_says_which_differences_the_intervals_support():
    def row(arm, seed, q, learned=True):
        return {c: "1" for c in lvs.COLUMNS} | dict(
            task="independence", arm=arm, seed=str(seed), perf_name="test_r2", learned=str(learned), q=str(q),
            commit="abc", steps="20000")

    rows = [row("bimt", s, 0.5 + 0.01 * s) for s in range(10)]
    rows += [row("l1_matched", s, 0.3 + 0.02 * s) for s in range(10)]  # bimt higher at every seed
    rows += [row("lam0", s, 0.5 + 0.01 * s + (0.01 if s % 2 else -0.01), learned=s != 3) for s in range(10)]
    text = lvs.summary(rows, [])
    assert "| l1_matched | modularity Q | 10 |" in text and "| 10 : 0 | 0.00195 | supported: bimt higher" in text
    assert "| lam0 | modularity Q | 9 |" in text  # seed 3 of lam0 did not learn: left out of the pairs
    assert "lam0 did not learn the task at seed(s) 3" in text
    assert "Supported by the intervals: bimt - l1_matched in modularity Q: +0.155 [" in text
    assert "bimt - lam0 in modularity Q" not in text
    assert "| bimt | 10/10 [0.72, 1.00] |" in text and "| lam0 | 9/10 [0.60, 0.98] |" in text
