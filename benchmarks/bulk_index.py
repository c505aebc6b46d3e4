"""Bulk-load a generated event file into the ledger index of an empty PostgreSQL store.

A benchmark fixture, not a ledger path: at province scale (10M cases, ~11M events) the
journal's ingest is too slow to be part of a benchmark run (benchmarks/README.md), so the
province run fills only the index, with the rows `LedgerStore` itself would write
(`projections.store._index_row`, same parse, same canonical body and content hash), by
COPY with the secondary indexes built afterwards. The warm projection reads nothing else
(`projections.case_points.refresh` reads the index), so its refresh and the warm clearing
are measured on exactly what an ingest would have produced. The journal stays empty: no
cold replay at this scale.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import psycopg
from sqlalchemy.schema import CreateIndex

from ledger.events import parse_event
from projections.store import LedgerStore, _index_row, index_table, tracking_table

COLUMNS = [c.name for c in index_table.columns]


def bulk_index(url: str, file: str | Path) -> int:
    """Loads every line of `file` into the (empty) index; returns the number of events."""
    with LedgerStore.open(url) as store:
        engine = store.engine
        with engine.connect() as conn:
            assert conn.exec_driver_sql(f"SELECT count(*) FROM {index_table.name}").scalar_one() == 0, "index not empty"
        ddl = [str(CreateIndex(ix).compile(engine)) for ix in index_table.indexes]
    pools: dict[str, str] = {}
    n = 0
    with psycopg.connect(url) as conn:
        for ix in index_table.indexes:
            conn.execute(f"DROP INDEX IF EXISTS {ix.name}")
        with conn.cursor() as cur, cur.copy(f"COPY {index_table.name} ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            with open(file, "rb") as fh:
                for n, line in enumerate(fh, start=1):
                    body = line.rstrip(b"\r\n").decode("utf-8")
                    ev = parse_event(body)
                    row = _index_row(n, ev, body, hashlib.sha256(body.encode("utf-8")).hexdigest(), pools)
                    copy.write_row([row[c] for c in COLUMNS])
        for statement in ddl:
            conn.execute(statement)  # type: ignore[arg-type]
        conn.execute(
            f"UPDATE {tracking_table.name} SET notification_id = %s WHERE name = %s", (n, index_table.name)
        )
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"VACUUM ANALYZE {index_table.name}")
    return n
