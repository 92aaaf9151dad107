"""A notebook at several seeds (SEEDS): one ensemble, pictures for the first seed, claims for every member.

Oracles: single bc.train runs at the same seeds (the members, and the first member's snapshots), claims counted
by hand (record_members, seed_table, with Wilson intervals from tests/test_sweep.py's hand computation), and the
per-seed sweep's rows of a small notebook against the rows of its --ensemble run.
"""
import dataclasses
import json

import nbformat
import pytest
import torch
import torch.nn.functional as F

import bimt_core as bc
import bimt_ensemble as be
import bimt_seeing as bs
import sweep
from helpers import tiny_task

CFG = bc.BIMTConfig(steps=60, lr=1e-2, swap_every=20, eval_every=20, threads=1)


def make(seed):
    """A Fig 3-like run in small: data and initial weights from the seed."""
    x, y = tiny_task(48, seed=100 + seed)
    model = bc.BioMLP([4, 8, 8, 2], generator=torch.Generator().manual_seed(seed))
    return model, dataclasses.replace(CFG, seed=seed), (x[:32], y[:32]), (x[32:], y[32:])


def assert_same_run(member, model, hist):
    assert all(torch.equal(a, b) for a, b in zip(member.model.state_dict().values(), model.state_dict().values()))
    assert dict(member.hist) == dict(hist)


@pytest.mark.parametrize("seeds", [[3], [0, 5, 2]])
def test_each_member_is_the_single_run_at_its_seed_and_snapshots_follow_the_first(seeds, one_thread):
    snaps = []
    members = be.train_seeds(make, seeds, F.mse_loss, snapshot_fn=bs.snapshot_recorder(snaps), snapshot_every=25,
                             progress=False)
    assert [m.seed for m in members] == seeds
    for i, (member, seed) in enumerate(zip(members, seeds)):
        model, cfg, train, test = make(seed)
        single = []
        kw = dict(snapshot_fn=bs.snapshot_recorder(single), snapshot_every=25) if i == 0 else {}
        hist = bc.train(model, cfg, train, test, F.mse_loss, progress=False, **kw)
        assert_same_run(member, model, hist)
        assert member.cfg == cfg and torch.equal(member.test_data[0], test[0])
        if i == 0:  # the first member's snapshots: steps 0, 25, 50 and the last, the weights bc.train recorded
            assert [s for s, _ in snaps] == [s for s, _ in single] == [0, 25, 50, 59]
            assert all(torch.equal(a[k], b[k]) for (_, a), (_, b) in zip(snaps, single) for k in a)


def test_a_sampler_per_member_is_made_from_its_config(one_thread):
    def sampler(cfg):
        gen = torch.Generator().manual_seed(cfg.seed + 7)
        return lambda step: torch.randperm(32, generator=gen)[:8]

    members = be.train_seeds(make, [1, 4], F.mse_loss, sampler=sampler, progress=False)
    for member in members:
        model, cfg, train, test = make(member.seed)
        assert_same_run(member, model, bc.train(model, cfg, train, test, F.mse_loss, progress=False,
                                                sampler=sampler(cfg)))


@pytest.mark.parametrize("seeds", [[3], [0, 5]])
def test_arms_with_and_without_swaps_train_as_one_stack_and_each_run_is_its_single_run(seeds, one_thread):
    def make_arm(swap, seed):
        model, cfg, train, test = make(seed)
        return model, dataclasses.replace(cfg, swap=swap), train, test

    snaps = []
    arms = be.train_arms(make_arm, [True, False], seeds, F.mse_loss, snapshot_fn=bs.snapshot_recorder(snaps),
                         snapshot_every=25, progress=False)
    assert list(arms) == [True, False] and [[m.seed for m in ms] for ms in arms.values()] == [seeds, seeds]
    for swap, members in arms.items():
        for member in members:
            model, cfg, train, test = make_arm(swap, member.seed)
            assert_same_run(member, model, bc.train(model, cfg, train, test, F.mse_loss, progress=False))
            assert (member.hist["swaps"][-1] > 0) == swap  # the arm without swaps never swapped
    assert [s for s, _ in snaps] == [0, 25, 50, 59]  # the first arm's first seed
    with pytest.raises(ValueError, match=r"cfgs\[1\] must be equal to cfgs\[0\] except for seed and swap"):
        be.train_arms(lambda lr, s: (make(s)[0], dataclasses.replace(CFG, seed=s, lr=lr), *make(s)[2:]),
                      [1e-2, 1e-3], [0], F.mse_loss, progress=False)
    with pytest.raises(TypeError, match=r"make\(True, 0\) must be a tuple"):
        be.train_arms(lambda swap, s: make(s)[:3], [True], [0], F.mse_loss)


