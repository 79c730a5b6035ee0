"""The teaching tools: exercise checks (``check``), the instructor's side (``instructor``: nbgrader's
metadata, the student edition, the grader, the ``bncourse`` command) and the book's Sphinx extension
(``sphinxext``). They build on the library and the laboratory."""
