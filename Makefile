# The README's two commands: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/demo
export CLIPMEM_DATABASE_URL ?= sqlite:///$(CURDIR)/clipmem.db

.PHONY: setup browser demo lint test bench clean

$(BIN)/clipmem: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/clipmem

# Debian's Chromium for the real-browser test (Playwright's own download does not work here).
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
	  echo "Chromium not installed: the browser test will be skipped"

demo: setup
	$(BIN)/clipmem run --out $(RUN_DIR) --overwrite
	$(BIN)/clipmem ingest $(RUN_DIR) --replace
	$(BIN)/clipmem ui --with-backend

# The import-linter contracts in pyproject.toml: layers import downward only, no cycles, no torch in the
# backend or the dashboard (docs/architecture.md). Seconds, so `make test` runs them first.
lint: setup
	$(BIN)/lint-imports

# Two test processes, a file's tests in one of them (--dist loadfile: module fixtures are built once): on 2 cores
# one process left a quarter of the CPU idle while it waited on servers, browsers and child processes.
test: setup browser lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15 tests

bench: setup
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/score_throughput.py $(RUN_DIR)
	$(BIN)/python bench/source_throughput.py

clean:
	rm -rf $(VENV) runs clipmem.db

# Mutation testing of the science core against its fast tests, outside `make test` (docs/testing.md).
.PHONY: mutation
mutation: setup
	rm -rf mutants
	OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children 2; status=$$?; $(BIN)/python tests/mutation_summary.py; exit $$status
