"""The book's Sphinx extension (listed in _config.yml): a MathJax of its own, and no console errors.

- MathJax 3 comes from a pinned PyPI package (django-static-mathjax, which ships MathJax's ``es5``
  build, the files the CDN serves) and is copied into the built book, so a book built and read
  without internet renders its formulas.
- Sphinx 7.4 writes an inline script twice when an extension adds it after the builder starts
  (once named ``None``, once ``''``); sphinx-thebe's ``const THEBE_JS_URL`` declared twice is an
  error in every page's console. The copies are made equal here, so Sphinx writes each once.
- The answer of an exercise graded by hand is a markdown cell between nbgrader's markers, ``### BEGIN
  SOLUTION`` and ``### END SOLUTION``: markdown headings, which inside a gated solution break
  sphinx-exercise. The book drops those two lines from markdown cells (code cells keep theirs).
"""

import json
import shutil
from pathlib import Path

from sphinx.builders.html._assets import _JavaScript
from sphinx.errors import ExtensionError

MATHJAX_ENTRY = "tex-chtml.js"  # TeX input, HTML output: what the book's formulas need
MATHJAX_PARTS = ("a11y", "adaptors", "input", "output", "sre", "ui")  # loaded on demand


def mathjax_source() -> Path:
    """The folder of MathJax's ``es5`` build inside the installed package."""
    try:
        import mathjax
    except ImportError:
        raise ExtensionError(
            "the book serves its own MathJax: install it with "
            "`pip install -r requirements.txt` (django-static-mathjax)"
        ) from None
    return Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"


def use_local_mathjax(app, config) -> None:
    config.mathjax_path = f"mathjax/{MATHJAX_ENTRY}"  # relative to _static/
    mathjax_source()  # fail early, before a long build, if the package is missing


def copy_mathjax(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    source, target = mathjax_source(), Path(app.outdir) / "_static" / "mathjax"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / MATHJAX_ENTRY, target)
    for part in MATHJAX_PARTS:
        shutil.copytree(source / part, target / part, dirs_exist_ok=True)


def write_inline_scripts_once(app, env) -> None:
    scripts = getattr(app.builder, "_js_files", None)
    if scripts is not None:
        scripts[:] = [_JavaScript("", priority=s.priority, **s.attributes) if s.filename is None else s
                      for s in scripts]


ANSWER_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")


def drop_answer_markers(app, docname, source) -> None:
    if not str(app.env.doc2path(docname)).endswith(".ipynb") or "### BEGIN SOLUTION" not in source[0]:
        return
    nb = json.loads(source[0])
    changed = False
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        text = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        lines = text.splitlines(keepends=True)
        kept = [line for line in lines if line.strip() not in ANSWER_MARKERS]
        if len(kept) < len(lines):
            cell["source"], changed = "".join(kept), True
    if changed:
        source[0] = json.dumps(nb)


def setup(app):
    app.connect("config-inited", use_local_mathjax)
    app.connect("source-read", drop_answer_markers)
    app.connect("env-updated", write_inline_scripts_once)
    app.connect("build-finished", copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
