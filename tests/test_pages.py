"""The reading flow (DESIGN §3): each page at most 2,500 words of prose in the main flow and 1,000 in
folded dropdowns; measured numbers come from the run (glue), so few numbers stay typed by hand."""

from pathlib import Path

import pytest

from bncourse.teach import pages

BOOK = Path(__file__).resolve().parent.parent / "book"
PAGES = sorted(BOOK.glob("*.ipynb")) + sorted(BOOK.glob("*.md"))
TYPED_IN_ALL = 70  # constants and parameters over 26 pages (momentum 0.1, a learning rate, ln 10 ≈ 2.30, ...)


@pytest.mark.parametrize("path", PAGES, ids=[p.name for p in PAGES])
def test_page_length(path):
    s = pages.stats(path)
    assert s.main_words <= pages.MAIN_WORDS, (
        f"{path.name}: {s.main_words} words in the main flow; fold derivations and controls into "
        f"dropdowns, or cut")
    assert s.folded_words <= pages.FOLDED_WORDS, f"{path.name}: {s.folded_words} words in dropdowns"


def test_numbers_typed_into_the_prose_are_few():
    typed = [(p.name, i, n) for p in PAGES for i, n in pages.stats(p).typed]
    listing = "\n".join(f"{name} cell {i}: ...{n}..." for name, i, n in typed)
    assert len(typed) <= TYPED_IN_ALL, (
        f"{len(typed)} numbers typed into the prose (at most {TYPED_IN_ALL}, constants and "
        f"parameters): glue what the run measured\n{listing}")


def test_the_counter_sees_what_it_should():
    text = ("BN reaches 97.3% at rate 0.5, 2.3× sooner, 4 times the width; §3.3 and 8×8 are not "
            "measured; $\\eta = 0.25$ is; {glue:text}`a.ipynb::x:.1%` and `0.7` are not.")
    found = pages._numbers(text)
    assert len(found) == 5, found


def test_a_gated_solution_counts_as_folded(tmp_path):
    cells = [":::{exercise} Why?\n:label: x\n\nOne two three.\n:::",
             ":::{solution-start} x\n:class: dropdown\n:::",
             "**Your answer.**\n\n### BEGIN SOLUTION\nfour five six seven\n### END SOLUTION",
             ":::{solution-end}\n:::", "eight nine"]
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": c} for c in cells]}
    path = tmp_path / "page.ipynb"
    path.write_text(__import__("json").dumps(nb))
    s = pages.stats(path)
    assert s.folded_words >= 4 and s.main_words <= 7, s
