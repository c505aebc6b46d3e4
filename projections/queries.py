"""The read side: clearing, balances and explanations computed from the store.

By default an answer at any `known_at` is one aggregate over the case-points projection
(projections/case_versions.py), turned into money by the pure core (`clearing_from_sums`,
`balance_from_sums`). `cold=True` replays the journal itself through the pure core: the
independent check. A what-if (`extra_events`, never stored) settles the index's events with
the draft's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any

from ledger.cases import case_states, known
from ledger.clearing import (
    Balance,
    Basis,
    CaseSums,
    Clearing,
    ClearingError,
    balance,
    balance_from_sums,
    clearing,
    clearing_from_sums,
    gc_paused,
    incentive_cap,
    settle,
    settle_case,
)
from ledger.events import ENVELOPES, EventType, Outcome, canonical_text
from ledger.explain import UnknownCase, describe, explain
from projections.chain import digest_at

if TYPE_CHECKING:
    from projections.store import LedgerStore


class NotFound(LookupError):
    """The hospital, case or pool asked about is not in the ledger."""


def now() -> datetime:
    return datetime.now(timezone.utc)


def pool_year_events(
    store: LedgerStore, pool: str, year: int, known_at: datetime, *, cold: bool = False
) -> tuple[list[Any], int]:
    """The events needed to settle `pool` for `year` as known at `known_at`, and the journal
    position they were read at (the index's, or the last journal entry replayed)."""
    if cold:
        head = store.journal.head()
        with gc_paused():  # hundreds of thousands of acyclic models: the collector's passes are waste
            return list(store.replay(known_at=known_at, until=head)), head
    events = store.load(pool=pool, year=year, known_at=known_at)
    return events, store.position


def clear_pool(
    store: LedgerStore,
    pool: str,
    year: int,
    known_at: datetime | None = None,
    *,
    record: bool = False,
    cold: bool = False,
    extra_events: Sequence[Any] = (),
) -> Clearing:
    """Year-end clearing (RULES.md 5); with `record`, append a `ClearingCompleted` (RULES.md 6)
    whose id is derived from its content, so recording the same clearing twice is one event.

    `extra_events` are settled with the store's and never written (a what-if draft,
    projections/whatif.py): a clearing that includes them cannot be recorded. The basis is
    what was read from the ledger.
    """
    if record and extra_events:
        raise ValueError("a clearing with events that are not in the ledger (a what-if) cannot be recorded")
    known_at = known_at or now()
    if cold and not extra_events:
        from projections.cold import cold_clearing

        result = cold_clearing(store, pool, year, known_at)
    elif cold or extra_events:
        events, position = pool_year_events(store, pool, year, known_at, cold=cold)
        result = replace(clearing(settle([*events, *extra_events], pool, year, known_at)), basis=Basis.of(events, position))
    else:
        result = projected_clearing(store, pool, year, known_at)
    if record:
        record_clearing(store, result)
    return result


def record_clearing(store: LedgerStore, result: Clearing) -> tuple[str, bool]:
    """Appends the `ClearingCompleted` of `result` (RULES.md 6), which seals its pool-year up
    to its known_at (EVENTS.md "Transaction time, seals and backfill"). Its id is derived
    from its content, so recording the same clearing twice is one event. Returns the id and
    whether it was new."""
    payload = result.completed()
    digest = hashlib.sha256(_without_digest(payload).encode("utf-8")).hexdigest()
    event_id = f"clearing:{result.pool}:{result.year}:{digest[:32]}"
    # The log it was computed from (README "Trust"): the digest of the journal prefix up to
    # the position the clearing read; not part of the id, so the same clearing is one event.
    position = result.basis.journal_position if result.basis is not None else store.position
    payload = payload.model_copy(update={"log_digest": digest_at(store.journal, store.engine, position)})
    completed = ENVELOPES[EventType.CLEARING_COMPLETED](
        event_id=event_id, event_type=EventType.CLEARING_COMPLETED, recorded_at=now(), source="system", payload=payload
    )
    return event_id, store.append_system_events([completed]) > 0


def _without_digest(payload: Any) -> str:
    """Canonical JSON of a clearing's content without its log digest (what its id derives from)."""
    return canonical_text(payload.model_dump(mode="json", exclude={"log_digest"}))


def recorded_digest(store: LedgerStore, event_id: str) -> str | None:
    """The log digest a recorded clearing carries (None for one recorded before digests)."""
    ev = store.event(event_id)
    return None if ev is None else ev.payload.log_digest


def hospital_pool(store: LedgerStore, hospital_id: str) -> str:
    """The pool `hospital_id` is registered in (RULES.md 1), from the index's columns: no
    registration is parsed."""
    with store.engine.connect() as conn:
        pool = store.registered_pools(conn).get(hospital_id)
    if pool is None:
        raise NotFound(f"hospital {hospital_id} is not registered")
    return pool


def hospital_balance(
    store: LedgerStore,
    hospital_id: str,
    as_of: date,
    known_at: datetime | None = None,
    *,
    extra_events: Sequence[Any] = (),
) -> Balance:
    """A hospital's balance at a date as known at a moment (RULES.md 6); `extra_events` as for `clear_pool`."""
    known_at = known_at or now()
    if not extra_events:
        return projected_balances(store, hospital_id, [as_of], known_at)[0]
    pool = hospital_pool(store, hospital_id)
    events, position = pool_year_events(store, pool, as_of.year, known_at)
    py = settle([*events, *extra_events], pool, as_of.year, known_at)
    return replace(balance(py, hospital_id, as_of), basis=Basis.of(events, position))


def projected_clearing(store: LedgerStore, pool: str, year: int, known_at: datetime) -> Clearing:
    """The clearing as known at `known_at` from the projection: one aggregate (RULES.md 5)."""
    from projections import case_versions

    at = case_versions.fresh(store)
    py, read = case_versions.pool_year(store, pool, year, known_at)
    with store.engine.connect() as conn:
        # A case's row carries its hospital's registered pool: a pool no hospital was ever
        # registered in has none to sum (SQLite's sums would scan the whole table to find so).
        held = pool in store.registered_pools(conn).values()
        found = case_versions.sums(conn, pool, year, known_at) if held else case_versions.Sums({}, 0)
    basis = Basis(at, found.versions + read.count, _latest_ingested(store, at))
    return replace(clearing_from_sums(py, found.hospitals), basis=basis)


def projected_balances(
    store: LedgerStore, hospital_id: str, days: Sequence[date], known_at: datetime, *, keep_errors: bool = False
) -> list[Any]:
    """A hospital's balances at `days` (one year) as known at `known_at` from the projection:
    one aggregate per discharge day, cut at each day (RULES.md 6). Raises like `balance`;
    with `keep_errors` a day that cannot be computed gets its exception in its place."""
    from projections import case_versions

    pool = hospital_pool(store, hospital_id)
    (year,) = {d.year for d in days}
    at = case_versions.fresh(store)
    py, read = case_versions.pool_year(store, pool, year, known_at, hospital_id=hospital_id)
    with store.engine.connect() as conn:
        if len(days) == 1:  # one day: the sums to it, per hospital (fewer rows and groups)
            found = case_versions.sums(conn, pool, year, known_at, until=days[0]).hospitals
            own = {days[0]: found.get(hospital_id, CaseSums())}
            pool_days = {days[0]: case_versions.total(found.values())}
        else:
            own, pool_days = case_versions.daily_sums(conn, pool, year, known_at, hospital_id)
    latest = _latest_ingested(store, at)
    out: list[Any] = []
    for day in days:
        window = [case_versions.cumulative(pool_days, day)]
        basis = Basis(at, window[0].cases + read.count, latest)  # the versions summed to that day
        try:
            result = balance_from_sums(py, hospital_id, day, case_versions.cumulative(own, day), window)
        except (ClearingError, LookupError) as exc:
            if not keep_errors:
                raise
            out.append(exc)
        else:
            out.append(replace(result, basis=basis))
    return out


def _latest_ingested(store: LedgerStore, position: int) -> datetime | None:
    """When the ledger accepted the entry at `position` (the last one an answer rests on)."""
    from sqlalchemy import select

    from projections.store import index_table

    t = index_table
    with store.engine.connect() as conn:
        return conn.execute(select(t.c.ingested_at).where(t.c.seq == position)).scalar()


def explain_case(
    store: LedgerStore, case_id: str, known_at: datetime | None = None, *, extra_events: Sequence[Any] = ()
) -> dict[str, Any]:
    """A case's points step by step (EVENTS.md `explain`); `extra_events` as for `clear_pool`.

    Reads only what the case needs: its own events, its pool's (once), and — for an
    incentive approval — its hospital's count of live cases and its cap answer from the
    projection (seed 001 二(二)).
    """
    from projections import case_versions
    from projections.store import CASE_LEVEL

    known_at = known_at or now()
    own = store.load(case_ids=[case_id], known_at=known_at, event_types=CASE_LEVEL)
    submissions = [e for e in own if e.event_type == EventType.CASE_SUBMITTED and e.payload.case_id == case_id]
    if not submissions:
        raise NotFound(f"case {case_id} is not known at {known_at.isoformat()}")
    hospital_id = max(submissions, key=lambda e: (e.payload.revision, e.recorded_at)).payload.hospital_id
    pool = hospital_pool(store, hospital_id)
    years = {e.payload.discharge_date.year for e in submissions}
    position = store.position
    if extra_events:
        events = {e.event_id: e for y in years for e in store.load(pool=pool, year=y, known_at=known_at)}
        try:
            out = explain([*events.values(), *extra_events], case_id, known_at)
        except UnknownCase as exc:
            raise NotFound(str(exc)) from None
        basis = Basis.of(list(events.values()), position)
    else:
        case_versions.fresh(store)
        state = case_states(known(own, known_at)).get(case_id)
        year = state.case.discharge_date.year if state is not None else max(years)
        read = case_versions.pool_events(store, pool, year, known_at, hospital_id=hospital_id)
        py = settle([*read.events, *own], pool, year, known_at)
        sc = py.cases.get(case_id)
        if sc is not None and sc.state.verdict is not None and sc.state.verdict.payload.outcome is Outcome.INCENTIVE_APPROVED:
            with store.engine.connect() as conn:
                held = case_versions.held_at(conn, case_id, known_at)
                live = case_versions.sums(conn, pool, year, known_at, hospital_id=hospital_id).hospitals
            over = bool(held.figures.over_cap) if held is not None else False
            py.cases[case_id] = settle_case(sc.state, py.hospitals[hospital_id], py.book, over)
            cases = live[hospital_id].cases if hospital_id in live else 0
            cap = incentive_cap(cases, py.hospitals[hospital_id], py.book, sc.discharge_date)
            if cap is not None:
                py.incentive_caps[hospital_id] = cap
        try:
            out = describe(py, case_id)
        except UnknownCase as exc:
            raise NotFound(str(exc)) from None
        mine = Basis.of(own, position)
        stamps = [t for t in (read.latest_ingested_at, mine.latest_ingested_at) if t is not None]
        basis = Basis(position, read.count + mine.events_read, max(stamps, default=None))
    ingested_at = {e.event_id: e.ingested_at for e in submissions}
    out["ingested_at"] = {eid: (t.isoformat() if t else None) for eid, t in ingested_at.items()}
    out["basis"] = basis.as_json()
    return out
