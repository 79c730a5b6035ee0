"""The rendered book in a real browser: every page, as a reader sees it (DESIGN §3, §5).

Serves the book built from the stored outputs (`make book-check`, or BOOK_HTML=folder) on 127.0.0.1,
opens every page in headless Chromium (Debian's package, driven by Playwright) at 1280 px and at
390 px, and fails on what a reader would trip over; with BNCOURSE_SCREENSHOTS=1 (`make screenshots`)
it also saves a screenshot of each, whole, under _build/screenshots/. Every request that leaves
127.0.0.1 is blocked and counted, so the book is tested offline.

Figure legibility: a PNG records the dpi it was saved at, so its smallest text, in the style's
smallest font size (`bn.plot`), measures MIN_PT / 72 * dpi image pixels; times the displayed width
over the natural width, that is its size on screen. Text a notebook sets smaller by hand is caught
in tests/test_notebooks.py. The test holds the 1280 px column to 9 px; on a 390 px phone a
two-panel figure's text shows at about 5 px (report.json records it), where a reader zooms into the
retina image (it links to itself at full size).
"""

import functools
import http.server
import json
import os
import re
import struct
import threading
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
HTML = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "check" / "_build" / "html"))
SHOTS = ROOT / "_build" / "screenshots"  # the report, and the screenshots if asked for
SCREENSHOTS = os.environ.get("BNCOURSE_SCREENSHOTS") == "1"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDTHS = {"desktop": 1280, "phone": 390}
MIN_TEXT_PX = 9  # the smallest text a figure may show, in CSS pixels as displayed at 1280 px
REDIRECT = re.compile(r'http-equiv="refresh" content="\d+; ?url=([^"]+)"', re.IGNORECASE)
RAW_MATH = re.compile(r"\\\(|\\\[|\$")  # outside code, any $ is math left raw
PATH_LIKE = re.compile(r"[/\\]|\.(png|jpe?g|svg|gif|webp)$|^[0-9a-f]{16,}", re.IGNORECASE)
INSTALL = ("install the browser with `sudo apt-get install -y chromium fonts-noto-cjk` "
           "and the driver with `.venv/bin/pip install -r requirements.txt` (playwright, pinned)")


def _require(ok: bool, why: str) -> None:
    """Skip on a developer's machine, fail in CI (CI=true), where the browser test must run."""
    if not ok:
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(why)


def _png_dpi(path: Path) -> float | None:
    """The resolution a PNG was saved at (its pHYs chunk), in dots per inch."""
    data = path.read_bytes()
    at = data.find(b"pHYs")
    if not data.startswith(b"\x89PNG") or at < 0 or data[at + 12] != 1:  # unit 1: per metre
        return None
    return struct.unpack(">I", data[at + 4:at + 8])[0] * 0.0254


def _min_font_pt() -> float:
    """The smallest font size in the book's figure style (ticks, legends, labels), in points."""
    import matplotlib as mpl
    from matplotlib.font_manager import FontProperties

    from bncourse.lab.plot import use_style

    use_style()
    keys = ["font.size", "xtick.labelsize", "ytick.labelsize", "legend.fontsize", "axes.labelsize"]
    return min(FontProperties(size=mpl.rcParams[k]).get_size_in_points() for k in keys)


