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

.PHONY: install demo test ui daemon api bench clean dagster-home workers workers-stop

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@# the package's bytecode, once: PYTHONDONTWRITEBYTECODE (set on this kind of machine) would otherwise make
	@# every run worker compile the code location from source (0.5 s of its 3.5-4 s start, measured -X importtime)
	$(BIN)/python -m compileall -q dagster_project
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

# Headless (an observatory's server, no web UI): one long-lived code server and the daemon connected to it.
# The daemon reloads its workspace every minute; pointed at workspace.yaml's python_module it would start a
# code server of its own and replace it at each reload, importing the code location again (`dagster dev`,
# `make ui`, already runs one code server for its daemon and webserver). Stop both with Ctrl-C.
CODE_SERVER_PORT ?= 4266
daemon: install dagster-home
	@$(BIN)/dagster code-server start -m dagster_project.definitions -h 127.0.0.1 -p $(CODE_SERVER_PORT) & server=$$!; \
	trap 'kill $$server 2>/dev/null; wait $$server' EXIT; \
	until $(BIN)/dagster api grpc-health-check -h 127.0.0.1 -p $(CODE_SERVER_PORT) >/dev/null 2>&1; do \
	  kill -0 $$server 2>/dev/null || { echo "the code server did not start" >&2; exit 1; }; sleep 1; done; \
	$(BIN)/dagster-daemon run --grpc-host 127.0.0.1 --grpc-port $(CODE_SERVER_PORT)

# The observatory operations API (docs/operations_api.md): 127.0.0.1:8000, OpenAPI at /openapi.json.
# Its first admin token: ASTRO_API_ADMIN_TOKEN, or `.venv/bin/python -m dagster_project api token create NAME --scope admin`.
API_HOST ?= 127.0.0.1
API_PORT ?= 8000
api: install
	$(BIN)/python -m dagster_project api --host $(API_HOST) --port $(API_PORT)

bench: install
	$(BIN)/python benchmarks/stage_timings.py --size 2048

clean:
	rm -rf $(ASTRO_HOME)

# Celery workers on this machine (ASTRO_EXECUTOR=celery; README "Scale-out on Celery workers", docs/scaling.md):
# `make workers N=2` starts worker-1..N in the background, one step at a time each, logs and pids in
# $(ASTRO_HOME)/workers; `make workers-stop` stops them (warm: a step under way is finished first, then
# whatever is left of the worker's process group is killed). Each worker is its own session (setsid).
N ?= 2
WORKERS_DIR := $(ASTRO_HOME)/workers
export ASTRO_CELERY_BROKER ?= pyamqp://guest@127.0.0.1:5672//
export ASTRO_CELERY_BACKEND ?= rpc://
export ASTRO_CELERY_QUEUE ?= dagster

workers: install dagster-home
	@mkdir -p $(WORKERS_DIR)
	@for i in $$(seq 1 $(N)); do \
	  pidfile=$(WORKERS_DIR)/worker-$$i.pid; \
	  if test -f $$pidfile && kill -0 $$(cat $$pidfile) 2>/dev/null; then echo "worker-$$i is running (pid $$(cat $$pidfile))"; continue; fi; \
	  PATH=$(CURDIR)/$(BIN):$$PATH setsid $(BIN)/dagster-celery worker start -A dagster_celery.app \
	    -y $(CURDIR)/deploy/celery.yaml -n worker-$$i -q $(ASTRO_CELERY_QUEUE) -- --concurrency 1 \
	    >$(WORKERS_DIR)/worker-$$i.log 2>&1 </dev/null & echo $$! >$$pidfile; \
	  echo "worker-$$i started (pid $$!, log $(WORKERS_DIR)/worker-$$i.log)"; \
	done

workers-stop:
	@for pidfile in $(WORKERS_DIR)/worker-*.pid; do \
	  test -f $$pidfile || continue; pid=$$(cat $$pidfile); \
	  if kill -0 $$pid 2>/dev/null; then \
	    kill -TERM $$(pgrep -P $$pid) 2>/dev/null; \
	    for _ in $$(seq 60); do kill -0 $$pid 2>/dev/null || break; sleep 1; done; \
	    kill -KILL -- -$$pid 2>/dev/null; echo "stopped $$(basename $$pidfile .pid)"; \
	  fi; rm -f $$pidfile; \
	done
