# The course's commands. Each one first creates (or refreshes) .venv from requirements.txt.
#   make book          build the HTML book into _build/html (English) and _build/html/zh_CN
#                      (Chinese), executing every notebook whose code, or the package, changed
#                      since the last build (Jupyter Book's cache)
#   make test          lint, unit tests, every notebook under nbval, the book built with warnings as
#                      errors, the built book in a browser (9 to 10 minutes on 2 cores)
#   make test-instructor   nbgrader's round trip over the chapters and the student book, both
#                      languages (CI runs it after `test`)
#   make screenshots   the browser test, saving every page at 1280 and 390 px in _build/screenshots/
#   make lab           open the notebooks in JupyterLab
#   make bench         benchmark our batch norm against PyTorch's
#   make student-edition   the chapter notebooks without solutions or outputs, in student/ (as
#                      nbgrader's generate_assignment releases them)
#   make book-student  the book without solutions, into _build/student/_build/html (and zh_CN/)
#   make locales       refresh the Chinese catalogs (locales/) from the English pages
#   make robust        every notebook under two other draws of all its seeds (not part of `test`)
#   make gpu-check     on a machine with CUDA GPUs: the CUDA tests, the benchmark with Triton,
#                      SyncBatchNorm over NCCL on every GPU, chapter 7 on the GPU; a report in
#                      _build/gpu-check/report.md (stops at once without a GPU)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the `bncourse` command, also in a venv installed before it moved
BNCOURSE := $(BIN)/python -m bncourse.teach.instructor.cli
I18N := $(BIN)/python -m bncourse.teach.i18n

.PHONY: book book-student student-edition test test-instructor lint unit nbgrader book-check browser \
	screenshots lab bench robust locales locales-check gpu-check clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# Jupyter Book's cache keys on the notebooks' code cells only: when the package or the pins
# change, every notebook must run again.
CACHE := _build/.jupyter_cache
CACHE_INPUTS := $(shell find src -name '*.py') requirements.txt pyproject.toml
_build/.cache-inputs: $(CACHE_INPUTS)
	rm -rf $(CACHE)
	mkdir -p _build && touch $@

# The Chinese book is the English one through the catalogs of locales/: the same notebooks, the
# same cached runs, into _build/html/zh_CN/ (each page links to its other language).
book: $(STAMP) _build/.cache-inputs
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	$(I18N) zh-config _build
	$(BIN)/jupyter-book build . --config _build/_config.zh.yml --toc _build/_toc.zh.yml \
		--path-output _build/zh --warningiserror --keep-going
	rm -rf _build/html/zh_CN && cp -r _build/zh/_build/html _build/html/zh_CN
	@echo "The book is in _build/html: open $(CURDIR)/_build/html/index.html (中文: zh_CN/index.html)"

# The prose of the English pages into locales/zh_CN/LC_MESSAGES/ (one catalog per page): new and
# changed sentences come in untranslated or fuzzy, and the tests fail until they are translated.
# The templates' own messages (sphinx.pot) are left out: locales/zh_CN/LC_MESSAGES/sphinx.po and
# booktheme.po hold the theme's words, by hand. Extraction starts afresh, so that a removed page
# leaves no template behind.
locales: $(STAMP)
	rm -rf _build/gettext && mkdir -p _build
	sed 's/execute_notebooks: cache/execute_notebooks: "off"/' _config.yml > _build/_config.gettext.yml
	$(BIN)/jupyter-book build . --config _build/_config.gettext.yml --path-output _build/gettext \
		--builder custom --custom-builder gettext --quiet
	rm -f _build/gettext/_build/gettext/sphinx.pot
	$(BIN)/sphinx-intl update -p _build/gettext/_build/gettext -d locales -l zh_CN -w -1

# The catalogs hold exactly the English pages' sentences, every one translated (nothing fuzzy).
locales-check: $(STAMP)
	rm -rf _build/gettext && mkdir -p _build
	sed 's/execute_notebooks: cache/execute_notebooks: "off"/' _config.yml > _build/_config.gettext.yml
	$(BIN)/jupyter-book build . --config _build/_config.gettext.yml --path-output _build/gettext \
		--builder custom --custom-builder gettext --quiet
	$(I18N) check _build/gettext/_build/gettext

