"""The diff of two clearings read from the store: each side a moment, a recorded clearing or a draft.

A moment settles the pool-year as known then (RULES.md 2); a draft (projections/whatif.py)
settles it with the draft's events as known at the draft's `known_at`; a recorded
`ClearingCompleted` gives its figures as recorded (RULES.md 6), and its cases, for
`cases=True`, are the pool-year settled as known at its `known_at` (the journal only grows,
so that is what the clearing read). The pool-year's events are loaded once, up to the
latest moment either side needs. The comparison itself is `ledger.diff`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.clearing import clearing, settle
from ledger.diff import Diff, Side, Table, case_table, diff_clearings, hospital_table, moment_label, recorded_clearing
from ledger.events import EventType
from ledger.policy import PolicyBook
from ledger.whatif import Draft, with_draft
from projections.queries import NotFound, now

if TYPE_CHECKING:
    from projections.store import LedgerStore


@dataclass(frozen=True, slots=True)
class SideSpec:
    """A side as asked: a moment (`known_at`, default now), a recorded clearing (`clearing_id`),
    or a draft (`draft`, applied at its own `known_at`)."""

    known_at: datetime | None = None
    clearing_id: str | None = None
    draft: Draft | None = None

    def __post_init__(self) -> None:
        if self.clearing_id is not None and (self.known_at is not None or self.draft is not None):
            raise ValueError("a recorded clearing is its own moment: give no known_at or draft with it")
        if self.draft is not None and self.known_at is not None and self.known_at != self.draft.known_at:
            raise ValueError("a draft is applied at its own known_at")


def recorded(store: LedgerStore, clearing_id: str, pool: str, year: int) -> Any:
    """The `ClearingCompleted` envelope `clearing_id` of `pool` `year`, else NotFound."""
    ev = store.event(clearing_id)
    if ev is None or ev.event_type != EventType.CLEARING_COMPLETED:
        raise NotFound(f"no recorded clearing (ClearingCompleted) with event_id {clearing_id}")
    if (ev.payload.pool, ev.payload.year) != (pool, year):
        raise NotFound(f"clearing {clearing_id} is of {ev.payload.pool} {ev.payload.year}, not {pool} {year}")
    return ev


def diff_pool_year(
    store: LedgerStore,
    pool: str,
    year: int,
    before: SideSpec,
    after: SideSpec,
    *,
    cases: bool = False,
    hospital_id: str | None = None,
) -> Diff:
    """`ledger.diff.diff_clearings` of the two sides (with every changed case when `cases`)."""
    moment = now()
    specs = (before, after)
    completed = [recorded(store, s.clearing_id, pool, year) if s.clearing_id else None for s in specs]
    known = [
        c.payload.known_at if c is not None else (s.draft.known_at if s.draft else (s.known_at or moment))
        for s, c in zip(specs, completed)
    ]
    settling = [c is None or cases for c in completed]
    if any(settling):
        events = store.load(pool=pool, year=year, known_at=max(k for k, need in zip(known, settling) if need))
    else:
        events = store.load(pool=pool, year=year, known_at=max(known), event_types=[EventType.POLICY_VERSION_PUBLISHED])
    sides = [_side(s, c, k, events, pool, year, cases) for s, c, k in zip(specs, completed, known)]
    return diff_clearings(sides[0], sides[1], cases=cases, hospital_id=hospital_id)


def _side(
    spec: SideSpec, completed: Any, known_at: datetime, events: list[Any], pool: str, year: int, cases: bool
) -> Side:
    if completed is not None:
        inside = (
            PolicyBook.from_events(pool, events, known_at)
            .clearing_rules(date(year, 12, 31))
            .value.personal_paid_in_point_value
        )
        py = settle(events, pool, year, known_at) if cases else None
        label = f"recorded clearing {completed.event_id} ({moment_label(known_at)})"
        return Side("clearing", label, recorded_clearing(completed.payload, inside), py, clearing_id=completed.event_id)
    if spec.draft is not None:
        py = settle(with_draft(events, spec.draft), pool, year, known_at)
        label = f"what-if {spec.draft.name} ({moment_label(known_at)})"
        return Side("what_if", label, clearing(py), py if cases else None, what_if=spec.draft.marker())
    py = settle(events, pool, year, known_at)
    return Side("moment", moment_label(known_at), clearing(py), py if cases else None)


def write_csv(path: Path, table: Table) -> Path:
    """A CSV a spreadsheet opens with its Chinese headers intact: UTF-8 with a BOM."""
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(table.headers)
        writer.writerows(table.rows)
    return path


def export_csv(d: Diff, path: Path) -> list[Path]:
    """The hospitals to `path`; with case changes, the cases to `<stem>.cases<suffix>` beside it."""
    written = [write_csv(path, hospital_table(d))]
    if d.cases is not None:
        written.append(write_csv(path.with_name(f"{path.stem}.cases{path.suffix or '.csv'}"), case_table(d)))
    return written
