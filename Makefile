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

# The napari viewer tests need a display: a virtual one (Xvfb + Mesa) where it can be had.
test: install
	@tools/display-deps
	@if command -v xvfb-run >/dev/null; then \
	    CUPRE_TEST_DISPLAY=xvfb xvfb-run -a -s "-screen 0 1280x1024x24" $(BIN)/python -m pytest -q; \
	else $(BIN)/python -m pytest -q; fi

clean:
	rm -rf $(VENV) cupre-demo
