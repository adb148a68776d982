# Developer tasks. Every target works on a fresh clone: it first builds .venv.
VENV ?= .venv
PY = $(VENV)/bin/python
STAMP := $(VENV)/.installed
COV_MIN ?= 90
PYTEST_ARGS ?=
# tests mostly wait on sockets; two workers halve the wall time on 2 cores
PYTEST_WORKERS ?= 2

.PHONY: all test test-matrix lint demo bench fuzz soak clean distclean docs typecheck

all: lint test

$(STAMP): setup.cfg setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint,bench]'
	$(PY) -m pip install -q -e '.[docs]'
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --cov=natsync --cov-report=term-missing:skip-covered \
		--cov-fail-under=$(COV_MIN) $(PYTEST_ARGS) tests

# The suite on every other supported CPython found on the machine (3.10, 3.12, 3.13:
# python3.X on PATH or pyenv), one venv each (.venv-3.X); a missing one is reported as
# SKIPPED. No coverage gate there (make test has it). See .ci/matrix.
test-matrix:
	.ci/matrix

lint: $(STAMP)
	$(PY) -m ruff check natsync tests $(wildcard examples bench)
	$(PY) -m mypy --strict natsync
	$(MAKE) --no-print-directory typecheck

# The Sphinx site (docs/) into docs/_build/html; warnings are errors, every
# cross-reference must resolve (make docs NITPICKY=0 lets unresolved ones pass).
docs: $(STAMP)
	$(PY) -m sphinx -E -W --keep-going -q -b html docs docs/_build/html

# pyright's completeness check of the public API (basedpyright ships its own node).
# TYPES_MIN is the score that must be reached (100 once every module is annotated).
TYPES_MIN ?= 100
typecheck: $(STAMP)
	$(PY) scripts/verifytypes.py --min $(TYPES_MIN)

demo: $(STAMP)
	$(PY) examples/demo.py

bench: $(STAMP)
	$(PY) bench/bench.py
	$(PY) bench/bench_js.py
	$(PY) bench/bench_kv.py

# Long property-based run; pytest-timeout is switched off for it.
fuzz: $(STAMP)
	NATSYNC_FUZZ_EXAMPLES=100000 $(PY) -m pytest -q -p no:cacheprovider --timeout=0 \
		-k "any_split or arbitrary_bytes or mutated_streams" tests/test_fuzz.py

soak: $(STAMP)
	$(PY) bench/soak.py
	NATSYNC_STRESS_SECONDS=$${NATSYNC_STRESS_SECONDS:-300} $(PY) -m pytest -q -s -p no:cacheprovider --timeout=0 tests/test_stress.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis \
		.coverage .coverage.* htmlcov
	rm -rf docs/_build
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .venv-3.*
