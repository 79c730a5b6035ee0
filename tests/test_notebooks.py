"""The chapters are stored as DESIGN.md asks: executed in order in a fresh kernel, no errors."""

import json
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parent.parent / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_executed_in_order(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), "restart the kernel and run all, then save"
    errors = [o["ename"] for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"stored outputs are errors: {errors}; show an expected error with try/except"
    titles = [line for c in nb["cells"] if c["cell_type"] == "markdown"
              for line in "".join(c["source"]).splitlines() if line.startswith("# ")]
    assert len(titles) == 1, f"expected one '# Title', got {titles}"
    assert any("assert " in "".join(c["source"]) for c in code), "no claim is checked by an assert"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_every_notebook_is_in_the_table_of_contents():
    toc = (BOOK.parent / "_toc.yml").read_text()
    missing = [p.stem for p in NOTEBOOKS if f"book/{p.stem}" not in toc]
    assert not missing, f"notebooks not in _toc.yml: {missing}"
