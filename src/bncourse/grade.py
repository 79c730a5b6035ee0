"""Grading: run a learner's notebook in a fresh kernel and report each exercise's check."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from .exercises import find_exercises

PASS, FAIL, NOT_ATTEMPTED = "pass", "fail", "not attempted"


@dataclass
class Result:
    notebook: str
    exercise: str
    status: str
    message: str


def error_of(cell) -> dict | None:
    return next((o for o in cell.get("outputs", []) if o["output_type"] == "error"), None)


def printed(cell) -> str:
    text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o["output_type"] == "stream")
    return text.strip().splitlines()[-1] if text.strip() else ""


def judge(nb, exercise) -> tuple[str, str]:
    """The status and message of one exercise in an executed notebook."""
    solutions = [nb.cells[i] for i in exercise.solution_cells]
    errors = [error_of(c) for c in solutions]
    if any(e is not None and e["ename"] == "NotImplementedError" for e in errors):
        return NOT_ATTEMPTED, "the solution still raises NotImplementedError"
    check = nb.cells[exercise.check_cell]
    if check.get("execution_count") is None:
        return FAIL, "not run: the notebook stopped before this check (time limit or dead kernel)"
    error = error_of(check)
    if error is None:
        return PASS, printed(check)
    message = f"{error['ename']}: {error['evalue']}"
    if error["ename"] == "CheckFailed" and "not attempted" in error["evalue"]:
        return NOT_ATTEMPTED, error["evalue"]
    return FAIL, message


def grade_notebook(path: Path, timeout: int = 300) -> list[Result]:
    """Execute ``path`` in a fresh kernel (going on past errors) and judge each exercise.

    ``timeout`` is the limit, in seconds, for each cell; a notebook that exceeds it stops there and
    the exercises it did not reach fail.
    """
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    exercises = find_exercises(nb)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except (CellTimeoutError, DeadKernelError):
        pass  # cells not reached keep execution_count None and fail in judge()
    return [Result(path.name, e.label, *judge(nb, e)) for e in exercises]


def summary(results: list[Result]) -> dict:
    counts = {status: sum(r.status == status for r in results) for status in (PASS, FAIL, NOT_ATTEMPTED)}
    return {"passed": counts[PASS], "failed": counts[FAIL], "not_attempted": counts[NOT_ATTEMPTED],
            "total": len(results)}


def table(results: list[Result], width: int = 72) -> str:
    """The results as a plain-text table, one row per exercise, then the totals."""
    name_w = max([len("notebook")] + [len(r.notebook) for r in results])
    ex_w = max([len("exercise")] + [len(r.exercise) for r in results])
    rows = [f"{'notebook':<{name_w}}  {'exercise':<{ex_w}}  {'result':<13}  message"]
    rows.append("-" * len(rows[0]) + "-" * 20)
    for r in results:
        message = r.message if len(r.message) <= width else r.message[: width - 1] + "…"
        rows.append(f"{r.notebook:<{name_w}}  {r.exercise:<{ex_w}}  {r.status:<13}  {message}")
    s = summary(results)
    rows.append(f"\n{s['passed']} of {s['total']} exercises passed, {s['failed']} failed, "
                f"{s['not_attempted']} not attempted")
    return "\n".join(rows)


def write_json(results: list[Result], path: Path) -> None:
    data = {"summary": summary(results), "exercises": [asdict(r) for r in results]}
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
