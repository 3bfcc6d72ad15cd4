# amt_jax: the two quickstart commands are `make demo` and `make test`.
PYTHON ?= python3
export JAX_PLATFORMS ?= cpu
export TF_CPP_MIN_LOG_LEVEL ?= 2

# `make test`: everything but the platform-performance checks, on PYTEST_WORKERS processes
# (pytest-xdist; 0 runs in this process). `make perf`: those checks alone, in one process so
# nothing else competes for the cores; CI runs them as their own step with PERF_MARKERS="perf or tpu".
PYTEST_WORKERS ?= 2
PERF_MARKERS ?= perf

.PHONY: install demo test perf lint format bench

install:
	PYTHON=$(PYTHON) bash tools/setup.sh

demo: install
	$(PYTHON) -m amt_jax.demo --outdir outputs/demo

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

test: install lint
	$(PYTHON) -m pytest -q -x -m "not perf" -n $(PYTEST_WORKERS) --dist worksteal --durations=15

perf: install
	$(PYTHON) -m pytest -q -m "$(PERF_MARKERS)" --durations=10

bench: install
	$(PYTHON) tools/bench_frontend.py
