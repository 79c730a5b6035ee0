"""The grader's parts that need no kernel, and a batch of bad files (one small notebook is run)."""

import csv
import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_markdown_cell, new_notebook

from bncourse.teach.instructor import cli, exercises, grade, report
from bncourse.teach.instructor.grade import BY_HAND, ERROR, FAIL, NOT_ATTEMPTED, PASS, Row
from instructor_cases import Case, investigate_cells, submission, synthetic_notebook

KERNEL_META = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}


@pytest.mark.parametrize(("message", "summative"), [
    ("CheckFailed: bias_shift: the training-mode shift is wrong: in training mode the batch mean moves "
     "with the bias (...), so x - mu, and the output, do not change: the shift is 0",
     "CheckFailed: bias_shift: the training-mode shift is wrong"),
    ("CheckFailed: bn_forward: the output for an input of shape (4, 6) differs from the reference "
     "(largest relative error 2); compute mu and the biased variance per channel over every dim but 1",
     "CheckFailed: bn_forward: the output for an input of shape (4, 6) differs from the reference "
     "(largest relative error 2)"),
    ("CheckFailed: flow: expected shape (4, 3), got (3,) (one value per feature: take the statistics "
     "over the batch, dim 0)", "CheckFailed: flow: expected shape (4, 3), got (3,)"),
    ("CheckFailed: noisy_batch_norm: the output is plain BN(x), with no noise left. If you added the "
     "noise before normalizing, batch norm removed it", "CheckFailed: noisy_batch_norm: the output is "
     "plain BN(x), with no noise left"),
    ("CheckFailed: bn_forward: write your own: your function calls torch.batch_norm",
     "CheckFailed: bn_forward: write your own"),
    ("NameError: name 'x' is not defined", "NameError: name 'x' is not defined"),
    ("time limit exceeded in its check", "time limit exceeded in its check"),
])
def test_summative_messages_say_what_is_wrong_not_how_to_fix_it(message, summative):
    assert grade.summative(message) == summative


@pytest.mark.parametrize(("path", "student"), [
    ("course/submitted/alice/ch3/03a_forward.ipynb", "alice"),
    ("submitted/bob/ch3/03a_forward.ipynb", "bob"),
    ("alice/03a_forward.ipynb", ""),
    ("03a_forward.ipynb", ""),
])
def test_the_student_id_comes_from_nbgraders_layout(tmp_path, monkeypatch, path, student):
    monkeypatch.chdir(tmp_path)
    assert grade.student_of(Path(path)) == student


def test_the_plan_runs_the_source_with_the_submitted_solutions_only():
    source = synthetic_notebook(["a", "b"])
    sub = submission(source, [Case("a", "", "wrong", "", "", check="comment", added="forged"),
                              Case("b", "", None, "", "", moved=True)])
    steps, missing = grade.plan(source, sub)
    assert [s.role for s in steps] == ["setup", "chapter", "solution", "check", "report",
                                       "solution", "check", "report"]
    assert steps[2].code == "def standardize(*args, **kwargs):\n    return None"
    assert steps[3].code == "bn.check.standardize(standardize)"  # the source's, not the commented one
    assert not any("✔" in s.code for s in steps)  # the student's own cell is not run
    assert "raise NotImplementedError()" in steps[5].code and "missing from the submission" in missing["b"]


def rows(*statuses: str) -> list[Row]:
    return [Row("s", "n.ipynb", f"ex{i}", int(s == PASS), 1, s, "a message " * 20)
            for i, s in enumerate(statuses)]


def test_the_exit_status_and_the_totals():
    assert report.exit_status(rows(PASS, PASS)) == 0
    assert report.exit_status(rows(PASS, FAIL)) == report.exit_status(rows(NOT_ATTEMPTED)) == 1
    assert report.exit_status(rows(PASS, ERROR)) == report.exit_status([]) == 2
    [total] = report.totals(rows(PASS, FAIL, PASS))
    assert (total["points"], total["max_points"], total[PASS], total[FAIL]) == (2, 3, 2, 1)
    assert "a message " * 20 in report.table(rows(FAIL))  # messages in full


