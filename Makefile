# The README's two commands, and nothing clever.
#   make demo                  cupre with what the demo and `cupre train` need, then the demo
#   make test                  cupre with the test extras (napari, ONNX, bioimage.io, ...), then the tests
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu   PyTorch's CPU-only build first
PYTHON      ?= python3
VENV        ?= .venv
TORCH_INDEX ?=
BIN         := $(VENV)/bin

.PHONY: install install-test demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.cupre: pyproject.toml | $(BIN)/python
	$(if $(TORCH_INDEX),$(BIN)/pip install --quiet torch torchvision --index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.cupre-test: pyproject.toml $(VENV)/.cupre
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.cupre

install-test: $(VENV)/.cupre-test

demo: install
	$(BIN)/cupre demo
	@echo "cupre is installed in $(VENV): run '. $(BIN)/activate' once per shell, then 'cupre --help' (or call $(BIN)/cupre)"

# The napari viewer tests need a display: a virtual one (Xvfb + Mesa) where it can be had.
test: install-test
	@tools/display-deps
	@if command -v xvfb-run >/dev/null; then \
	    CUPRE_TEST_DISPLAY=xvfb xvfb-run -a -s "-screen 0 1280x1024x24" $(BIN)/python -m pytest -q; \
	else $(BIN)/python -m pytest -q; fi

clean:
	rm -rf $(VENV) cupre-demo cupre-demo-synthetic
