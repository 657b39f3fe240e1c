#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs the project
# with everything it needs. Idempotent: a second run with an unchanged pyproject.toml and
# constraints.txt installs nothing. As root, also installs the Debian package
# dataset-fashion-mnist (the offline source of the fashion_mnist dataset) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  echo "setup: Python 3.11 is required (found: $("$python" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing the Debian package dataset-fashion-mnist"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: warning: dataset-fashion-mnist is not installed and this is not root;" \
         "install it (apt-get install dataset-fashion-mnist) or pass --download" >&2
  fi
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
inputs=(pyproject.toml)
[ -f constraints.txt ] && inputs+=(constraints.txt)
stamp=".venv/.installed-$(cat "${inputs[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing the project and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  constraints=()
  [ -f constraints.txt ] && constraints=(-c constraints.txt)
  .venv/bin/python -m pip install -q "${constraints[@]}" -e ".[dev,docs]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
