# Two commands: `make run` (the conformance suite, smoke tier, embedded data) and
# `make test` (the harness's own tests plus the fast suites; CI runs exactly this).
# Both create .venv on first use; `make setup` is that step alone and is idempotent.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.zooconform-installed
ARGS   ?=

.PHONY: setup run test lint full clean-reports

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,tools]' torch==2.14.1 torchvision==0.29.1
	@touch $(STAMP)

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
