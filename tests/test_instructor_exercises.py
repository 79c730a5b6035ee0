"""The exercises in the notebooks: finding them, nbgrader's metadata, the student edition and book."""

import json
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from bncourse.teach.instructor import cli, exercises
from instructor_cases import STANDARDIZE, exercise_cells, investigate_cells, synthetic_notebook

BOOK = Path(__file__).resolve().parent.parent / "book"
CHAPTERS = exercises.chapter_notebooks(BOOK)


def leaked(secrets: set[str], notebook_json: str) -> set[str]:
    """The solution lines found in a notebook's JSON text: as whole lines, or anywhere if long.

    A short solution line such as ``continue`` can be a word of the prose, so it counts only as a
    line of its own.
    """
    text = notebook_json.replace("\\n", "\n")
    lines = {line.strip().strip('",').strip() for line in text.splitlines()}
    return {s for s in secrets if s in lines or (len(s) >= 25 and s in text)}


def solution_lines(nb) -> set[str]:
    """Lines of solutions that appear nowhere else in the instructor notebook (sources or outputs)."""
    inside, elsewhere = set(), set()
    for cell in nb.cells:
        text = exercises.source(cell)
        regions = exercises.solution_regions(text) if exercises.is_solution(cell) else []
        solution = {line.strip() for region in regions for line in region}
        inside |= solution
        elsewhere |= {line.strip() for line in text.splitlines()} - solution
        for out in cell.get("outputs", []):
            elsewhere |= {line.strip() for line in json.dumps(out).replace("\\n", "\n").splitlines()}
    return {line for line in inside - elsewhere if line and not line.startswith("#")}


def test_exercises_and_their_nbgrader_metadata():
    nb = synthetic_notebook(["ex-a", "ex-b"])
    a, b = exercises.find_exercises(nb)
    assert (a.label, a.solution_cells, a.check_cell, a.points) == ("ex-a", [4], 6, 1)
    assert b.solution_ids() == ["ex-b-solution"]
    assert nb.cells[4].metadata["nbgrader"] == {
        "grade": False, "grade_id": "ex-a-solution", "locked": False, "schema_version": 3,
        "solution": True, "task": False}
    assert nb.cells[6].metadata["nbgrader"] == {
        "grade": True, "grade_id": "ex-a", "locked": True, "points": 1, "schema_version": 3,
        "solution": False, "task": False}
    assert sum("nbgrader" in c.metadata for c in nb.cells) == 4


def test_nbgrader_metadata_keeps_points_and_drops_stale_entries():
    nb = synthetic_notebook(["ex-a"])
    nb.cells[6].metadata["nbgrader"]["points"] = 3
    nb.cells[1].metadata["nbgrader"] = {"grade": True, "grade_id": "old", "locked": True, "points": 1}
    updated = exercises.with_nbgrader_metadata(nb)
    assert updated.cells[6].metadata["nbgrader"]["points"] == 3
    assert "nbgrader" not in updated.cells[1].metadata
    assert exercises.with_nbgrader_metadata(updated) == updated


