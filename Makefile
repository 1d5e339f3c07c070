# One target per job. Every target sets up .venv first (torch pinned to the CPU wheel).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
OUT ?= runs/demo
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup setup-torchrec demo test test-fast lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# Optional TorchRec interop (DEVELOPERS.md). Its runtime dependencies come first through the extra; torchrec and
# fbgemm-gpu-cpu come last with --no-deps (torch stays 2.13.0), so pip has no resolver conflict to report.
setup-torchrec: $(VENV)/.installed-torchrec

$(VENV)/.installed-torchrec: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[dev,torchrec]"
	$(PY) -m pip install --quiet --no-deps fbgemm-gpu-cpu==1.8.0 torchrec==1.8.0
	touch $@

demo: setup
	$(VENV)/bin/sharkrec demo --out $(OUT)

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile

test-fast: setup
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/train_throughput.py --out benchmarks/results/train_throughput.json

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
