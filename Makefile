# Two commands do all set-up on a fresh machine (Python >= 3.10, 3.11 tested):
#   make demo   create .venv, install bnfold with its training extra, run the end-to-end demo
#   make test   create .venv, install bnfold with dev + train extras, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bnfold-installed

.PHONY: demo test lint samples bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,train]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bnfold demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check bnfold tests benchmarks models

samples: $(STAMP)
	$(BIN)/python models/make_samples.py

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[peers]"
	$(BIN)/python benchmarks/bench_fold_peers.py

clean:
	rm -rf $(VENV) out
