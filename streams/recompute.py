"""Agent `recompute_totals`: recompute requested running totals from the store.

Requests arrive on `drg-ledger.recompute`, keyed by hospital, so one hospital's totals are
computed by the one consumer owning its partition, in request order. A batch is
de-duplicated per (pool, year, hospital) first: while the agent computes, requests pile
up, and the next batch recomputes each hospital once however many events touched it, so
the work per batch is bounded by the number of hospitals, not of events.

Each result goes to the Faust table `running-totals` (changelog-backed; key hospital_id,
value {"pool/year": row}) and to the SQL table `running_totals` the CLI reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mode import Service

from projections.running_totals import (
    HospitalTotals,
    Key,
    TotalsRow,
    create_tables,
    recompute,
    recompute_many,
    store_engine,
    upsert,
)
from streams.retry import retrying

if TYPE_CHECKING:
    from projections.store import LedgerStore

log = logging.getLogger(__name__)

TABLE = "running-totals"


def decode(value: bytes) -> Key | None:
    """A request's key, or None for a value that is not one (logged and skipped)."""
    try:
        d = json.loads(value)
        return Key(str(d["pool"]), int(d["year"]), str(d["hospital_id"]))
    except (ValueError, KeyError, TypeError):
        log.error("recompute request is not one: %r", value[:200])
        return None


def recompute_all(store: LedgerStore, keys: Sequence[Key], last: dict[Key, TotalsRow]) -> list[TotalsRow]:
    """Recomputes each key as known now; an unexpected failure of one key is recorded on its row.

    All keys on one connection after one position read (`recompute_many`). `recompute`
    already turns a policy gap into a row with `error`; anything else (a bug, a case the
    rules cannot price) makes the keys go one by one, each failure recorded on its row,
    keeping the last figures, so one hospital cannot stop the others'.
    """
    known_at = datetime.now(UTC)
    try:
        rows = recompute_many(store, keys, known_at, last)
    except Exception as exc:  # one by one below, see the docstring
        if _is_database_error(exc):
            raise  # the store is unreachable: retry the whole batch
        rows = []
        for key in keys:
            try:
                rows.append(recompute(store, key, known_at, last.get(key)))
            except Exception as exc:  # recorded on the row, see the docstring
                if _is_database_error(exc):
                    raise
                log.exception("recompute %s failed", key.text())
                prev = last.get(key)
                rows.append(TotalsRow(key, prev.totals if prev else HospitalTotals(), prev.position if prev else 0,
                                      known_at, datetime.now(UTC), f"{type(exc).__name__}: {exc}"))
    upsert(store_engine(store), rows)
    return rows


def _is_database_error(exc: BaseException) -> bool:
    from sqlalchemy.exc import DBAPIError, OperationalError

    return isinstance(exc, (DBAPIError, OperationalError)) or type(exc).__module__.startswith(("psycopg", "eventsourcing"))


@contextmanager
def current_event(event: Any) -> Iterator[None]:
    """Makes `event` Faust's current event, as stream iteration does.

    A RocksDB table store writes a key into the database of the current event's partition;
    after `take_events` there is no current event, so the agent names the request that
    asked for the key (same hospital key, so same partition as the table key).
    """
    from faust.streams import _current_event

    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


# --------------------------------------------------------------------------- where the work runs

_child_store: LedgerStore | None = None


def _child_open(database_url: str | None, parent: int | None = None) -> None:
    """Initialiser of the recompute process: its own store (LedgerStore is one per thread)."""
    global _child_store
    from projections.store import LedgerStore

    if parent is not None:
        _exit_with_parent(parent)
    _child_store = LedgerStore.open(database_url)
    create_tables(store_engine(_child_store))


