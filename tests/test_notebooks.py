"""The chapters are stored as DESIGN.md asks: executed in order in a fresh kernel, no errors."""

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

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


# What a reader sees (DESIGN §3): each check names the notebook, the cell index and what to change.
ROOT = BOOK.parent
PAGES = NOTEBOOKS + sorted(BOOK.glob("*.md"))
FOLDED = {"hide-input", "remove-input", "hide-cell", "remove-cell"}  # the page folds or drops the code
MAX_LINE = 88
PLOTTING = re.compile(r"^(plt|fig\w*|ax|axs|axes|ax\d+|ax_\w+)$")
PATH_LIKE = re.compile(r"[/\\]|\.(png|jpe?g|svg|gif|webp)$|^[0-9a-f]{16,}", re.IGNORECASE)
PROJECT_TALK = re.compile(r"\b(issues?|issue's|reviews?|reviewed|reviewers?|quality bar|acceptance"
                          r"|DESIGN\.md|TODO|FIXME)\b", re.IGNORECASE)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
COLAB_CELL = """\
# On Colab, install the course's package first (elsewhere it is installed already).
import sys

if "google.colab" in sys.modules:
    %pip install --quiet "bncourse @ git+{url}\""""


def _cells(path):
    """(index, cell) of every cell; a markdown page is one markdown cell."""
    if path.suffix == ".md":
        return [(0, {"cell_type": "markdown", "source": path.read_text(), "metadata": {}})]
    return list(enumerate(json.loads(path.read_text())["cells"]))


def _text(cell) -> str:
    return "".join(cell["source"])


def _tags(cell) -> set:
    return set(cell["metadata"].get("tags", []))


def _fail(path, problems: list, what: str) -> None:
    if problems:
        listing = "\n  ".join(f"{path.name} cell {i}: {p}" for i, p in problems[:40])
        pytest.fail(f"{len(problems)} {what}:\n  {listing}", pytrace=False)


def _checks_and_plots(source: str) -> tuple[int, int]:
    """(lines of asserts or plotting, lines of code) in a cell; magics count as code."""
    code = "\n".join("pass" if line.lstrip().startswith(("%", "!")) else line
                     for line in source.splitlines())
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return 0, 1
    lines = code.splitlines()
    counted = {n for n, line in enumerate(lines, 1) if line.strip() and not line.strip().startswith("#")}
    flagged = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt) or hasattr(node, "body"):
            continue  # compound statements: their bodies are judged line by line
        names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        calls = {c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", "")
                 for c in ast.walk(node) if isinstance(c, ast.Call)}
        is_check = isinstance(node, ast.Assert) or any(c.startswith("assert") for c in calls)
        is_plot = any(PLOTTING.match(n) for n in names) or "bn.plot" in ast.unparse(node)
        if is_check or is_plot:
            flagged |= set(range(node.lineno, node.end_lineno + 1))
    return len(flagged & counted), len(counted)


def _printed_lines(output) -> list[str]:
    """The lines an output shows as text (a figure's text/plain stand-in is not shown)."""
    if output["output_type"] == "stream":
        text = "".join(output["text"])
    elif output["output_type"] in ("execute_result", "display_data"):
        data = output.get("data", {})
        rich = any(m.startswith("image/") or m in ("text/html", "text/markdown", "text/latex")
                   for m in data)
        text = "" if rich else "".join(data.get("text/plain", ""))
    else:
        text = ""
    return [ANSI.sub("", line.split("\r")[-1]) for line in text.splitlines()]


