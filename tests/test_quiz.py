"""The self-check quizzes: a valid bilingual bank, HTML that works without a kernel, and every
question a page asks exists."""

import json
import re
from pathlib import Path

import pytest

import bncourse as bn
from bncourse.teach import quiz

BOOK = Path(__file__).resolve().parent.parent / "book"
ASKED = re.compile(r"bn\.quiz\(\s*[\"']([^\"']+)[\"']")


def test_the_bank_is_valid_and_bilingual():
    questions = quiz.bank()
    assert questions
    for q in questions.values():
        assert set(q.question) == {"en", "zh"}
        assert re.search(r"[\u4e00-\u9fff]", q.question["zh"]), q.id


def test_the_html_holds_both_languages_feedback_and_a_fallback():
    qid = next(iter(quiz.bank()))
    q = quiz.bank()[qid]
    html = bn.quiz(qid)._repr_html_()
    assert 'lang="en"' in html and 'lang="zh-CN"' in html
    assert html.count("<button") == len(q.choices)
    assert html.count('data-right="1"') == 1
    assert "<details>" in html and "bnQuiz(this)" in html
    assert q.choices[q.answer]["en"].split(":")[0] in repr(bn.quiz(qid))


def test_a_missing_question_says_what_exists():
    with pytest.raises(KeyError, match="no quiz question 'nope'"):
        bn.quiz("nope")


def test_every_question_a_notebook_asks_is_in_the_bank():
    asked = {(p.name, qid) for p in BOOK.glob("*.ipynb")
             for c in json.loads(p.read_text())["cells"] if c["cell_type"] == "code"
             for qid in ASKED.findall("".join(c["source"]))}
    missing = [(name, qid) for name, qid in asked if qid not in quiz.bank()]
    assert not missing, missing


def test_every_chapter_page_asks_a_question():
    pages = [p for p in sorted(BOOK.glob("*.ipynb")) if not p.name.startswith("00_")]
    silent = [p.name for p in pages
              if not any(ASKED.search("".join(c["source"])) for c in json.loads(p.read_text())["cells"]
                         if c["cell_type"] == "code")]
    assert not silent, f"chapter pages without a self-check (bn.quiz): {silent}"
