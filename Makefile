# etchacell-loop: two commands for a new user, `make demo` and `make test`.
# Both create .venv and install the project (with the ml-tf and dev extras) when needed.
#
#   make test                 the test suite on SQLite
#   make test POSTGRES=1      ... and on PostgreSQL too (starts the local cluster, see .ci/postgres.sh)
#   make lint                 ruff and mypy
#   make demo                 what the system can do so far, on a throw-away data directory

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo-data
PYTEST_ARGS ?=

CHROMIUM ?= /usr/bin/chromium

.PHONY: install browser test lint demo clean-demo

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[ml-tf,dev]'
	@touch $(STAMP)

install: $(STAMP)

# The dashboard's end-to-end tests drive Debian's Chromium (no browser is downloaded). Installed here
# when missing and this runs as root; otherwise those tests are skipped, saying why.
browser:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the dashboard's browser tests"; \
		apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
		|| { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
		|| echo "could not install chromium: the browser tests will be skipped"; \
	fi

test: $(STAMP) browser
ifeq ($(POSTGRES),1)
	ETCHACELL_TEST_POSTGRES_URL="$$(bash .ci/postgres.sh)" $(BIN)/pytest $(PYTEST_ARGS)
else
	$(BIN)/pytest $(PYTEST_ARGS)
endif

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy etchacell_loop migrations/env.py tests bench ops

demo: $(STAMP)
	@ETCHACELL_DATA_DIR=$(DEMO_DIR) ETCHACELL_BIN=$(BIN) bash ops/demo.sh

clean-demo:
	rm -rf $(DEMO_DIR)
