# Two entry points for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TPM_STAMP := $(VENV)/.installed-tpm

.PHONY: demo test lint types unit env clean bench sysdeps vectors wheelhouse

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m meterbox.demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

types: $(TPM_STAMP)
	$(BIN)/mypy

# The TPM extra builds against libtss2-dev, which sysdeps installs.
$(TPM_STAMP): $(STAMP) scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	$(BIN)/pip install --quiet -e '.[dev,tpm]'
	touch $(TPM_STAMP)

unit: $(TPM_STAMP)
	$(BIN)/python -m pytest

# System packages (PostgreSQL server, Debian chromium) for the integration and browser tests.
sysdeps:
	bash scripts/install-system-deps.sh

test: sysdeps lint types unit

# Each benchmark prints its own figures; fuzz_all.py is the long fuzz run, not a benchmark.
# The anomaly evaluation (bench/anomaly_eval.py) simulates and judges in separate steps
# over directories of case files, hours in all: docs/benchmarks.md gives its commands.
BENCHMARKS := ledger_bench ledger_vs_seed ingest_1m ingest_hostile http_bench exhaustion anomaly_window_bench

# Regenerate every checked-in test vector set; each generator sits beside its data and
# runs from tests/ so that it imports the shared builders as the support package.
vectors: $(STAMP)
	cd tests && $(CURDIR)/$(BIN)/python -m vectors.ledger.generate
	cd tests && $(CURDIR)/$(BIN)/python -m vectors.licenses.generate
	cd tests && $(CURDIR)/$(BIN)/python -m vectors.cryptolens.generate
	cd tests && $(CURDIR)/$(BIN)/python -m vectors.witness.generate
	cd tests && $(CURDIR)/$(BIN)/python -m vectors.ingest.generate
	cd tests && $(CURDIR)/$(BIN)/python -m vectors.suspension.generate
	cd tests && $(CURDIR)/$(BIN)/python -m vectors.borrow.generate

bench: $(STAMP)
	set -e; for b in $(BENCHMARKS); do echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py; done

# Every wheel an offline host needs (server, vendor toolkit, PostgreSQL driver), in a
# directory and a tarball to carry over: docs/deploy.md. EXTRAS= narrows it.
WHEELHOUSE ?= dist/wheelhouse
EXTRAS ?= server,vendor,postgres
wheelhouse: $(STAMP)
	rm -rf $(WHEELHOUSE)
	PYTHON=$(BIN)/python bash scripts/wheelhouse.sh $(WHEELHOUSE) '$(EXTRAS)'
	tar -C $(dir $(WHEELHOUSE)) -czf $(WHEELHOUSE).tar.gz $(notdir $(WHEELHOUSE))

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache dist
