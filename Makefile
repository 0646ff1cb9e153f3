# The two commands of a new machine (see README.md):
#   make demo   set up, then run `cem-node demo` on the embedded defaults
#   make test   set up, then lint and run the test suite
.PHONY: setup demo test lint format bench

VENV := .venv
BIN := $(VENV)/bin

setup:
	@scripts/setup.sh

demo: setup
	$(BIN)/cem-node demo

# CEM_NODE_REQUIRE_TOOLS: setup installed the Debian tools, so a test that
# needs one fails instead of skipping when it is missing. PostgreSQL tests run
# (and must pass) when a server answers on loopback; without one they skip
# and say so.
PG_UP := $(shell pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && echo 1)
# root can make network namespaces: then the multi-host tests must run, not skip
IS_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo 1)
test: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	@[ "$(PG_UP)" = 1 ] || echo "note: no PostgreSQL on 127.0.0.1:5432, its tests will be skipped"
	CEM_NODE_REQUIRE_TOOLS=1 CEM_NODE_REQUIRE_POSTGRES=$(PG_UP) CEM_NODE_REQUIRE_NETNS=$(IS_ROOT) $(BIN)/pytest

lint:
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format:
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: setup
	$(BIN)/python bench/bench_synth.py
	$(BIN)/python bench/bench_ingest.py
