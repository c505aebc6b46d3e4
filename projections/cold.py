"""`clear --cold`: the raw journal replayed through the pure core, hospital groups settled in
parallel processes (issue 11, "Cold replay").

The workers start first. The parent then reads the journal page by page and checks each
page's chain links (`chained`); it routes every case event (submission, withdrawal, verdict)
to one worker as the stored bytes, by its case, each case to the group of its hospital. The
worker checks the entry's content hash and names (`check_content`, `entry_record`), decodes
its record and envelope in one pass (`_RECORDS`, the envelope as `decode_stored` decodes it:
pydantic's parsing without the Python validators intake ran) and settles its cases with the
pool events (`settle`), then returns its hospitals' sums (`case_sums`); the parent adds the
groups' sums and prices them (`clearing`). The parent checks and decodes (`decode_stored`)
the other events (registrations, policy, budget, prepayments ...) itself and hands every
worker their envelopes at the end.
So every entry is checked against the chain as in the single-process replay, once, and no
decoded event crosses a process.

The parent reads an entry's type, case and hospital from its stored bytes without decoding
them (`_hints`): they are only where the entry is sent; the worker checks them against the
decoded event, so a wrong hint is a failed worker, never a wrong sum.

Exact: `settle` couples cases only within a hospital (the incentive cap counts and orders
the hospital's own cases, RULES.md 3), so a hospital's sums depend on the pool events and
its own cases alone. A case whose submissions name hospitals of two groups cannot be split
so; then, or when an entry fails a check or a worker fails, the clearing is settled in this
process instead (the same answer, or the same error, raised at the first entry at fault).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

from pydantic import Json, TypeAdapter
from typing_extensions import TypedDict

from ledger.cases import CASE_EVENTS
from ledger.clearing import Basis, CaseSums, Clearing, case_sums, clearing, clearing_from_sums, gc_paused, settle
from ledger.events import ENVELOPES, EventType, decode_stored, unchecked_validator
from ledger.journal import RECORDED_TOPIC
from projections.chain import check_content, checked_entries, entry_record, plain_records
from projections.store import LedgerStore, _utc

WORKERS_ENV = "DRG_LEDGER_COLD_WORKERS"
"""Processes settling hospital groups (default: the machine's cores, at most 4; 1: no worker)."""

_PAGE = 5_000
"""Journal entries read, checked and sent to the workers at a time."""


class _Split(Exception):
    """The hospital groups cannot be settled apart (a case names hospitals of two groups, an
    entry fails a check, a worker fails): the clearing is settled in one process."""


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
        if processes > 1 and "fork" in multiprocessing.get_all_start_methods() and plain_records(store.journal):
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
            pool_entries = _route(store, head, pipes)
            for send in pipes:
                send.send(("pool", pool_entries))
                send.close()
            pool_events = _known(pool_entries, cut)  # while the workers settle
            parts = [result.recv() for _, result in procs]
        except _Split:
            raise
        except Exception as exc:  # a broken or undecodable entry, a dead worker: one process names the first
            raise _Split(f"settled in one process: {exc}") from exc
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


def _known(envelopes: list[tuple[str, str]], cut: datetime) -> list[Any]:
    """The checked envelopes (event_type, JSON) decoded, those recorded by `cut`."""
    events = [decode_stored(event_type, envelope) for event_type, envelope in envelopes]
    return [e for e in events if e.recorded_at <= cut]


_TYPE = b'"event_type":"'
_CASE = b'\\"case_id\\":\\"'
_HOSPITAL = b'\\"hospital_id\\":\\"'
_HINTED_TYPES = {t.encode(): str(t) for t in EventType}
"""Each event type's name as its stored bytes read, to one str object (pickled once a batch)."""


def _hints(state: bytes) -> tuple[str, str | None, str | None]:
    """(event_type, case_id, hospital_id) as the stored record's bytes read (None when not
    found): the record's first `event_type` member, then its envelope's (a JSON string, so
    its quotes escaped) first `case_id` and `hospital_id`, which lead a case payload's text
    (canonical JSON: keys sorted; ids and codes hold no quote). Checked by the worker."""
    at = state.find(_TYPE) + len(_TYPE)
    name = state[at:state.find(b'"', at)]
    event_type = _HINTED_TYPES.get(name) or name.decode()
    at = state.find(_CASE, at)
    if at < 0:
        return event_type, None, None
    at += len(_CASE)
    end = state.find(b'\\"', at)
    case_id = state[at:end].decode()
    at = state.find(_HOSPITAL, end)
    if at < 0:
        return event_type, case_id, None
    at += len(_HOSPITAL)
    return event_type, case_id, state[at:state.find(b'\\"', at)].decode()


def _route(store: LedgerStore, head: int, pipes: list[Connection]) -> list[tuple[str, str]]:
    """Reads the journal to `head` page by page, checks each page's chain links, and sends
    each case entry to its case's group; returns the other entries' envelopes
    (event_type, JSON), checked (but not decoded)."""
    hospital_group: dict[str, int] = {}
    loads = [0] * len(pipes)  # submissions sent to each group
    case_group: dict[str, int] = {}
    waiting: dict[str, list[tuple[Any, ...]]] = {}  # withdrawals and verdicts that came before their case
    pool_entries: list[tuple[str, str]] = []
    submitted, case_events = EventType.CASE_SUBMITTED, CASE_EVENTS
    after = 0
    while after < head:
        page = checked_entries(store.journal, store.engine, after, _PAGE, content=False)
        if not page:
            break
        after = page[-1][0][0]
        cases: list[tuple[Any, ...]] = []  # the page's case entries, as they are sent
        submissions: Counter[str] = Counter()
        for (position, originator_id, topic, state), row in page:
            if position > head:
                break
            event_type, cid, hid = _hints(state)
            if event_type not in case_events:
                check_content(position, topic, state, row.content_hash)
                record = entry_record(position, originator_id, topic, state, row.event_id)
                if record["event_type"] in case_events:
                    raise _Split(f"journal position {position}: a case event not read as one")
                pool_entries.append((record["event_type"], record["envelope"]))
                continue
            if cid is None:
                raise _Split(f"journal position {position}: no case id read")
            if topic == RECORDED_TOPIC:
                topic = RECORDED_TOPIC  # one object a batch, pickled once
            if event_type == submitted and hid:
                submissions[hid] += 1
            cases.append((position, originator_id, topic, state, row.event_id, row.content_hash, event_type, cid, hid))
        _deal(hospital_group, loads, submissions)
        batches: list[list[tuple[Any, ...]]] = [[] for _ in pipes]
        for sent in cases:
            position, event_type, cid, hid = sent[0], sent[6], sent[7], sent[8]
            if event_type == submitted:
                if hid is None:
                    raise _Split(f"journal position {position}: no hospital id read")
                g = hospital_group[hid]
                if case_group.setdefault(cid, g) != g:
                    raise _Split(f"case {cid} names hospitals of two groups")
                batches[g].append(sent)
                if cid in waiting:
                    batches[g].extend(waiting.pop(cid))
            elif cid in case_group:
                batches[case_group[cid]].append(sent)
            else:
                waiting.setdefault(cid, []).append(sent)
        _send(batches, pipes)
    unsubmitted = [sent for entries in waiting.values() for sent in entries]  # settle ignores them, the basis counts them
    _send([unsubmitted, *([] for _ in pipes[1:])], pipes)
    return pool_entries


def _deal(hospital_group: dict[str, int], loads: list[int], submissions: Counter[str]) -> None:
    """Deals the hospitals first seen in a page to the groups, the most submissions in the
    page first, each to the least loaded group; then counts the page's submissions into the
    loads. A hospital's share of a page foretells its share of the year (cases are
    journalled through the year), so the groups come out even and the workers finish together."""
    estimate = list(loads)
    for hid, n in sorted(submissions.items(), key=lambda item: (-item[1], item[0])):
        if hid not in hospital_group:
            g = estimate.index(min(estimate))
            hospital_group[hid] = g
            estimate[g] += n
    for hid, n in submissions.items():
        loads[hospital_group[hid]] += n


def _send(batches: list[list[tuple[Any, ...]]], pipes: list[Connection]) -> None:
    for batch, send in zip(batches, pipes, strict=True):
        if batch:
            send.send(("cases", batch))


_RECORDS = {
    t: unchecked_validator(TypeAdapter(TypedDict(f"{t}Record", {  # type: ignore[operator]
        "event_id": str, "event_type": str, "envelope": Json[ENVELOPES[t]],  # type: ignore[valid-type]
    })).core_schema)
    for t in CASE_EVENTS
}
"""The stored record (`LedgerEntry.Recorded`) of each case event type, its envelope decoded in
the same pass as `ledger.events.decode_stored` decodes it (`unchecked_validator`)."""


def _worker(receive: Connection, result: Connection, pool: str, year: int, known_at: datetime, cut: datetime) -> None:
    """Checks and decodes the case entries it is sent as they come; given the pool events'
    envelopes (the last message), settles and sends back its `_Part` (None on failure)."""
    try:
        cases: list[Any] = []
        while True:
            kind, message = receive.recv()
            if kind == "pool":
                pool_events = _known(message, cut)
                break
            for position, originator_id, topic, state, chained_id, chained_hash, event_type, cid, hid in message:
                check_content(position, topic, state, chained_hash)
                record = entry_record(position, originator_id, topic, state, chained_id, _RECORDS[event_type].validate_json)
                if record["event_type"] != event_type:
                    raise _Split(f"journal position {position}: a {record['event_type']} read as a {event_type}")
                ev = record["envelope"]
                if ev.payload.case_id != cid or (event_type == EventType.CASE_SUBMITTED and ev.payload.hospital_id != hid):
                    raise _Split(f"journal position {position}: sent as case {cid} of {hid}")
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
