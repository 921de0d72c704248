# labpipe: `make demo` runs the main job, `make test` the tests. Both set up .venv first (make install).
# A host installs only its role's extras: `make install EXTRAS=backup` (docs/install.md); the default is everything.
# TORCH_INDEX: a PyTorch wheel index for CUDA builds of torch, e.g. https://download.pytorch.org/whl/cu126.
VENV        ?= .venv
PYTHON      ?= python3
EXTRAS      ?= all,dev
TORCH_INDEX ?=
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
comma  := ,
STAMP  := $(VENV)/.labpipe-installed-$(subst $(comma),-,$(EXTRAS))
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MPLBACKEND := Agg

.PHONY: install demo test test-fast lint format bench down

install: $(STAMP)

$(STAMP): pyproject.toml setup.py constraints.txt infra/apt-packages.txt scripts/install-system-packages.sh
	scripts/check-python.sh --missing-ok $(PY) $(PYTHON)
	LABPIPE_ROLES="$(EXTRAS)" scripts/install-system-packages.sh
	scripts/check-python.sh $(PY) $(PYTHON)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -c constraints.txt $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -e ".[$(EXTRAS)]"
	# nnunetv2 -> batchgenerators -> unittest2 pulls the 2010 'argparse' backport, which shadows the
	# standard library's and breaks pydantic-settings (no BooleanOptionalAction); the stdlib one serves all.
	$(PIP) uninstall -y -q argparse 2>/dev/null || true
	touch $(STAMP)

demo: install
	$(VENV)/bin/labpipe demo

down: install
	$(VENV)/bin/labpipe down

test: install
	$(PY) -m pytest -q -n 2 --durations=25  # two workers, whole modules or fixture-sharing folders each (tests/conftest.py); the slowest 25 in the log: under 30 min on 2 cores

test-fast: install
	$(PY) -m pytest -q -m "not slow and not e2e"

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

bench: install
	@for b in tests/bench/*.py; do echo "== $$b"; $(PY) $$b | tail -1; done
