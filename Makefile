# labpipe: `make demo` runs the main job, `make test` the tests. Both set up .venv first (make install).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.labpipe-installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MPLBACKEND := Agg

.PHONY: install demo test test-fast lint format bench down

install: $(STAMP)

$(STAMP): pyproject.toml setup.py constraints.txt infra/apt-packages.txt
	scripts/install-system-packages.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -c constraints.txt -e ".[all,dev]"
	# nnunetv2 -> batchgenerators -> unittest2 pulls the 2010 'argparse' backport, which shadows the
	# standard library's and breaks pydantic-settings (no BooleanOptionalAction); the stdlib one serves all.
	$(PIP) uninstall -y -q argparse 2>/dev/null || true
	touch $(STAMP)

demo: install
	$(VENV)/bin/labpipe demo

down: install
	$(VENV)/bin/labpipe down

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not e2e"

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

bench: install
	@for b in tests/bench/*.py; do echo "== $$b"; $(PY) $$b | tail -1; done
