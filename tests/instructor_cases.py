"""Submissions for the instructor-tool tests: right, wrong, untouched, and one per attack on the
grader, with the result expected from our grader and from nbgrader (configured as
book/grading.md says), on synthetic notebooks and on a copy of a real chapter."""

import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from bncourse.teach.instructor import exercises

BOOK = Path(__file__).resolve().parent.parent / "book"
CHAPTER = "03a_forward"  # the quickest chapter to run; its bn_forward may not call the kernels
STANDARDIZE = """def standardize(x):
    ### BEGIN SOLUTION
    std = x.std(0, correction=0)
    return (x - x.mean(0)) / torch.where(std > 0, std, torch.ones_like(std))
    ### END SOLUTION"""
BN_FORWARD = """def bn_forward(x, gamma, beta, eps=1e-5):
    ### BEGIN SOLUTION
    dims, shape = (0, *range(2, x.dim())), (1, -1) + (1,) * (x.dim() - 2)
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    return gamma.reshape(shape) * (x - mean) / torch.sqrt(var + eps) + beta.reshape(shape)
    ### END SOLUTION"""
# A student's answer, by kind; {name} is the exercise's function, {check} its check.
ANSWERS = {
    "wrong": "def {name}(*args, **kwargs):\n    return None",
    "broken": "def {name}(*args, **kwargs):\n    return (",
    "kernels": "def {name}(x, *args, **kwargs):\n"
               "    return torch.nn.functional.batch_norm(x, None, None, training=True)",
    "mentions": "{right}  # bn.check.{check}({name}) passes",
    "new-attr": "bn.check.x = 1\n{right}",
    "patch": 'setattr(bn.check, "{check}", lambda fn: print("✔ {check}: correct"))\n\n\n'
             "def {name}(*args, **kwargs):\n    return None",
    "exit": "import os\n\n\ndef {name}(*args, **kwargs):\n    os._exit(1)",
    "hang": "def {name}(*args, **kwargs):\n    while True:\n        pass",
    "forged": 'print("✔ {check}: correct")  # as if bn.check.{check}({name}) had passed',
    "warns": "import warnings\n\n{right}\n\n\n_{name} = {name}\n\n\n"
             "def {name}(*args, **kwargs):\n    warnings.warn('a warning goes to stderr')\n"
             "    return _{name}(*args, **kwargs)",
}


@dataclass
class Case:
    """What a submission does to exercise ``label``, and the status each grader should give it.

    ``answer``: a kind of ``ANSWERS``, "right" (the source's solution) or None (the stub left);
    ``check``: None (kept), "comment", "try" or "delete"; ``added``: a kind of answer in a cell the
    student adds after the solution; ``moved``: the solution cell is deleted. nbgrader's "error":
    it grades none of that student's notebooks.
    """

    label: str
    what: str
    answer: str | None
    ours: str
    nbgrader: str
    check: str | None = None
    added: str | None = None
    moved: bool = False


