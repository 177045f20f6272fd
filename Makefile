# Two entry points for a fresh machine (both offline apart from the package registries):
#   make demo   - install into .venv and run the demo on the embedded synthetic benchmark
#   make test   - install into .venv and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install system-deps demo test lint clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch 2.13.0 resolves to the CPU wheel on this kind of machine; a GPU machine gets its CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed system-deps

# pycocoevalcap's METEOR and PTB tokenizer need Java; the report test needs Chromium.
system-deps:
	@bash scripts/system-deps.sh

demo: install
	$(VENV)/bin/medblip demo

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
