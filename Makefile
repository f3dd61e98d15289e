# Entry points of the portal monorepo. `make` (or `make help`) lists the targets.
# Tools run from .venv/bin directly, so nothing needs an activated virtualenv.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-print-directory

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KAFKA ?= tansu
# The test fixtures and the benchmarks read the broker kind from the environment.
export KAFKA
PYTEST_ARGS ?=

# Build backends (hatchling) are installed by pip in isolated environments that do not see
# `-c`; the environment variable reaches them, so they get the pinned versions too.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# Every directory with a pyproject.toml is a package: libs first, since the others use them.
PACKAGE_DIRS := $(patsubst %/pyproject.toml,%,$(wildcard \
	libs/*/pyproject.toml tools/*/pyproject.toml sandbox/*/pyproject.toml \
	services/*/pyproject.toml))
# Import packages type-checked by `make lint`: those of libs/, services/ and tools/.
TYPED_DIRS := $(filter libs/% services/% tools/%,$(PACKAGE_DIRS))
TYPED_PACKAGES := $(filter-out tests,$(notdir $(patsubst %/__init__.py,%,$(wildcard \
	$(addsuffix /*/__init__.py,$(TYPED_DIRS))))))
EMPTY :=
SPACE := $(EMPTY) $(EMPTY)

KAFKA_HOME := deploy/local/kafka
KAFKA_STAMP := $(KAFKA_HOME)/lib/.fetched

.PHONY: help install up check test acceptance reliability-report security-report lint bench kafka-jars clean

help: ## list the targets
	@echo "Usage: make <target> [KAFKA=tansu|apache] [PYTEST_ARGS=...]"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  %-19s %s\n", $$1, $$2}' \
		$(MAKEFILE_LIST)

install: $(STAMP) ## create .venv (Python 3.11) and install every package editable + dev tools

# Re-runs only when a pyproject.toml, the constraints or the dev tools list changed.
$(STAMP): constraints.txt requirements-dev.txt $(addsuffix /pyproject.toml,$(PACKAGE_DIRS))
	@test -x $(PY) || python3.11 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -r requirements-dev.txt \
		$(addprefix -e ,$(PACKAGE_DIRS))
	$(PY) -m pip check
	@touch $@

up: install ## run the whole stack in the foreground (KAFKA=tansu|apache); Ctrl-C stops it
	$(PY) -m devstack up --kafka $(KAFKA)

check: install ## start the stack, check every service's /readyz /healthz /metrics, stop it
	$(PY) -m devstack check --kafka $(KAFKA)

# pytest exits 5 when it collected nothing: that must fail, not pass quietly.
# The acceptance journeys (tests/acceptance) start the stack as `make up` does, on its fixed
# ports, with Tansu unless ACCEPTANCE_KAFKA=apache: stop a running `make up` first.
test: install ## every package's tests and the acceptance journeys (KAFKA=apache: Apache Kafka)
	@rc=0; KAFKA=$(KAFKA) $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; \
	exit $$rc

lint: install ## ruff check, ruff format --check, mypy --strict, import-linter contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	MYPYPATH=$(subst $(SPACE),:,$(TYPED_DIRS)) $(VENV)/bin/mypy --strict \
		$(addprefix -p ,$(TYPED_PACKAGES))
	$(VENV)/bin/lint-imports

bench: install ## run every benchmark script bench/*.py (KAFKA=apache too; fails if none)
	@scripts=$$(ls bench/[!_]*.py 2>/dev/null || true); \
	if [ -z "$$scripts" ]; then echo "make bench: no benchmark scripts in bench/" >&2; exit 1; fi; \
	for script in $$scripts; do echo "==> $$script"; $(PY) $$script; done

kafka-jars: $(KAFKA_STAMP) ## fetch Apache Kafka's jars with Maven into deploy/local/kafka/lib/

# Same stamp as devstack.brokers.fetch_kafka_jars; old jars go first, or two versions of
# Kafka would end up on one classpath after a version bump.
$(KAFKA_STAMP): $(KAFKA_HOME)/pom.xml
	rm -f $(KAFKA_HOME)/lib/*.jar
	mvn -q -B -f $(KAFKA_HOME)/pom.xml dependency:copy-dependencies
	@touch $@

acceptance: install ## only the acceptance journeys, on the stack `make up` starts
	@rc=0; $(PY) -m pytest tests/acceptance $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make acceptance: no tests were collected" >&2; exit 1; fi; \
	exit $$rc

reliability-report: install ## journeys + fault scenarios: a table, then one JSON line
	$(PY) -m devstack reliability-report --kafka $(KAFKA) $(PYTEST_ARGS)

security-report: install ## attacks of tests/security on real local servers: a table, then one JSON line
	$(PY) tests/security/report.py $(PYTEST_ARGS)

clean: ## remove generated files: .data/ (PostgreSQL too), caches, Kafka jars, install stamp
	rm -rf .data $(KAFKA_HOME)/lib $(KAFKA_HOME)/target .mypy_cache .ruff_cache \
		.pytest_cache .hypothesis $(STAMP)
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
