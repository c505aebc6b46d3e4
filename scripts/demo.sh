#!/usr/bin/env bash
# Set up and run the demo on the embedded default store (SQLite file drg-ledger.db here).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bash "$here/scripts/setup.sh"
exec "$here/.venv/bin/drg-ledger" demo "$@"
