"""Grading a submission against the instructor's source notebook, as nbgrader does.

The grader runs the *source* notebook in a fresh kernel, with each solution cell taken from the
submission by its nbgrader grade id. Every other cell, the check cells above all, comes from the
source: a check the student edited or deleted runs as the instructor wrote it, and cells the student
added are not run. After each check the kernel reports whether anything the checks rely on was
rebound (:mod:`bncourse.teach.instructor.kernel`). A solution or check cell that runs past its time limit
or kills the kernel fails its exercise, and grading goes on in a fresh kernel that replays the cells
before it. The notebook's own cells (which may train a model) have a time limit of their own.
"""

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.v4 import new_code_cell, new_notebook

from .exercises import Exercise, find_exercises, nbgrader_meta, source, strip_solution
from .kernel import MARK

PASS, FAIL, NOT_ATTEMPTED, ERROR = "pass", "fail", "not attempted", "error"
BY_HAND = "to grade by hand"  # an investigate exercise: the answer is prose, with a rubric
KERNEL = '__import__("bncourse.teach.instructor.kernel", fromlist=["kernel"])'


@dataclass
class Row:
    """One exercise of one submission in the gradebook."""

    student: str
    notebook: str
    exercise: str
    points: float
    max_points: float
    status: str
    message: str


@dataclass
class Step:
    """A cell the grader runs; ``role`` is setup, chapter, solution, check or report."""

    code: str
    role: str = "chapter"
    exercise: str | None = None


@dataclass
class Ran:
    """What a step printed, or why it has no outputs: "time limit exceeded" or "kernel died"."""

    outputs: list
    fatal: str | None = None


def plan(source_nb, submission) -> tuple[list[Step], dict[str, str]]:
    """The steps that grade ``submission`` against ``source_nb``, and the exercises whose solution
    cell is missing from the submission (run as the unanswered stub), with the reason."""
    submitted = {}
    for cell in submission.cells:
        grade_id = nbgrader_meta(cell).get("grade_id")
        if cell.cell_type == "code" and grade_id:
            submitted.setdefault(grade_id, source(cell))  # as nbgrader, the first of duplicated ids
    owner = {}
    for ex in find_exercises(source_nb):
        if ex.manual:
            continue  # a markdown answer: nothing to run
        for i, grade_id in zip(ex.solution_cells, ex.solution_ids(), strict=True):
            owner[i] = (ex, grade_id)
        owner[ex.check_cell] = (ex, None)
    steps, missing = [Step(f"{KERNEL}.record()", "setup")], {}
    for i, cell in enumerate(source_nb.cells):
        if cell.cell_type != "code":
            continue
        if i not in owner:
            steps.append(Step(source(cell)))
            continue
        ex, grade_id = owner[i]
        if grade_id is None:
            report = f"{KERNEL}.report({ex.label!r})"
            steps += [Step(source(cell), "check", ex.label), Step(report, "report", ex.label)]
        elif grade_id in submitted:
            steps.append(Step(submitted[grade_id], "solution", ex.label))
        else:
            missing[ex.label] = (f"the solution cell ({grade_id}) is missing from the submission: answers "
                                 "must stay in the cells the assignment gives")
            steps.append(Step(strip_solution(source(cell)), "solution", ex.label))
    return steps, missing


def execute(steps: list[Step], timeouts: tuple[int, int], cwd: str) -> list[Ran]:
    """Run every step once, in order; after a step hangs or kills the kernel, go on in a fresh kernel
    that first replays the steps before it (but the checks and any step that hung or died).

    ``timeouts`` are the seconds allowed for each exercise cell and for each of the notebook's own.
    """
    ran, dead, start = [None] * len(steps), set(), 0
    while start < len(steps):
        start = _session(steps, ran, dead, start, timeouts, cwd)
    return ran


def _session(steps, ran, dead, start, timeouts, cwd) -> int:
    """One kernel's run; returns the step to go on from (``len(steps)`` when all have run)."""
    nb = new_notebook()
    client = NotebookClient(nb, kernel_name="python3", allow_errors=True, shutdown_kernel="immediate",
                            resources={"metadata": {"path": cwd}})
    with client.setup_kernel():
        for i, step in enumerate(steps):
            if i in dead or (i < start and step.role in ("check", "report")):
                continue
            cell = new_code_cell(step.code)
            nb.cells.append(cell)
            client.timeout = timeouts[1] if step.exercise is None else timeouts[0]
            try:
                client.execute_cell(cell, len(nb.cells) - 1)
            except (CellTimeoutError, DeadKernelError) as e:
                dead.add(i)
                if i >= start:
                    hung = isinstance(e, CellTimeoutError)
                    ran[i] = Ran([], "time limit exceeded" if hung else "kernel died")
                return max(start, i + 1)
            if i >= start:
                ran[i] = Ran(cell.outputs)
    return len(steps)


def _error(outputs) -> dict | None:
    return next((o for o in outputs if o["output_type"] == "error"), None)


def _stream(outputs, name: str) -> str:
    return "".join(o["text"] for o in outputs if o["output_type"] == "stream" and o["name"] == name)


def _rebound(outputs) -> list[str] | None:
    lines = [line for line in _stream(outputs, "stdout").splitlines() if line.startswith(MARK)]
    return json.loads(lines[-1][len(MARK):])["rebound"] if lines else None