def _headings(source: str) -> list[str]:
    """Markdown headings, skipping fenced code."""
    found, fenced = [], False
    for line in source.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            found.append(line)
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_checks_and_plotting_are_folded(path):
    problems = []
    for i, cell in _cells(path):
        if cell["cell_type"] != "code" or _tags(cell) & FOLDED:
            continue
        flagged, total = _checks_and_plots(_text(cell))
        if total and flagged / total > 0.5:
            problems.append((i, f"{flagged} of {total} lines are asserts or plotting: move them to a "
                                "cell of their own tagged hide-input"))
    _fail(path, problems, "visible code cells are mostly checks or plotting")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_printed_lines_fit_the_column(path):
    problems = []
    for i, cell in _cells(path):
        if cell["cell_type"] != "code" or _tags(cell) & {"remove-output", "remove-cell"}:
            continue
        long = [line for out in cell["outputs"] for line in _printed_lines(out) if len(line) > MAX_LINE]
        if long:
            problems.append((i, f"{len(long)} printed lines over {MAX_LINE} characters, e.g. "
                                f"{len(long[0])}: {long[0][:60]!r}..."))
    _fail(path, problems, f"cells print lines longer than {MAX_LINE} characters (they scroll sideways)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_figures_have_a_caption_and_alt_text(path):
    problems = []
    for i, cell in _cells(path):
        if cell["cell_type"] != "code" or _tags(cell) & {"remove-output", "remove-cell"}:
            continue
        figures = [o for o in cell["outputs"] if any(m.startswith("image/") for m in o.get("data", {}))]
        if not figures:
            continue
        meta = cell["metadata"].get("mystnb", {})
        caption = meta.get("figure", {}).get("caption", "").strip()
        name = meta.get("figure", {}).get("name", "")
        alt = meta.get("image", {}).get("alt", "").strip()
        if len(figures) > 1:
            problems.append((i, f"{len(figures)} figures: one figure per cell"))
        if len(cell["outputs"]) > len(figures):
            problems.append((i, "outputs beside the figure (each gets the figure's caption and name): "
                                "end the cell with plt.show() and print elsewhere"))
        if not caption:
            problems.append((i, "no caption: set mystnb.figure.caption to the figure's point"))
        if not name.startswith("fig-"):
            problems.append((i, "no name: set mystnb.figure.name to fig-<chapter>-<slug>"))
        if not alt or PATH_LIKE.search(alt):
            problems.append((i, f"alt text {alt!r}: set mystnb.image.alt to what the figure shows"))
    _fail(path, problems, "figure problems")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_figure_text_is_not_set_below_9_points(path):
    problems = [(i, f"{m[0]}: the style's 9-10 pt is the smallest legible size")
                for i, cell in _cells(path) if cell["cell_type"] == "code"
                for m in re.finditer(r"\b(?:fontsize|labelsize)\s*=\s*(\d+(?:\.\d+)?)", _text(cell))
                if float(m[1]) < 9]
    _fail(path, problems, "figure texts set below 9 pt")


@pytest.mark.parametrize("path", PAGES, ids=[p.name for p in PAGES])
def test_headings_are_plain_text(path):
    problems = [(i, f"{h!r}: write the symbol in words (headings become the tab title and search entries)")
                for i, cell in _cells(path) if cell["cell_type"] == "markdown"
                for h in _headings(_text(cell)) if re.search(r"\$|\\\(|\\\[|\{math\}", h)]
    _fail(path, problems, "headings with math")


@pytest.mark.parametrize("path", PAGES, ids=[p.name for p in PAGES])
def test_no_words_about_how_the_project_is_run(path):
    problems = []
    for i, cell in _cells(path):
        texts = [_text(cell)] + ["\n".join(_printed_lines(o)) for o in cell.get("outputs", [])]
        words = sorted({m[0] for text in texts for m in PROJECT_TALK.finditer(text)})
        if words:
            problems.append((i, f"{', '.join(words)}: a learner reads this; say it without them"))
    _fail(path, problems, "cells talk about issues, reviews or the project")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_first_code_cell_installs_the_package_on_colab(path):
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    expected = COLAB_CELL.format(url=url)
    i, first = next((i, c) for i, c in _cells(path) if c["cell_type"] == "code")
    assert _text(first).strip() == expected, (
        f"{path.name} cell {i}: the first code cell must be the Colab install cell, verbatim "
        f"(repository.url from _config.yml):\n{expected}")
    assert "remove-cell" in _tags(first), f"{path.name} cell {i}: tag the Colab install cell remove-cell"


def test_binder_pins_match_the_requirements():
    """binder/requirements.txt installs what the notebooks need at the versions the book was run with."""
    def pins(path):
        lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
        return dict(line.split("==") for line in lines if "==" in line)

    ours, binder = pins(ROOT / "requirements.txt"), pins(ROOT / "binder" / "requirements.txt")
    assert binder.pop("torch") == ours["torch"] + "+cpu", "Binder needs the CPU build of torch, same version"
    differ = {name: (v, ours.get(name)) for name, v in binder.items() if ours.get(name) != v}
    assert not differ, f"binder/requirements.txt pins differ from requirements.txt (binder, ours): {differ}"


# Every seed goes through the package (bn.setup, bn.seed_everything, bn.generator, bn.rng), so that
# BNCOURSE_SEED_OFFSET shifts it and `make robust` draws the whole notebook again.
DIRECT_SEED = re.compile(r"torch\.manual_seed|\.manual_seed\(|torch\.cuda\.manual_seed|np\.random\.seed|"
                         r"np\.random\.default_rng|np\.random\.RandomState|random\.seed\(|"
                         r"random_state\s*=\s*\d")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_seed_goes_through_the_package(path):
    problems = [(i, line.strip()) for i, cell in _cells(path) if cell["cell_type"] == "code"
                for line in _text(cell).splitlines() if DIRECT_SEED.search(line)
                and not line.lstrip().startswith("#")]
    _fail(path, problems, "seeds set directly: use bn.seed_everything(k), bn.generator(k) or "
                          "bn.rng(k), which BNCOURSE_SEED_OFFSET shifts")


# Numbers in the prose come from the run, cited by path so they also work from another page and
# in the translated book.
GLUE_ROLE = re.compile(r"\{glue(?::\w+)?\}`([^`]*)`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_glue_is_cited_by_path(path):
    problems = [(i, m.group(0)) for i, cell in _cells(path) if cell["cell_type"] == "markdown"
                for m in GLUE_ROLE.finditer(_text(cell)) if "::" not in m.group(1)]
    _fail(path, problems, "glue cited without its page: write {glue:text}`page.ipynb::name:fmt`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_cell_ends_by_showing_a_glued_value(path):
    """``bn.glue`` returns its value: as a cell's last expression it would print under the cell."""
    problems = []
    for i, cell in _cells(path):
        if cell["cell_type"] != "code":
            continue
        source = _text(cell).rstrip()
        try:
            last = ast.parse(source).body[-1:]
        except SyntaxError:
            continue
        if (last and isinstance(last[0], ast.Expr) and isinstance(last[0].value, ast.Call)
                and ast.unparse(last[0].value.func) == "bn.glue" and not source.endswith(";")):
            problems.append((i, source.splitlines()[-1]))
    _fail(path, problems, "cells whose last line shows a glued value: end it with ';'")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_visible_code_fits_the_column(path):
    """At 1280 px the code column holds about 86 characters; fonts differ, so 84 at most."""
    problems = [(i, f"{len(line)} characters: {line[:60]!r}...") for i, cell in _cells(path)
                if cell["cell_type"] == "code"
                and not _tags(cell) & {"hide-input", "remove-input", "remove-cell", "hide-cell"}
                for line in _text(cell).splitlines() if len(line) > 84]
    _fail(path, problems, "visible code lines over 84 characters (they scroll sideways)")
