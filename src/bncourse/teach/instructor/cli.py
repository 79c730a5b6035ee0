"""The ``bncourse`` command for instructors (also ``python -m bncourse.teach.instructor.cli``).

    bncourse student-edition OUT_DIR        chapter notebooks without solutions or outputs
    bncourse student-book OUT_DIR           the book's sources for a student build (no solutions)
    bncourse nbgrader-metadata [BOOK]       write nbgrader's cell metadata from the markers
    bncourse grade NOTEBOOK...              grade submissions against the source notebooks
    bncourse exercises [BOOK] [--write PAGE] every exercise with its kind and points
"""

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import nbformat
import yaml

from . import report
from .exercises import (
    exercise_table,
    student_book_notebook,
    with_exercise_table,
    write_nbgrader_metadata,
    write_student_edition,
)
from .grade import ERROR, Row, grade_notebook, summative

INSTRUCTOR_PAGES = ("book/instructors", "book/grading")


def student_edition(args) -> int:
    written = write_student_edition(Path(args.book), Path(args.out_dir))
    print(f"wrote {len(written)} student notebooks (solutions replaced, no outputs) to {args.out_dir}")
    return 0


def nbgrader_metadata(args) -> int:
    changed = write_nbgrader_metadata(Path(args.book), check=args.check)
    for path in changed:
        print(f"{'stale' if args.check else 'updated'}: {path}")
    if args.check and changed:
        print("run `bncourse nbgrader-metadata` to write nbgrader's metadata", file=sys.stderr)
        return 1
    print(f"nbgrader's metadata is up to date in {args.book}" if not changed else
          f"wrote nbgrader's metadata into {len(changed)} notebooks")
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
    for folder in ("_templates", "locales"):  # the language switch, the Chinese catalogs
        if (root / folder).is_dir():
            shutil.copytree(root / folder, out / folder, ignore=shutil.ignore_patterns("*.mo"))
    for page in (root / "book").glob("*.md"):
        if f"book/{page.stem}" not in INSTRUCTOR_PAGES:
            shutil.copy(page, out / "book" / page.name)
    for path in sorted((root / "book").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.write(student_book_notebook(nb), out / "book" / path.name)
    print(f"wrote the student book sources to {out}")
    return 0


def grade(args) -> int:
    rows = []
    for path in args.notebooks:
        print(f"grading {path} ...", file=sys.stderr, flush=True)
        try:
            timeouts = (args.timeout, args.notebook_timeout)
            graded = grade_notebook(Path(path), Path(args.source), args.student, timeouts)
            rows += [replace(r, message=summative(r.message)) for r in graded] if args.summative else graded
        except Exception as e:  # noqa: BLE001  (a bug of the grader must not lose the batch)
            failure = f"grader failure: {type(e).__name__}: {e}"
            rows.append(Row(args.student or "", path, "", 0, 0, ERROR, failure))
        csv_path = report.write(rows, Path(args.json))  # after every notebook: a crash keeps the rest
    print(report.table(rows))
    print(f"\ngradebook written to {args.json} and {csv_path}")
    return report.exit_status(rows)


def exercises(args) -> int:
    table = exercise_table(Path(args.book))
    if args.write:
        page = Path(args.write)
        page.write_text(with_exercise_table(page.read_text(), table))
        print(f"wrote the table of exercises into {page}")
    else:
        print(table)
    return 0


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
    p = sub.add_parser("nbgrader-metadata", help="write nbgrader's cell metadata from the solution markers")
    p.add_argument("book", nargs="?", default="book", help="folder of the chapter notebooks (default: book)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if any notebook is stale")
    p.set_defaults(run=nbgrader_metadata)
    p = sub.add_parser("grade", help="grade submissions against the source notebooks, exercise by exercise")
    p.add_argument("notebooks", nargs="+")
    p.add_argument("--source", default="book",
                   help="folder of the instructor's notebooks, matched by file name (default: book)")
    p.add_argument("--student", help="the student id (default: STUDENT of nbgrader's layout "
                   "submitted/STUDENT/ASSIGNMENT/)")
    p.add_argument("--timeout", type=int, default=60,
                   help="seconds allowed for each solution and check cell (default: 60)")
    p.add_argument("--notebook-timeout", type=int, default=600,
                   help="seconds allowed for each of the notebook's own cells (default: 600)")
    p.add_argument("--json", default="grades.json", help="gradebook file; the CSV goes beside it "
                   "(default: grades.json)")
    p.add_argument("--summative", action="store_true",
                   help="messages say what is wrong without the hints that give the answer away")
    p.set_defaults(run=grade)
    p = sub.add_parser("exercises", help="every exercise with its kind and points, per chapter")
    p.add_argument("book", nargs="?", default="book", help="folder of the chapter notebooks (default: book)")
    p.add_argument("--write", metavar="PAGE", help="write the table between the markers of PAGE")
    p.set_defaults(run=exercises)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
