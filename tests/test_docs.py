"""The README stays a three-minute read, its test command is the one CI runs, and no link in README.md or docs/
leads nowhere (files moved into benchmarks/, studies/ and docs/ broke such links before)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
TEST_COMMAND = ".venv/bin/python -m pytest -q -n 2 --dist loadfile --nbval-lax"
PORTABLE_PASS = f"ATEN_CPU_CAPABILITY=default {TEST_COMMAND} notebooks"


def links(text: str) -> list[str]:
    """Targets of markdown links and <img src=...>, outside code blocks and code spans."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'<img src="([^"]+)"', text)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown page: lower case, punctuation dropped, spaces as '-'."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def test_readme_is_short_and_shows_the_test_command_near_the_top():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the depth belongs in docs/"
    # one pass: the command ends its line, with no second pass chained after it
    assert any(line.endswith(TEST_COMMAND) for line in lines[:40]), lines[:40]


def test_ci_runs_the_readme_command_then_the_portable_kernel_pass():
    steps = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert TEST_COMMAND in steps and PORTABLE_PASS in steps
    assert steps.index(TEST_COMMAND) < steps.index(PORTABLE_PASS)


def test_the_link_extractor_finds_links_and_skips_code():
    text = '[a](docs/x.md) <img src="figures/y.png"> `[b](not/a/link.md)`\n```\n[c](nor/this.md)\n```\n'
    assert links(text) == ["docs/x.md", "figures/y.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file(page):
    targets = [t for t in links(page.read_text()) if not re.match(r"[a-z]+:", t)]  # skip https:, mailto:
    assert targets, f"{page.name} links to nothing in the repo"
    for target in targets:
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.relative_to(ROOT)}: link to {target!r}, no such file"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page.relative_to(ROOT)}: link to {target!r}, no such heading"