def test_seed_list_is_the_one_seed_or_the_seeds():
    assert be.seed_list(None, None) == [None]
    assert be.seed_list(3, None) == [3]
    assert be.seed_list(None, [2, 0, 1]) == [2, 0, 1]
    for seed, seeds in [(3, [0, 1]), (None, []), (None, [0, 0]), (None, [0, -1]), (None, [0.5]), (None, 3)]:
        with pytest.raises(ValueError, match="SEED"):
            be.seed_list(seed, seeds)
    with pytest.raises(ValueError, match="with -y 'SEEDS: \\[0, 1\\]', not -p"):
        be.seed_list(None, "[0, 1]")  # what papermill -p SEEDS '[0, 1]' passes


def test_train_seeds_says_what_make_must_return():
    expected = r"make\(1\) must be a tuple \(model, cfg, train_data, test_data\), got 'a tuple of 3'"
    with pytest.raises(TypeError, match=expected):
        be.train_seeds(lambda s: make(s)[:3 if s else 4], [0, 1], F.mse_loss)
    with pytest.raises(TypeError, match="seeds must be a non-empty list"):
        be.train_seeds(make, [], F.mse_loss)


def test_snapshot_functions_must_be_one_per_member():
    models, cfgs, train, test = zip(*(make(s) for s in (0, 1)))
    with pytest.raises(TypeError, match="snapshot_fns"):
        be.train_ensemble(list(models), list(cfgs), list(train), list(test), F.mse_loss, snapshot_fns=[print])
    with pytest.raises(ValueError, match="snapshot_every"):
        be.train_ensemble(list(models), list(cfgs), list(train), list(test), F.mse_loss, snapshot_fns=[print, None])


# Hand-made runs: seed 0 holds both claims, seed 1 the first only, seed 2 neither; 'size' is a note.
MEASURED = {0: [("small", True, 3), ("sparse", True, 0.1), ("size", None, 3)],
            1: [("small", True, 4), ("sparse", False, 0.4), ("size", None, 4)],
            2: [("small", False, 9), ("sparse", False, 0.5), ("size", None, 9)]}


class Seeded:
    def __init__(self, seed):
        self.seed = seed


def test_record_members_files_every_claim_under_its_seed_silently(tmp_path, capsys):
    claims = bs.Claims(tmp_path / "claims.json", notebook="nb", seed=0, procedure="clean")
    for name, holds, value in MEASURED[0]:  # the first seed, as a notebook's claim cells record it
        claims.note(name, value) if holds is None else claims.check(name, holds, value)
    printed = capsys.readouterr().out
    bs.record_members(claims, [Seeded(1), Seeded(2)], lambda run: MEASURED[run.seed])
    assert capsys.readouterr().out == ""
    assert printed == "small: True\nsparse: True\nsize: 3\n"
    records = json.loads((tmp_path / "claims.json").read_text())
    assert records == claims.records
    assert [(r["seed"], r["claim"], r["holds"], r["value"]) for r in records] == [
        (s, *m) for s in (0, 1, 2) for m in MEASURED[s]]
    assert {(r["notebook"], r["procedure"]) for r in records} == {("nb", "clean")}


def test_seed_table_counts_each_claim_over_the_seeds_with_its_wilson_interval():
    claims = bs.Claims(seed=0)
    bs.record_members(claims, [Seeded(0), Seeded(1), Seeded(2)], lambda run: MEASURED[run.seed])
    # small: 2 of 3, Wilson 21-94%; sparse: 1 of 3, 6-79% (tests/test_sweep.py's hand computation)
    assert bs.seed_table(claims.records).splitlines() == [
        "3 seeds (0, 1, 2); per claim, the seeds where it holds:",
        "     67% (2/3; 21-94%)  small",
        "      33% (1/3; 6-79%)  sparse"]


# A notebook in small with the paper notebooks' parameters and claim cells: one network per seed, its claims
# for the first seed in one cell, every other member's in another.
NOTEBOOK = [
    """SEED = None\nSEEDS = None\nPROCEDURE = "clean"\nFAST = True\nFIGURES = False\nCLAIMS_JSON = None""",
    """import torch, torch.nn.functional as F
import bimt_core as bc, bimt_ensemble as be, bimt_seeing as bs
RUN_SEEDS = be.seed_list(SEED, SEEDS)
claims = bs.Claims(CLAIMS_JSON, notebook="small", seed=RUN_SEEDS[0], procedure=PROCEDURE)

def make(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(48, 2, generator=g) * 2 - 1
    y = x[:, :1] * x[:, 1:]
    model = bc.BioMLP([2, 6, 1], generator=g)
    cfg = bc.BIMTConfig(steps=30, lr=1e-2, swap_every=10, seed=seed, threads=1)
    return model, cfg, (x[:32], y[:32]), (x[32:], y[32:])

def measure(member):
    rep = bs.analyze(member.model, 0.05)
    mse = F.mse_loss(member.model(member.test_data[0]), member.test_data[1]).item()
    return [("fits", mse < 0.05, mse), ("sparse", rep.connections <= 8, rep.connections), ("mse", None, mse)]

MEMBERS = be.train_seeds(make, RUN_SEEDS, F.mse_loss, progress=False)
for name, holds, value in measure(MEMBERS[0]):
    claims.note(name, value) if holds is None else claims.check(name, holds, value)""",
    """bs.record_members(claims, MEMBERS[1:], measure)
print(bs.seed_table(claims.records))""",
]


