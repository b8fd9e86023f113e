# homeloc — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= data/sample_userdays.csv
OUT    ?= out
USERS  ?= 20000

.PHONY: setup run test test-all test-fast lint pg-setup browser-setup bench bench-hll clean

setup: $(STAMP)  ## create .venv with .venv/bin/homeloc (idempotent)

$(STAMP): pyproject.toml setup.py homeloc_assets/hll/_kernel.c homeloc_assets/inputs/_scan.c
	@echo "setup: creating $(VENV) and installing homeloc with its dependencies (about 80 s on a fresh machine)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e '.[test]'
	touch $(STAMP)
	@echo "setup: done ($(BIN)/homeloc)"

run: setup  ## run the whole pipeline on a sample (or DATA=...) with the embedded HLL backend
	test -f $(DATA) || $(BIN)/homeloc synth --users $(USERS) --out $(DATA) --seed 7
	$(BIN)/homeloc run --input $(DATA) --out $(OUT)

pg-setup:  ## PostgreSQL with the hll extension, where this machine can have it
	bash scripts/pg-setup.sh

browser-setup:  ## Debian's Chromium for the browser test
	bash scripts/browser-setup.sh

lint: setup
	$(BIN)/ruff check homeloc_assets homeloc_tests benchmarks

test: setup pg-setup browser-setup lint  ## everything the tests need, then the suite (CI: under 15 min)
	$(BIN)/python -m pytest homeloc_tests -m "not heavy"

test-all: setup pg-setup browser-setup lint  ## the suite plus the long fault-injection runs (marker heavy)
	$(BIN)/python -m pytest homeloc_tests

test-fast: setup  ## the quick tests (under 2 minutes): no slow, browser or heavy ones
	$(BIN)/python -m pytest homeloc_tests -m "not slow and not browser and not heavy"

bench: setup
	$(BIN)/python benchmarks/run.py

bench-hll: setup
	$(BIN)/python benchmarks/bench_hll.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
