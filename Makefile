# Two entry points on a fresh machine: `make demo` (end to end) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU build of torch first, so no dependency pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,bench]"  # the benchmarks' peers
	touch $(BENCH_STAMP)

demo: $(STAMP)
	rm -rf demo_out  # each demo starts from a fresh corpus, run and MLflow database
	$(PY) -m sc_fm.demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(BENCH_STAMP)
	for b in ingest loader model train contention quality; do $(PY) benchmarks/$$b.py --quick || exit 1; done

clean:
	rm -rf demo_out .pytest_cache
