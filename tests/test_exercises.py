"""The instructor tools: finding exercises, the student edition, the student book, the grader."""

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from bncourse import cli, exercises
from bncourse.grade import FAIL, NOT_ATTEMPTED, PASS, grade_notebook

BOOK = Path(__file__).resolve().parent.parent / "book"
CHAPTERS = exercises.chapter_notebooks(BOOK)

SETUP = """import types
class CheckFailed(AssertionError):
    pass
def _square(fn):
    try:
        got = fn(3.0)
    except NotImplementedError:
        raise CheckFailed("square: not attempted yet") from None
    if got != 9.0:
        raise CheckFailed(f"square(3) should be 9, got {got}: did you double instead of square?")
    print("✔ square: correct")
check = types.SimpleNamespace(square=_square)"""


def exercise_cells(body: str, label: str = "ex-square") -> list:
    return [
        new_markdown_cell(f":::{{exercise}} Square\n:label: {label}\n\nWrite `square(x)`.\n:::"),
        new_markdown_cell(f":::{{solution-start}} {label}\n:class: dropdown\n:::"),
        new_code_cell(f"def square(x):\n{body}"),
        new_markdown_cell(":::{solution-end}\n:::"),
        new_code_cell("check.square(square)"),
    ]


def synthetic(body: str = "    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION") -> dict:
    nb = new_notebook(cells=[new_markdown_cell("# Title"), new_code_cell(SETUP), *exercise_cells(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


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


def test_find_exercises_and_the_stub():
    nb = synthetic()
    [ex] = exercises.find_exercises(nb)
    assert ex.label == "ex-square" and ex.solution_cells == [4] and ex.check_cell == 6
    student = exercises.student_notebook(nb)
    assert exercises.source(student.cells[4]) == (
        "def square(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    )
    assert student.cells[4].metadata == {"tags": ["solution"]}


@pytest.mark.parametrize(
    ("cells", "match"),
    [
        ([new_markdown_cell(":::{exercise}\nno label\n:::")], "needs a :label:"),
        ([new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")], "no exercise directive"),
        (exercise_cells("    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION")[:3], "no check cell"),
        (exercise_cells("    ### BEGIN SOLUTION\n    return x * x"), "unbalanced"),
    ],
)
def test_malformed_exercises_are_refused(cells, match):
    with pytest.raises(ValueError, match=match):
        exercises.find_exercises(new_notebook(cells=cells))


def test_student_notebook_keeps_nothing_of_a_solution():
    nb = synthetic()
    nb.cells[4].outputs = [new_output("stream", text="secret output")]
    nb.cells[4].execution_count = 3
    nb.cells[4].metadata = {"tags": ["keep-me"], "execution": {"secret": 1}}
    nb.cells[3].attachments = {"a.png": {"image/png": "c2VjcmV0"}}
    answer = "Before.\n\n:::{solution} ex-square\nThe answer is x * x.\n:::\nAfter."
    nb.cells.append(new_markdown_cell(answer))
    nb.metadata["widgets"] = {"state": "secret"}
    student = exercises.student_notebook(nb)
    text = json.dumps(student)
    for secret in ("return x * x", "secret", "The answer is", "c2VjcmV0"):
        assert secret not in text
    assert "Before." in text and "After." in text
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in student.cells if c.cell_type == "code")
    assert student.cells[4].metadata == {"tags": ["keep-me", "solution"]}
    assert set(student.metadata) <= {"kernelspec", "language_info"}


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.name for p in CHAPTERS])
def test_student_edition_of_every_chapter_leaks_no_solution(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    secrets = solution_lines(nb)
    [written] = [p for p in exercises.write_student_edition(BOOK, tmp_path) if p.name == path.name]
    text = written.read_text().replace("\\n", "\n")
    assert not {s for s in secrets if s in text}
    student = nbformat.read(written, as_version=4)
    assert not [c for c in student.cells if c.cell_type == "code" and c.outputs]
    book_text = json.dumps(exercises.student_book_notebook(nb))
    assert not {s for s in secrets if s in book_text.replace("\\n", "\n")}


def test_every_chapter_notebook_has_at_least_two_exercises():
    counts = {p.name: len(exercises.find_exercises(nbformat.read(p, as_version=4))) for p in CHAPTERS}
    short = {name: n for name, n in counts.items() if not name.startswith("00_") and n < 2}
    assert not short, f"chapter notebooks with fewer than 2 exercises: {short}"
    assert sum(counts.values()) >= 12


def run_grade(tmp_path, nb) -> tuple[int, dict]:
    path = tmp_path / "work.ipynb"
    nbformat.write(nb, path)
    report = tmp_path / "grades.json"
    code = cli.main(["grade", str(path), "--json", str(report), "--timeout", "60"])
    return code, json.loads(report.read_text())


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ("    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION", PASS, "✔ square: correct"),
        ("    return 2 * x", FAIL, "CheckFailed: square(3) should be 9, got 6.0: did you double"),
        ("    # YOUR CODE HERE\n    raise NotImplementedError()", NOT_ATTEMPTED, "not attempted"),
        ("    return undefined_name", FAIL, "NameError"),
    ],
    ids=["right", "wrong", "untouched", "crashes"],
)
def test_grade_reports_each_outcome(tmp_path, capsys, body, status, message):
    code, report = run_grade(tmp_path, synthetic(body))
    [row] = report["exercises"]
    assert row["status"] == status and message in row["message"]
    assert code == (0 if status == PASS else 1)
    assert "ex-square" in capsys.readouterr().out


def test_grade_keeps_going_past_an_error_and_marks_cells_past_a_timeout(tmp_path):
    nb = synthetic()
    nb.cells.insert(2, new_code_cell("raise RuntimeError('an earlier cell fails')"))
    assert run_grade(tmp_path, nb)[1]["summary"]["passed"] == 1
    nb = synthetic()
    nb.cells.insert(2, new_code_cell("import time\ntime.sleep(30)"))
    path = tmp_path / "slow.ipynb"
    nbformat.write(nb, path)
    [result] = grade_notebook(path, timeout=2)
    assert result.status == FAIL and "not run" in result.message


def test_grading_a_real_chapter_student_edition_and_instructor_notebook(tmp_path):
    path = next(p for p in CHAPTERS if exercises.find_exercises(nbformat.read(p, as_version=4)))
    [student] = [p for p in exercises.write_student_edition(BOOK, tmp_path) if p.name == path.name]
    results = grade_notebook(student)
    assert results and all(r.status == NOT_ATTEMPTED for r in results), results
    results = grade_notebook(path)
    assert all(r.status == PASS for r in results), results


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
