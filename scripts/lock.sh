#!/usr/bin/env bash
# Refresh constraints.txt, the exact versions that scripts/setup.sh (and so CI and the README's
# set-up) installs: every dependency of the package and of its dev and simulate extras, for every
# platform and Python >= 3.11 (uv's universal resolution), plus pip itself.
#   scripts/lock.sh                  re-resolve, keeping every pin that still satisfies
#                                    pyproject.toml (run it after changing a dependency range)
#   scripts/lock.sh --upgrade        move every pin to the newest version that satisfies it
#   scripts/lock.sh --upgrade-package NAME   move one
# Then run scripts/setup.sh (it reinstalls when the file changed) and the tests, and commit
# pyproject.toml and constraints.txt together. pyproject.toml keeps its ranges: they are what
# someone installing the package into their own environment gets.
set -euo pipefail
cd "$(dirname "$0")/.."

# uv resolves (pip-tools cannot resolve for every platform at once). It is itself pinned by the
# lock (the dev extra); the first lock, before there is a .venv, takes the newest one.
if [ ! -x .venv/bin/uv ]; then
  [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
  if [ -f constraints.txt ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt uv
  else
    .venv/bin/python -m pip install -q --disable-pip-version-check uv
  fi
fi

# pip comes in on standard input ("-"): it is no dependency of the package, but setup.sh
# upgrades the virtualenv's pip to this pinned version before it installs anything else.
echo "pip" | .venv/bin/uv pip compile pyproject.toml - \
  --extra dev --universal --python-version 3.11 \
  --custom-compile-command "scripts/lock.sh" \
  --quiet -o constraints.txt "$@"
echo "constraints.txt: $(grep -c '==' constraints.txt) pins"
