"""The seed sweep's bookkeeping (studies/sweep.py) and the reader the notebooks call (bs.claim_rates).

Oracle: a hand-written CSV whose success rates are counted by hand below. No notebook is executed here; the
sweep's end-to-end run on synthetic notebooks is described in studies/sweep.py.
"""
import argparse
import subprocess

import pytest
from matplotlib.container import BarContainer, ErrorbarContainer
from PIL import Image

import bimt_seeing as bs
import sweep

# two_moons: seeds 0, 1, 2 and the authors' seed under both procedures; seed 2 crashed under the authors'
# procedure. mnist: seed 0 only, no authors' seed. 'hidden neurons' is a note (holds empty).
CSV = """notebook,seed,procedure,claim,holds,value,seconds,commit
two_moons,authors,authors,run completed,True,,10.0,abc
two_moons,authors,authors,accuracy above 0.99,True,1.0,10.0,abc
two_moons,authors,authors,few neurons,False,9,10.0,abc
two_moons,authors,authors,hidden neurons,,9,10.0,abc
two_moons,0,authors,run completed,True,,11.0,abc
two_moons,0,authors,accuracy above 0.99,True,1.0,11.0,abc
two_moons,0,authors,few neurons,True,7,11.0,abc
two_moons,0,authors,hidden neurons,,7,11.0,abc
two_moons,1,authors,run completed,True,,12.0,abc
two_moons,1,authors,accuracy above 0.99,False,0.98,12.0,abc
two_moons,1,authors,few neurons,True,8,12.0,abc
two_moons,1,authors,hidden neurons,,8,12.0,abc
two_moons,2,authors,run completed,False,ValueError: boom,3.0,abc
two_moons,authors,clean,run completed,True,,9.0,abc
two_moons,authors,clean,accuracy above 0.99,False,0.97,9.0,abc
two_moons,authors,clean,few neurons,True,7,9.0,abc
two_moons,authors,clean,hidden neurons,,7,9.0,abc
two_moons,0,clean,run completed,True,,9.0,abc
two_moons,0,clean,accuracy above 0.99,True,1.0,9.0,abc
two_moons,0,clean,few neurons,True,7,9.0,abc
two_moons,0,clean,hidden neurons,,7,9.0,abc
two_moons,1,clean,run completed,True,,9.0,abc
two_moons,1,clean,accuracy above 0.99,True,1.0,9.0,abc
two_moons,1,clean,few neurons,False,12,9.0,abc
two_moons,1,clean,hidden neurons,,7,9.0,abc
two_moons,2,clean,run completed,True,,9.0,abc
two_moons,2,clean,accuracy above 0.99,True,1.0,9.0,abc
two_moons,2,clean,few neurons,False,14,9.0,abc
two_moons,2,clean,hidden neurons,,7,9.0,abc
mnist,0,authors,run completed,True,,50.0,abc
mnist,0,authors,sparser than lambda 0,True,0.03,50.0,abc
mnist,0,clean,run completed,True,,40.0,abc
mnist,0,clean,sparser than lambda 0,True,0.02,40.0,abc
"""

# Counted by hand: (holds at the authors' seed under the authors' procedure, authors' k/n, clean k/n). The
# authors' seed under the clean procedure (accuracy False there) counts in neither column.
COUNTS = {
    ("two_moons", "run completed"): (True, (2, 3), (3, 3)),
    ("two_moons", "accuracy above 0.99"): (True, (1, 2), (3, 3)),
    ("two_moons", "few neurons"): (False, (2, 2), (1, 3)),
    ("mnist", "run completed"): (None, (1, 1), (1, 1)),
    ("mnist", "sparser than lambda 0"): (None, (1, 1), (1, 1)),
}
# Wilson 95% intervals of those k/n, by hand: centre (k/n + z^2/2n) / (1 + z^2/n), half-width
# z sqrt(k/n (1 - k/n) / n + z^2/4n^2) / (1 + z^2/n), z = 1.96; 0 at k = 0 and 1 at k = n exactly.
WILSON = {(2, 3): (0.2077, 0.9385), (3, 3): (0.4385, 1.0), (1, 2): (0.0945, 0.9055), (2, 2): (0.3424, 1.0),
          (1, 3): (0.0615, 0.7923), (1, 1): (0.2065, 1.0)}
# What the tables print: the authors' run, then per procedure the rate, k/n and the interval in whole percent.
ORACLE = {
    ("two_moons", "run completed"): ("yes", "67% (2/3; 21-94%)", "100% (3/3; 44-100%)"),
    ("two_moons", "accuracy above 0.99"): ("yes", "50% (1/2; 9-91%)", "100% (3/3; 44-100%)"),
    ("two_moons", "few neurons"): ("no", "100% (2/2; 34-100%)", "33% (1/3; 6-79%)"),
    ("mnist", "run completed"): ("-", "100% (1/1; 21-100%)", "100% (1/1; 21-100%)"),
    ("mnist", "sparser than lambda 0"): ("-", "100% (1/1; 21-100%)", "100% (1/1; 21-100%)"),
}


