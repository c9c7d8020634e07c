# The README's two commands, and nothing clever.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test clean

$(BIN)/cupre: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/cupre

install: $(BIN)/cupre

demo: install
	$(BIN)/cupre demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) cupre-demo
