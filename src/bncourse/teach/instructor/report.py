"""The gradebook: a table to read, and JSON and CSV files to keep."""

import csv
import json
from dataclasses import asdict, fields
from pathlib import Path

from .grade import BY_HAND, ERROR, FAIL, NOT_ATTEMPTED, PASS, Row

STATUSES = (PASS, FAIL, NOT_ATTEMPTED, BY_HAND, ERROR)


def _points(value: float) -> str:
    return f"{value:g}"


def totals(rows: list[Row]) -> list[dict]:
    """Per student, in order of appearance: points earned and possible, and exercises by status."""
    by_student: dict[str, dict] = {}
    for r in rows:
        t = by_student.setdefault(r.student, {"student": r.student, "points": 0, "max_points": 0,
                                              **dict.fromkeys(STATUSES, 0)})
        t["points"] += r.points
        t["max_points"] += r.max_points
        t[r.status] += 1
    return list(by_student.values())


def exit_status(rows: list[Row]) -> int:
    """0 when every exercise passed (or waits to be graded by hand), 2 when something could not be
    graded, else 1."""
    if not rows or any(r.status == ERROR for r in rows):
        return 2
    return 0 if all(r.status in (PASS, BY_HAND) for r in rows) else 1


def table(rows: list[Row]) -> str:
    """The rows as text: a block per notebook, each message in full, then the totals per student."""
    lines, notebook = [], None
    width = max([len(r.exercise) for r in rows] + [8])
    for r in rows:
        if r.notebook != notebook:
            notebook = r.notebook
            lines.append(f"\n{r.student + '  ' if r.student else ''}{r.notebook}")
        score = f"{_points(r.points)}/{_points(r.max_points)}"
        lines.append(f"  {r.exercise:<{width}}  {score:>7}  {r.status:<13}  {r.message}")
    lines.append("")
    for t in totals(rows):
        counts = ", ".join(f"{t[s]} {s}" for s in STATUSES if t[s])
        lines.append(f"{t['student'] or '(no student id)'}: {_points(t['points'])} of "
                     f"{_points(t['max_points'])} points ({counts})")
    return "\n".join(lines)


def write(rows: list[Row], json_path: Path) -> Path:
    """Write the gradebook to ``json_path`` and the same rows to a CSV file beside it; return that."""
    json_path = Path(json_path)
    data = {"students": totals(rows), "exercises": [asdict(r) for r in rows]}
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    csv_path = json_path.with_suffix(".csv")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in fields(Row)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return csv_path
