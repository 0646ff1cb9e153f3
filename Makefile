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
# needs one fails instead of skipping when it is missing.
test: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	CEM_NODE_REQUIRE_TOOLS=1 $(BIN)/pytest

lint:
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format:
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: setup
	$(BIN)/python bench/bench_synth.py
