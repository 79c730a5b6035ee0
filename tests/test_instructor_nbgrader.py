"""nbgrader and our grader on the same course: nbgrader's release of every chapter is our student
edition; the workflow of book/grading.md (release, fetch, submit, collect, autograde, feedback)
runs as written; and both graders give each submission of instructor_cases the result expected, the
same wherever nbgrader can grade it."""

import getpass
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

import instructor_cases as cases
from bncourse.teach.instructor import cli, exercises
from bncourse.teach.instructor.grade import BY_HAND, ERROR, NOT_ATTEMPTED

DOC = (cases.BOOK / "grading.md").read_text()
CHAPTERS = exercises.chapter_notebooks(cases.BOOK)
STUDENT = getpass.getuser()  # who submits the untouched edition through the exchange
EXPECTED = {(student, notebook, c.label): c for student, notebooks in cases.SUBMISSIONS.items()
            for notebook, notebook_cases in notebooks.items() for c in notebook_cases}
GRADE = "bncourse grade course/submitted/*/ch3/*.ipynb --source course/source/ch3"


def documented(command: str) -> str:
    """``command``, after checking that grading.md shows it as it is."""
    lines = {line.split("  #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", DOC, re.S)
             for line in block.splitlines()}
    assert command in lines, f"not in book/grading.md: {command}"
    return command


def nbgrader(command: str, cwd: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)  # nbgrader runs `alembic` from PATH
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    return subprocess.run([*shlex.split(command), *extra], cwd=cwd, env=env, check=check,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> dict:
    """The course of grading.md, every chapter an assignment of its own kind, and both graders'
    results on the submissions of instructor_cases (graded at the same time)."""
    top = tmp_path_factory.mktemp("teaching")
    root, exchange, home = top / "course", top / "exchange", top / "home"
    for folder in (root, exchange, home):
        folder.mkdir()
    exchange.chmod(0o777)
    [config] = [b for b in re.findall(r"```python\n(.*?)```", DOC, re.S) if "get_config()" in b]
    config = config.replace("/srv/nbgrader/exchange", str(exchange))
    (root / "nbgrader_config.py").write_text(config + "c.Execute.timeout = 20  # the hang costs less\n")
    sources = cases.source_notebooks()
    for assignment, notebooks in (("ch3", sources), ("chapters", {p.stem: nbformat.read(p, as_version=4)
                                                                  for p in CHAPTERS})):
        (root / "source" / assignment).mkdir(parents=True)
        for name, nb in notebooks.items():
            path = root / "source" / assignment / f"{name}.ipynb"
            nbformat.write(exercises.with_nbgrader_metadata(nb), path)
    nbgrader("nbgrader generate_assignment chapters", root)
    for command in ("nbgrader generate_assignment ch3", "nbgrader release_assignment ch3"):
        nbgrader(documented(command), root)
    for command in ("fetch_assignment", "submit"):
        nbgrader(documented(f"nbgrader {command} ch3 --course bncourse"), home, f"--Exchange.root={exchange}")
    nbgrader(documented("nbgrader collect ch3"), root)
    cases.write_submissions(root / "submitted", "ch3", sources)
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    autograde = subprocess.Popen(shlex.split(documented("nbgrader autograde ch3")), cwd=root, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    args = shlex.split(documented(GRADE))[1:]
    paths = sorted(str(p.relative_to(top)) for p in root.glob("submitted/*/ch3/*.ipynb"))
    here = os.getcwd()
    os.chdir(top)  # the command as an instructor types it, beside course/
    try:
        exit_status = cli.main([*args[:1], *paths, *args[2:], "--timeout", "10", "--notebook-timeout", "120"])
    finally:
        os.chdir(here)
    autograde.wait()
    nbgrader(documented("nbgrader generate_feedback ch3"), root)
    ours = {(Path(r["notebook"]).parts[2], Path(r["notebook"]).stem, r["exercise"]): r
            for r in json.loads((top / "grades.json").read_text())["exercises"]}
    theirs = {}
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        for (student, notebook, label) in ours:
            if not (root / "autograded" / student / "ch3" / f"{notebook}.ipynb").exists():
                theirs[student, notebook, label] = ("error", 0, None)
                continue
            [g] = [g for g in gb.find_submission_notebook(notebook, "ch3", student).grades if g.name == label]
            status = BY_HAND if g.needs_manual_grade else "pass" if g.score == g.max_score else "fail"
            theirs[student, notebook, label] = (status, g.score, g.max_score)
    return {"root": root, "ours": ours, "theirs": theirs, "exit_status": exit_status}


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.name for p in CHAPTERS])
def test_nbgrader_releases_every_chapter_as_our_student_edition(course, path):
    released = nbformat.read(course["root"] / "release" / "chapters" / path.name, as_version=4)
    ours = exercises.student_notebook(nbformat.read(path, as_version=4))
    assert len(released.cells) == len(ours.cells)
    keys = ("grade", "grade_id", "locked", "points", "solution")
    for theirs, mine in zip(released.cells, ours.cells, strict=True):
        assert (theirs.cell_type, theirs.source) == (mine.cell_type, mine.source)
        meta = [(c.metadata.get("editable"), c.metadata.get("deletable"),
                 {k: exercises.nbgrader_meta(c).get(k) for k in keys}) for c in (theirs, mine)]
        assert meta[0] == meta[1]


