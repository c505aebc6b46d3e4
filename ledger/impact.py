"""What an event can change: the one impact rule (seals, penalty derivation, the case-points projection).

`impact(event)` names the pool-years an event can move, narrowed where the event says so:
- a case event (submission, withdrawal, verdict, penalty) its case: the pool-years are those
  of the case's revisions (a revision may move a case to another discharge year), which the
  caller supplies because the event alone may not carry them (a verdict names only the
  case; EVENTS.md "Order of arrival");
- a policy version or a coefficient change the pool-years its valid interval touches
  (RULES.md 2: resolved by discharge date), narrowed to the hospital or DRG group it names;
- a budget its pool-year (RULES.md 5), a prepayment the year it was paid in (RULES.md 6):
  money only, no case's points;
- a registration every year of its pool (a grade has no valid time: README "Readings" 7);
- ledger-written records (`PenaltyImposed`, `ClearingCompleted`, `HistoryBackfilled`) move
  no figure: clearing recomputes penalties from verdicts (README "Readings" 1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from ledger.events import EventType

ALL_YEARS: None = None
"""`Impact.years` is None: every year of the pool."""


@dataclass(frozen=True, slots=True)
class Impact:
    """The pool-years an event can change, and the hospital, case or DRG group it narrows to.

    `pool` None: the pool is not known from the event alone (a case event: its hospital's
    pool). `years` None: every year. `hospital_id`, `case_id`, `drg_code` None: not narrowed.
    """

    pool: str | None = None
    years: frozenset[int] | None = frozenset()
    hospital_id: str | None = None
    case_id: str | None = None
    drg_code: str | None = None
    points: bool = True
    """False: the event moves money only (a budget, a prepayment), never a case's points."""

    @property
    def changes_nothing(self) -> bool:
        return self.years is not None and not self.years

    def touches(self, pool: str, year: int) -> bool:
        """Whether the event can change the clearing of `pool` for `year`."""
        if self.pool is not None and self.pool != pool:
            return False
        return self.years is None or year in self.years

    def touches_case(self, pool: str, year: int, hospital_id: str, drg_code: str) -> bool:
        """Whether the event can change the points of a case of `hospital_id` in DRG group
        `drg_code` discharged in `year` of `pool` (narrowed as the event says)."""
        return (
            self.points
            and self.touches(pool, year)
            and (self.hospital_id is None or self.hospital_id == hospital_id)
            and (self.drg_code is None or self.drg_code == drg_code)
        )


NO_IMPACT = Impact()


LAST_YEAR = 2099
"""Dates end at 2099-12-31 (EVENTS.md "Limits on input"): an open interval ends there."""


def _years(effective_from: date, effective_to: date | None) -> frozenset[int]:
    return frozenset(range(effective_from.year, (effective_to.year if effective_to else LAST_YEAR) + 1))


def impact(event: Any, case_years: Iterable[int] = (), case_pool: str | None = None) -> Impact:
    """The impact of `event` (module docstring). For a case event, `case_years` are the
    discharge years of the case's known revisions and `case_pool` its hospital's pool."""
    p = event.payload
    kind = event.event_type
    if kind in (EventType.CASE_SUBMITTED, EventType.CASE_WITHDRAWN, EventType.REVIEW_VERDICT_RECORDED):
        years = set(case_years)
        if kind == EventType.CASE_SUBMITTED:
            years.add(p.discharge_date.year)
        return Impact(case_pool, frozenset(years), getattr(p, "hospital_id", None), p.case_id)
    if kind in (EventType.POLICY_VERSION_PUBLISHED, EventType.COEFFICIENT_CHANGED):
        return Impact(
            p.pool,
            _years(p.effective_from, p.effective_to),
            getattr(p, "hospital_id", None),
            None,
            getattr(p, "drg_code", None),
        )
    if kind == EventType.BUDGET_SET:
        return Impact(p.pool, frozenset({p.year}), points=False)
    if kind == EventType.PREPAYMENT_MADE:
        return Impact(p.pool, frozenset({p.paid_on.year}), p.hospital_id, points=False)
    if kind == EventType.HOSPITAL_REGISTERED:
        return Impact(p.pool, ALL_YEARS, p.hospital_id)
    return NO_IMPACT


@dataclass(frozen=True, slots=True)
class Seal:
    """A recorded clearing: its pool-year is sealed up to `known_at` (EVENTS.md "Transaction
    time, seals and backfill")."""

    pool: str
    year: int
    known_at: datetime
    clearing_event_id: str


@dataclass
class Seals:
    """Every seal of the ledger, to ask which one an event would break."""

    seals: list[Seal] = field(default_factory=list)

    def broken_by(self, recorded_at: datetime, effect: Impact) -> Seal | None:
        """The seal an event recorded at `recorded_at` with `effect` would break: one whose
        pool-year it touches with `recorded_at <= known_at`. None when it breaks none."""
        if effect.changes_nothing:
            return None
        for seal in self.seals:
            if recorded_at <= seal.known_at and effect.touches(seal.pool, seal.year):
                return seal
        return None

    @property
    def latest(self) -> datetime | None:
        return max((s.known_at for s in self.seals), default=None)
