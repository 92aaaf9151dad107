"""The locality-vs-sparsity study's statistics, searches, arms and resumable CSV (studies/locality_vs_sparsity.py).

Oracles: hand-made connection counts for the lambda search; a manual AdamW loop for the weight-decay arm; the
trained weights themselves for the seed-0 export. The end-to-end runs are 200 steps (--fast). The statistics the
summary uses (bootstrap, sign test, paired differences) are tested in tests/test_statistics.py.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bimt_core as bc
import locality_vs_sparsity as lvs

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


def test_the_lambda_search_stops_when_the_count_turns_away_from_the_target():
    # modular addition's search at seed 1000: the count falls to 327 at factor 2, then rises again
    counts = {1.0: 462, 1.41421: 376, 2.0: 327, 2.82843: 337, 4.0: 435, 5.65685: 300}
    tried, chosen = walk(324, counts.get)
    assert tried == [1.0, 1.41421, 2.0, 2.82843, 4.0]  # 5.66 would cross, but two steps away from 324 end the walk
    assert chosen == 2.0  # the nearest of all tried
    counts[5.65685] = 429  # a run beyond the turn (an earlier walk's) does not restart the walk, nor win
    assert lvs.next_factor(324, counts) is None and lvs.matched_factor(324, counts) == 2.0


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


def test_an_ensemble_of_seeds_gives_the_rows_of_their_single_runs(tmp_path, monkeypatch):
    # --ensemble 2 over seeds 0-2: seeds 0 and 1 of each arm train as one ensemble, seed 2 alone (bc.train)
    common = ["--fast", "--tasks", "independence", "--arms", "bimt", "l1_swap", "--seeds", "0-2", "--n-null", "3"]
    lvs.main(common + ["--out", str(tmp_path / "single.csv")])
    stacked, train_ensemble = [], lvs.be.train_ensemble
    monkeypatch.setattr(lvs.be, "train_ensemble", lambda models, *a, **k: stacked.append(len(models)) or
                        train_ensemble(models, *a, **k))
    lvs.main(common + ["--out", str(tmp_path / "ensemble.csv"), "--ensemble", "2"])
    assert stacked == [2, 2]
    timing = {"train_seconds", "eap_seconds", "acdc_seconds"}

    def table(name):
        return sorted(({k: v for k, v in r.items() if k not in timing} for r in rows(tmp_path / name)),
                      key=lambda r: (r["arm"], r["seed"]))

    single = table("single.csv")
    assert [(r["arm"], r["seed"]) for r in single] == [(a, s) for a in ("bimt", "l1_swap") for s in "012"]
    assert all(int(r["swaps"]) > 0 for r in single)  # the members swap, each its own way
    assert table("ensemble.csv") == single


def test_the_seeds_of_a_task_and_arm_are_grouped_into_ensembles_in_the_order_of_the_runs():
    todo = [("t", a, s) for s in range(5) for a in ("x", "y")]
    assert lvs.jobs_of(todo, 1) == [("t", a, [s]) for s in range(5) for a in ("x", "y")]
    assert lvs.jobs_of(todo, 2) == [("t", "x", [0, 1]), ("t", "y", [0, 1]), ("t", "x", [2, 3]), ("t", "y", [2, 3]),
                                    ("t", "x", [4]), ("t", "y", [4])]
    assert lvs.jobs_of(todo[1:], 10) == [("t", "y", [0, 1, 2, 3, 4]), ("t", "x", [1, 2, 3, 4])]


@pytest.mark.parametrize("flag", ["--ensemble", "--jobs"])
def test_fewer_than_one_member_or_process_is_refused_by_name(flag, tmp_path, capsys):
    with pytest.raises(SystemExit):
        lvs.main(["--fast", "--out", str(tmp_path / "x.csv"), flag, "0"])
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least 1 member, got 0"):
        lvs.jobs_of([("t", "x", 0)], 0)
    assert not (tmp_path / "x.csv").exists()


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
    searched = [dict(task="independence", kind="bimt", seed="1000", factor="", connections="22"),
                dict(task="independence", kind="l1", seed="1000", factor="1", connections="18"),
                dict(task="independence", kind="wd", seed="1000", weight_decay="1", perf="0.99", learned="True")]
    line = next(x for x in lvs.summary(rows, searched).splitlines() if x.startswith("Search at seed 1000"))
    assert "l1_matched uses lambda 1." in line  # the rows' lam column
    assert line.endswith("wd uses (no wd run in the study yet).")  # a partial study: no wd rows to read it from


def test_the_summary_recomputes_z_and_counts_the_undefined_ones():
    def row(seed, q, mean, std, z):  # z as the CSV holds it: from before the rule, or after
        return {c: "1" for c in lvs.COLUMNS} | dict(
            task="incontext", arm="wd", seed=str(seed), perf_name="test_r2", learned="True", q=str(q),
            q_null_mean=str(mean), q_null_std=str(std), q_z=z, commit="abc", steps="20000")

    rows = [row(0, 0.545, 0.543, 0.0, "inf"), row(1, 0.561, 0.541, 1.4e-16, "1.3e+14"),
            row(2, 0.55, 0.54, 0.002, "5"), row(3, 0.53, 0.54, 0.001, "-10"), row(4, 0.5, 0.5, 0.0, "nan")]
    z = lvs.values(rows, "incontext", "wd", "q_z")
    assert [s for s, v in z.items() if math.isnan(v)] == [0, 1, 4]
    assert z[2] == pytest.approx(5.0) and z[3] == pytest.approx(-10.0)
    assert lvs.spread(z.values(), ".1f") == "-2.5 [-10.0, 5.0] (3 undefined)"
    assert lvs.spread([math.nan], ".1f") == "- (1 undefined)" and lvs.spread([], ".1f") == "-"
    assert "| wd | 5/5 [0.57, 1.00] |" in lvs.summary(rows, []) and "inf" not in lvs.summary(rows, [])


def test_the_summary_says_whether_q_follows_the_connections_within_plain_l1():
    def row(arm, seed, connections, q):
        return {c: "1" for c in lvs.COLUMNS} | dict(
            task="modadd", arm=arm, seed=str(seed), perf_name="test_accuracy", learned="True", q=str(q),
            connections=str(connections), commit="abc", steps="20000")

    rows = [row("bimt", s, 300, 0.5) for s in range(5)]
    # l1 and l1_matched together: Q = 0.1 + 0.001 * connections exactly, over 300..480 connections
    rows += [row(arm, s, c, 0.1 + 0.001 * c) for arm, c0 in (("l1", 300), ("l1_matched", 400))
             for s, c in enumerate(range(c0, c0 + 100, 20))]
    line = next(x for x in lvs.summary(rows, []).splitlines() if x.startswith("Q against connections"))
    assert line == ("Q against connections within plain L1 (l1 and l1_matched, 10 runs that learned, 300 to 480 "
                    "connections): Pearson r +1.00, slope +0.100 Q per 100 connections.")
    few = [r for r in rows if r["arm"] != "l1_matched"][:8]  # 3 plain L1 runs: too few to say
    assert "Q against connections" not in lvs.summary(few, [])


def test_the_seed0_export_rebuilds_each_network_with_its_trained_weights(tmp_path):
    models = tmp_path / "models"
    trained = {}
    for task, arm, seed in (("independence", "bimt", 0), ("independence", "lam0", 0), ("compositionality", "l1", 0),
                            ("independence", "l1", 1)):  # seed 1 is not exported
        setup = lvs.independence(seed) if task == "independence" else lvs.compositionality(seed)
        cfg = lvs.scaled(lvs.arm_config(setup.cfg, arm, 1.0), 0.01)
        trained[task, arm, seed] = lvs.train(lvs.TASKS[task], setup, cfg,
                                             lvs.model_file(models, dict(task=task, arm=arm, seed=seed))).model
    path = tmp_path / "seed0.npz"
    assert lvs.export_seed0(models, path) == [("independence", "bimt"), ("independence", "lam0"),
                                              ("compositionality", "l1")]
    nets = lvs.load_seed0(path)
    assert {t: list(arms) for t, arms in nets.items()} == {"independence": ["bimt", "lam0"],
                                                             "compositionality": ["l1"]}
    for (task, arm, seed), model in trained.items():
        if seed == 0:
            saved, loaded = model.state_dict(), nets[task][arm].state_dict()
            assert list(saved) == list(loaded) and all(torch.equal(saved[k], loaded[k]) for k in saved)
    x = torch.rand(5, 4)
    assert torch.equal(nets["independence"]["bimt"](x), trained["independence", "bimt", 0](x))


def test_a_later_export_keeps_the_networks_of_other_tasks_and_replaces_its_own(tmp_path):
    def trained(folder, task, arm, steps_scale):
        setup = lvs.TASKS[task].make(0)
        cfg = lvs.scaled(lvs.arm_config(setup.cfg, arm, 1.0), steps_scale)
        return lvs.train(lvs.TASKS[task], setup, cfg, lvs.model_file(folder, dict(task=task, arm=arm, seed=0))).model

    path = tmp_path / "seed0.npz"
    first = trained(tmp_path / "a", "independence", "bimt", 0.01)
    lvs.export_seed0(tmp_path / "a", path)
    old = trained(tmp_path / "b", "compositionality", "l1", 0.01)
    lvs.export_seed0(tmp_path / "b", path)
    new = trained(tmp_path / "c", "compositionality", "l1", 0.02)  # its weights differ from `old`'s
    assert lvs.export_seed0(tmp_path / "c", path) == [("compositionality", "l1")]
    nets = lvs.load_seed0(path)
    assert {t: list(arms) for t, arms in nets.items()} == {"independence": ["bimt"], "compositionality": ["l1"]}
    x = torch.rand(5, 4)
    assert torch.equal(nets["independence"]["bimt"](x), first(x))
    assert torch.equal(nets["compositionality"]["l1"](x), new(x)) and not torch.equal(new(x), old(x))


def test_the_seed0_export_and_loader_refuse_what_is_not_there(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trained seed-0 weights"):
        lvs.export_seed0(tmp_path, tmp_path / "seed0.npz")
    with pytest.raises(FileNotFoundError, match="--export"):
        lvs.load_seed0(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", **{"mnist/l2/linears.0.weight": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="arm 'l2'"):
        lvs.load_seed0(tmp_path / "bad.npz")
