#!/usr/bin/env bash
# Set up and run every check CI runs: format, lint, types, layer contracts, then the tests.
# Extra arguments go to pytest (e.g. -k wire, or -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
echo "== ruff format --check"; .venv/bin/ruff format --check extender tests benchmarks
echo "== ruff check";          .venv/bin/ruff check extender tests benchmarks
echo "== mypy (strict)";       .venv/bin/mypy
echo "== import contracts";    .venv/bin/lint-imports
echo "== pytest";              .venv/bin/python -m pytest "$@"
