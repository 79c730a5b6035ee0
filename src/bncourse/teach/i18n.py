"""The Chinese book, built from the same notebooks through Sphinx's gettext catalogs (DESIGN §7).

The English pages are the source. ``make locales`` extracts their prose into
``locales/zh_CN/LC_MESSAGES/**/*.po`` (one catalog per page, ``sphinx-intl``); translators fill in
``msgstr``; a changed English sentence comes back as a fuzzy entry, shown in English, until its
translation follows. This module writes what the Chinese build needs beside the English one:

* ``zh-config OUT``: ``OUT/_config.zh.yml`` (language, catalogs, the same execution cache, the
  theme's texts in Chinese) and ``OUT/_toc.zh.yml`` (the part captions, which Sphinx extracts but
  never applies, translated from the root page's catalog);
* ``stats``: per catalog, entries translated, untranslated and fuzzy (the tests require 100% and 0);
* ``check POT_DIR``: the catalogs hold exactly the messages just extracted from the English pages,
  each translated: an English change that lands without its translation fails.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from babel.messages.pofile import read_po

LANGUAGE = "zh_CN"
THEME = {  # what the Chinese pages say where the theme would speak English
    "title": "批标准化：一门开放课程",
    "search_bar_text": "搜索本书……",
    "author": "bncourse 的作者们",
}


def catalogs(root: Path) -> list[Path]:
    """Every page catalog of the Chinese book."""
    return sorted((Path(root) / "locales" / LANGUAGE / "LC_MESSAGES").rglob("*.po"))


def translations(path: Path) -> dict[str, str]:
    """msgid -> msgstr of a catalog's translated, non-fuzzy entries."""
    with open(path, "rb") as f:
        catalog = read_po(f)
    return {m.id: m.string for m in catalog if m.id and m.string and not m.fuzzy}


@dataclass
class Coverage:
    path: Path
    translated: int
    untranslated: list[str]
    fuzzy: list[str]


def coverage(path: Path) -> Coverage:
    """What of a catalog is translated; fuzzy entries count as not (the build shows them in English)."""
    with open(path, "rb") as f:
        catalog = read_po(f)
    entries = [m for m in catalog if m.id]
    return Coverage(Path(path), sum(bool(m.string) and not m.fuzzy for m in entries),
                    [m.id for m in entries if not m.string], [m.id for m in entries if m.fuzzy])


def zh_toc(root: Path) -> dict:
    """``_toc.yml`` with its part captions translated (from the root page's catalog)."""
    toc = yaml.safe_load((Path(root) / "_toc.yml").read_text())
    po = Path(root) / "locales" / LANGUAGE / "LC_MESSAGES" / f"{toc['root']}.po"
    words = translations(po) if po.exists() else {}
    for part in toc.get("parts", []):
        caption = part.get("caption")
        if caption not in words:
            raise ValueError(f"the part caption {caption!r} has no translation in {po}")
        part["caption"] = words[caption]
    return toc


def zh_config(root: Path, stored: bool = False) -> dict:
    """The English ``_config.yml`` made into the Chinese book's. ``stored``: render the notebooks'
    stored outputs (as ``make book-check`` does); otherwise the English build's cached runs."""
    root = Path(root).resolve()
    config = yaml.safe_load((root / "_config.yml").read_text())
    edition = " (student edition)"
    config["title"] = THEME["title"] + ("（学生版）" if config["title"].endswith(edition) else "")
    config["author"] = THEME["author"]
    if stored:
        config["execute"]["execute_notebooks"] = "off"
    else:
        config["execute"]["cache"] = str(root / "_build" / ".jupyter_cache")  # the English runs
    sphinx = config.setdefault("sphinx", {}).setdefault("config", {})
    sphinx["language"] = LANGUAGE
    sphinx["locale_dirs"] = [str(root / "locales")]
    sphinx.setdefault("html_theme_options", {})["search_bar_text"] = THEME["search_bar_text"]
    bib = config.get("bibtex_bibfiles", [])
    config["bibtex_bibfiles"] = [str(root / b) for b in bib]
    for key in ("templates_path", "html_static_path"):
        if key in sphinx:
            sphinx[key] = [str(root / p) for p in sphinx[key]]
    return config


def write_zh_config(root: Path, out: Path, stored: bool = False) -> tuple[Path, Path]:
    """Write ``OUT/_config.zh.yml`` and ``OUT/_toc.zh.yml``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config, toc = out / "_config.zh.yml", out / "_toc.zh.yml"
    config.write_text(yaml.safe_dump(zh_config(root, stored), sort_keys=False, allow_unicode=True))
    toc.write_text(yaml.safe_dump(zh_toc(root), sort_keys=False, allow_unicode=True))
    return config, toc


def message_ids(path: Path) -> set[str]:
    with open(path, "rb") as f:
        return {m.id for m in read_po(f) if m.id}


def check(root: Path, pot_dir: Path) -> list[str]:
    """What is wrong with the catalogs against templates just extracted into ``pot_dir``."""
    root, pot_dir = Path(root), Path(pot_dir)
    po_dir = root / "locales" / LANGUAGE / "LC_MESSAGES"
    problems = []
    pots = {p.relative_to(pot_dir).with_suffix(""): p for p in pot_dir.rglob("*.pot")
            if p.relative_to(pot_dir).parts[0] != "_static"}
    pos = {p.relative_to(po_dir).with_suffix(""): p for p in catalogs(root)}
    for page in sorted(set(pots) - set(pos)):
        problems.append(f"{page}: no catalog; run `make locales`")
    for page in sorted(set(pos) - set(pots) - {Path("sphinx"), Path("booktheme")}):
        problems.append(f"{page}: a catalog for a page the book no longer has")
    for page in sorted(set(pots) & set(pos)):
        new, old = message_ids(pots[page]), message_ids(pos[page])
        if new - old:
            problems.append(f"{page}: {len(new - old)} sentences not in the catalog (run `make locales`, "
                            f"then translate): {sorted(new - old)[0][:80]!r} ...")
        c = coverage(pos[page])
        if c.untranslated or c.fuzzy:
            first = (c.untranslated or c.fuzzy)[0][:80]
            problems.append(f"{page}: {len(c.untranslated)} untranslated and {len(c.fuzzy)} fuzzy "
                            f"entries, the first {first!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bncourse.teach.i18n",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("zh-config", help="write _config.zh.yml and _toc.zh.yml into OUT")
    p.add_argument("out")
    p.add_argument("--root", default=".")
    p.add_argument("--stored", action="store_true", help="render the stored outputs (no execution)")
    p = sub.add_parser("stats", help="per catalog: translated, untranslated, fuzzy")
    p.add_argument("--root", default=".")
    p = sub.add_parser("check", help="the catalogs hold the extracted messages, all translated")
    p.add_argument("pot_dir")
    p.add_argument("--root", default=".")
    args = parser.parse_args(argv)
    if args.command == "check":
        problems = check(Path(args.root), Path(args.pot_dir))
        print("\n".join(problems) if problems else "the Chinese catalogs are complete and current")
        return 1 if problems else 0
    if args.command == "zh-config":
        for path in write_zh_config(Path(args.root), Path(args.out), args.stored):
            print(f"wrote {path}")
        return 0
    incomplete = 0
    for path in catalogs(Path(args.root)):
        c = coverage(path)
        total = c.translated + len(c.untranslated) + len(set(c.fuzzy) - set(c.untranslated))
        incomplete += bool(c.untranslated or c.fuzzy)
        print(f"{path}: {c.translated}/{total} translated, {len(c.untranslated)} untranslated, "
              f"{len(c.fuzzy)} fuzzy")
    return 1 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
