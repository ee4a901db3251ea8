# wandao: the newcomer's commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The mirrored public data sets live beside the checkout; override for your own copy.
export WANDAO_DATA_DIR ?= $(abspath $(CURDIR)/../shared/data)
# The CPU torch wheel lies on disk here; constraints.txt keeps pip from pulling a CUDA build.
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt
EXTRAS ?= lucene,es,deepspeed,serve,dev
PYTEST_ARGS ?=

.PHONY: install chromium demo test test-slow bench bench-bm25 bench-dense bench-augment bench-pretrain bench-rm bench-serve bench-ppo clean help

help:
	@echo "make demo   install what is missing, then run the end-to-end demo on \$$WANDAO_DATA_DIR"
	@echo "make test   install what is missing, then run the test suite (make test-slow for the slow tests)"
	@echo "make bench  run the benchmarks against their baselines (results: docs/benchmarks.md)"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) torch
	$(PIP) -e ".[$(EXTRAS)]"
	touch $@

# The chat page's browser test drives Debian's Chromium; without it that one test skips with the reason.
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 || \
	    echo "note: could not install chromium + chromium-driver (needs root and Debian's packages); the chat-page test will skip"; }

demo: install
	$(BIN)/wandao demo

test: install chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

bench: bench-bm25 bench-dense bench-augment bench-pretrain bench-rm bench-serve bench-ppo
	$(BIN)/python bench/collect.py

bench-bm25: install
	$(BIN)/python bench/bench_bm25.py

bench-dense: install
	$(BIN)/python bench/bench_dense.py

bench-pretrain: install
	$(BIN)/python bench/bench_pretrain.py

bench-augment: install
	$(BIN)/python bench/bench_augment.py

bench-rm: install
	$(BIN)/python bench/bench_rm.py

bench-serve: install
	$(BIN)/python bench/bench_serve.py

# TRL removed PPOTrainer after 1.12.0 (huggingface/trl#7020): the baseline's TRL lives apart, in .venv/trl-ppo.
bench-ppo: install
	test -d $(VENV)/trl-ppo/trl || $(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --target $(VENV)/trl-ppo trl==1.12.0
	$(BIN)/python bench/bench_ppo.py

clean:
	rm -rf $(VENV) runs .pytest_cache
