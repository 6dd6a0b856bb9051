# Two entry points on a fresh machine: `make demo` (end to end) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU build of torch first, so no dependency pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf demo_out  # each demo starts from a fresh corpus, run and MLflow database
	$(PY) -m sc_fm.demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	for b in ingest loader model train quality; do $(PY) benchmarks/$$b.py --quick || exit 1; done

clean:
	rm -rf demo_out .pytest_cache
