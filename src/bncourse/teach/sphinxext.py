"""The book's Sphinx extension (listed in _config.yml): a MathJax of its own, no console errors, and
the theme's words in the book's language.

- MathJax 3 comes from a pinned PyPI package (django-static-mathjax, which ships MathJax's ``es5``
  build, the files the CDN serves) and is copied into the built book, so a book built and read
  without internet renders its formulas.
- Sphinx 7.4 writes an inline script twice when an extension adds it after the builder starts
  (once named ``None``, once ``''``); sphinx-thebe's ``const THEBE_JS_URL`` declared twice is an
  error in every page's console. The copies are made equal here, so Sphinx writes each once.
- An exercise's title (the directive's argument) has no source in the doctree, so Sphinx neither
  extracts it for translation nor translates it; it is given one, before Sphinx's i18n transform.
- A figure's description (its alt text) is extracted for translation through a paragraph of its own
  (myst-nb replaces the image node before the gettext builder reads it).
- A solution's title quotes its exercise's title, from a copy sphinx-exercise made while parsing;
  it is handed the exercise as translated and typeset (curly quotes), so that the two agree.
- An *investigate* exercise's answer is a markdown cell holding nbgrader's ``### BEGIN SOLUTION`` and
  ``### END SOLUTION`` lines; rendered, they are headings, which cannot sit inside a gated solution
  (the build fails). The book drops those two lines from markdown cells; nbgrader still sees them.
- The book theme translates its buttons through a catalog of its own (``booktheme``), which the
  book's ``locale_dirs`` cannot reach, and some of its Chinese is not mainland usage (列印). The
  book's ``booktheme.po`` is put in front of the theme's, so what it translates wins.
"""

import gettext
import json
import re
import shutil
from pathlib import Path

from docutils import nodes
from sphinx import locale
from sphinx.builders.html._assets import _JavaScript
from sphinx.errors import ExtensionError
from sphinx.transforms import SphinxTransform

MATHJAX_ENTRY = "tex-chtml.js"  # TeX input, HTML output: what the book's formulas need
MATHJAX_PARTS = ("a11y", "adaptors", "input", "output", "sre", "ui")  # loaded on demand
THEME_CATALOGS = ("booktheme",)  # catalogs a theme adds for itself


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


def translate_theme_from_the_book(app) -> None:
    """Put the book's translations of the theme's own catalogs in front of the theme's."""
    if not app.config.language or app.config.language == "en":
        return
    for catalog in THEME_CATALOGS:
        for folder in app.config.locale_dirs:
            try:
                ours = gettext.translation(catalog, Path(app.srcdir, folder), [app.config.language])
            except OSError:  # no such catalog in this folder
                continue
            theirs = locale.translators.get(("general", catalog))
            if theirs is not None:
                ours.add_fallback(theirs)
            locale.translators["general", catalog] = ours


MARKER = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*$")


def drop_markers_from_prose(app, docname: str, source: list[str]) -> None:
    """Remove nbgrader's solution markers from a notebook's markdown cells, as Sphinx reads it."""
    if not str(app.env.doc2path(docname)).endswith(".ipynb") or "SOLUTION" not in source[0]:
        return
    nb = json.loads(source[0])
    changed = False
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            lines = "".join(cell["source"]).splitlines(keepends=True)
            kept = [line for line in lines if not MARKER.match(line)]
            changed |= len(kept) != len(lines)
            cell["source"] = kept
    if changed:
        source[0] = json.dumps(nb)


def _extract(document, text: str, source: str, line: int | None) -> None:
    """For the gettext builder: ``text`` as a paragraph of ``document``, which Sphinx extracts."""
    paragraph = nodes.paragraph(text, text)
    paragraph.source, paragraph.line = source, line
    document += paragraph


class TranslatableExerciseTitles(SphinxTransform):
    """Give exercise titles a source, so that the catalogs translate them; for the gettext builder,
    also a paragraph of their own, since sphinx-exercise rebuilds the title nodes before extraction."""

    default_priority = 15  # before sphinx.transforms.i18n.Locale (20)

    def apply(self, **kwargs) -> None:
        from sphinx_exercise.nodes import exercise_subtitle

        for node in list(self.document.findall(exercise_subtitle)):
            node.source = node.source or node.parent.source or self.document["source"]
            node.line = node.line or node.parent.line
            node.rawsource = node.rawsource or node.astext()
            if self.app.builder.name == "gettext":
                _extract(self.document, node.rawsource, node.source, node.line)


class TranslatableImageDescriptions(SphinxTransform):
    """Make each figure's description (its alt text) one line, as the catalogs hold it; for the
    gettext builder, also a paragraph of its own: Sphinx would extract it from the image, but
    myst-nb's post-transforms replace that image before the builder reads it. The Chinese build
    translates the alt text on the image itself (sphinx.transforms.i18n)."""

    default_priority = 15  # before sphinx.transforms.i18n.Locale (20)

    def apply(self, **kwargs) -> None:
        for image in list(self.document.findall(nodes.image)):
            if not image.get("alt"):
                continue
            image["alt"] = " ".join(image["alt"].split())
            if self.app.builder.name == "gettext":
                _extract(self.document, image["alt"], image.source or self.document["source"], image.line)


class TranslatedExercisesForSolutions(SphinxTransform):
    """Give sphinx-exercise the translated exercises: a solution's title quotes its exercise's, which
    sphinx-exercise takes from a copy it made while parsing, before the catalogs translated it."""

    default_priority = 800  # after the catalogs (Locale, 20) and the curly quotes (SmartQuotes, 750)

    def apply(self, **kwargs) -> None:
        from sphinx_exercise.nodes import exercise_enumerable_node, exercise_node

        registry = getattr(self.env, "sphinx_exercise_registry", {})
        for kind in (exercise_enumerable_node, exercise_node):
            for node in self.document.findall(kind):
                if node.get("label") in registry:
                    registry[node["label"]]["node"] = node.deepcopy()


def setup(app):
    app.add_transform(TranslatableExerciseTitles)
    app.add_transform(TranslatedExercisesForSolutions)
    app.add_transform(TranslatableImageDescriptions)
    app.connect("source-read", drop_markers_from_prose)
    app.connect("config-inited", use_local_mathjax)
    app.connect("builder-inited", translate_theme_from_the_book)
    app.connect("env-updated", write_inline_scripts_once)
    app.connect("build-finished", copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
