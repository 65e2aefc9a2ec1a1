# Two commands on a fresh clone: `make run` and `make test`. Both set up .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# First-party plugins (separate distributions, registered through their entry points), installed
# without their optional heavy runtimes (TensorRT) so that CI sees them registered.
PLUGINS := plugins/compressor-tensorrt

.PHONY: setup run test bench clean

setup: $(STAMP)

$(STAMP): requirements-ci.txt requirements-real.txt pyproject.toml $(PLUGINS:%=%/pyproject.toml)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-ci.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-real.txt
	$(BIN)/python -m pip install --quiet --no-build-isolation --no-deps -e .
	for p in $(PLUGINS); do $(BIN)/python -m pip install --quiet --no-build-isolation --no-deps -e $$p || exit 1; done
	touch $(STAMP)

run: setup
	$(BIN)/compressor run

# two workers, one math thread each (tests/conftest.py), tests handed out as workers free up
test: setup
	$(BIN)/python -m pytest -q -ra --durations=20 -n 2 --dist worksteal

bench: setup
	$(BIN)/python bench/default_recipe.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/pruning.py
	$(BIN)/python bench/quantization.py
	$(BIN)/python bench/distillation.py
	$(BIN)/python bench/targets.py
	$(BIN)/python bench/rewrites.py
	$(BIN)/python bench/sweep.py
	$(BIN)/python bench/parity.py
	$(BIN)/python bench/real_vision.py
	$(BIN)/python bench/real_text.py

clean:
	rm -rf $(VENV) outputs build *.egg-info
