# `make demo` and `make test` do all set-up on a fresh machine: a virtualenv in .venv with
# Conveyor and its test tools installed from pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test docs system-deps services chaos lint typecheck check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,redis,postgres]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/conveyor demo

test: $(STAMP) system-deps services
	$(BIN)/pytest

# The documentation site (MkDocs, Material theme, API reference by mkdocstrings) into site/;
# --strict turns every warning (a broken link, an unknown docstring parameter) into a failure.
# tests/unit/test_docs_site.py runs the same build in `make test`.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# System tools some tests drive, from Debian's packages: chromium for the dashboard's browser test
# (through Playwright, never `playwright install`), faketime for the clock-skew test.
SYSTEM_DEPS := /usr/bin/chromium:chromium /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1:faketime
system-deps:
	@missing=""; for dep in $(SYSTEM_DEPS); do [ -e "$${dep%%:*}" ] || missing="$$missing $${dep##*:}"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing$$missing (apt-get)"; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The servers the backend suites use, on 127.0.0.1: PostgreSQL (5432, database `test`) and Redis
# (6379). Each is started if it does not answer, the way this machine's services are started
# (Redis keeps nothing on disk), then both must answer within 10 s.
services:
	@if ! pg_isready -q -h 127.0.0.1 -p 5432; then \
		echo "starting PostgreSQL"; \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; \
	fi
	@if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then \
		echo "starting Redis"; mkdir -p /var/lib/redis /var/log/redis; \
		redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
			--dir /var/lib/redis --logfile /var/log/redis/ci.log; \
	fi
	@for i in $$(seq 100); do \
		pg_isready -q -h 127.0.0.1 -p 5432 && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && exit 0; \
		sleep 0.1; \
	done; echo "PostgreSQL (127.0.0.1:5432) or Redis (127.0.0.1:6379) is not answering" >&2; exit 1

lint: $(STAMP)
	$(BIN)/ruff check src tests bench conftest.py examples
	$(BIN)/ruff format --check src tests bench conftest.py examples

typecheck: $(STAMP)
	$(BIN)/mypy

# The crash storm at soak size (100,000 tasks per backend, a kill every ~2 s, a store restart).
chaos: $(STAMP) system-deps services
	CONVEYOR_CHAOS=soak $(BIN)/pytest -s -p no:cacheprovider tests/e2e/test_chaos.py --timeout 7200

check: lint typecheck test

# `conveyor bench` on each backend of this machine (SQLite file, local PostgreSQL and Redis).
BENCH_URLS ?= sqlite:////tmp/conveyor-bench.db postgresql://postgres@127.0.0.1:5432/test?schema=conveyor_bench redis://127.0.0.1:6379/12
bench: $(STAMP)
	mkdir -p bench/results
	for url in $(BENCH_URLS); do \
		name=$${url%%:*}; $(BIN)/conveyor bench "$$url" --json bench/results/$$name.json || exit 1; \
	done

# bench/limits.py (rate accuracy, cost of limits that do not bind, fairness between tenants) through
# real worker processes on each backend of this machine; its own file, schema and Redis db.
BENCH_LIMITS_URLS ?= sqlite:////tmp/conveyor-bench-limits.db postgresql://postgres@127.0.0.1:5432/test?schema=conveyor_bench_limits redis://127.0.0.1:6379/15
.PHONY: bench-limits
bench-limits: $(STAMP)
	mkdir -p bench/results
	for url in $(BENCH_LIMITS_URLS); do \
		name=$${url%%:*}; $(BIN)/python bench/limits.py "$$url" --json bench/results/limits-$$name.json || exit 1; \
	done

clean:
	rm -rf $(VENV) conveyor-demo.db*

# The same throughput / priority / delay protocol against the peer task queues (Celery, Dramatiq, Huey, arq,
# SAQ, taskiq, RQ on Redis; procrastinate, pgqueuer on PostgreSQL), each in its own virtualenv under
# bench/peers/.venvs (created on first use). See bench/peers/README.md.
.PHONY: bench-peers
bench-peers: $(STAMP)
	python3 bench/peers/run.py --json bench/peers/results.json
