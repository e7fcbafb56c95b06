# Set-up on a fresh machine with Python 3.11: `make demo` or `make test`.
# Each creates .venv from nothing when it is missing and installs the project into it.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/streamlet demo

lint: $(INSTALLED)
	$(BIN)/ruff check .

# The dashboard test drives Debian's headless Chromium; install it once if it is missing (when the
# install cannot run, the test fails and says so).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

test: lint
	-command -v chromium >/dev/null 2>&1 || \
		($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
