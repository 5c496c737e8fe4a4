# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv once and reuse it (the stamp file records a finished install).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.attnviz-installed

.PHONY: demo test lint install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/attnviz demo

lint: $(STAMP)
	$(BIN)/ruff check attnviz tests benchmarks
	$(BIN)/ruff format --check attnviz tests benchmarks

test: lint
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) attnviz-out .pytest_cache
