#!/usr/bin/env bash
# Set up and start the extender: scheduler port 8888, admin port 8889. Extra arguments go to
# `priority-extender serve` (e.g. --policy config/policy.yaml). With no --policy it runs on the
# embedded default policy and its static demo metrics: no cluster and no Prometheus needed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/priority-extender serve "$@"
