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
# Import packages type-checked by `make lint`: every package's (the sandbox's too).
TYPED_DIRS := $(filter libs/% services/% tools/% sandbox/%,$(PACKAGE_DIRS))
TYPED_PACKAGES := $(filter-out tests,$(notdir $(patsubst %/__init__.py,%,$(wildcard \
	$(addsuffix /*/__init__.py,$(TYPED_DIRS))))))
EMPTY :=
SPACE := $(EMPTY) $(EMPTY)

KAFKA_HOME := deploy/local/kafka
KAFKA_STAMP := $(KAFKA_HOME)/lib/.fetched
HAPI_HOME := deploy/local/hapi
HAPI_STAMP := $(HAPI_HOME)/lib/.fetched
AXE_VERSION := 4.14.1
AXE_DIR := tests/browser/.node
AXE_JS := $(AXE_DIR)/node_modules/axe-core/axe.min.js

.PHONY: help install up check test test-interop acceptance reliability-report \
	security-report lint bench bench-quick bench-triage kafka-jars hapi-jars deploy-check traces clean

help: ## list the targets
	@echo "Usage: make <target> [KAFKA=tansu|apache] [PYTEST_ARGS=...]"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  %-19s %s\n", $$1, $$2}' \
		$(MAKEFILE_LIST)

install: $(STAMP) $(AXE_JS) ## create .venv (Python 3.11) and install every package editable + dev tools

# axe-core (npm) for the portal's browser tests, injected into the page by the tests; the
# version is pinned here, installed into a git-ignored folder, no lock file written.
$(AXE_JS):
	npm install --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
		--prefix $(AXE_DIR) axe-core@$(AXE_VERSION)
	@test -f $@

# Re-runs only when a pyproject.toml, the constraints or the dev tools list changed.
$(STAMP): constraints.txt requirements-dev.txt $(addsuffix /pyproject.toml,$(PACKAGE_DIRS))
	@test -x $(PY) || python3.11 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -r requirements-dev.txt \
		$(addprefix -e ,$(PACKAGE_DIRS))
	$(PY) -m pip check
	@touch $@

# TRACING=1: also the trace sink (then `make traces`); OBSERVABILITY=1: also Prometheus.
up: install ## run the whole stack in the foreground (KAFKA=tansu|apache, TRACING=1, OBSERVABILITY=1)
	$(PY) -m devstack up --kafka $(KAFKA) $(if $(TRACING),--tracing) \
		$(if $(OBSERVABILITY),--observability)

check: install ## start the stack, check every service's /readyz /healthz /metrics, stop it
	$(PY) -m devstack check --kafka $(KAFKA)

# pytest exits 5 when it collected nothing: that must fail, not pass quietly.
# The acceptance journeys (tests/acceptance) start the stack as `make up` does, on its fixed
# ports, with Tansu unless ACCEPTANCE_KAFKA=apache: stop a running `make up` first.
test: install ## every package's tests and the acceptance journeys (KAFKA=apache: Apache Kafka)
	@rc=0; KAFKA=$(KAFKA) $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; \
	exit $$rc

# HAPI FHIR JPA (Java 17, jars from Maven Central) as a second, independent EHR.
test-interop: install hapi-jars ## run the connector against HAPI FHIR (tests/interop)
	@rc=0; PORTAL_INTEROP=1 KAFKA=$(KAFKA) $(PY) -m pytest tests/interop -m interop \
		$(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-interop: no tests were collected" >&2; exit 1; fi; \
	exit $$rc

lint: install ## ruff check, ruff format --check, mypy --strict, import-linter contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	MYPYPATH=$(subst $(SPACE),:,$(TYPED_DIRS)) $(VENV)/bin/mypy --strict \
		$(addprefix -p ,$(TYPED_PACKAGES))
	$(VENV)/bin/lint-imports

# The benchmarks start the stack as `make up` does, on its fixed ports: stop `make up` first.
# Progress goes to stderr; the last line on stdout is one JSON object of headline figures.
bench: install ## benchmarks on the whole stack + same-run baselines -> bench/results/ (KAFKA=apache too)
	$(PY) bench/run.py --kafka $(KAFKA)

bench-quick: install ## a 10-second version of each benchmark, for development (KAFKA=apache too)
	$(PY) bench/run.py --quick --kafka $(KAFKA)

bench-triage: install ## triage vignettes: confusion matrix, accuracy, sensitivity, JSON line
	$(PY) bench/triage/run.py

kafka-jars: $(KAFKA_STAMP) ## fetch Apache Kafka's jars with Maven into deploy/local/kafka/lib/

# Same stamp as devstack.brokers.fetch_kafka_jars; old jars go first, or two versions of
# Kafka would end up on one classpath after a version bump.
$(KAFKA_STAMP): $(KAFKA_HOME)/pom.xml
	rm -f $(KAFKA_HOME)/lib/*.jar
	mvn -q -B -f $(KAFKA_HOME)/pom.xml dependency:copy-dependencies
	@touch $@

deploy-check: install ## render + validate the k8s overlays, check alert rules (promtool) and dashboards
	bash deploy/k8s/tools/validate.sh
	bash deploy/observability/tools/check.sh

# The trace sink of `make up TRACING=1` keeps spans in TRACES_DATABASE_URL (PostgreSQL).
TRACES ?= 5
traces: install ## print the last TRACES=5 traces of the local stack as trees (TRACING=1 stack)
	$(PY) -m devstack.tracesink show --limit $(TRACES)

acceptance: install ## only the acceptance journeys, on the stack `make up` starts
	@rc=0; $(PY) -m pytest tests/acceptance $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make acceptance: no tests were collected" >&2; exit 1; fi; \
	exit $$rc

reliability-report: install ## journeys + fault scenarios: a table, then one JSON line
	$(PY) -m devstack reliability-report --kafka $(KAFKA) $(PYTEST_ARGS)

hapi-jars: $(HAPI_STAMP) ## build the HAPI FHIR test server: jars into deploy/local/hapi/lib/

# Same stamp as devstack.hapi.build_hapi.
$(HAPI_STAMP): $(HAPI_HOME)/pom.xml $(shell find $(HAPI_HOME)/src -type f 2>/dev/null)
	rm -f $(HAPI_HOME)/lib/*.jar
	mvn -q -B -f $(HAPI_HOME)/pom.xml compile dependency:copy-dependencies
	@touch $@

security-report: install ## attacks of tests/security on real local servers: a table, then one JSON line
	$(PY) tests/security/report.py $(PYTEST_ARGS)

clean: ## remove generated files: .data/ (PostgreSQL too), caches, jars, install stamp
	rm -rf .data $(AXE_DIR) .artifacts $(KAFKA_HOME)/lib $(KAFKA_HOME)/target $(HAPI_HOME)/lib $(HAPI_HOME)/target \
		.mypy_cache .ruff_cache \
		.pytest_cache .hypothesis $(STAMP)
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
