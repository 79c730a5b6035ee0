"""The Chinese book's machinery: catalogs, their coverage, the generated config and table of contents."""

from pathlib import Path

import yaml
from babel.messages.catalog import Catalog
from babel.messages.pofile import write_po

from bncourse.teach import i18n

ROOT = Path(__file__).resolve().parent.parent


def _po(path: Path, entries: dict[str, str], fuzzy: tuple = ()) -> None:
    catalog = Catalog(locale="zh_CN")
    for msgid, msgstr in entries.items():
        catalog.add(msgid, msgstr, flags=("fuzzy",) if msgid in fuzzy else ())
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        write_po(f, catalog)


def _pot(path: Path, msgids: list[str]) -> None:
    _po(path, dict.fromkeys(msgids, ""))


def _book(tmp_path: Path) -> Path:
    (tmp_path / "_config.yml").write_text(yaml.safe_dump({
        "title": "T", "execute": {"execute_notebooks": "cache"}, "bibtex_bibfiles": ["refs.bib"],
        "sphinx": {"config": {"templates_path": ["_templates"]}}}))
    (tmp_path / "_toc.yml").write_text(yaml.safe_dump({
        "format": "jb-book", "root": "book/intro",
        "parts": [{"caption": "Start here", "chapters": [{"file": "book/a"}]}]}))
    return tmp_path


def test_coverage_counts_fuzzy_entries_as_not_translated(tmp_path):
    _po(tmp_path / "a.po", {"One.": "一。", "Two.": "", "Three.": "三。"}, fuzzy=("Three.",))
    c = i18n.coverage(tmp_path / "a.po")
    assert (c.translated, c.untranslated, c.fuzzy) == (1, ["Two."], ["Three."])
    assert i18n.translations(tmp_path / "a.po") == {"One.": "一。"}


def test_the_toc_captions_and_the_config_in_chinese(tmp_path):
    root = _book(tmp_path)
    po = root / "locales/zh_CN/LC_MESSAGES/book/intro.po"
    _po(po, {"Start here": "从这里开始"})
    toc = i18n.zh_toc(root)
    assert toc["parts"][0]["caption"] == "从这里开始" and toc["root"] == "book/intro"
    config = i18n.zh_config(root)
    sphinx = config["sphinx"]["config"]
    assert sphinx["language"] == "zh_CN" and sphinx["locale_dirs"] == [str(root.resolve() / "locales")]
    assert config["execute"]["cache"] == str(root.resolve() / "_build/.jupyter_cache")
    assert config["bibtex_bibfiles"] == [str(root / "refs.bib")]
    assert sphinx["templates_path"] == [str(root.resolve() / "_templates")]
    assert i18n.zh_config(root, stored=True)["execute"]["execute_notebooks"] == "off"
    _po(po, {"Start here": "从这里开始"}, fuzzy=("Start here",))
    try:
        i18n.zh_toc(root)
    except ValueError as e:
        assert "has no translation" in str(e)
    else:
        raise AssertionError("a fuzzy caption must not pass")


def test_check_finds_new_sentences_stale_catalogs_and_missing_ones(tmp_path):
    root, pots = _book(tmp_path), tmp_path / "pot"
    po_dir = root / "locales/zh_CN/LC_MESSAGES/book"
    _pot(pots / "book/a.pot", ["Old.", "New."])
    _pot(pots / "book/b.pot", ["B."])
    _po(po_dir / "a.po", {"Old.": "旧。"})
    _po(po_dir / "gone.po", {"X.": "X。"})
    problems = i18n.check(root, pots)
    assert any(p.startswith("book/b: no catalog") for p in problems)
    assert any(p.startswith("book/gone: a catalog for a page") for p in problems)
    assert any(p.startswith("book/a: 1 sentences not in the catalog") for p in problems)
    _po(po_dir / "a.po", {"Old.": "旧。", "New.": "新。"})
    _po(po_dir / "b.po", {"B.": "乙。"})
    (po_dir / "gone.po").unlink()
    assert i18n.check(root, pots) == []