SYNTHETIC = {  # notebook -> its exercises (a label with "forward" is a bn_forward exercise)
    "attacks": [
        Case("right", "right answer", "right", "pass", "pass"),
        Case("wrong", "wrong answer", "wrong", "fail", "fail"),
        Case("untouched", "untouched", None, "not attempted", "fail"),
        Case("broken", "solution with a syntax error", "broken", "fail", "fail"),
        Case("commented", "check cell commented out", "wrong", "fail", "fail", check="comment"),
        Case("wrapped", "check wrapped in try/except", "wrong", "fail", "fail", check="try"),
        Case("deleted", "check cell deleted", "wrong", "fail", "fail", check="delete"),
        Case("forged", "own cell prints a forged pass", "wrong", "fail", "fail", added="forged"),
        Case("kernels-forward", "calls torch's batch norm", "kernels", "fail", "fail"),
        Case("mentions", "solution mentions `check.`", "mentions", "pass", "pass"),
        Case("new-attr", "solution sets `bn.check.x = 1`", "new-attr", "pass", "pass"),
        Case("moved", "answer moved to an added cell", None, "fail", "pass", added="right", moved=True),
        Case("warns", "right answer that warns (stderr)", "warns", "fail", "fail"),
        Case("patched", "`setattr(bn.check, ...)` fakes a pass", "patch", "fail", "pass"),
    ],
    "manual": [  # points by difficulty, and an exercise graded by hand
        Case("std-derive", "right answer to a 3-point exercise", "right", "pass", "pass"),
        Case("why-investigate", "an investigate answer in prose", "prose", "to grade by hand",
             "to grade by hand"),
    ],
    "kernel": [
        Case("exit", "`os._exit(1)` in the solution", "exit", "fail", "error"),
        Case("after-exit", "right answer after a dead kernel", "right", "pass", "error"),
        Case("hang", "infinite loop in the solution", "hang", "fail", "error"),
        Case("after-hang", "right answer after a hang", "right", "pass", "error"),
    ],
}
IDENTITY, FORWARD, BIAS = "ch3-ex-population-identity", "ch3-ex-forward", "ch3-ex-bias"
# student -> notebook -> cases. Not here: the untouched edition, submitted through the exchange, and a
# corrupt file (CORRUPT's), which both graders fail to read.
CORRUPT = "zoe"
SUBMISSIONS = {
    "alice": {"manual": SYNTHETIC["manual"],
              CHAPTER: [Case(IDENTITY, "solution mentions `check.`", "mentions", "pass", "pass"),
                        Case(FORWARD, "right answer", "right", "pass", "pass"),
                        Case(BIAS, "solution sets `bn.check.x = 1`", "new-attr", "pass", "pass")]},
    "mallory": {"attacks": SYNTHETIC["attacks"], CHAPTER: [
        Case(IDENTITY, "check commented out, forged pass", "wrong", "fail", "fail", check="comment",
             added="forged"),
        Case(FORWARD, "calls torch's batch norm", "kernels", "fail", "fail"),
        Case(BIAS, "`setattr(bn.check, ...)` fakes a pass", "patch", "fail", "pass")]},
    "trudy": {CHAPTER: [
        Case(IDENTITY, "check cell deleted", "wrong", "fail", "fail", check="delete"),
        Case(FORWARD, "infinite loop in the solution", "hang", "fail", "fail"),
        Case(BIAS, "right answer after a hang", "right", "pass", "pass")]},
    "crash": {"kernel": SYNTHETIC["kernel"], CHAPTER: [
        Case(IDENTITY, "check wrapped in try/except", "wrong", "fail", "error", check="try"),
        Case(FORWARD, "`os._exit(1)` in the solution", "exit", "fail", "error"),
        Case(BIAS, "right answer after a dead kernel", "right", "pass", "error")]},
}


def exercise_cells(label: str, solution: str, check: str) -> list:
    """The five cells of an exercise, as the chapters write them."""
    return [
        new_markdown_cell(f":::{{exercise}} {label}\n:label: {label}\n\nWrite the function.\n:::"),
        new_markdown_cell(f":::{{solution-start}} {label}\n:class: dropdown\n:::"),
        new_code_cell(solution),
        new_markdown_cell(":::{solution-end}\n:::"),
        new_code_cell(check),
    ]


def investigate_cells(label: str, points: float = 4) -> list:
    """An investigate exercise as the chapters write it: the question, then a gated markdown answer
    whose solution region holds the model answer and the rubric."""
    return [
        new_markdown_cell(f":::{{exercise}} Why?\n:label: {label}\n\nExplain the measurement.\n:::",
                          metadata={"bncourse": {"kind": "investigate", "points": points}}),
        new_markdown_cell(f":::{{solution-start}} {label}\n:class: dropdown\n:::"),
        new_markdown_cell("**Your answer.**\n\n### BEGIN SOLUTION\nBecause the model answer says so.\n\n"
                          "Rubric: 2 points for the mechanism, 2 for the measurement.\n### END SOLUTION"),
        new_markdown_cell(":::{solution-end}\n:::"),
    ]