@pytest.mark.parametrize("key", EXPECTED, ids=["-".join(k) for k in EXPECTED])
def test_each_case_gets_the_result_expected_from_each_grader(course, key):
    expected = EXPECTED[key]
    row = course["ours"][key]
    assert (row["status"], course["theirs"][key][0]) == (expected.ours, expected.nbgrader), row["message"]
    assert row["points"] == (row["max_points"] if row["status"] == "pass" else 0)


MESSAGES = {  # what our grader's message says, by kind of answer
    "broken": "its solution cell raised SyntaxError",
    "kernels": "write your own: your function calls torch",
    "patch": "the check cannot be trusted",
    "exit": "kernel died in its check",
    "hang": "time limit exceeded in its check",
    "warns": "the check wrote to stderr (nbgrader fails that too): ",
}


def test_our_messages_name_the_attack(course):
    for key, c in EXPECTED.items():
        message = course["ours"][key]["message"]
        if c.answer in MESSAGES:
            assert MESSAGES[c.answer] in message, (key, message)
        if c.moved:
            assert "missing from the submission" in message


def test_the_graders_agree_wherever_nbgrader_grades_and_no_attack_was_expected_to_part_them(course):
    parted = {k for k, c in EXPECTED.items() if c.ours != c.nbgrader}
    for key, (status, points, max_points) in course["theirs"].items():
        if status != "error" and key not in parted:
            assert course["ours"][key]["points"] == points, key
            assert course["ours"][key]["max_points"] == max_points, key


def test_both_graders_give_the_same_totals_per_submission(course):
    """Points follow difficulty; both graders read them from the same metadata."""
    totals = {}
    for key, (status, points, max_points) in course["theirs"].items():
        if status == "error" or any(k[:2] == key[:2] for k, c in EXPECTED.items() if c.ours != c.nbgrader):
            continue
        ours = course["ours"][key]
        t = totals.setdefault(key[:2], [0, 0, 0, 0])
        t[0] += ours["points"]
        t[1] += ours["max_points"]
        t[2] += points
        t[3] += max_points
    assert totals and all(t[0] == t[2] and t[1] == t[3] for t in totals.values()), totals
    assert totals["alice", "manual"] == [3, 7, 3, 7]  # 3 points earned; 4 wait for the rubric


def test_the_untouched_edition_submitted_through_the_exchange_scores_nothing(course):
    mine = {k: r for k, r in course["ours"].items() if k[0] == STUDENT}
    assert {k[1] for k in mine} == {"attacks", "kernel", "manual", cases.CHAPTER}
    by_hand = {k for k, r in mine.items() if r["status"] == BY_HAND}
    assert [k[2] for k in by_hand] == ["why-investigate"]
    assert all(r["status"] == NOT_ATTEMPTED for k, r in mine.items() if k not in by_hand)
    assert all(course["theirs"][k][:2] == ("fail", 0) for k in mine if k not in by_hand)


def test_a_corrupt_submission_is_an_error_and_the_batch_goes_on(course):
    rows = {k: r for k, r in course["ours"].items() if k[0] == cases.CORRUPT}
    assert [k[2] for k in rows] == ["ch3-ex-population-identity", "ch3-ex-forward", "ch3-ex-bias",
                                    "ch3-ex-hand-written"]
    assert all(r["status"] == ERROR and "cannot read" in r["message"] for r in rows.values())
    assert all(course["theirs"][k][0] == "error" for k in rows)
    assert course["exit_status"] == 2


def test_nbgrader_writes_the_feedback(course):
    feedback = course["root"] / "feedback"
    html = (feedback / "mallory" / "ch3" / "attacks.html").read_text()
    assert "write your own" in html
    assert (feedback / "alice" / "ch3" / f"{cases.CHAPTER}.html").exists()
