# Two commands do all set-up on a fresh machine (Python >= 3.10, 3.11 tested):
#   make demo   create .venv, install bnfold with its training extra, run the end-to-end demo
#   make test   create .venv, install bnfold with dev + train extras, run `make check`, then the
#               test suite under coverage (child processes included) and the coverage floors
#   make check  ruff check, ruff format --check, mypy (also run by `make test`)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bnfold-installed

.PHONY: demo test check lint coverage samples bench clean

LINTED := bnfold tests benchmarks models tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,train]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bnfold demo

test: check
	rm -f .coverage .coverage.*
	$(BIN)/python -m pytest -q -p no:cacheprovider --cov --cov-context=test --cov-report=
	$(MAKE) --no-print-directory coverage

check: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

lint: check

# the floors, on the data the last `make test` left: 95% of bnfold's lines, 95% of each fold-core
# module, 90% of the refusal sites executed by a test that asserts their reason
coverage:
	$(BIN)/python tools/coverage_gate.py --total 95 --core 95; lines=$$?; \
	$(BIN)/python tools/refusal_sites.py --min 90 && exit $$lines

samples: $(STAMP)
	$(BIN)/python models/make_samples.py

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[peers]"
	$(BIN)/python benchmarks/bench_fold_peers.py

clean:
	rm -rf $(VENV) out
