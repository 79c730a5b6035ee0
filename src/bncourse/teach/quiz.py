"""Self-checks that work in the static book, in Jupyter and on Colab, in English and in Chinese.

``bn.quiz("ch5-sigmoid-rate")`` shows one multiple-choice question from the course's quiz bank
(``quizzes/NN_page.json``, one file per page, inside the package, so it also works on Colab where
the book's folder is not).
The question is placed *before* the cell that measures its answer: the reader commits to a
prediction, clicks, and gets the feedback of their choice. The output is one self-contained piece
of HTML: both languages are in it, and the page's language (``<html lang>``) picks one with CSS;
a small script marks the clicked choice right or wrong and shows its explanation; where scripts
do not run (an untrusted notebook, a reader without JavaScript), a folded "Show the answer"
(``<details>``) still reveals it.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

BANK = Path(__file__).with_name("quizzes")
LANGUAGES = ("en", "zh")

STYLE = """<style>
.bn-quiz{border:1px solid #ccc;border-left:4px solid #4c72b0;border-radius:4px;padding:.6em 1em;
margin:1em 0}
.bn-quiz .bn-q{font-weight:600;margin-bottom:.4em}
.bn-quiz button{display:block;width:100%;text-align:left;margin:.25em 0;padding:.35em .6em;
border:1px solid #bbb;border-radius:4px;background:transparent;color:inherit;font:inherit;cursor:pointer}
.bn-quiz button.bn-right{border-color:#2e7d32;background:rgba(46,125,50,.12)}
.bn-quiz button.bn-wrong{border-color:#c62828;background:rgba(198,40,40,.10)}
.bn-quiz .bn-feedback{margin-top:.4em}
.bn-quiz .bn-feedback:empty{display:none}
html:not([lang^="zh"]) .bn-quiz [lang="zh-CN"],html[lang^="zh"] .bn-quiz [lang="en"]{display:none}
</style>"""

SCRIPT = """<script>
(function(){
  if (window.bnQuiz) return;
  window.bnQuiz = function(button){
    var quiz = button.closest(".bn-quiz");
    quiz.querySelectorAll("button").forEach(function(b){b.classList.remove("bn-right","bn-wrong");});
    button.classList.add(button.dataset.right === "1" ? "bn-right" : "bn-wrong");
    var fb = quiz.querySelector(".bn-feedback");
    fb.innerHTML = button.querySelector("template").innerHTML;
  };
})();
</script>"""


@dataclass(frozen=True)
class Question:
    """One question: its id, the text and choices in each language, the right choice, and the
    feedback for each choice (why it is right, or what it overlooks)."""

    id: str
    question: dict[str, str]
    choices: list[dict[str, str]]
    feedback: list[dict[str, str]]
    answer: int


def _both(value, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or set(value) != set(LANGUAGES) or not all(
            isinstance(v, str) and v.strip() for v in value.values()):
        raise ValueError(f"{what}: expected a text in each of {LANGUAGES}, got {value!r}")
    return value


@cache
def bank() -> dict[str, Question]:
    """Every question of the bank, checked: both languages everywhere, a valid answer."""
    questions = {}
    entries = [e for f in sorted(BANK.glob("*.json")) for e in json.loads(f.read_text(encoding="utf-8"))]
    for entry in entries:
        qid = entry["id"]
        choices = [_both(c, f"{qid} choice {i}") for i, c in enumerate(entry["choices"])]
        feedback = [_both(f, f"{qid} feedback {i}") for i, f in enumerate(entry["feedback"])]
        if len(choices) < 2 or len(feedback) != len(choices):
            raise ValueError(f"{qid}: expected two or more choices, each with its feedback")
        if not 0 <= entry["answer"] < len(choices):
            raise ValueError(f"{qid}: answer {entry['answer']} is not one of the {len(choices)} choices")
        if qid in questions:
            raise ValueError(f"two questions share the id {qid!r}")
        questions[qid] = Question(qid, _both(entry["question"], qid), choices, feedback, entry["answer"])
    return questions


def _text(texts: dict[str, str]) -> str:
    """Both languages, each in an element the page's language shows or hides."""
    return "".join(f'<span lang="{"zh-CN" if lang == "zh" else lang}">{html.escape(texts[lang])}</span>'
                   for lang in LANGUAGES)


def render(qid: str) -> str:
    """The HTML of question ``qid``."""
    questions = bank()
    if qid not in questions:
        raise KeyError(f"no quiz question {qid!r}; the bank has {sorted(questions)}")
    q = questions[qid]
    buttons = "".join(
        f'<button type="button" data-right="{int(i == q.answer)}" onclick="bnQuiz(this)">'
        f'{_text(choice)}<template><strong>{_text(_VERDICT[i == q.answer])}</strong> '
        f"{_text(q.feedback[i])}</template></button>"
        for i, choice in enumerate(q.choices))
    reveal = (f"<details><summary>{_text(_SHOW)}</summary>{_text(q.choices[q.answer])}: "
              f"{_text(q.feedback[q.answer])}</details>")
    return (f'{STYLE}{SCRIPT}<div class="bn-quiz" id="quiz-{html.escape(qid)}">'
            f'<div class="bn-q">{_text(q.question)}</div>{buttons}'
            f'<div class="bn-feedback" aria-live="polite"></div>{reveal}</div>')


_VERDICT = {True: {"en": "Right.", "zh": "正确。"}, False: {"en": "Not quite.", "zh": "不完全对。"}}
_SHOW = {"en": "Show the answer", "zh": "显示答案"}


class _Quiz:
    def __init__(self, qid: str):
        self.html = render(qid)

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        q = bank()[self.html.split('id="quiz-', 1)[1].split('"', 1)[0]]
        lines = [q.question["en"]] + [f"  {chr(97 + i)}) {c['en']}" for i, c in enumerate(q.choices)]
        return "\n".join(lines)


def quiz(qid: str) -> _Quiz:
    """Show self-check question ``qid`` (a cell's last expression): HTML in a notebook or the book,
    the question and its choices as text elsewhere."""
    return _Quiz(qid)
