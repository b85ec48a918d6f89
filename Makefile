# Two commands on a fresh machine: `make demo` and `make test`. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export ASTRO_HOME ?= $(CURDIR)/var
export DAGSTER_HOME ?= $(ASTRO_HOME)/dagster

# demo size: `make demo DEMO_SIZE=1024` for a quicker look
DEMO_SIZE ?= 2048
DEMO_FIELDS ?= 2
DEMO_EPOCHS ?= 3

.PHONY: install demo test ui bench clean dagster-home

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

dagster-home:
	@mkdir -p $(DAGSTER_HOME)
	@test -f $(DAGSTER_HOME)/dagster.yaml || cp deploy/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

demo: install dagster-home
	$(BIN)/python -m dagster_project demo --size $(DEMO_SIZE) --fields $(DEMO_FIELDS) --epochs $(DEMO_EPOCHS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

ui: install dagster-home
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

bench: install
	$(BIN)/python benchmarks/stage_timings.py --size 2048

clean:
	rm -rf $(ASTRO_HOME)