def test_an_ensemble_run_of_the_sweep_gives_the_rows_of_a_run_per_seed(tmp_path):
    cells = [nbformat.v4.new_code_cell(NOTEBOOK[0], metadata={"tags": ["parameters"]})]
    cells += [nbformat.v4.new_code_cell(src) for src in NOTEBOOK[1:]]
    text, commit = nbformat.writes(nbformat.v4.new_notebook(cells=cells)), sweep.git_commit()
    ensemble = sweep.execute(sweep.Job(("small", "0,1", "clean"), text, True, 120, commit, seeds=(0, 1)))
    assert ensemble.error is None
    single = [r for s in ("0", "1")
              for r in sweep.execute(sweep.Job(("small", s, "clean"), text, True, 120, commit)).rows]

    def claims(rows):
        return [(r["notebook"], r["seed"], r["procedure"], r["claim"], r["holds"], r["value"]) for r in rows]

    assert claims(ensemble.rows) == claims(single)
    assert [r["claim"] for r in single] == ["run completed", "fits", "sparse", "mse"] * 2
    assert {r["seconds"] for r in ensemble.rows} == {f"{ensemble.seconds / 2:.1f}"}


def test_every_paper_notebook_takes_seeds_and_the_ensemble_sweep_refuses_one_that_does_not(tmp_path):
    sweep.check_notebooks(sweep.ROOT / "notebooks", list(sweep.NOTEBOOKS), sweep.ENSEMBLE_PARAMETERS)
    cell = nbformat.v4.new_code_cell(NOTEBOOK[0].replace("SEEDS = None\n", ""), metadata={"tags": ["parameters"]})
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), tmp_path / "old.ipynb")
    sweep.check_notebooks(tmp_path, ["old"])  # enough for a run per seed
    with pytest.raises(SystemExit, match="old.ipynb: its cell tagged 'parameters' does not set SEEDS"):
        sweep.check_notebooks(tmp_path, ["old"], sweep.ENSEMBLE_PARAMETERS)


# Without torch, so its kernel starts in a second: each seed it was given records which parameters carried it
LIGHT = [
    """SEED = None\nSEEDS = None\nPROCEDURE = "authors"\nFAST = False\nFIGURES = True\nCLAIMS_JSON = None""",
    """import json
given = [("SEED", SEED)] if SEEDS is None else [("SEEDS", s) for s in SEEDS]
json.dump([{"claim": "given by", "holds": True, "value": how, "seed": s, "procedure": PROCEDURE} for how, s in given]
          + [{"claim": "crashed", "holds": False, "value": None, "seed": s, "procedure": PROCEDURE} for how, s in given
             if s == 4], open(CLAIMS_JSON, "w"))
assert 4 not in (SEEDS or []), "seed 4 breaks the run"
""",
]


def test_the_ensemble_sweep_runs_the_seeds_of_a_procedure_at_once_and_the_authors_seed_alone(tmp_path, monkeypatch):
    cells = [nbformat.v4.new_code_cell(LIGHT[0], metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell(LIGHT[1])]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), tmp_path / "light.ipynb")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # the executed notebook of the failed run lands here
    out = tmp_path / "sweep.csv"
    sweep.main(["--notebook-dir", str(tmp_path), "--notebooks", "light", "--seeds", "0,3", "--procedures", "clean",
                "--ensemble", "--jobs", "1", "--out", str(out), "--figure", str(tmp_path / "s.png"),
                "--table", str(tmp_path / "s.md")])
    rows = {(r["seed"], r["claim"]): (r["holds"], r["value"]) for r in sweep.read_rows(out)}
    assert rows == {("authors", "run completed"): ("True", ""), ("authors", "given by"): ("True", "SEED"),
                    ("0", "run completed"): ("True", ""), ("0", "given by"): ("True", "SEEDS"),
                    ("3", "run completed"): ("True", ""), ("3", "given by"): ("True", "SEEDS")}
    # a run that fails fails each of its seeds, with what each recorded before it broke
    sweep.main(["--notebook-dir", str(tmp_path), "--notebooks", "light", "--seeds", "3-4", "--procedures", "clean",
                "--no-authors-seed", "--ensemble", "--jobs", "1", "--out", str(out), "--figure",
                str(tmp_path / "s.png"), "--table", str(tmp_path / "s.md")])
    rows = [(r["seed"], r["claim"], r["holds"]) for r in sweep.read_rows(out) if r["seed"] in ("3", "4")]
    assert rows == [("3", "run completed", "False"), ("3", "given by", "True"),
                    ("4", "run completed", "False"), ("4", "given by", "True"), ("4", "crashed", "False")]
