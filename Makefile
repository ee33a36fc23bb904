# classguard: `make run` starts the resolver with embedded defaults, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install run test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The versions pinned in constraints.txt (pip-tools; `make lock` updates them): the same ones the
# Docker image installs, so CI tests what ships.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet --constraint constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

# constraints.txt from pyproject.toml: every dependency, the test extras' included, pinned.
.PHONY: lock
lock: | $(BIN)/python
	$(BIN)/pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --strip-extras --extra test --no-emit-index-url \
		--no-emit-find-links --output-file constraints.txt pyproject.toml

# docs/classguard.schema.json from the configuration's definitions (classguard/config.py).
.PHONY: schema
schema: install
	$(BIN)/classguard config schema > docs/classguard.schema.json

run: install
	$(BIN)/classguard serve $(ARGS)

# The Redis store's tests run a real redis-server (tests/redis_server.py), the dashboard's browser
# tests Debian's chromium driven by Playwright (tests/browser.py), the interop tests unbound and
# kdig (tests/interop.py): installed when missing.
test: install
	command -v redis-server >/dev/null || (apt-get update && apt-get install -y redis-server)
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	command -v unbound >/dev/null || (apt-get update && apt-get install -y unbound)
	command -v kdig >/dev/null || (apt-get update && apt-get install -y knot-dnsutils)
	$(BIN)/python -m pytest -q $(ARGS)

# classguard beside dnsmasq and unbound on 127.0.0.1 (docs/benchmarks.md): about 15 minutes;
# BENCH_QUICK=1 for a ~3 minute version. Installs dnsperf, dnsmasq, unbound and nsd when missing.
.PHONY: bench
bench: install
	sh bench/install-deps.sh
	$(BIN)/python bench/run.py

# The compiled blocklists at 1 and 5 million names (docs/benchmarks.md, "Blocklists"): about
# 5 minutes. `make bench-lists ARGS=--write-docs` also updates that section.
# A town's data (218 classes, 5,450 devices) and what each admin action costs, with DNS p99 at
# 2,000 q/s meanwhile (docs/benchmarks.md, "Town"): about a minute. ARGS=--write-docs updates it.
.PHONY: bench-town
bench-town: install
	$(BIN)/python bench/town.py $(ARGS)

.PHONY: bench-lists
bench-lists: install
	$(BIN)/python bench/lists_bench.py $(ARGS)

clean:
	rm -rf $(VENV) classguard-state .pytest_cache *.egg-info

# Decisions per second for a 218-class policy with 10 windows each (docs/benchmarks.md,
# "Decisions"): under a minute. `make bench-decisions ARGS=--write-docs` updates that section.
.PHONY: bench-decisions
bench-decisions: install
	$(BIN)/python bench/decisions_bench.py $(ARGS)

# docs/screenshots/*.png: the dashboard's main pages in a headless chromium, on a demo school
# (tests/screenshots.py); about 20 seconds.
.PHONY: screenshots
screenshots: install
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	$(BIN)/python -m tests.screenshots

# Where a worker's time goes at its peak (py-spy) and its memory, in make bench's setting:
# about 2 minutes; prints, writes nothing. Installs py-spy in the venv when missing.
.PHONY: bench-profile
bench-profile: install
	sh bench/install-deps.sh
	$(BIN)/python bench/profile_peak.py

# Steady mixed load (UDP, TCP, DoH) on `serve --workers 2` with a Redis store, with faults injected
# one phase each (a worker killed, the upstream silent, Redis hung then restarted empty, SIGHUP,
# lists update); prints lost/wrong/SERVFAIL/p99 per phase and each process's RSS and descriptors.
# About 10 minutes (SOAK_MINUTES, SOAK_RATE); not part of `make test`.
.PHONY: soak
soak: install
	command -v redis-server >/dev/null || (apt-get update && apt-get install -y redis-server)
	$(BIN)/python bench/soak.py
