# Two entry points (README quick start):
#   make run   set up, then run the main job: `dvc repro` on the default params.yaml
#   make test  set up, then run the whole test suite
# Both are idempotent: set-up re-installs only when pyproject.toml changed.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := libturbojpeg0-dev libopencv-dev pkg-config
# Quiet the notices pip prints about local package folders it does not use.
PIP := $(BIN)/pip --disable-pip-version-check -q
# The stages' `python` is the first on PATH: make it the project's environment.
export PATH := $(abspath $(BIN)):$(PATH)
# Offline machines of this project keep CIFAR-100 in ../shared/data: the main job uses it
# unless told otherwise (the tests find it themselves).
ifeq ($(origin EED_DATA_ROOT), undefined)
ifneq ($(wildcard ../shared/data/cifar-100-python.tar.gz),)
run: export EED_DATA_ROOT := $(abspath ../shared/data)
endif
endif

.PHONY: run test lint setup system-deps gpu-check

run: setup
	dvc repro
	@echo "Share these results: dvc push (to the remote in .dvc/config; README, \"Sharing results\")."

# The linter, the formatter (check only) and the type checker, at the versions pyproject.toml pins;
# .pre-commit-config.yaml runs the same on each commit, and CI before the tests.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pyright

# Two pytest-xdist workers: the suite waits on subprocesses (dvc, torchrun, servers) a good part of
# its time, so two workers fill the two cores of a CI machine. PYTEST_WORKERS=0 runs in one process.
# worksteal: a worker that runs out of tests takes some queued for the other, so the suite does not
# end with one worker on a queue of slow tests while the other waits.
PYTEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal --durations=15

setup: $(STAMP)

# On a GPU machine: set up, CUDA tests, timed race, grid throughput (bench/gpu_check.sh; issue 16).
gpu-check:
	bench/gpu_check.sh

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Debian packages FFCV needs:$$missing"; \
	    SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "FFCV needs the system libraries:$$missing (libjpeg-turbo, OpenCV, pkg-config)." >&2; \
	    echo "This system has no apt-get: install them with your package manager (e.g. conda install -c conda-forge libjpeg-turbo opencv pkg-config), then re-run." >&2; \
	    exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml | system-deps
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.14.1 torchvision==0.29.1 2> >(grep -v "^WARNING: Location" >&2)
	$(PIP) install -e '.[dev]' 2> >(grep -v "^WARNING: Location" >&2)
	@touch $@
