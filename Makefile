# Both entry points create the virtualenv and install what they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-long lint serve bench install clean help

help:  ## list the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[server,instrumentation,demo,dev]"
	$(BIN)/pip check
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install otel-bridge with all extras

demo: $(STAMP)  ## embedded database + receiver + an instrumented example app used by a crowd, then a report
	$(BIN)/otel-bridge demo

lint: $(STAMP)  ## pyflakes, import order, no imports of the folder names
	$(BIN)/ruff check otel_bridge exporters instrumentation migrations tests benchmarks

test: lint  ## lint, then the whole test suite (real PostgreSQL, real gRPC, real SDK)
	$(BIN)/pytest -q

test-long: lint  ## the suite with the long reliability variants (full volumes; not part of CI)
	OTEL_BRIDGE_LONG_TESTS=1 $(BIN)/pytest -q

serve: $(STAMP)  ## run the receiver on 127.0.0.1:4317 with the embedded database
	$(BIN)/otel-bridge serve

bench: $(STAMP)  ## ingest throughput against a raw COPY baseline (not part of `make test`)
	$(BIN)/python benchmarks/ingest.py

clean:  ## remove the virtualenv and build leftovers
	rm -rf $(VENV) build *.egg-info