def _exit_with_parent(parent: int) -> None:
    """Ends this process when the worker `parent` that spawned it is gone.

    A SIGKILLed worker cannot shut its pool down, and the child, blocked reading a queue
    whose write end it holds itself, would wait forever holding a database connection.
    The parent's pid comes from the parent: it may die while this process is still starting.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _child_recompute(keys: list[Key], last: dict[Key, TotalsRow]) -> list[TotalsRow]:
    assert _child_store is not None
    return recompute_all(_child_store, keys, last)


class Recomputer:
    """Runs `recompute_all` off the event loop: in a process of its own (default) or a thread.

    A process, because recomputation is CPU-bound Python: in a thread it shares the GIL with
    the intake agent and the Kafka client; in its own process the worker uses two cores.
    A process that died is replaced on the next call (the batch is retried, not lost).
    """

    def __init__(self, database_url: str | None, use_process: bool) -> None:
        self.database_url = database_url
        self.use_process = use_process
        self._executor: Executor | None = None

    def _open(self) -> Executor:
        if self._executor is None:
            if self.use_process:
                self._executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                     initializer=_child_open, initargs=(self.database_url, os.getpid()))
            else:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="drg-recompute",
                                                    initializer=_child_open, initargs=(self.database_url,))
        return self._executor

    async def __call__(self, keys: list[Key], last: dict[Key, TotalsRow]) -> list[TotalsRow]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._open(), _child_recompute, keys, last)
        except BrokenExecutor:
            self.close()
            raise

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def install(app: Any, settings: Any, requests: Any) -> tuple[Any, Any]:
    """Registers table `running-totals` and agent `recompute_totals` on `app`; returns both."""
    # use_partitioner: the changelog partition of a key is its hash, the same hash that put
    # the request keyed by the same hospital_id on its partition, so a hospital's totals and
    # its requests stay co-partitioned even though batches mix partitions.
    # key_type=bytes: the key is serialised raw (a str key would be JSON, '"H001"', and hash
    # to another partition than the request keyed b"H001").
    table = app.Table(TABLE, default=dict, key_type=bytes, value_type=None,
                      partitions=settings.partitions, use_partitioner=True,
                      help="running point totals per hospital: {pool/year: row} (projections.running_totals)")
    recomputer = Recomputer(settings.database_url, settings.recompute_in_process)

    @app.service
    class _CloseRecomputer(Service):  # a Faust service: stops the recompute process with the app
        async def on_stop(self) -> None:
            recomputer.close()

    async def handle(batch: Sequence[Any]) -> None:
        requested = [(k, e) for e in batch if (k := decode(e.message.value or b"")) is not None]
        keys = list(dict.fromkeys(k for k, _ in requested))
        # A request of each hospital: its partition is the partition of the hospital's table key.
        request_of = {k.hospital_id: e for k, e in requested}
        last: dict[Key, TotalsRow] = {}
        for k in keys:
            stored = table.get(k.hospital_id.encode("utf-8"), {}).get(f"{k.pool}/{k.year}")
            if stored is not None:
                last[k] = TotalsRow.from_json(stored)
        started = time.perf_counter()
        waited = time.time() - min(e.message.timestamp for e in batch)  # the oldest request's time on the topic
        rows = await retrying(lambda: recomputer(keys, last), "recompute")
        computed = time.perf_counter()
        try:
            for row in rows:
                hospital = row.key.hospital_id.encode("utf-8")
                per_hospital = dict(table.get(hospital, {}))
                per_hospital[f"{row.key.pool}/{row.key.year}"] = row.as_json()
                with current_event(request_of[row.key.hospital_id]):
                    table[hospital] = per_hospital
        except Exception:  # the SQL mirror is written; never crash the agent (that would ack the batch)
            log.exception("updating table %s failed; SQL running_totals is up to date", TABLE)
        errors = sum(1 for r in rows if r.error)
        log.info("recomputed %d totals from %d requests%s in %.0f ms (table %.0f ms), oldest request waited %.0f ms",
                 len(rows), len(batch), f" ({errors} with errors)" if errors else "", (computed - started) * 1000,
                 (time.perf_counter() - computed) * 1000, waited * 1000)

    @app.agent(requests, name="recompute_totals")
    async def recompute_totals(stream: Any) -> None:
        async for batch in stream.take_events(settings.recompute_batch, within=settings.recompute_within_s):
            await handle(batch)

    return table, recompute_totals
