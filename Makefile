# Two commands: `make run` (the conformance suite, smoke tier, embedded data) and
# `make test` (the harness's own tests plus the fast suites; CI runs exactly this).
# Both create .venv on first use; `make setup` is that step alone and is idempotent.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.zooconform-installed
ARGS   ?=

.PHONY: setup bytecode run test lint full clean-reports

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,tools]' torch==2.14.1 torchvision==0.29.1
	$(MAKE) --no-print-directory bytecode
	@touch $(STAMP)

# Bytecode written once, here, even where PYTHONDONTWRITEBYTECODE is set (this machine's image
# sets it): pytest rewrites the asserts of every plugin it loads (hypothesis, pytest-html,
# pytest-benchmark, xdist, anyio: ~150 modules) and of the suites and tests, and without cached
# bytecode each of a run's ~20 pytest processes (xdist workers, phases, the nested runs of
# tests/) redid that and compiled harness/: 2.2-2.4 s of each one's start (collection 6.6 s ->
# 4.2 s). compileall covers harness/'s modules that collection does not import; test modules and
# conftest.py are pytest's own (rewritten) bytecode, written by the collection. A process run
# later still only reads it; a changed source is compiled in memory.
bytecode:
	PYTHONDONTWRITEBYTECODE= $(PY) -m compileall -q harness
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest --collect-only -q -p no:cacheprovider tests suites > /dev/null \
		|| echo "bytecode: pytest --collect-only failed (make test says why); continuing"

run: setup
	$(VENV)/bin/zooconform run --tier smoke $(ARGS)

# ruff, the layering contracts (import-linter, pyproject.toml) and mypy on harness/: seconds
lint: setup
	$(VENV)/bin/ruff check harness suites tests conftest.py
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# the harness's own tests on 2 xdist workers (they time nothing real: simulated clocks); the
# suites on 2 workers too, each model's tests on one (--dist loadgroup: its artifacts are built
# once), starting from the seeded references and artifacts the tests built (the same keys: hrnet's
# and repvgg's BN recalibration, export and int8 are not redone), then their latency ratios
# serially, because those measure this machine
test: setup lint
	$(PY) -m pytest tests -n 2 -m "not slow" -o cache_dir=.zooconform-cache/pytest --durations=15 $(ARGS)
	ZOOCONFORM_SHARED_CACHE=$(CURDIR)/.zooconform-cache/tests-shared \
		$(PY) -m pytest suites -n 2 --dist loadgroup -m "not slow and not latency" -o cache_dir=.zooconform-cache/pytest --durations=15 $(ARGS)
	$(PY) -m pytest suites -m "not slow and latency_ratio" -o cache_dir=.zooconform-cache/pytest --durations=15 $(ARGS)
	# the other runtimes (harness/runtimes) on the smallest smoke model only: ~2 min on 2 cores
	$(PY) -m pytest suites/test_export.py suites/test_runtimes.py suites/test_quant.py -m "not slow" \
		-k "runtime or matches_torch or rows_independent or fp16 or kernels" --runtime ort,openvino,torch \
		--models repvgg_a0 -o cache_dir=.zooconform-cache/pytest $(ARGS)

full: setup
	$(VENV)/bin/zooconform run --tier full $(ARGS)

clean-reports:
	@echo "reports/ holds your history (reports/history.jsonl); remove it by hand if you mean to."
