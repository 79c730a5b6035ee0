"""The course's exercises in its notebooks: finding them, and making the student edition.

An exercise in a chapter notebook is (DESIGN.md section 4): a markdown cell with an ``{exercise}``
directive (its ``:label:`` names the exercise), a code cell whose solution lies between nbgrader's
``### BEGIN SOLUTION`` and ``### END SOLUTION`` markers (folded away in the book by sphinx-exercise's
gated ``{solution-start}``/``{solution-end}``), and a check cell calling ``bn.check``.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = ["# YOUR CODE HERE", "raise NotImplementedError()"]
LABEL = re.compile(r"^:label:\s*(\S+)", re.M)
EXERCISE = re.compile(r"\{exercise(?:-start)?\}")
SOLUTION_START = re.compile(r"\{solution-start\}")
SOLUTION_END = re.compile(r"\{solution-end\}")
# a whole (non-gated) solution directive, fenced with ::: or ```
SOLUTION_BLOCK = re.compile(r"^(:{3,}|`{3,})\{solution\}.*?^\1[ \t]*$\n?", re.M | re.S)
NOTEBOOK_METADATA = ("kernelspec", "language_info")


@dataclass
class Exercise:
    """One graded exercise: its label and the indices of its solution cells and its check cell."""

    label: str
    solution_cells: list[int]
    check_cell: int


def source(cell) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def is_solution(cell) -> bool:
    return cell["cell_type"] == "code" and BEGIN in source(cell)


def is_check(cell) -> bool:
    return cell["cell_type"] == "code" and "check." in source(cell) and not is_solution(cell)


def find_exercises(nb) -> list[Exercise]:
    """The graded exercises of a notebook, in order; raises ValueError if one is malformed.

    An exercise runs from its ``{exercise}`` directive to the first check cell after it; the code
    cells in between are its solution (so a learner's edited cells are found without markers).
    An exercise with no check cell (a pen-and-paper one) is not graded.
    """
    found, label, cells = [], None, []
    for i, cell in enumerate(nb.cells):
        text = source(cell)
        if cell["cell_type"] == "markdown" and EXERCISE.search(text):
            if label is not None and any(is_solution(nb.cells[j]) for j in cells):
                raise ValueError(f"exercise {label}: a solution with no check cell after it")
            match = LABEL.search(text)
            if match is None:
                raise ValueError(f"cell {i}: an exercise directive needs a :label:")
            label, cells = match.group(1), []
        elif label is not None and is_check(cell):
            if not cells:
                raise ValueError(f"exercise {label}: a check cell with no solution cell before it")
            found.append(Exercise(label, cells, i))
            label, cells = None, []
        elif label is not None and cell["cell_type"] == "code":
            if text.count(BEGIN) != text.count(END):
                raise ValueError(f"cell {i} ({label}): unbalanced BEGIN/END SOLUTION markers")
            cells.append(i)
        elif is_solution(cell):
            raise ValueError(f"cell {i}: a solution with no exercise directive before it")
    if label is not None and any(is_solution(nb.cells[j]) for j in cells):
        raise ValueError(f"exercise {label}: a solution with no check cell after it")
    return found


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


def strip_solution(text: str) -> str:
    """Replace every BEGIN/END SOLUTION region by the stub, at the markers' indentation (as nbgrader)."""
    out, inside = [], False
    for line in text.splitlines():
        if line.strip() == BEGIN:
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + stub for stub in STUB]
            inside = True
        elif line.strip() == END:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def student_notebook(nb):
    """A copy of ``nb`` with every solution replaced by the stub and nothing else of it kept.

    Solutions become ``raise NotImplementedError()``; every output, execution count, attachment and
    metadata entry other than cell tags and the kernel spec is dropped; whole ``{solution}`` directives
    in markdown cells are removed.
    """
    nb = nbformat.from_dict(nb)  # a deep copy
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in NOTEBOOK_METADATA}
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags")
        cell["metadata"] = {"tags": tags} if tags else {}
        cell.pop("attachments", None)
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
            if is_solution(cell):
                cell["source"] = strip_solution(source(cell))
                cell["metadata"]["tags"] = sorted({*(tags or []), "solution"})
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
        nb = nbformat.read(path, as_version=4)
        find_exercises(nb)  # refuse to write an edition of a malformed notebook
        target = out_dir / path.name
        nbformat.write(student_notebook(nb), target)
        written.append(target)
    return written


def student_book_notebook(nb):
    """A copy of ``nb`` for the student build of the book: outputs kept, solutions cut out.

    Each gated solution (the ``{solution-start}`` cell, the solution cells, the ``{solution-end}``
    cell) is removed, and so are the outputs of the check cells.
    """
    nb = nbformat.from_dict(nb)
    checks = {e.check_cell for e in find_exercises(nb)}
    solutions = {i for e in find_exercises(nb) for i in e.solution_cells}
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