# The student build renders the stored outputs of the notebooks with every solution cut out, in
# both languages.
book-student: $(STAMP)
	$(BNCOURSE) student-book _build/student-src
	$(BIN)/jupyter-book build _build/student-src --path-output _build/student --warningiserror --keep-going --all
	$(I18N) zh-config _build/student-src --root _build/student-src --stored
	$(BIN)/jupyter-book build _build/student-src --config _build/student-src/_config.zh.yml \
		--toc $(CURDIR)/_build/student-src/_toc.zh.yml --path-output _build/student-zh --warningiserror \
		--keep-going --all
	rm -rf _build/student/_build/html/zh_CN
	cp -r _build/student-zh/_build/html _build/student/_build/html/zh_CN
	@echo "The student book is in _build/student/_build/html: open $(CURDIR)/_build/student/_build/html/index.html"

student-edition: $(STAMP)
	$(BNCOURSE) student-edition student

# Two jobs at a time on two cores: the unit tests and notebooks (two pytest workers) beside the
# book build and the browser. Each part's output shows when it ends.
test: $(STAMP)
	$(MAKE) --no-print-directory -j2 --output-sync=target unit lint locales-check browser

# What instructors rely on, beyond the checks `test` runs: nbgrader releases, collects and grades the
# chapters as book/grading.md says, and the book builds without its solutions.
test-instructor: $(STAMP)
	$(MAKE) --no-print-directory -j2 --output-sync=target nbgrader book-student

lint: $(STAMP)
	$(BIN)/ruff check src tests book

# Two workers (CI has two cores), each on one thread, as each notebook's kernel is (bn.setup): OpenMP
# threads that outnumber the cores spin while they wait, and took a third more CPU time. A notebook
# stays on one worker, since nbval runs its cells in order in one kernel.
unit: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/pytest -n 2 --dist loadfile --ignore=tests/test_browser.py \
		--ignore=tests/test_instructor_nbgrader.py

nbgrader: $(STAMP)
	$(BIN)/pytest tests/test_instructor_nbgrader.py

# The notebooks were just executed by pytest (nbval); this build renders their stored outputs and
# fails on any warning. `make book` executes them again while building.
book-check: $(STAMP)
	mkdir -p _build
	sed 's/execute_notebooks: cache/execute_notebooks: "off"/' _config.yml > _build/_config.stored.yml
	$(BIN)/jupyter-book build . --config _build/_config.stored.yml --path-output _build/check \
		--warningiserror --nitpick --keep-going --all --quiet
	$(I18N) zh-config _build --stored
	$(BIN)/jupyter-book build . --config _build/_config.zh.yml --toc _build/_toc.zh.yml \
		--path-output _build/check-zh --warningiserror --nitpick --keep-going --all --quiet
	rm -rf _build/check/_build/html/zh_CN
	cp -r _build/check-zh/_build/html _build/check/_build/html/zh_CN

# That book in headless Chromium (Debian's package): every page at 1280 and 390 px. Without a
# browser it skips and says how to install one; with CI=true it fails. `screenshots` also saves
# each page, whole, in _build/screenshots/ (for looking at; nothing is asserted on them).
browser: book-check
	$(BIN)/pytest tests/test_browser.py

screenshots: book-check
	BNCOURSE_SCREENSHOTS=1 $(BIN)/pytest tests/test_browser.py

# Every notebook with every seed it sets shifted (BNCOURSE_SEED_OFFSET), once per offset: a claim
# that holds only for the stored seeds fails here, as it would on a learner's machine. The stored
# notebooks are left as they are.
ROBUST_OFFSETS ?= 1000 2027
robust: $(STAMP)
	for offset in $(ROBUST_OFFSETS); do \
		echo "== BNCOURSE_SEED_OFFSET=$$offset"; \
		BNCOURSE_SEED_OFFSET=$$offset OMP_NUM_THREADS=1 $(BIN)/pytest -n 2 --dist loadfile \
			-p no:cacheprovider book \
			|| exit 1; \
	done

lab: $(STAMP)
	$(BIN)/jupyter lab book/

bench: $(STAMP)
	$(BIN)/python -m bncourse.lab.bench

gpu-check: $(STAMP)
	$(BIN)/python -m bncourse.lab.gpucheck --out _build/gpu-check

clean:
	rm -rf _build .pytest_cache
