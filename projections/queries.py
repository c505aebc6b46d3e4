"""The read side: clearing, balances and explanations computed from the store.

Each query loads a pool-year's events from the index (`LedgerStore.load`) and hands them to
the pure core in `ledger/`. `cold=True` reads the journal itself instead of the index.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
import json
from dataclasses import replace
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any

from ledger.clearing import Balance, Basis, Clearing, balance, clearing, gc_paused, settle
from ledger.events import ENVELOPES
from ledger.explain import UnknownCase, explain
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
    else:
        events, position = pool_year_events(store, pool, year, known_at, cold=cold)
        result = replace(clearing(settle([*events, *extra_events], pool, year, known_at)), basis=Basis.of(events, position))
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
    completed = ENVELOPES["ClearingCompleted"](
        event_id=event_id, event_type="ClearingCompleted", recorded_at=now(), source="system", payload=payload
    )
    return event_id, store.append_system_events([completed]) > 0


def _without_digest(payload: Any) -> str:
    """Canonical JSON of a clearing's content without its log digest (what its id derives from)."""
    data = payload.model_dump(mode="json", exclude={"log_digest"})
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def recorded_digest(store: LedgerStore, event_id: str) -> str | None:
    """The log digest a recorded clearing carries (None for one recorded before digests)."""
    ev = store.event(event_id)
    return None if ev is None else ev.payload.log_digest


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
    events, position = pool_year_events(store, pool, as_of.year, known_at)
    py = settle([*events, *extra_events], pool, as_of.year, known_at)
    return replace(balance(py, hospital_id, as_of), basis=Basis.of(events, position))


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
    position = store.position
    try:
        out = explain([*events.values(), *extra_events], case_id, known_at)
    except UnknownCase as exc:
        raise NotFound(str(exc)) from None
    ingested_at = {e.event_id: e.ingested_at for e in submissions}
    out["ingested_at"] = {eid: (t.isoformat() if t else None) for eid, t in ingested_at.items()}
    out["basis"] = Basis.of(list(events.values()), position).as_json()
    return out
