# The two README commands, each complete on a fresh machine:
#   make demo   set up .venv, fetch the default weights, run the demo into out/demo
#   make test   the same set-up plus an X server's Debian packages and the 3D sample data,
#               then lint (ruff check, ruff format --check, mypy) and the test suite
# and `make bench` for benchmarks/. Re-runs skip the set-up: a stamp in .venv records
# the install and is renewed when pyproject.toml changes.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# -qq keeps pip to errors only; the set-up is otherwise silent unless something fails.
PIP := $(PY) -m pip --quiet --quiet
# Installed on its own and first, so that resolving the project never swaps in another
# torch build (the CPU wheel is on our machines' disk; PyPI's default pulls CUDA).
TORCH := torch==2.13.0
STAMP := $(VENV)/.napari-sam-test-extra
PYTEST_ARGS ?=

# napari needs a real X server to add layers (Qt's offscreen platform has no OpenGL);
# pytest-xvfb starts Xvfb. The rest are the libraries Qt6's xcb platform plugin loads.
APT_PACKAGES := xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 libxcb-cursor0 \
	libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 \
	libxkbcommon-x11-0 libgl1 libegl1 libglib2.0-0 libdbus-1-3 libfontconfig1

.PHONY: demo test lint bench install system-deps weights samples clean

demo: install weights
	$(VENV)/bin/napari-sam demo --out out/demo

# QT_QPA_PLATFORM is dropped because "offscreen" (set by some CI images) breaks the napari
# tests that add layers; pytest-xvfb provides the display instead.
test: install system-deps weights samples lint
	env -u QT_QPA_PLATFORM $(PY) -m pytest $(PYTEST_ARGS)

# Seconds, and first: a lint or type error fails the test command before the suite runs.
# `ruff format src tests benchmarks docs` and `ruff check --fix` mend most findings.
lint: install
	$(PY) -m ruff check src tests benchmarks docs
	$(PY) -m ruff format --check --quiet src tests benchmarks docs
	$(PY) -m mypy

bench: install weights
	$(PY) benchmarks/run_all.py

# One environment for demo, test and bench: the test extra (napari, PyQt6, pytest) on top
# of the library, so running `make demo` then `make test` installs once.
install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	@echo "Installing napari-sam and its test tools into $(VENV) (a few minutes the first time)"
	$(PIP) install $(TORCH)
	$(PIP) install -e ".[test]"
	@touch $@

# Checked on every run (dpkg-query is fast); apt-get runs only when something is missing.
system-deps:
	@if ! command -v dpkg-query >/dev/null; then \
		echo "Not Debian: install Xvfb and Qt6's xcb libraries yourself ($(APT_PACKAGES))"; \
		exit 0; \
	fi; \
	missing=""; \
	for package in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$package" 2>/dev/null | grep -q "install ok installed" \
			|| missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:$$missing"; \
		sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
		$$sudo apt-get update -qq; \
		log=$$(mktemp); \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends \
			$$missing >"$$log" 2>&1 || { cat "$$log"; rm -f "$$log"; exit 1; }; \
		rm -f "$$log"; \
	fi

# Instant when the cache (~/.cache/napari-sam/weights) already holds verified weights.
weights: install
	$(VENV)/bin/napari-sam weights fetch vit_t

# The 3D sample (cells3d nuclei), the evaluation image sets (BBBC007, the scratch assay) and
# the tracked time-lapse
# are downloaded on first use, not bundled; fetched here so that the tests find them in the
# cache (~/.cache/napari-sam/samples). Instant when cached.
samples: install
	$(PY) -c "from napari_sam.training.image_sets import IMAGE_SET_NAMES, load_image_set, \
		load_timelapse_tracks; [load_image_set(name) for name in IMAGE_SET_NAMES]; \
		load_timelapse_tracks()"

# Keeps .venv (delete it by hand for a from-scratch install); forgets the install stamp.
clean:
	rm -rf out build src/*.egg-info $(STAMP)