def synthetic_notebook(labels: list[str]) -> dict:
    """An instructor notebook with nbgrader's metadata: a ``standardize`` exercise per label, a
    ``bn_forward`` one for labels with "forward", an investigate one for labels with "investigate";
    a label with "derive" is a derive exercise worth 3 points."""
    cells = [new_markdown_cell("# Exercises"), new_code_cell("import torch\n\nimport bncourse as bn")]
    for label in labels:
        if "investigate" in label:
            cells += investigate_cells(label)
            continue
        if "forward" in label:
            cells += exercise_cells(label, BN_FORWARD, "bn.check.bn_forward(bn_forward)")
        else:
            cells += exercise_cells(label, STANDARDIZE, "bn.check.standardize(standardize)")
        if "derive" in label:
            cells[-5].metadata["bncourse"] = {"kind": "derive", "points": 3}
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return exercises.with_nbgrader_metadata(nb)


def source_notebooks() -> dict[str, dict]:
    """The instructor notebooks of the test assignment, by name: the synthetic ones and the chapter."""
    notebooks = {name: synthetic_notebook([c.label for c in cases]) for name, cases in SYNTHETIC.items()}
    chapter = nbformat.read(BOOK / f"{CHAPTER}.ipynb", as_version=4)
    notebooks[CHAPTER] = exercises.with_nbgrader_metadata(chapter)
    return notebooks


def cell_index(nb, grade_id: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if exercises.nbgrader_meta(c).get("grade_id") == grade_id)


def answer(kind: str, source_nb, label: str) -> str:
    """The code of an answer of ``kind`` to exercise ``label`` of ``source_nb``."""
    solution = exercises.source(source_nb.cells[cell_index(source_nb, f"{label}-solution")])
    check = exercises.source(source_nb.cells[cell_index(source_nb, label)])
    right = "\n".join(line for line in solution.splitlines()
                      if line.strip() not in (exercises.BEGIN, exercises.END))
    if kind == "right":
        return right
    fields = {"name": re.search(r"def (\w+)\(", solution).group(1),
              "check": re.search(r"check\.(\w+)\(", check).group(1), "right": right}
    return ANSWERS[kind].format(**fields)


def submission(source_nb, cases: list[Case]) -> dict:
    """The student edition of ``source_nb`` with each case's answer and attack applied."""
    nb = exercises.student_notebook(source_nb)
    for c in cases:
        if c.answer == "prose":  # an answer graded by hand: the markdown cell of grade id LABEL
            nb.cells[cell_index(nb, c.label)].source = "**Your answer.**\n\nThe running mean lags."
            continue
        i = cell_index(nb, f"{c.label}-solution")
        if c.answer is not None:
            nb.cells[i].source = answer(c.answer, source_nb, c.label)
        if c.added is not None:
            nb.cells.insert(i + 1, new_code_cell(answer(c.added, source_nb, c.label)))
        check = cell_index(nb, c.label)
        lines = nb.cells[check].source.splitlines()
        if c.check == "comment":
            nb.cells[check].source = "\n".join("# " + line for line in lines)
        elif c.check == "try":
            nb.cells[check].source = "try:\n" + "\n".join("    " + line for line in lines) + \
                "\nexcept Exception:\n    pass"
        elif c.check == "delete":
            del nb.cells[check]
        if c.moved:
            del nb.cells[i]
    return nbformat.from_dict(nb)


def write_submissions(submitted: Path, assignment: str, sources: dict[str, dict]) -> None:
    """Write every student's notebooks into nbgrader's ``submitted/STUDENT/ASSIGNMENT`` folders."""
    corrupt = submitted / CORRUPT / assignment / f"{CHAPTER}.ipynb"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_text('{"cells": [')
    for student, notebooks in SUBMISSIONS.items():
        for name, cases in notebooks.items():
            path = submitted / student / assignment / f"{name}.ipynb"
            path.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(submission(sources[name], cases), path)