@pytest.fixture
def csv_path(tmp_path):
    path = tmp_path / "claims_sweep.csv"
    path.write_text(CSV)
    return path


def parse_markdown(table: str) -> tuple[list[str], list[list[str]]]:
    head, rule, *body = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()]
    assert set(rule) == {"---"}
    return head, body


def test_claim_rates_of_one_notebook_match_the_hand_count(csv_path):
    head, body = parse_markdown(bs.claim_rates("two_moons", path=csv_path))
    assert head == ["claim", "holds at the authors' seed (authors' procedure)",
                    "success rate, authors' procedure (k/n; Wilson 95% interval)",
                    "success rate, clean procedure (k/n; Wilson 95% interval)"]
    assert [row[0] for row in body] == ["run completed", "accuracy above 0.99", "few neurons"]  # the run's order
    assert {("two_moons", row[0]): tuple(row[1:]) for row in body} == {
        k: v for k, v in ORACLE.items() if k[0] == "two_moons"}


def test_claim_rates_of_all_notebooks_have_a_notebook_column(csv_path):
    head, body = parse_markdown(bs.claim_rates(path=csv_path))
    assert head[0] == "notebook"
    assert {(row[0], row[1]): tuple(row[2:]) for row in body} == ORACLE


def test_claim_rates_says_how_to_make_a_missing_csv(tmp_path, csv_path):
    with pytest.raises(FileNotFoundError, match="studies/sweep.py --notebooks two_moons"):
        bs.claim_rates("two_moons", path=tmp_path / "nothing.csv")
    with pytest.raises(ValueError, match="no claims of notebook 'permutation_s4'"):
        bs.claim_rates("permutation_s4", path=csv_path)


def test_the_tally_the_figure_draws_is_the_hand_count(csv_path):
    table = bs.claim_tally(sweep.read_rows(csv_path))
    assert {(c.notebook, c.claim): (c.at_authors_seed, tuple(c.rates["authors"]), tuple(c.rates["clean"]))
            for c in table} == COUNTS
    assert [c.claim for c in table[:3]] == ["run completed", "accuracy above 0.99", "few neurons"]


@pytest.mark.parametrize("k, n, lo, hi", [
    (2, 10, 0.0567, 0.5098), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0),
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, the score method without continuity correction
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
    *((k, n, lo, hi) for (k, n), (lo, hi) in WILSON.items()),
])
def test_wilson_matches_published_and_hand_computed_intervals(k, n, lo, hi):
    interval = bs.wilson(k, n)
    assert interval == (pytest.approx(lo, abs=5e-5), pytest.approx(hi, abs=5e-5))
    assert interval.lo <= k / n <= interval.hi
    assert (interval.lo == 0) == (k == 0) and (interval.hi == 1) == (k == n)  # exact ends, not rounding


def test_wilson_narrows_with_more_trials_and_a_larger_z_widens_it():
    assert bs.wilson(20, 100).hi - bs.wilson(20, 100).lo < bs.wilson(2, 10).hi - bs.wilson(2, 10).lo
    assert bs.wilson(2, 10, z=2.576).lo < bs.wilson(2, 10).lo  # 99% is wider than 95%


@pytest.mark.parametrize("args, match", [((0, 0), "positive int"), ((3, 2), r"\[0, n = 2\]"),
                                         ((-1, 5), r"\[0, n = 5\]"), ((1.0, 2), "an int"),
                                         ((1, 2, 0), "positive number")])
def test_wilson_refuses_what_is_no_rate(args, match):
    with pytest.raises(ValueError, match=match):
        bs.wilson(*args)


def test_a_rate_prints_its_interval_and_no_trials_print_a_dash():
    assert str(bs.Rate(2, 10)) == "20% (2/10; 6-51%)"
    assert str(bs.Rate(0, 10)) == "0% (0/10; 0-28%)"
    assert str(bs.Rate(0, 0)) == "-"


def test_notes_become_value_distributions(csv_path):
    head, body = parse_markdown(sweep.notes_table(sweep.read_rows(csv_path)))
    assert head[:3] == ["notebook", "value", "at the authors' seed (authors' procedure)"]
    assert body == [["two_moons", "hidden neurons", "9", "7 (1 seed), 8 (1 seed)", "7 (3 seeds)"]]


def test_many_distinct_numbers_are_summarised_by_median_and_range():
    assert sweep.distribution(["0.1", "0.5", "0.2", "0.4", "0.3"]) == "median 0.3, range 0.1 to 0.5 (5 seeds)"
    assert sweep.distribution(["[1, 2]", "[1, 2]", "[3]"]) == "[1, 2] (2 seeds), [3] (1 seed)"
    assert sweep.distribution([]) == "-"


