"""What a reader meets on each page: words in the reading flow, words folded away, numbers typed by hand.

``python -m bncourse.teach.pages book/*.ipynb book/*.md`` prints, per page, the words of the main
flow and of the folded dropdowns (math, code, roles and directive options left out), and every
measured-looking number still typed into the prose (a percentage, a decimal, a ratio such as
``2.3×`` or ``4 times``) rather than glued from the run. ``tests/test_pages.py`` holds the book to
the limits of DESIGN §3.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

MAIN_WORDS, FOLDED_WORDS = 2500, 1000

FENCE = re.compile(r"^(?P<fence>:{3,}|`{3,})\s*(?:\{(?P<name>[\w:-]+)\})?(?P<arg>.*)$")
DISPLAY_MATH = re.compile(r"\$\$.*?\$\$|\\begin\{(\w+\*?)\}.*?\\end\{\1\}", re.S)
INLINE_MATH = re.compile(r"(?<!\\)\$(?!\$)(.+?)(?<!\\)\$")
ROLE = re.compile(r"\{[\w:-]+\}`[^`]*`")
CODE = re.compile(r"``?[^`]+``?")
LINK = re.compile(r"\]\([^)]*\)|<https?://[^>]*>|https?://\S+")
TAG = re.compile(r"<[^>]+>")
OPTION = re.compile(r"^\s*:(?P<key>[\w-]+):(?P<value>.*)$")
# numbers that look measured: 12%, 0.93, 2.3x / 2.3×, 4 times; not section numbers or versions
TYPED = re.compile(r"(?<![\w.§×])(?:\d+(?:\.\d+)?\s?%|\d+\.\d+(?![.\d])(?!\s?×\s?\d)"
                   r"|\d+(?:\.\d+)?\s?(?:×(?!\s?\d)|x\b|times\b))")
NOT_MEASURED = re.compile(r"(?:§|[Ss]ection |[Aa]lgorithm |[Ff]igure |[Tt]able |[Ee]q\. |[Cc]hapter |"
                          r"[Pp]ython |PyTorch |torch |v)$")


@dataclass
class PageStats:
    path: Path
    main_words: int = 0
    folded_words: int = 0
    typed: list[tuple[int, str]] = field(default_factory=list)  # (cell index, the number in context)


def _cells(path: Path) -> list[tuple[int, str]]:
    if path.suffix == ".md":
        return [(0, path.read_text())]
    nb = json.loads(path.read_text())
    return [(i, "".join(c["source"])) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown"]


def _prose(text: str) -> str:
    """The words a reader reads: no math, code, roles, links or markup."""
    text = ROLE.sub(" ", text)
    text = CODE.sub(" ", text)
    text = INLINE_MATH.sub(" ", text)
    text = LINK.sub("]", text)
    text = TAG.sub(" ", text)
    return re.sub(r"[#*_>|\[\]{}]", " ", text)


def _numbers(text: str) -> list[str]:
    """Measured-looking numbers in ``text`` (inline math included, roles and code left out)."""
    text = ROLE.sub(" ", CODE.sub(" ", text))
    text = INLINE_MATH.sub(lambda m: " " + m.group(1) + " ", text)
    found = []
    for m in TYPED.finditer(text):
        if NOT_MEASURED.search(text[max(0, m.start() - 12):m.start()]):
            continue
        found.append(text[max(0, m.start() - 30):m.end() + 10].replace("\n", " ").strip())
    return found


def stats(path: Path) -> PageStats:
    """Words in the main flow and in dropdowns, and typed numbers, of one page."""
    page = PageStats(Path(path))
    stack: list[tuple[str, bool]] = []  # open fences: (fence, folded)
    solution = False  # inside a gated solution (a dropdown in the book), an investigate answer
    for index, source in _cells(page.path):
        if "{solution-end}" in source:
            solution = False
            continue
        source = DISPLAY_MATH.sub(" ", source)
        in_code = None
        for line in source.splitlines():
            if in_code:
                if line.strip().startswith(in_code):
                    in_code = None
                continue
            m = FENCE.match(line.strip())
            if m and m.group("fence").startswith("`") and not m.group("name"):
                in_code = m.group("fence")  # a code block: no prose
                continue
            if m and m.group("fence").startswith("`") and m.group("name") in ("code-cell", "code-block",
                                                                              "code", "math"):
                in_code = m.group("fence")
                continue
            if m and (m.group("name") or (stack and m.group("fence") == stack[-1][0]
                                          and not m.group("arg").strip())):
                if m.group("name"):
                    folded = m.group("name") == "dropdown" or any(f for _, f in stack)
                    stack.append((m.group("fence"), folded))
                    line = m.group("arg")  # a title is prose
                else:
                    stack.pop()
                    continue
            option = OPTION.match(line)
            if option:
                if option.group("key") == "class" and "dropdown" in option.group("value") and stack:
                    fence, _ = stack[-1]
                    stack[-1] = (fence, True)
                if option.group("key") in ("alt", "caption"):
                    line = option.group("value")
                else:
                    continue
            folded = (bool(stack) and stack[-1][1]) or solution
            words = len(_prose(line).split())
            if folded:
                page.folded_words += words
            else:
                page.main_words += words
            page.typed += [(index, n) for n in _numbers(line)]
        if "{solution-start}" in source and "dropdown" in source:
            solution = True
    return page


def main(argv: list[str] | None = None) -> None:
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends quietly
    parser = argparse.ArgumentParser(prog="python -m bncourse.teach.pages",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("pages", nargs="+", type=Path)
    parser.add_argument("--numbers", action="store_true", help="list every typed number in context")
    args = parser.parse_args(argv)
    total = 0
    print(f"{'page':42} {'main':>6} {'folded':>7} {'typed':>6}")
    for path in args.pages:
        s = stats(path)
        total += len(s.typed)
        flag = " <- over" if s.main_words > MAIN_WORDS or s.folded_words > FOLDED_WORDS else ""
        print(f"{path.name:42} {s.main_words:6} {s.folded_words:7} {len(s.typed):6}{flag}")
        if args.numbers:
            for index, context in s.typed:
                print(f"    cell {index}: ...{context}...")
    print(f"typed numbers in all: {total}")


if __name__ == "__main__":
    main()
