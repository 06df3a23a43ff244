#!/usr/bin/env bash
# Set up and start the extender: scheduler port 8888, admin port 8889. Extra arguments go to
# `priority-extender serve` (e.g. --policy config/policy.yaml). With no --policy it runs on the
# embedded default policy and its static demo metrics: no cluster and no Prometheus needed.
#
# PYTHON=/path/to/python3.11 chooses the interpreter. The virtualenv (.venv) is bound to the one
# it was made with, so when PYTHON names another one, .venv is made again with it (said on
# stderr; scripts/setup.sh then reinstalls the pinned packages into it).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then
  # The interpreter each one really runs (symlinks resolved); both print nothing if unusable.
  real='import os, sys; print(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))'
  want=$("$PYTHON" -c "$real" 2>/dev/null || true)
  have=$(.venv/bin/python -c "$real" 2>/dev/null || true)
  if [ -z "$want" ]; then
    echo "error: PYTHON=$PYTHON does not run" >&2
    exit 1
  fi
  if [ "$want" != "$have" ]; then
    echo "run.sh: .venv was made with ${have:-an interpreter that no longer runs}; PYTHON asks" \
      "for $want: making .venv again with it" >&2
    rm -rf .venv
  fi
fi
scripts/setup.sh
exec .venv/bin/priority-extender serve "$@"