def test_seeds_accept_ranges_and_lists():
    assert sweep.parse_seeds(["0-9"]) == list(range(10))
    assert sweep.parse_seeds(["7", "0,3,5-6", "3"]) == [0, 3, 5, 6, 7]
    with pytest.raises(argparse.ArgumentTypeError, match="'0-x'"):
        sweep.parse_seeds(["0-x"])


def test_a_runs_rows_put_run_completed_first_and_keep_what_a_crashed_run_measured():
    records = [{"notebook": "two_moons", "seed": None, "procedure": "clean", "claim": "acc", "holds": True,
                "value": 0.99},
               {"notebook": "two_moons", "seed": None, "procedure": "clean", "claim": "n", "holds": None,
                "value": [1, 2]},
               {"notebook": "two_moons", "seed": None, "procedure": "clean", "claim": "c", "holds": False,
                "value": None}]
    rows = sweep.run_rows(("two_moons", "authors", "clean"), records, 12.345, "ValueError: boom", "abc")
    assert [(r["claim"], r["holds"], r["value"]) for r in rows] == [
        ("run completed", "False", "ValueError: boom"), ("acc", "True", "0.99"), ("n", "", "[1, 2]"),
        ("c", "False", "")]
    assert {(r["notebook"], r["seed"], r["procedure"], r["seconds"], r["commit"]) for r in rows} == {
        ("two_moons", "authors", "clean", "12.3", "abc")}


def test_an_error_is_one_line():
    class Raised(Exception):  # the fields of papermill's PapermillExecutionError
        ename, evalue = "ValueError", "first line\nsecond line"

    assert sweep.last_line(Raised()) == "ValueError: first line / second line"
    assert sweep.last_line(KeyError("k")) == "KeyError: 'k'"


def test_rows_append_and_come_back_in_figure_order(tmp_path, csv_path):
    rows = sweep.read_rows(csv_path)
    path = tmp_path / "out.csv"
    for key in dict.fromkeys(map(sweep.run_key, reversed(rows))):  # runs finishing in the wrong order
        sweep.write_rows(path, [r for r in rows if sweep.run_key(r) == key], append=True)
    back = sweep.read_rows(path)
    assert sorted(map(sweep.run_key, back)) == sorted(map(sweep.run_key, rows))  # the set that --resume skips
    assert sweep.sort_rows(back) == rows  # Fig 4 before Fig 8, authors' seed first, claims in the run's order


def test_a_csv_with_other_columns_is_refused(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("notebook,seed,claim\n")
    with pytest.raises(SystemExit, match="expected"):
        sweep.read_rows(path)


def test_the_figure_draws_each_rate_with_its_wilson_interval(tmp_path, csv_path):
    fig = sweep.plot(bs.claim_tally(sweep.read_rows(csv_path)), tmp_path / "f.png", "subtitle")
    with Image.open(tmp_path / "f.png") as im:  # the file holds this figure, drawn, not a blank canvas
        assert im.size == tuple(round(v * 120) for v in fig.get_size_inches())
        assert len(im.convert("L").getcolors(maxcolors=1 << 16)) > 2
    ax = fig.axes[0]
    # drawn top to bottom: two_moons' three claims ('run completed' too: one of its runs crashed), then mnist's
    # one claim ('run completed' hidden: no crash); per claim an authors' bar, then a clean one
    drawn = [COUNTS[key] for key in [("two_moons", "run completed"), ("two_moons", "accuracy above 0.99"),
                                     ("two_moons", "few neurons"), ("mnist", "sparser than lambda 0")]]
    widths = [bar.get_width() for bars in ax.containers if isinstance(bars, BarContainer) for bar in bars]
    assert widths == pytest.approx([k / n for _, *rates in drawn for k, n in rates])
    whiskers = [ebar.lines[2][0].get_segments() for ebar in ax.containers if isinstance(ebar, ErrorbarContainer)]
    assert len(whiskers) == 2  # one per procedure
    for procedure, segments in enumerate(whiskers):
        assert [tuple(s[:, 0]) for s in segments] == [
            (pytest.approx(WILSON[kn][0], abs=5e-5), pytest.approx(WILSON[kn][1], abs=5e-5))
            for kn in (rates[procedure + 1] for rates in drawn)]


def test_the_commit_is_dirty_for_changed_code_but_not_for_what_the_sweeps_write(tmp_path):
    # a sweep appends to results/ after its first run; its next runs must still find the commit they started at
    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    for name in ("code.py", "results/sweep.csv", "figures/f.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("a\n")
    git("add", ".")
    git("commit", "-qm", "first")
    head = git("rev-parse", "--short=10", "HEAD")
    assert len(head) == 10 and sweep.git_commit(tmp_path) == head
    (tmp_path / "results" / "sweep.csv").write_text("a\nb\n")
    (tmp_path / "figures" / "f.png").write_text("b\n")
    (tmp_path / "notes.txt").write_text("untracked")
    assert sweep.git_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("b\n")
    assert sweep.git_commit(tmp_path) == head + "+dirty"
