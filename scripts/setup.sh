#!/usr/bin/env bash
# Create .venv (once) and install drg-ledger into it. Used by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
.venv/bin/python -m pip install -q -e ".${extras}" 2>&1 | grep -v -e '^WARNING: Location' -e '^$' || true
.venv/bin/python -c "import ledger, projections, drg_ledger" # fail loudly if the install did not work
