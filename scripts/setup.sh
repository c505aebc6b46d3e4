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
# Bytecode of the project's own modules: an editable install has none, and where
# PYTHONDONTWRITEBYTECODE is set every command compiled them again (60-90 ms of each start-up,
# benchmarks/README.md "CLI start-up"). A stale file is never used: Python checks the source's mtime.
.venv/bin/python -m compileall -q ledger projections streams schemas drg_ledger > /dev/null
