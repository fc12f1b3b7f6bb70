# Two entry points a new user needs: `make demo` and `make test`. Both create .venv when
# missing and install the project (editable) with the torch pair that works on these machines.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# Override on other machines, e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# Test processes (pytest-xdist); whole modules go to one process (--dist loadscope), so a module's
# shared fixtures (a pretrained model, the SLURM cluster) are built once. JOBS=1 runs serially.
JOBS ?= 2
XDIST := $(if $(filter-out 1,$(JOBS)),-n $(JOBS) --dist loadscope,)

.PHONY: install demo test test-fast check-results bench results clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# The main job on embedded defaults (CPU, local launcher, wandb offline); writes outputs/demo/demo_dln.png
# (ignored by git; the committed copy is results/demo/, see scripts/check_results.py).
demo: install
	OMP_NUM_THREADS=1 $(BIN)/python scripts/demo.py

# Every test, slow ones included (this is what CI runs). The SLURM cluster tests install Debian
# packages and start daemons, so they run only with CI=true or PTFT_SLURM_TESTS=1 (skipped otherwise).
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# The fast subset, for the edit-test loop.
test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

# Regenerate every checked file of results/ in a temporary copy and compare (scripts/check_results.py).
check-results: install
	OMP_NUM_THREADS=1 $(BIN)/python scripts/check_results.py

clean:
	rm -rf runs outputs multirun .pytest_cache