def test_a_batch_survives_bad_files(tmp_path, capsys):
    source = tmp_path / "source"
    source.mkdir()
    nb = synthetic_notebook(["a"])
    for name in ("good", "corrupt", "empty", "missing"):
        nbformat.write(nb, source / f"{name}.ipynb")
    work = tmp_path / "submitted" / "alice" / "ps"
    work.mkdir(parents=True)
    nbformat.write(submission(nb, [Case("a", "", "right", "", "")]), work / "good.ipynb")
    (work / "corrupt.ipynb").write_text('{"cells": [')
    (work / "empty.ipynb").write_text('{"nbformat": 4}')
    (work / "notes.txt").write_text("not a notebook")
    paths = [work / n for n in ("corrupt.ipynb", "missing.ipynb", "notes.txt", "empty.ipynb", "good.ipynb")]
    out = tmp_path / "grades.json"
    code = cli.main(["grade", *map(str, paths), "--source", str(source), "--json", str(out)])
    assert code == 2
    data = json.loads(out.read_text())
    statuses = {Path(r["notebook"]).name: r["status"] for r in data["exercises"]}
    assert statuses == {"corrupt.ipynb": ERROR, "missing.ipynb": ERROR, "notes.txt": ERROR,
                        "empty.ipynb": ERROR, "good.ipynb": PASS}
    assert data["students"] == [{"student": "alice", "points": 1, "max_points": 4, PASS: 1, FAIL: 0,
                                 NOT_ATTEMPTED: 0, BY_HAND: 0, ERROR: 4}]
    with out.with_suffix(".csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["status"] for r in table] == [ERROR] * 4 + [PASS]
    assert table[-1]["student"] == "alice" and table[-1]["notebook"] == str(work / "good.ipynb")
    assert "no usable source" in table[2]["message"] and "cannot read" in table[0]["message"]
    assert "✔ standardize: correct" in capsys.readouterr().out


def test_summative_grading_cuts_every_message(tmp_path, monkeypatch):
    message = "CheckFailed: f: the output is wrong: divide by the biased variance"
    row = Row("", "a.ipynb", "ex", 0, 1, FAIL, message)
    monkeypatch.setattr(cli, "grade_notebook", lambda path, *args: [row])
    out = tmp_path / "grades.json"
    assert cli.main(["grade", "a.ipynb", "--summative", "--json", str(out)]) == 1
    [row] = json.loads(out.read_text())["exercises"]
    assert row["message"] == "CheckFailed: f: the output is wrong"


def test_a_grader_failure_is_an_error_row_and_the_batch_goes_on(tmp_path, monkeypatch):
    def flaky(path, *args):
        if path.name == "bad.ipynb":
            raise RuntimeError("a bug")
        return [Row("", str(path), "ex", 1, 1, PASS, "")]

    monkeypatch.setattr(cli, "grade_notebook", flaky)
    out = tmp_path / "grades.json"
    assert cli.main(["grade", "bad.ipynb", "good.ipynb", "--json", str(out)]) == 2
    assert [r["status"] for r in json.loads(out.read_text())["exercises"]] == [ERROR, PASS]


def test_an_investigate_exercise_is_listed_to_grade_by_hand(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    cells = [new_markdown_cell("# Why"), *investigate_cells("ex-why")]
    nb = exercises.with_nbgrader_metadata(new_notebook(cells=cells, metadata=KERNEL_META))
    nbformat.write(nb, source / "why.ipynb")
    nbformat.write(exercises.student_notebook(nb), tmp_path / "why.ipynb")
    rows = grade.grade_notebook(tmp_path / "why.ipynb", source, student="bob")
    assert [(r.exercise, r.points, r.max_points, r.status) for r in rows] == [("ex-why", 0, 4, BY_HAND)]
    assert report.exit_status(rows) == 0
    assert "1 to grade by hand" in report.table(rows)
