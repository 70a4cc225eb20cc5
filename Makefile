# Two entry points (see README): `make demo` and `make test`. Everything else is a helper of those.
PYTHON ?= python3
# One virtual environment per interpreter: `make test PYTHON=python3.12` builds .venv-3.12.
ifeq ($(PYTHON),python3)
VENV   ?= .venv
else
VENV   ?= .venv-$(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
endif
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_WORKDIR ?= runs/demo

.PHONY: setup data demo test clean-demo help

help:
	@echo "make demo   set up .venv, generate the synthetic data, train + evaluate the demo model"
	@echo "make test   set up .venv and run the test suite (PYTHON=python3.12: on that interpreter, in .venv-3.12)"

# Re-installs when pyproject.toml changes; the package is installed editable.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

setup: $(STAMP)

# The generator is a no-op when the same data is already there.
data: setup
	$(PY) -m sketchreid_jax.tools.generate_synthetic --out data/synthetic --preset demo

demo: data
	$(PY) -m sketchreid_jax.main --config=configs/demo.py --workdir=$(DEMO_WORKDIR)

test: setup
	@$(PY) -c 'import sys, jax; print(f"python {sys.version.split()[0]} ({sys.executable}), jax {jax.__version__}")'
	$(PY) -m pytest -q

clean-demo:
	rm -rf $(DEMO_WORKDIR)
