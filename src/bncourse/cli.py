"""The ``bncourse`` command for instructors.

    bncourse student-edition OUT_DIR        chapter notebooks without solutions or outputs
    bncourse student-book OUT_DIR           the book's sources for a student build (no solutions)
    bncourse grade NOTEBOOK... [--json F]   run notebooks and report each exercise
"""

import argparse
import shutil
import sys
from pathlib import Path

import nbformat
import yaml

from . import grade as grading
from .exercises import student_book_notebook, write_student_edition

INSTRUCTOR_PAGES = ("book/instructors",)


def student_edition(args) -> int:
    written = write_student_edition(Path(args.book), Path(args.out_dir))
    print(f"wrote {len(written)} student notebooks (solutions replaced, no outputs) to {args.out_dir}")
    return 0


def student_book(args) -> int:
    """Copy the book's sources to OUT_DIR with solutions cut out and nothing that links to them."""
    root, out = Path(args.root), Path(args.out_dir)
    if out.exists():
        shutil.rmtree(out)
    (out / "book").mkdir(parents=True)
    config = yaml.safe_load((root / "_config.yml").read_text())
    config["title"] = f"{config['title']} (student edition)"
    config["execute"]["execute_notebooks"] = "off"  # stored outputs; solution cells are gone
    config.pop("launch_buttons", None)  # they would open the instructor notebooks
    config["html"] = {**config.get("html", {}), "use_repository_button": False,
                      "use_issues_button": False, "use_edit_page_button": False}
    sphinx = config.setdefault("sphinx", {}).setdefault("config", {})
    sphinx.update({"html_copy_source": False, "html_show_sourcelink": False})
    sphinx.setdefault("html_theme_options", {})["use_download_button"] = False
    (out / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    for part in toc.get("parts", []):
        part["chapters"] = [c for c in part["chapters"] if c.get("file") not in INSTRUCTOR_PAGES]
    (out / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False, allow_unicode=True))
    shutil.copy(root / "references.bib", out / "references.bib")
    shutil.copytree(root / "_static", out / "_static")  # the book's CSS
    for page in (root / "book").glob("*.md"):
        if f"book/{page.stem}" not in INSTRUCTOR_PAGES:
            shutil.copy(page, out / "book" / page.name)
    for path in sorted((root / "book").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.write(student_book_notebook(nb), out / "book" / path.name)
    print(f"wrote the student book sources to {out}")
    return 0


def grade(args) -> int:
    results = []
    for path in args.notebooks:
        print(f"grading {path} ...", file=sys.stderr, flush=True)
        results += grading.grade_notebook(Path(path), timeout=args.timeout)
    print(grading.table(results))
    grading.write_json(results, Path(args.json))
    print(f"gradebook written to {args.json}")
    s = grading.summary(results)
    return 0 if s["total"] and s["passed"] == s["total"] else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bncourse", description="Tools for teaching with bncourse.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("student-edition", help="write the chapter notebooks without solutions")
    p.add_argument("out_dir")
    p.add_argument("--book", default="book", help="folder of the chapter notebooks (default: book)")
    p.set_defaults(run=student_edition)
    p = sub.add_parser("student-book", help="write the book's sources for a build without solutions")
    p.add_argument("out_dir")
    p.add_argument("--root", default=".", help="the book's root folder, with _config.yml (default: .)")
    p.set_defaults(run=student_book)
    p = sub.add_parser("grade", help="run notebooks and report each exercise: pass, fail, not attempted")
    p.add_argument("notebooks", nargs="+")
    p.add_argument("--timeout", type=int, default=300, help="seconds allowed per cell (default: 300)")
    p.add_argument("--json", default="grades.json", help="gradebook file (default: grades.json)")
    p.set_defaults(run=grade)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
