"""The exercises of the chapter notebooks: finding them, nbgrader's cell metadata, the student edition.

An exercise in a chapter notebook is (DESIGN.md section 4): a markdown cell with an ``{exercise}``
directive (its ``:label:`` names the exercise), a code cell whose solution lies between nbgrader's
``### BEGIN SOLUTION`` and ``### END SOLUTION`` markers (folded away in the book by sphinx-exercise's
gated ``{solution-start}``/``{solution-end}``), and a check cell calling ``bn.check``.

Each exercise names its kind and its points in the metadata of its directive's cell,
``{"bncourse": {"kind": "derive", "points": 3}}``, and the directive carries the class
``kind-KIND`` (the book shows the kind from it). The kinds (DESIGN.md section 4): *implement* an
algorithm, *derive* a result the page does not state, *predict* a number before the cell that
measures it, *diagnose* a broken script, and *investigate* an open question graded by hand. An
*investigate* exercise has no code and no check: its answer is a markdown cell between the markers,
whose solution region holds the model answer and the rubric.

nbgrader only acts on cells that carry its metadata, so :func:`with_nbgrader_metadata` writes it from
the markers: the solution cell becomes an "autograded answer" (grade id ``LABEL-solution``), the check
cell a locked "autograded test" worth the exercise's points (grade id ``LABEL``), and the answer of an
*investigate* exercise a "manually graded answer" (grade id ``LABEL``).
"""

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = ["# YOUR CODE HERE", "raise NotImplementedError()"]
TEXT_STUB = ["YOUR ANSWER HERE"]  # nbgrader's stub for a markdown answer
KINDS = ("implement", "derive", "predict", "diagnose", "investigate")
MANUAL = "investigate"  # the kind graded by hand
CLASS = re.compile(r"^:class:(.*)$", re.M)
LABEL = re.compile(r"^:label:\s*(\S+)", re.M)
GRADE_ID = re.compile(r"^[A-Za-z0-9_-]+$")  # what nbgrader accepts as a grade id
EXERCISE = re.compile(r"\{exercise(?:-start)?\}")
SOLUTION_START = re.compile(r"\{solution-start\}")
SOLUTION_END = re.compile(r"\{solution-end\}")
# a whole (non-gated) solution directive, fenced with ::: or ```
SOLUTION_BLOCK = re.compile(r"^(:{3,}|`{3,})\{solution\}.*?^\1[ \t]*$\n?", re.M | re.S)
NOTEBOOK_METADATA = ("kernelspec", "language_info")


@dataclass
class Exercise:
    """One graded exercise: its label, its solution cells and its check cell (indices; no check cell
    for one graded by hand), its points and its kind."""

    label: str
    solution_cells: list[int]
    check_cell: int | None
    points: float = 1
    kind: str | None = None
    directive_cell: int | None = None

    @property
    def manual(self) -> bool:
        """Graded by hand (an *investigate* exercise): its answer is a markdown cell."""
        return self.kind == MANUAL

    def solution_ids(self) -> list[str]:
        """The grade ids of the solution cells: ``LABEL-solution``, then ``LABEL-solution-2``, ..."""
        n = len(self.solution_cells)
        return [f"{self.label}-solution" + (f"-{k + 1}" if k else "") for k in range(n)]


def source(cell) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def is_solution(cell) -> bool:
    return cell["cell_type"] == "code" and BEGIN in source(cell)


def is_answer(cell) -> bool:
    """A markdown answer cell (of an exercise graded by hand)."""
    return cell["cell_type"] == "markdown" and BEGIN in source(cell)


def exercise_meta(cell) -> dict:
    """The ``bncourse`` metadata of an exercise's directive cell: its kind and points."""
    return cell.get("metadata", {}).get("bncourse", {})


def is_check(cell) -> bool:
    return cell["cell_type"] == "code" and "check." in source(cell) and not is_solution(cell)


def nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def find_exercises(nb) -> list[Exercise]:
    """The graded exercises of an instructor notebook, in order; raises ValueError if one is malformed.

    An exercise runs from its ``{exercise}`` directive to the first check cell after it; the cells
    with solution markers in between are its solution. An *investigate* exercise ends with its
    markdown answer cell. An exercise with no check cell (a pen-and-paper one) is not graded. Kind
    and points come from the directive cell's metadata (points default to the check cell's
    nbgrader points, then 1).
    """
    found, current, cells = [], None, []

    def unchecked():
        if current is not None and cells:
            raise ValueError(f"exercise {current[0]}: a solution with no check cell after it")

    for i, cell in enumerate(nb.cells):
        text = source(cell)
        if cell["cell_type"] == "markdown" and EXERCISE.search(text):
            unchecked()
            match = LABEL.search(text)
            if match is None:
                raise ValueError(f"cell {i}: an exercise directive needs a :label:")
            label, meta = match.group(1), exercise_meta(cell)
            if not GRADE_ID.match(label):
                raise ValueError(f"cell {i}: label {label!r} must be letters, digits, '-' or '_' "
                                 "(it becomes nbgrader's grade id)")
            kind = meta.get("kind")
            if kind is not None and kind not in KINDS:
                raise ValueError(f"exercise {label}: kind must be one of {KINDS}, got {kind!r}")
            current, cells = (label, kind, meta.get("points"), i), []
        elif current is not None and current[1] == MANUAL and is_answer(cell):
            label, kind, points, directive = current
            if text.count(BEGIN) != text.count(END):
                raise ValueError(f"cell {i} ({label}): unbalanced BEGIN/END SOLUTION markers")
            found.append(Exercise(label, [i], None, points if points is not None else 1, kind, directive))
            current, cells = None, []
        elif current is not None and is_check(cell):
            label, kind, points, directive = current
            if not cells:
                raise ValueError(f"exercise {label}: a check cell with no solution cell before it")
            if points is None:
                points = nbgrader_meta(cell).get("points", 1)
            found.append(Exercise(label, cells, i, points, kind, directive))
            current, cells = None, []
        elif is_solution(cell):
            if current is None:
                raise ValueError(f"cell {i}: a solution with no exercise directive before it")
            if text.count(BEGIN) != text.count(END):
                raise ValueError(f"cell {i} ({current[0]}): unbalanced BEGIN/END SOLUTION markers")
            cells.append(i)
    unchecked()
    labels = [e.label for e in found]
    if len(set(labels)) < len(labels):
        raise ValueError(f"two exercises share a label: {sorted(labels)}")
    return found


def nbgrader_cells(nb) -> dict[int, dict]:
    """nbgrader's metadata for every exercise cell of an instructor notebook, by cell index."""
    meta = {}
    for ex in find_exercises(nb):
        if ex.manual:
            meta[ex.solution_cells[0]] = {"grade": True, "grade_id": ex.label, "locked": False,
                                          "points": ex.points, "schema_version": 3, "solution": True,
                                          "task": False}
            continue
        for i, grade_id in zip(ex.solution_cells, ex.solution_ids(), strict=True):
            meta[i] = {"grade": False, "grade_id": grade_id, "locked": False, "schema_version": 3,
                       "solution": True, "task": False}
        meta[ex.check_cell] = {"grade": True, "grade_id": ex.label, "locked": True, "points": ex.points,
                               "schema_version": 3, "solution": False, "task": False}
    return meta


def with_kind_class(text: str, kind: str) -> str:
    """The directive's source with ``kind-KIND`` as its only kind class (added after ``:label:``)."""
    match = CLASS.search(text)
    if match:
        classes = [c for c in match.group(1).split() if not c.startswith("kind-")] + [f"kind-{kind}"]
        return text[:match.start()] + ":class: " + " ".join(classes) + text[match.end():]
    label = LABEL.search(text)
    return text[:label.end()] + f"\n:class: kind-{kind}" + text[label.end():]


def with_nbgrader_metadata(nb):
    """A copy of ``nb`` whose exercise cells carry nbgrader's metadata, and no other cell does; each
    exercise directive with a kind carries its ``kind-KIND`` class."""
    nb = copy.deepcopy(nb)
    meta = nbgrader_cells(nb)
    for i, cell in enumerate(nb.cells):
        cell.setdefault("metadata", {}).pop("nbgrader", None)
        if i in meta:
            cell["metadata"]["nbgrader"] = meta[i]
    for ex in find_exercises(nb):
        if ex.kind is not None:
            cell = nb.cells[ex.directive_cell]
            cell["source"] = with_kind_class(source(cell), ex.kind)
    return nb


def solution_regions(text: str) -> list[list[str]]:
    """The lines between each BEGIN/END SOLUTION pair of a cell's source."""
    regions, current = [], None
    for line in text.splitlines():
        if line.strip() == BEGIN:
            current = []
        elif line.strip() == END:
            regions.append(current)
            current = None
        elif current is not None:
            current.append(line)
    return regions