# Runs in the page: what the checks need, measured on the page as displayed.
MEASURE = r"""() => {
  const visible = e => e.checkVisibility({visibilityProperty: true});  // folded: not shown
  const text = document.body.cloneNode(true);
  text.querySelectorAll("pre, code, script, style, mjx-container, .MathJax").forEach(e => e.remove());
  const blocks = [...document.querySelectorAll("main pre, main .cell_output > *")].filter(visible);
  return {
    title: document.title,
    text: text.textContent,
    math_errors: document.querySelectorAll("mjx-merror").length,
    overflowing: blocks.filter(e => e.scrollWidth > e.clientWidth + 1).map(e => ({
      first_line: e.innerText.trim().split("\n")[0].slice(0, 70),
      widest: Math.max(...e.innerText.split("\n").map(l => l.length)),
      scroll: e.scrollWidth, client: e.clientWidth})),
    images: [...document.querySelectorAll("article.bd-article img")].map((e, i) => ({
      src: e.currentSrc, alt: e.getAttribute("alt"), natural: e.naturalWidth,
      shown: e.getBoundingClientRect().width, figure: !!e.closest(".cell_output"),
      name: `image ${i + 1} (${(e.closest("figure")?.querySelector("figcaption")?.innerText
                               || "no caption").slice(0, 40)})`})),
    unmarked_chinese: [...document.querySelectorAll("main *")].flatMap(e => [...e.childNodes])
      .filter(n => n.nodeType === Node.TEXT_NODE && /[\u3400-\u9fff]/.test(n.textContent)
              && !n.parentElement.closest('[lang^="zh"], pre'))  // code shows the checks' zh= text
      .map(n => n.textContent.slice(Math.max(0, n.textContent.search(/[\u3400-\u9fff]/) - 15))
                .slice(0, 40).replace(/\s+/g, " ")),
    links: [...document.querySelectorAll("a[href]")].map(a => a.href),
    ids: [...document.querySelectorAll("[id], a[name]")].map(e => e.id || e.name),
  };
}"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(folder: Path):
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _open(context, url: str, log: dict, external: list) -> object:
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and log["console"].append(m.text))
    page.on("pageerror", lambda e: log["console"].append(str(e)))
    page.on("requestfailed", lambda r: r.url in external
            or log["failed"].append(f"{r.url} ({r.failure})"))
    page.on("response", lambda r: r.status >= 400 and log["failed"].append(f"{r.url} ({r.status})"))
    page.goto(url, wait_until="load")
    page.evaluate("() => window.MathJax?.startup?.promise")
    page.evaluate("() => document.fonts.ready.then(() => true)")
    return page


@pytest.fixture(scope="module")
def book():
    """Open every page at both widths; return what each showed, keyed by its path in the build."""
    _require((HTML / "index.html").exists(),
             f"no built book in {HTML}: run `make book-check` first (or set BOOK_HTML)")
    try:
        from playwright.sync_api import TimeoutError as NoResults
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require(False, f"Playwright is not installed: {INSTALL}")
    _require(Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}: {INSTALL}")

    server = _serve(HTML)
    origin = f"http://127.0.0.1:{server.server_port}/"
    seen, redirects = {}, {}
    for file in sorted(HTML.rglob("*.html")):
        path = file.relative_to(HTML).as_posix()
        if not any(part.startswith("_") for part in path.split("/")):
            to = REDIRECT.search(file.read_text()[:2000])  # index.html: not a page, a link
            (redirects if to else seen)[path] = {"console": [], "failed": [],
                                                 "links": [urljoin(origin + path, to[1])] if to else []}
    pages = list(seen)
    external = []  # every request that left 127.0.0.1, blocked

    def block_outside(route):
        if route.request.url.startswith(origin):
            return route.continue_()
        external.append(route.request.url)
        return route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        for name, width in WIDTHS.items():
            context = browser.new_context(viewport={"width": width, "height": 900},
                                          is_mobile=name == "phone", has_touch=name == "phone")
            context.route("**/*", block_outside)
            for path in pages:
                page = _open(context, origin + path, seen[path], external)
                if name == "desktop":
                    seen[path].update(page.evaluate(MEASURE))
                    if path.startswith(ZH):
                        seen[path]["cjk_fonts"] = _fonts_of_chinese(context, page)
                else:
                    seen[path]["phone_images"] = page.evaluate(MEASURE)["images"]
                if SCREENSHOTS:
                    shot = SHOTS / str(width) / (path.removesuffix(".html").replace("/", "_") + ".png")
                    shot.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=shot, full_page=True)
                page.close()
            search = _open(context, origin + "search.html?q=momentum", seen["search.html"], external)
            try:
                search.wait_for_selector("#search-results ul.search li", timeout=20_000)
            except NoResults:
                pass  # the test says so
            seen["search.html"][f"momentum_hits_{name}"] = search.locator("ul.search li").count()
            if name == "desktop":
                seen["_switch"] = _switch_languages(context, origin, seen["search.html"], external)
                seen["_quiz"] = _answer_a_quiz(context, origin, seen["search.html"], external)
            context.close()
        browser.close()
    server.shutdown()
    seen.update(redirects)
    report = {p: {k: v for k, v in log.items() if k not in ("text", "links", "ids")}
              for p, log in seen.items()}
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "report.json").write_text(json.dumps(report, indent=1))
    return {"origin": origin, "pages": seen, "external": external}


ZH = "zh_CN/"  # the Chinese book, inside the English one
PROBE = r"""() => {
  const own = e => [...e.childNodes].filter(n => n.nodeType === Node.TEXT_NODE)
    .map(n => n.textContent).join("");
  const p = [...document.querySelectorAll("main p, main li, main span, main h1, main h2")]
    .find(e => /[\u4e00-\u9fff]{4}/.test(own(e)) && !e.closest("pre, code")
          && e.getBoundingClientRect().width > 0);  // drawn: not a hidden title
  if (p) p.setAttribute("data-font-probe", "");
  return !!p;
}"""


def _fonts_of_chinese(context, page) -> list[str]:
    """The fonts Chromium actually drew the page's first Chinese paragraph with (DevTools)."""
    if not page.evaluate(PROBE):
        return []
    cdp = context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument")["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": "[data-font-probe]"})["nodeId"]
    fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    cdp.detach()
    return [f["familyName"] for f in fonts if f["glyphCount"] > 0]