@pytest.mark.parametrize(
    ("cells", "match"),
    [
        ([new_markdown_cell(":::{exercise}\nno label\n:::")], "needs a :label:"),
        ([new_markdown_cell(":::{exercise}\n:label: ex.a\n:::")], "letters, digits"),
        ([new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")], "no exercise directive"),
        (exercise_cells("ex", "x = 1\n### BEGIN SOLUTION\nx = 2\n### END SOLUTION", "check.f(f)")[:3],
         "no check cell"),
        (exercise_cells("ex", "### BEGIN SOLUTION\nx = 1", "check.f(f)"), "unbalanced"),
        (exercise_cells("ex", "x = 1", "check.f(f)"), "no solution cell"),
        (exercise_cells("ex", "### BEGIN SOLUTION\n### END SOLUTION", "check.f(f)")
         + exercise_cells("ex", "### BEGIN SOLUTION\n### END SOLUTION", "check.f(f)"), "share a label"),
    ],
)
def test_malformed_exercises_are_refused(cells, match):
    with pytest.raises(ValueError, match=match):
        exercises.find_exercises(new_notebook(cells=cells))


def test_student_notebook_keeps_nbgrader_metadata_and_nothing_of_a_solution():
    nb = synthetic_notebook(["ex-a"])
    nb.cells[4].outputs = [new_output("stream", text="secret output")]
    nb.cells[4].execution_count = 3
    nb.cells[4].metadata.update({"tags": ["keep-me"], "execution": {"secret": 1}})
    nb.cells[3].attachments = {"a.png": {"image/png": "c2VjcmV0"}}
    nb.cells.append(new_markdown_cell("Before.\n\n:::{solution} ex-a\nThe answer is x * x.\n:::\nAfter."))
    nb.metadata["widgets"] = {"state": "secret"}
    student = exercises.student_notebook(nb)
    text = json.dumps(student)
    for secret in ("torch.where", "secret", "The answer is", "c2VjcmV0"):
        assert secret not in text
    assert "Before." in text and "After." in text
    assert exercises.source(student.cells[4]) == (
        "def standardize(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()")
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in student.cells if c.cell_type == "code")
    assert student.cells[4].metadata == {"tags": ["keep-me"], "nbgrader": nb.cells[4].metadata["nbgrader"],
                                         "deletable": False}
    assert student.cells[6].metadata == {"nbgrader": nb.cells[6].metadata["nbgrader"],
                                         "deletable": False, "editable": False}
    assert set(student.metadata) <= {"kernelspec", "language_info"}


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.name for p in CHAPTERS])
def test_student_edition_of_every_chapter_leaks_no_solution(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    secrets = solution_lines(nb)
    [written] = [p for p in exercises.write_student_edition(BOOK, tmp_path) if p.name == path.name]
    assert not leaked(secrets, written.read_text())
    student = nbformat.read(written, as_version=4)
    assert not [c for c in student.cells if c.cell_type == "code" and c.outputs]
    graded = [exercises.nbgrader_meta(c)["grade_id"] for c in student.cells if exercises.nbgrader_meta(c)]
    assert graded == [g for e in exercises.find_exercises(nb)
                      for g in (*([] if e.manual else e.solution_ids()), e.label)]  # one cell if by hand
    assert not leaked(secrets, json.dumps(exercises.student_book_notebook(nb)))


def test_every_chapter_notebook_has_at_least_two_exercises():
    counts = {p.name: len(exercises.find_exercises(nbformat.read(p, as_version=4))) for p in CHAPTERS}
    short = {name: n for name, n in counts.items() if not name.startswith("00_") and n < 2}
    assert not short, f"chapter notebooks with fewer than 2 exercises: {short}"
    assert sum(counts.values()) >= 12


def test_every_chapter_notebook_carries_nbgrader_metadata():
    stale = [p.name for p in exercises.write_nbgrader_metadata(BOOK, check=True)]
    assert not stale, f"run `bncourse nbgrader-metadata book` to write nbgrader's metadata into {stale}"


def test_nbgrader_metadata_command_changes_only_the_metadata(tmp_path, capsys):
    book = tmp_path / "book"
    book.mkdir()
    for path in CHAPTERS[1:3]:
        shutil.copy(path, book / path.name)
    for path in book.glob("*.ipynb"):  # as a chapter without the metadata
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            cell.metadata.pop("nbgrader", None)
        nbformat.write(nb, path)
    before = {p.name: nbformat.read(p, as_version=4) for p in book.glob("*.ipynb")}
    assert cli.main(["nbgrader-metadata", str(book), "--check"]) == 1
    assert cli.main(["nbgrader-metadata", str(book)]) == 0
    assert cli.main(["nbgrader-metadata", str(book), "--check"]) == 0
    assert "up to date" in capsys.readouterr().out
    for name, old in before.items():
        new = nbformat.read(book / name, as_version=4)
        assert new == exercises.with_nbgrader_metadata(old)
        assert [c.get("outputs") for c in new.cells] == [c.get("outputs") for c in old.cells]


def test_student_book_sources(tmp_path):
    root = BOOK.parent
    assert cli.main(["student-book", str(tmp_path / "src"), "--root", str(root)]) == 0
    config = (tmp_path / "src" / "_config.yml").read_text()
    assert "(student edition)" in config and "launch_buttons" not in config
    assert "html_copy_source: false" in config
    assert "instructors" not in (tmp_path / "src" / "_toc.yml").read_text()
    for path in CHAPTERS:
        built = nbformat.read(tmp_path / "src" / "book" / path.name, as_version=4)
        assert not any(exercises.is_solution(c) for c in built.cells)


def test_kinds_points_and_investigate_exercises():
    cells = [new_markdown_cell("# Kinds"), new_code_cell("import torch\n\nimport bncourse as bn")]
    cells += exercise_cells("ex-a", STANDARDIZE, "bn.check.standardize(standardize)")
    cells[2].metadata["bncourse"] = {"kind": "derive", "points": 3}
    cells += investigate_cells("ex-why")
    nb = exercises.with_nbgrader_metadata(new_notebook(cells=cells))
    a, why = exercises.find_exercises(nb)
    assert (a.kind, a.points, why.kind, why.points, why.check_cell) == ("derive", 3, "investigate", 4, None)
    assert why.manual and not a.manual
    assert ":class: kind-derive" in exercises.source(nb.cells[2])
    assert ":class: kind-investigate" in exercises.source(nb.cells[7])
    assert nb.cells[6].metadata["nbgrader"]["points"] == 3  # the check cell
    assert nb.cells[9].metadata["nbgrader"] == {
        "grade": True, "grade_id": "ex-why", "locked": False, "points": 4, "schema_version": 3,
        "solution": True, "task": False}
    assert exercises.with_nbgrader_metadata(nb) == nb  # writing twice changes nothing
    student = exercises.student_notebook(nb)
    answer = exercises.source(student.cells[9])
    assert "YOUR ANSWER HERE" in answer and "Rubric" not in answer and "**Your answer.**" in answer
    book = exercises.student_book_notebook(nb)
    assert not any("Rubric" in exercises.source(c) for c in book.cells)
    with pytest.raises(ValueError, match="kind must be one of"):
        bad = new_notebook(cells=exercise_cells("ex-b", STANDARDIZE, "bn.check.standardize(standardize)"))
        bad.cells[0].metadata["bncourse"] = {"kind": "transcribe"}
        exercises.find_exercises(bad)