def strip_solution(text: str, stub: list[str] = STUB) -> str:
    """Replace every BEGIN/END SOLUTION region by the stub, at the markers' indentation (as nbgrader)."""
    out, inside = [], False
    for line in text.splitlines():
        if line.strip() == BEGIN:
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + s for s in stub]
            inside = True
        elif line.strip() == END:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def student_notebook(nb):
    """The student edition of an instructor notebook, as nbgrader's ``generate_assignment`` makes it.

    Solutions become ``raise NotImplementedError()``; every output, execution count, attachment and
    metadata entry other than cell tags, nbgrader's metadata and the kernel spec is dropped; check
    cells are locked (neither editable nor deletable), solution cells not deletable; whole
    ``{solution}`` directives in markdown cells are removed.
    """
    nb = nbformat.from_dict(with_nbgrader_metadata(nb))
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in NOTEBOOK_METADATA}
    for cell in nb.cells:
        old = cell.get("metadata", {})
        cell["metadata"] = {k: old[k] for k in ("tags", "nbgrader") if old.get(k)}
        if nbgrader_meta(cell):
            cell["metadata"]["deletable"] = False
        if nbgrader_meta(cell).get("locked"):
            cell["metadata"]["editable"] = False
        cell.pop("attachments", None)
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
            if is_solution(cell):
                cell["source"] = strip_solution(source(cell))
        elif is_answer(cell):
            cell["source"] = strip_solution(source(cell), TEXT_STUB)
        elif cell["cell_type"] == "markdown":
            cell["source"] = SOLUTION_BLOCK.sub("", source(cell))
    return nb


def chapter_notebooks(book: Path) -> list[Path]:
    """The chapter notebooks of a book folder, in reading order."""
    paths = sorted(Path(book).glob("[0-9]*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no chapter notebooks (NN_*.ipynb) in {book}")
    return paths


def write_student_edition(book: Path, out_dir: Path) -> list[Path]:
    """Write the student edition of every chapter notebook in ``book`` to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in chapter_notebooks(book):
        target = out_dir / path.name
        nbformat.write(student_notebook(nbformat.read(path, as_version=4)), target)
        written.append(target)
    return written


def write_nbgrader_metadata(book: Path, check: bool = False) -> list[Path]:
    """Write nbgrader's metadata into every chapter notebook of ``book``; return those that changed.

    With ``check``, write nothing: only report the notebooks whose metadata is missing or stale.
    """
    changed = []
    for path in chapter_notebooks(book):
        nb = nbformat.read(path, as_version=4)
        updated = with_nbgrader_metadata(nb)
        if updated != nb:
            changed.append(path)
            if not check:
                nbformat.write(updated, path)
    return changed


def student_book_notebook(nb):
    """A copy of ``nb`` for the student build of the book: outputs kept, solutions cut out.

    Each gated solution (the ``{solution-start}`` cell, the solution cells, the ``{solution-end}``
    cell) is removed, and so are the outputs of the check cells.
    """
    nb = nbformat.from_dict(nb)
    exercises = find_exercises(nb)
    checks = {e.check_cell for e in exercises if e.check_cell is not None}
    solutions = {i for e in exercises for i in e.solution_cells}
    cells, inside = [], False
    for i, cell in enumerate(nb.cells):
        text = source(cell)
        if cell["cell_type"] == "markdown" and SOLUTION_START.search(text):
            inside = True
        elif cell["cell_type"] == "markdown" and SOLUTION_END.search(text):
            inside = False
        elif not inside and i not in solutions:
            if i in checks:
                cell["outputs"] = []
            if cell["cell_type"] == "markdown":
                cell["source"] = SOLUTION_BLOCK.sub("", text)
            cells.append(cell)
    nb.cells = cells
    return nb


TITLE = re.compile(r"\{exercise(?:-start)?\}[ \t]*(.*)")
TABLE_START, TABLE_END = "<!-- exercises: written by `bncourse exercises --write` -->", "<!-- /exercises -->"


def title(nb, ex: Exercise) -> str:
    """The title an exercise's directive gives it."""
    match = TITLE.search(source(nb.cells[ex.directive_cell]))
    return match.group(1).strip() if match else ex.label


def exercise_table(book: Path) -> str:
    """Every chapter's exercises as a Markdown table (chapter, exercise, kind, points) with the
    points per chapter and in all: what instructors read before they assign them."""
    rows = ["| chapter | exercise | kind | points |", "|---|---|---|---:|"]
    totals = []
    for path in chapter_notebooks(book):
        nb = nbformat.read(path, as_version=4)
        found = find_exercises(nb)
        for ex in found:
            rows.append(f"| {path.stem} | {title(nb, ex)} (`{ex.label}`) | {ex.kind or '?'} | "
                        f"{ex.points:g} |")
        totals.append((path.stem, sum(e.points for e in found)))
    rows += ["", "| chapter | points |", "|---|---:|"]
    rows += [f"| {stem} | {points:g} |" for stem, points in totals]
    rows.append(f"| all | {sum(p for _, p in totals):g} |")
    return "\n".join(rows)


def with_exercise_table(page: str, table: str) -> str:
    """``page`` with the text between its table markers replaced by ``table``."""
    if TABLE_START not in page or TABLE_END not in page:
        raise ValueError(f"expected the markers {TABLE_START!r} and {TABLE_END!r} in the page")
    head, rest = page.split(TABLE_START, 1)
    return f"{head}{TABLE_START}\n{table}\n{TABLE_END}{rest.split(TABLE_END, 1)[1]}"
