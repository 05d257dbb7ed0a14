# Quick start: `make demo` runs the end-to-end demo, `make test` the test suite.
# Both use the virtual environment .venv, created once. The demo installs the package alone; the
# tests add the extras (dev, torch, clinical, tpu). Each has its own stamp file, so `make test`
# after `make demo` still installs the extras.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: test demo

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# the CPU build of torch, pinned: an unpinned torch pulls a multi-GB CUDA build
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[dev,torch,clinical,tpu]'
	touch $(STAMP)

# the demo imports none of the extras (no torch, ecgdatakit or libtpu)
$(DEMO_STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e .
	touch $(DEMO_STAMP)

test: $(STAMP)
	$(VENV)/bin/python -m pytest

demo: $(DEMO_STAMP)
	$(VENV)/bin/stmem-demo --workdir runs/demo
