# Two commands on a fresh machine: `make demo` (the main job, then its validation against the reference, a Geant4
# simulation of Belle II background) and `make test`. Both bootstrap .venv: the demo with what it needs (the default
# model is numpy: no torch, no test tools), the tests with everything.
PYTHON ?= python3
VENV ?= .venv
# This machine has a CPU build of torch 2.13.0 on disk, which pip prefers for this pin. On a GPU cluster
# bring your own build: make TORCH_SPEC="torch" (or install it into .venv first and set TORCH_SPEC=).
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check
DEMO_STAMP := $(VENV)/.pxdbg-demo
STAMP := $(VENV)/.pxdbg-installed

.PHONY: demo test test-fast lint bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# the demo: pxdbg with the validation plots (matplotlib, scipy)
$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) -e ".[validate]"
	touch $(DEMO_STAMP)

# the tests: torch (pinned), ROOT, ruff, the Kubernetes schemas ...; also covers the demo
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(if $(TORCH_SPEC),$(PIP) $(TORCH_SPEC))
	$(PIP) -e ".[torch,validate,test]"
	touch $(STAMP) $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/pxdbg run --workers 2 --events 500 --seed 2026 --prefetch 16 --out out/demo.npz --force
	$(BIN)/pxdbg validate out/demo.npz --out out/validation

# Two pytest-xdist workers for everything but the farm tests, which share one emulated Slurm cluster and run
# afterwards one at a time (tests/conftest.py refuses them on a worker), and tests/test_basf2_parallel.py, whose
# stand-in jobs end with exit status 129 in ROOT's cleanup when run from an xdist worker (they pass serially).
# Every part runs; any failing fails the target.
XDIST ?= -n 2
PYTEST := $(BIN)/python -m pytest
SERIAL := tests/test_basf2_parallel.py

test: $(STAMP)
	$(PYTEST) --ignore=tests/farm --ignore=$(SERIAL) $(XDIST); a=$$?; \
	$(PYTEST) $(SERIAL); b=$$?; \
	$(PYTEST) tests/farm; c=$$?; exit $$((a || b || c))

# the edit-run loop: no slow tests (full-size GAN forwards, long real-time runs) and no farm. $(SERIAL) runs
# beside the two workers, in a process of its own (its output follows theirs): the workers leave a third of
# the two cores idle while their tests wait on sockets and processes
test-fast: $(STAMP)
	@log=$$(mktemp); ($(PYTEST) -m "not slow" $(SERIAL) > $$log 2>&1; echo $$? >> $$log.rc) & \
	$(PYTEST) -m "not slow and not farm" --ignore=$(SERIAL) $(XDIST); a=$$?; wait; \
	cat $$log; b=$$(cat $$log.rc); rm -f $$log $$log.rc; exit $$((a || b))

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/pxdbg bench

clean:
	rm -rf $(VENV) out build *.egg-info src/*.egg-info
