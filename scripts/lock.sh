#!/usr/bin/env bash
# Regenerate constraints.txt: install crishim (not editable, no extras) into
# a fresh venv and record the version of every package it pulled in.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet .
{
    sed -n '1,/^# the dependencies/p' constraints.txt
    "$work/venv/bin/python" -m pip freeze --exclude crishim
} > "$work/constraints.txt"
mv "$work/constraints.txt" constraints.txt
rm -rf build crishim.egg-info
echo "constraints.txt: $(grep -vc '^#' constraints.txt) packages"
