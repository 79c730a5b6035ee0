"""The instructor's side of the course: the exercises in the notebooks (nbgrader's metadata, the
student edition), the grader, and the ``bncourse`` command. Not imported by ``import bncourse``."""
