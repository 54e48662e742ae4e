# Small verbs; the README's commands are these. Every verb sets up what it needs from nothing:
# a local virtual environment (.venv) with the package and its declared dependencies.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test proto lint bench bench-quick clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

serve: $(STAMP)  ## run the service with embedded defaults (port 9999)
	$(BIN)/streamer serve

test: $(STAMP)  ## the whole test suite
	$(BIN)/pytest

proto: $(STAMP)  ## regenerate the committed bindings from protos/outliers.proto
	$(BIN)/python protos/generate.py

lint: $(STAMP)
	$(BIN)/flake8 streamer tests benchmarks protos

bench: $(STAMP)  ## full benchmark run (about 10 minutes)
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)  ## short benchmark run (about 2 minutes)
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) build *.egg-info