def judge(label: str, steps: list[Step], ran: list[Ran], missing: dict[str, str]) -> tuple[str, str]:
    """The status and message of exercise ``label``, from what its steps did."""
    mine = [(step.role, r) for step, r in zip(steps, ran, strict=True) if step.exercise == label]
    solutions = [r for role, r in mine if role == "solution"]
    check, report = (next(r for role, r in mine if role == wanted) for wanted in ("check", "report"))
    for where, r in [*(("in its solution cell", r) for r in solutions), ("in its check", check)]:
        if r.fatal:
            return FAIL, f"{r.fatal} {where}"
    if label in missing:
        return FAIL, missing[label]
    broken = next((e for r in solutions if (e := _error(r.outputs))), None)
    if broken and broken["ename"] == "NotImplementedError":
        return NOT_ATTEMPTED, "the solution still raises NotImplementedError"
    error = _error(check.outputs)
    if error and broken:  # the check may have run an older definition
        return FAIL, f"its solution cell raised {broken['ename']}: {broken['evalue']}"
    if error and error["ename"] == "CheckFailed" and "not attempted" in error["evalue"]:
        return NOT_ATTEMPTED, error["evalue"]
    if error:
        return FAIL, f"{error['ename']}: {error['evalue']}"
    rebound = _rebound(report.outputs)
    if rebound is None:
        return FAIL, "the check could not be verified: the grader's report from the kernel is missing"
    if rebound:
        return FAIL, f"the check cannot be trusted: the submission rebinds {', '.join(rebound)}"
    stderr = _stream(check.outputs, "stderr").strip()
    if stderr:
        return FAIL, f"the check wrote to stderr (nbgrader fails that too): {stderr}"
    printed = _stream(check.outputs, "stdout").strip()
    return PASS, printed.splitlines()[-1] if printed else ""


def summative(message: str) -> str:
    """A check's failure message cut to what is wrong, without the hint that gives the answer away.

    Checks say ``CheckFailed: NAME: what is wrong: why, or how to fix it``: keep the part up to the
    first ":", ";" or sentence end after ``NAME:``, without an unclosed parenthesis.
    """
    if not message.startswith("CheckFailed: "):
        return message
    head, _, rest = message.removeprefix("CheckFailed: ").partition(": ")
    cut = min((i for i in (rest.find(": "), rest.find("; "), rest.find(". ")) if i >= 0), default=len(rest))
    what = rest[:cut]
    if what.count("(") > what.count(")"):
        what = what[: what.rfind("(")].rstrip()
    return f"CheckFailed: {head}: {what}"


def student_of(path: Path) -> str:
    """The student id in nbgrader's layout ``submitted/STUDENT/ASSIGNMENT/NOTEBOOK.ipynb``, else ""."""
    parts = Path(path).resolve().parts
    return parts[-3] if len(parts) >= 4 and parts[-4] == "submitted" else ""


def grade_notebook(path: Path, source_dir: Path, student: str | None = None,
                   timeouts: tuple[int, int] = (60, 600)) -> list[Row]:
    """Grade the submission ``path`` against ``source_dir/<same name>``: one row per exercise.

    ``timeouts``: the seconds allowed for each solution and check cell, and for each of the
    notebook's own cells.

    Never raises for a bad submission: a missing, unreadable or malformed file, a missing source or
    a kernel that will not start gives rows with status "error".
    """
    path = Path(path)
    student = student_of(path) if student is None else student
    source_path = Path(source_dir) / path.name

    def rows(exercises: list[Exercise], status: str, message: str) -> list[Row]:
        return [Row(student, str(path), e.label, 0, e.points, status, message) for e in exercises]

    try:
        source_nb = nbformat.read(source_path, as_version=4)
        exercises = find_exercises(source_nb)
    except Exception as e:  # noqa: BLE001  (any reason the source is unusable is reported)
        return [Row(student, str(path), "", 0, 0, ERROR, f"no usable source notebook {source_path}: {e}")]
    try:
        steps, missing = plan(source_nb, nbformat.read(path, as_version=4))
    except Exception as e:  # noqa: BLE001
        return rows(exercises, ERROR, f"cannot read the submission as a notebook: {type(e).__name__}: {e}")
    try:
        with tempfile.TemporaryDirectory() as cwd:
            ran = execute(steps, timeouts, cwd)
    except Exception as e:  # noqa: BLE001  (the kernel would not start, ...)
        return rows(exercises, ERROR, f"the grader could not run the notebook: {type(e).__name__}: {e}")
    broken = next((f"the notebook's own cell {step.code[:40]!r} failed: {r.fatal} (see --notebook-timeout)"
                   for step, r in zip(steps, ran, strict=True) if r.fatal and step.exercise is None), None)
    if broken:
        return rows(exercises, ERROR, broken)
    graded = []
    for ex in exercises:
        if ex.manual:
            graded.append(Row(student, str(path), ex.label, 0, ex.points, BY_HAND,
                              "an investigate exercise: grade its answer with the rubric of the "
                              "instructor's notebook"))
            continue
        status, message = judge(ex.label, steps, ran, missing)
        graded.append(Row(student, str(path), ex.label, ex.points if status == PASS else 0, ex.points,
                          status, message))
    return graded
