# Quick start: `make demo` runs the end-to-end demo, `make test` the test suite.
# Each creates (once) its own virtual environment in .venv with everything installed.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: test demo

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# the CPU build of torch, pinned: an unpinned torch pulls a multi-GB CUDA build
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[dev,torch,clinical,tpu]'
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/python -m pytest

demo: $(STAMP)
	$(VENV)/bin/stmem-demo --workdir runs/demo