def _switch_languages(context, origin: str, log: dict, external: list) -> dict:
    """Follow the language switch from an English page to Chinese and back."""
    page = _open(context, origin + "book/intro.html", log, external)
    visits = []
    for _ in range(2):
        page.click(".bn-language a")
        page.wait_for_load_state("load")
        visits.append((page.url[len(origin):], page.evaluate("() => document.documentElement.lang")))
    page.close()
    return {"visits": visits}


QUIZ_PAGE = "book/00_quick_tour.html"  # its self-check question comes before the measurement


def _answer_a_quiz(context, origin: str, log: dict, external: list) -> dict:
    """Click each choice of a page's first self-check, in each language: what feedback shows."""
    answers = {}
    for prefix in ("", ZH):
        page = _open(context, origin + prefix + QUIZ_PAGE, log, external)
        quiz = page.locator(".bn-quiz").first
        shown = []
        for i in range(quiz.locator("button").count()):
            button = quiz.locator("button").nth(i)
            button.click()
            feedback = quiz.locator(".bn-feedback")
            feedback.wait_for(state="visible", timeout=5_000)
            shown.append((button.get_attribute("data-right"), button.get_attribute("class"),
                          feedback.inner_text()))
        answers[prefix or "en"] = shown
        page.close()
    return answers


def _fail_if(found: dict, what: str) -> None:
    """Fail listing every problem, page by page, if there is any."""
    lines = [f"{page}: {item}" for page, items in found.items() for item in items]
    if lines:
        pytest.fail(f"{len(lines)} {what}:\n  " + "\n  ".join(lines[:60]), pytrace=False)


def test_no_console_errors(book):
    found = {p: log["console"] for p, log in book["pages"].items() if log.get("console")}
    _fail_if(found, "console errors (open the page's browser console to see them)")


def test_no_failed_local_requests(book):
    found = {p: log["failed"] for p, log in book["pages"].items() if log.get("failed")}
    _fail_if(found, "local requests failed: a file the page needs is missing")


def test_reads_offline(book):
    _fail_if({"the pages": sorted(set(book["external"]))},
             "requests to URLs outside the book (blocked here, as offline): serve them from the book")


def test_math_is_rendered(book):
    found = {}
    for page, log in book["pages"].items():
        raw = [m.start() for m in RAW_MATH.finditer(log.get("text", ""))]
        found[page] = [f"raw LaTeX {log['text'][max(0, i - 30):i + 30]!r}" for i in raw[:5]]
        if log.get("math_errors"):
            found[page].append(f"{log['math_errors']} formulas MathJax could not typeset")
        if RAW_MATH.search(log.get("title", "")) or "$" in log.get("title", ""):
            found[page].append(f"math in the page title {log['title']!r}: use plain text in headings")
    _fail_if(found, "pages with unrendered math")


def test_code_and_outputs_fit_the_column(book):
    found = {p: [f"a block {b['widest']} characters wide scrolls ({b['scroll']} > {b['client']} px), "
                 f"starting {b['first_line']!r}" for b in log.get("overflowing", [])]
             for p, log in book["pages"].items()}
    _fail_if(found, "code or output blocks wider than the column at 1280 px "
                    "(keep code and printed lines to 88 characters)")


def test_images_have_alt_text(book):
    found = {p: [f"{i['name']}: alt {i['alt']!r}" for i in log.get("images", [])
                 if not (i["alt"] or "").strip() or PATH_LIKE.search(i["alt"].strip())]
             for p, log in book["pages"].items()}
    _fail_if(found, "images without a real alt text (set the figure cell's "
                    "mystnb.image.alt to a sentence saying what it shows)")


def test_the_chinese_pages_describe_their_figures_in_chinese(book):
    found = {p: [f"{i['name']}: alt {i['alt'][:60]!r}..." for i in log.get("images", [])
                 if not re.search(r"[\u4e00-\u9fff]", i["alt"] or "")]
             for p, log in book["pages"].items() if p.startswith(ZH)}
    _fail_if(found, "figures on Chinese pages described in English (translate the alt text in "
                    "the page's catalog: make locales)")


def test_chinese_is_marked_as_chinese(book):
    """The page is English: unmarked Han characters get Japanese glyphs from the CJK fonts."""
    found = {p: [f"{t!r}" for t in log.get("unmarked_chinese", [])] for p, log in book["pages"].items()}
    _fail_if(found, 'Chinese terms not marked as Chinese (write <span lang="zh-Hans">...</span>)')


