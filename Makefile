# gpu-predictor: two commands from a fresh clone (only Python >= 3.11 and git needed).
#   make serve   serve the demo models (digits, shapes) on http://localhost:8080 (gRPC :8081)
#   make test    install everything the tests need, then ruff, mypy and the whole test suite
# uv is bootstrapped into .tools/ from PyPI; dependencies come from uv.lock.

PYTHON ?= python3
TOOLS  := .tools
UV     := $(TOOLS)/bin/uv
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/.venv

.PHONY: serve test lint typecheck pytest sync prometheus browser bench clean help

help:
	@sed -n '2,4p' Makefile

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv

sync: $(UV)
	$(UV) sync --frozen

serve: sync
	$(UV) run --frozen gpu-predictor serve $(ARGS)

lint: sync
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

typecheck: sync
	$(UV) run --frozen mypy

pytest: sync prometheus browser
	$(UV) run --frozen pytest $(PYTEST_ARGS)

# prometheus + promtool for the observability tests: from PATH, else unpacked from Debian's .deb.
prometheus: $(TOOLS)/prometheus/bin/promtool

$(TOOLS)/prometheus/bin/promtool:
	scripts/install-prometheus.sh $(TOOLS)/prometheus

# chromium for the browser tests (the API page): from PATH, else Debian's package.
browser:
	scripts/install-chromium.sh

test: lint typecheck pytest

# Benchmarks against the limit and peers (writes docs/benchmarks.md and docs/img/):
# ~40 min on 2 CPU cores; `make bench ARGS=--quick` takes under 5 min.
bench: sync
	$(UV) run --frozen --group peers load-tests/bench.py $(ARGS)

clean:
	rm -rf .venv $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
