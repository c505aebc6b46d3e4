"""`clear --cold`: the raw journal replayed through the pure core, hospital groups settled in
parallel processes (issue 11, "Cold replay").

The parent reads the journal page by page, every entry checked against the hash chain
(`LedgerStore.replay_envelopes`), and routes each case event (submission, withdrawal,
verdict) still undecoded to one worker: by its case, each case to the group of its hospital.
The parent decodes the other events (registrations, policy, budget, prepayments ...) and
hands them to every worker at the end. Each worker decodes its case events, settles them
with the pool events (`settle`) and returns its hospitals' sums (`case_sums`); the parent
adds the groups' sums and prices them (`clearing`). Every stored event is decoded once.

Exact: `settle` couples cases only within a hospital (the incentive cap counts and orders
the hospital's own cases, RULES.md 3), so a hospital's sums depend on the pool events and
its own cases alone. A case whose submissions name hospitals of two groups cannot be split
so; then, or when a worker fails, the clearing is settled in this process instead (the
same answer, or the same error, as the single-process path).
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass, replace
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

from pydantic_core import from_json

from ledger.cases import CASE_EVENTS
from ledger.clearing import Basis, CaseSums, Clearing, case_sums, clearing, clearing_from_sums, gc_paused, settle
from ledger.events import EventType
from projections.store import LedgerStore, _parse_stored, _utc

WORKERS_ENV = "DRG_LEDGER_COLD_WORKERS"
"""Processes settling hospital groups (default: the machine's cores, at most 4; 1: no worker)."""


_BATCH = 5_000
"""Entries read between two sends to the workers."""


class _Split(Exception):
    """The hospital groups cannot be settled apart (a case names hospitals of two groups)."""


@dataclass
class _Part:
    """What one worker returns: its hospitals' sums, and how many events it read as known."""

    sums: dict[str, CaseSums]
    events_read: int
    latest_ingested_at: datetime | None


def workers() -> int:
    value = os.environ.get(WORKERS_ENV)
    return int(value) if value else min(os.cpu_count() or 1, 4)


def cold_clearing(store: LedgerStore, pool: str, year: int, known_at: datetime, processes: int | None = None) -> Clearing:
    """`clearing(settle(store.replay(known_at)))`, the hospital groups settled in `processes`
    worker processes; the basis counts every event replayed as known at `known_at`."""
    processes = workers() if processes is None else processes
    head = store.journal.head()
    with gc_paused():
        if processes > 1 and "fork" in multiprocessing.get_all_start_methods():
            try:
                return _parallel(store, pool, year, known_at, head, processes)
            except _Split:
                pass
        events = list(store.replay(known_at=known_at, until=head))
        return replace(clearing(settle(events, pool, year, known_at)), basis=Basis.of(events, head))


def _parallel(store: LedgerStore, pool: str, year: int, known_at: datetime, head: int, processes: int) -> Clearing:
    cut = _utc(known_at)
    ctx = multiprocessing.get_context("fork")  # the children inherit the imported core; they never touch the database
    pipes: list[Connection] = []
    procs = []
    try:
        for _ in range(processes):
            receive, send = ctx.Pipe(duplex=False)
            result_receive, result_send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker, args=(receive, result_send, pool, year, known_at, cut), daemon=True)
            proc.start()
            receive.close()
            result_send.close()
            pipes.append(send)
            procs.append((proc, result_receive))
        try:
            pool_events = _route(store, head, cut, pipes)
            for send in pipes:
                send.send(("pool", pool_events))
                send.close()
            parts = [result.recv() for _, result in procs]
        except (OSError, EOFError) as exc:  # a worker died
            raise _Split(f"a worker failed: {exc}") from exc
    finally:
        for send in pipes:
            send.close()
        for proc, result in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
            result.close()
    if any(not isinstance(p, _Part) for p in parts):
        raise _Split("a worker failed")  # settled again here: the same error, raised the usual way
    py = settle(pool_events, pool, year, known_at)
    sums = {h: CaseSums() for h in py.hospitals}
    for part in parts:
        for h, s in part.sums.items():
            if h in sums:
                mine = sums[h]
                mine.settled += s.settled
                mine.deducted += s.deducted
                mine.personal_paid += s.personal_paid
                mine.cases += s.cases
    stamps = [p.latest_ingested_at for p in parts if p.latest_ingested_at is not None]
    pool_basis = Basis.of(pool_events, head)
    if pool_basis.latest_ingested_at is not None:
        stamps.append(pool_basis.latest_ingested_at)
    basis = Basis(head, pool_basis.events_read + sum(p.events_read for p in parts), max(stamps, default=None))
    return replace(clearing_from_sums(py, sums), basis=basis)


def _route(store: LedgerStore, head: int, cut: datetime, pipes: list[Connection]) -> list[Any]:
    """Sends each case event to its case's group page by page; returns the pool events known at `cut`."""
    hospital_group: dict[str, int] = {}
    case_group: dict[str, int] = {}
    waiting: dict[str, list[tuple[str, str]]] = {}  # withdrawals and verdicts that came before their case
    pool_events: list[Any] = []
    batches: list[list[tuple[str, str]]] = [[] for _ in pipes]
    for n, (_, event_type, envelope) in enumerate(store.replay_envelopes(head), 1):
        if event_type not in CASE_EVENTS:
            ev = _parse_stored(event_type, envelope)
            if ev.recorded_at <= cut:
                pool_events.append(ev)
            continue
        payload = from_json(envelope)["payload"]
        cid = payload["case_id"]
        if event_type == EventType.CASE_SUBMITTED:
            g = hospital_group.setdefault(payload["hospital_id"], len(hospital_group) % len(pipes))
            if case_group.setdefault(cid, g) != g:
                raise _Split(f"case {cid} names hospitals of two groups")
            batches[g].append((event_type, envelope))
            batches[g].extend(waiting.pop(cid, ()))
        elif cid in case_group:
            batches[case_group[cid]].append((event_type, envelope))
        else:
            waiting.setdefault(cid, []).append((event_type, envelope))
        if n % _BATCH == 0:
            _flush(batches, pipes)
    for cid, events in waiting.items():  # cases never submitted: settle ignores them, the basis counts them
        batches[0].extend(events)
    _flush(batches, pipes)
    return pool_events


def _flush(batches: list[list[tuple[str, str]]], pipes: list[Connection]) -> None:
    for batch, send in zip(batches, pipes, strict=True):
        if batch:
            send.send(("cases", batch))
            batch.clear()


def _worker(receive: Connection, result: Connection, pool: str, year: int, known_at: datetime, cut: datetime) -> None:
    """Decodes the case events it is sent as they come; given the pool events (a list of
    envelopes, the last message), settles and sends back its `_Part` (None on failure)."""
    try:
        cases: list[Any] = []
        while True:
            kind, message = receive.recv()
            if kind == "pool":
                pool_events = message
                break
            for event_type, envelope in message:
                ev = _parse_stored(event_type, envelope)
                if ev.recorded_at <= cut:
                    cases.append(ev)
        py = settle([*pool_events, *cases], pool, year, known_at)
        basis = Basis.of(cases, 0)
        result.send(_Part(case_sums(py), basis.events_read, basis.latest_ingested_at))
    except BaseException:  # noqa: BLE001 - the parent settles again and raises it properly
        result.send(None)
    finally:
        result.close()
        os._exit(0)