EXERCISE_TITLE = re.compile(r'id="([^"]+)">\s*<p class="admonition-title"><span class="caption-number">'
                            r'(.*?)</span>(.*?)</p>', re.S)
SOLUTION_TITLE = re.compile(r'<p class="admonition-title">[^<]*<a class="reference internal" '
                            r'href="#([^"]+)">(.*?)</a></p>', re.S)


def test_solutions_quote_their_exercises_title_in_the_page_language(book):
    found, checked = {}, 0
    for page in sorted(book["pages"]):
        html = (HTML / page).read_text() if page.endswith(".html") else ""
        titles = {label: f"{number.strip()} {rest.strip()}" for label, number, rest
                  in EXERCISE_TITLE.findall(html)}
        for label, quoted in SOLUTION_TITLE.findall(html):
            checked += label in titles
            if label in titles and " ".join(quoted.split()) != " ".join(titles[label].split()):
                found.setdefault(page, []).append(f"solution of {label} quotes {quoted.strip()!r}, "
                                                  f"the exercise reads {titles[label]!r}")
    assert checked >= 2, "no solution titles found: the patterns no longer match sphinx-exercise's HTML"
    _fail_if(found, "solution titles that quote another title than their exercise's")


def test_internal_links_resolve(book):
    origin, pages = book["origin"], book["pages"]
    found = {}
    for page, log in pages.items():
        for href in set(log.get("links", [])):
            target, fragment = urldefrag(href)
            if not target.startswith(origin):
                continue
            path = unquote(target[len(origin):].split("?")[0]) or "index.html"
            path = path + "index.html" if path.endswith("/") else path
            if not (HTML / path).is_file():
                found.setdefault(page, []).append(f"{href}: no such file")
            elif fragment and path in pages and fragment not in pages[path].get("ids", ()):
                found.setdefault(page, []).append(f"{href}: no #{fragment} on {path}")
    _fail_if(found, "broken internal links")


def test_search_finds_momentum(book):
    hits = {k: v for k, v in book["pages"]["search.html"].items() if k.startswith("momentum_hits")}
    _fail_if({"search.html?q=momentum": [f"{k}: {v}" for k, v in hits.items() if not v]},
             "searches for 'momentum' that found nothing")


def test_figures_are_legible(book):
    min_pt = _min_font_pt()
    found = {}
    for page, log in book["pages"].items():
        for image in (i for i in log.get("images", []) if i["figure"] and i["natural"]):
            file = HTML / unquote(urlparse(image["src"]).path.lstrip("/"))
            dpi = 96 if file.suffix == ".svg" else _png_dpi(file)
            if dpi is None:
                found.setdefault(page, []).append(f"{image['name']}: no resolution recorded (use bn.plot)")
                continue
            px = min_pt / 72 * dpi * image["shown"] / image["natural"]
            if px < MIN_TEXT_PX:
                found.setdefault(page, []).append(
                    f"{image['name']}: {min_pt:g} pt text shows at {px:.1f} px ({image['natural']} px wide "
                    f"at {dpi:.0f} dpi, shown {image['shown']:.0f} px wide): fewer panels side by side")
    _fail_if(found, f"figures whose smallest text shows below {MIN_TEXT_PX} px at 1280 px")


def test_the_chinese_book_is_there_and_drawn_in_a_chinese_font(book):
    zh = {p: log for p, log in book["pages"].items() if p.startswith(ZH) and "title" in log}
    _fail_if({"the book": [] if zh else ["no page under zh_CN/: build it (make book-check)"]},
             "missing Chinese book")
    found = {p: [f"drawn with {log.get('cjk_fonts')}"] for p, log in zh.items()
             if not any("CJK SC" in f for f in log.get("cjk_fonts", ["(no Chinese paragraph)"]))}
    _fail_if(found, "Chinese pages whose text is not drawn in a Simplified Chinese font "
                    "(fonts-noto-cjk: Noto Sans/Serif CJK SC)")


def test_the_language_switch_goes_both_ways(book):
    visits = book["pages"]["_switch"]["visits"]
    assert visits == [(ZH + "book/intro.html", "zh-CN"), ("book/intro.html", "en")], visits


def test_a_self_check_answers_in_the_page_language(book):
    answers = book["pages"]["_quiz"]
    verdicts = {"en": ("Right.", "Not quite."), ZH: ("正确。", "不完全对。")}
    for language, shown in answers.items():
        assert len(shown) >= 2, (language, shown)
        for right, classes, feedback in shown:
            verdict = verdicts[language][0 if right == "1" else 1]
            assert feedback.startswith(verdict) and len(feedback) > len(verdict) + 5, (language, feedback)
            assert ("bn-right" if right == "1" else "bn-wrong") in classes, (language, classes)
