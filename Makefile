# Two commands for a fresh machine:  `make demo` (the whole local loop)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/gitops demo

test: $(STAMP)
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/gitops schemas --check

bench: $(STAMP)
	$(BIN)/python benchmarks/validate_scale.py
	$(BIN)/python benchmarks/train_overhead.py
	$(BIN)/python benchmarks/cli_startup.py --check

clean:
	rm -rf runs .gitops .jax_cache .pytest_cache
