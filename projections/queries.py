"""The read side: clearing, balances and explanations computed from the store.

Each query loads a pool-year's events from the index (`LedgerStore.load`) and hands them to
the pure core in `ledger/`. `cold=True` reads the journal itself instead of the index.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any

from ledger.clearing import Balance, Clearing, balance, clearing, settle
from ledger.events import ENVELOPES
from ledger.explain import UnknownCase, explain

if TYPE_CHECKING:
    from projections.store import LedgerStore


class NotFound(LookupError):
    """The hospital, case or pool asked about is not in the ledger."""


def now() -> datetime:
    return datetime.now(timezone.utc)


def pool_year_events(store: LedgerStore, pool: str, year: int, known_at: datetime, *, cold: bool = False) -> list[Any]:
    """The events needed to settle `pool` for `year` as known at `known_at`."""
    if cold:
        return list(store.replay(known_at=known_at))
    return store.load(pool=pool, year=year, known_at=known_at)


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
    """Year-end clearing (RULES.md 5); with `record`, append a `ClearingCompleted` (RULES.md 6).

    `extra_events` are settled with the store's and never written (a what-if draft,
    projections/whatif.py): a clearing that includes them cannot be recorded.
    """
    if record and extra_events:
        raise ValueError("a clearing with events that are not in the ledger (a what-if) cannot be recorded")
    known_at = known_at or now()
    events = pool_year_events(store, pool, year, known_at, cold=cold) + list(extra_events)
    result = clearing(settle(events, pool, year, known_at))
    if record:
        stamp = now()
        completed = ENVELOPES["ClearingCompleted"](
            event_id=f"clearing:{pool}:{year}:{known_at.isoformat()}:{stamp.isoformat()}",
            event_type="ClearingCompleted",
            recorded_at=stamp,
            source="system",
            payload=result.completed(),
        )
        store.append_system_events([completed])
    return result


def hospital_pool(store: LedgerStore, hospital_id: str) -> str:
    registered = store.hospitals().get(hospital_id)
    if registered is None:
        raise NotFound(f"hospital {hospital_id} is not registered")
    pool: str = registered.pool
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
    pool = hospital_pool(store, hospital_id)
    events = pool_year_events(store, pool, as_of.year, known_at) + list(extra_events)
    py = settle(events, pool, as_of.year, known_at)
    return balance(py, hospital_id, as_of)


def explain_case(
    store: LedgerStore, case_id: str, known_at: datetime | None = None, *, extra_events: Sequence[Any] = ()
) -> dict[str, Any]:
    """A case's points step by step (EVENTS.md `explain`); `extra_events` as for `clear_pool`."""
    known_at = known_at or now()
    own = store.load(case_ids=[case_id], known_at=known_at)
    submissions = [e for e in own if e.event_type == "CaseSubmitted" and e.payload.case_id == case_id]
    if not submissions:
        raise NotFound(f"case {case_id} is not known at {known_at.isoformat()}")
    hospital_id = max(submissions, key=lambda e: (e.payload.revision, e.recorded_at)).payload.hospital_id
    pool = hospital_pool(store, hospital_id)
    years = {e.payload.discharge_date.year for e in submissions}
    events = {e.event_id: e for y in years for e in store.load(pool=pool, year=y, known_at=known_at)}
    try:
        return explain([*events.values(), *extra_events], case_id, known_at)
    except UnknownCase as exc:
        raise NotFound(str(exc)) from None
