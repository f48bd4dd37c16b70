# The README's two commands: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/demo

.PHONY: setup demo test bench clean

$(BIN)/clipmem: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/clipmem

demo: setup
	$(BIN)/clipmem run --out $(RUN_DIR) --overwrite

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/score_throughput.py $(RUN_DIR)

clean:
	rm -rf $(VENV) runs
