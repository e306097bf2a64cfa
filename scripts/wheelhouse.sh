#!/usr/bin/env bash
# Build every wheel a host with no network needs into one directory, for
#   pip install --no-index --find-links DIR 'meterbox[EXTRAS]'
# Usage: scripts/wheelhouse.sh DIR [EXTRAS]   (EXTRAS: comma-separated, default
# server,vendor,postgres; "" for the client alone). Needs the package index once, here.
# PYTHON picks the interpreter (and so the platform and Python version of the wheels);
# the target host must match them.
set -euo pipefail
dir=${1:?usage: scripts/wheelhouse.sh DIR [EXTRAS]}
extras=${2-server,vendor,postgres}
python=${PYTHON:-python3}
cd "$(dirname "$0")/.."
spec="."
if [ -n "$extras" ]; then spec=".[$extras]"; fi
mkdir -p "$dir"
"$python" -m pip wheel --quiet --wheel-dir "$dir" "$spec"
# pip itself, so that a venv made offline can update its pip from the same place.
"$python" -m pip download --quiet --only-binary=:all: --dest "$dir" pip
echo "wheelhouse: $(find "$dir" -name '*.whl' | wc -l) wheels in $dir"
