"""What `drg-ledger verify` costs: journal entries checked per second, on SQLite and PostgreSQL.

    python benchmarks/verify_speed.py --cases 20000 [--postgres postgresql://postgres@127.0.0.1:5432/test]

Generates a year (`drg-ledger generate`), ingests it with `--backfill` into a fresh SQLite
file and, when `--postgres` is given, a fresh PostgreSQL schema, then times `verify` (the
whole walk: content hashes, chain, index rows, claims, penalties, dead letters) and the hash
check alone (`LedgerStore.check_chain`, what every rebuild runs first). Run by hand.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from rich.console import Console
from rich.table import Table

from projections.store import LedgerStore
from projections.verify import verify


def measure(url: str, file: Path) -> dict[str, float]:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "drg_ledger.cli", "ingest", "--backfill", "--json", "--database-url", url,
                    str(file)], check=True, capture_output=True)
    ingest_s = time.perf_counter() - started
    with LedgerStore(url, heal=False) as store:
        result = verify(store, totals=False)
        assert result.ok, result.as_json()
        started = time.perf_counter()
        checked = store.check_chain()
        chain_s = time.perf_counter() - started
    return {"entries": result.entries, "ingest_s": ingest_s, "verify_s": result.seconds,
            "verify_per_s": result.entries / result.seconds, "chain_s": chain_s, "chain_per_s": checked / chain_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=20_000)
    parser.add_argument("--hospitals", type=int, default=40)
    parser.add_argument("--postgres", default=None, help="PostgreSQL URL to measure on too (a fresh schema is made)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="verify-speed-"))
    file = tmp / "year.jsonl"
    subprocess.run([sys.executable, "-m", "drg_ledger.cli", "generate", "--cases", str(args.cases), "--hospitals",
                    str(args.hospitals), "--year", "2020", "--seed", "7", "-o", str(file)], check=True,
                   capture_output=True)
    rows = [("sqlite", measure(f"sqlite:///{tmp / 'ledger.db'}", file))]
    if args.postgres:
        schema = f"verify_speed_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        try:
            rows.append(("postgresql", measure(f"{args.postgres}?options=-csearch_path%3D{schema}", file)))
        finally:
            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
    table = Table("store", "entries", "ingest s", "verify s", "verify entries/s", "hash check s", "hash check entries/s",
                  title=f"verify, {args.cases:,} cases")
    for name, r in rows:
        table.add_row(name, f"{r['entries']:,.0f}", f"{r['ingest_s']:.1f}", f"{r['verify_s']:.2f}",
                      f"{r['verify_per_s']:,.0f}", f"{r['chain_s']:.2f}", f"{r['chain_per_s']:,.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
