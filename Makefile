# Herald: `make run` to use it, `make test` to test it. Needs only Python 3.11
# and make: the virtualenv, PostgreSQL and the broker come with the project.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_FOR_VENV ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# Extra arguments for pytest: make test PYTEST_ARGS="-k outbox -x"
PYTEST_ARGS ?=

.PHONY: help run test test-system-deps lint bench bench-system-deps clean

help:
	@echo "make run    start Herald (web, worker, beat; embedded PostgreSQL unless DATABASE_URL is set)"
	@echo "make test   run the test suite (throwaway PostgreSQL and Redis unless DATABASE_URL/REDIS_URL are set)"
	@echo "make lint   ruff check and ruff format --check"
	@echo "make bench  run the benchmarks and print their table (by hand; never in CI; see bench/README.md)"
	@echo "make clean  remove the virtualenv, caches and collected static files (keeps var/ data)"

$(PY):
	@test -n "$(PYTHON_FOR_VENV)" || { echo "make: Python 3.11 (or python3) is needed"; exit 1; }
	$(PYTHON_FOR_VENV) -m venv $(VENV)

# Each stamp is newer than the lock files it installed, so pip runs again
# only when a lock file changes.
$(VENV)/.installed-runtime: requirements.lock | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	@touch $@

$(VENV)/.installed-dev: requirements.lock requirements-dev.lock | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	@touch $@ $(VENV)/.installed-runtime

run: $(VENV)/.installed-runtime
	$(PY) -m config.launcher run

test: $(VENV)/.installed-dev test-system-deps
	$(PY) -m config.launcher test -- tests $(PYTEST_ARGS)

# System packages the tests drive (Debian's Chromium for the browser tests,
# Dovecot and Postfix for the real-server bounce tests), installed without
# prompts when missing and when apt-get can run (as root). Each entry is
# command:packages (comma-separated). Without them those tests are skipped
# locally and fail in CI. Debian starts the daemons of the packages it
# installs on the standard ports: they are stopped at once, since the tests
# start their own on high loopback ports.
SYSTEM_TEST_PACKAGES := chromium:chromium dovecot:dovecot-imapd,dovecot-pop3d postfix:postfix
test-system-deps:
	@missing=""; for p in $(SYSTEM_TEST_PACKAGES); do \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v $${p%%:*} >/dev/null || missing="$$missing $$(echo $${p#*:} | tr , ' ')"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make test: installing$$missing (apt-get)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q --no-install-recommends $$missing >/dev/null \
	      || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null; }; \
	    /usr/sbin/postfix stop >/dev/null 2>&1 || true; \
	    /usr/sbin/dovecot stop >/dev/null 2>&1 || true; \
	  else \
	    echo "make test: $$missing missing and cannot be installed here; the tests that need them will be skipped"; \
	  fi; \
	fi

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The benchmarks (bench/README.md): each runs on a fresh database (an embedded
# PostgreSQL unless DATABASE_URL is set), 3 times, and the median goes in the
# table printed at the end and written to bench/results/latest.md.
# BENCH_SCALE=0.05 shrinks every size for a quick run, BENCH_REPEAT=1 runs
# each once, BENCH_ONLY="outbound build" runs only those.
bench: $(VENV)/.installed-dev bench-system-deps
	PYTHONPATH=$(CURDIR) $(PY) -m config.launcher exec -- $(PY) -m bench.run

# smtp-sink and smtp-source come with Debian's postfix package: the reference
# of the outbound benchmark. Installed without configuration ("No
# configuration"), so no mail server is set up; should the package start a
# Postfix daemon anyway, it is stopped and disabled (the tools are all we want,
# never a server on port 25). Benchmarks 1, 5 and 6 send to smtp-sink.
bench-system-deps:
	@export PATH="$$PATH:/usr/sbin"; \
	if ! command -v smtp-sink >/dev/null || ! command -v smtp-source >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make bench: installing postfix for smtp-sink and smtp-source (apt-get)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	    apt-get install -y -q --no-install-recommends postfix >/dev/null \
	      || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends postfix >/dev/null; }; \
	    postfix stop >/dev/null 2>&1 || true; \
	    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl disable --now postfix >/dev/null 2>&1 || true; fi; \
	    update-rc.d postfix disable >/dev/null 2>&1 || true; \
	  else \
	    echo "make bench: smtp-sink/smtp-source missing and cannot be installed here (needs root and apt-get); benchmarks 1, 5 and 6 will fail"; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache var/static
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
