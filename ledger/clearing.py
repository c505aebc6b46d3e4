"""Year-end clearing of a pool and year, and a hospital's balance at a date (RULES.md 5, 6).

`settle(events, pool, year, known_at)` folds the events recorded by `known_at` into every
case's points after verdicts; `clearing()` and `balance()` turn that into money. Pure: the
events are an argument, a superset is fine.
"""

from __future__ import annotations

import calendar
import gc
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any, Iterable, Iterator

from ledger.cases import CASE_PAYLOADS, CaseState, case_states, known, registry
from ledger.events import (
    BudgetSet,
    ClearingCompleted,
    ClearingResult,
    HospitalRegistered,
    Outcome,
    PrepaymentMade,
)
from ledger.penalties import Penalty, deduction
from ledger.points import Approval, CasePoints, case_points
from ledger.policy import PolicyBook

POINT_VALUE = Decimal("0.000001")
"""The point value to 6 places, ROUND_HALF_UP (RULES.md preamble)."""
MONEY = Decimal("0.01")
"""Money to 2 places when reported, ROUND_HALF_UP (RULES.md preamble)."""
ZERO = Decimal(0)


class ClearingError(ValueError):
    """A clearing cannot be computed: no budget, no points, or an unknown hospital."""


def money(x: Decimal) -> Decimal:
    return x.quantize(MONEY, rounding=ROUND_HALF_UP)


@dataclass(slots=True)
class SettledCase:
    """One case's points after its verdict (RULES.md 3, 4)."""

    state: CaseState
    hospital_id: str
    priced: CasePoints
    penalty: Penalty | None
    settled: Decimal
    deducted: Decimal
    incentive_over_cap: bool = False

    @property
    def discharge_date(self) -> date:
        return self.state.case.discharge_date


@dataclass(slots=True)
class PoolYear:
    """Every case of a pool's year as known at `known_at`, settled."""

    pool: str
    year: int
    known_at: datetime
    book: PolicyBook
    hospitals: dict[str, HospitalRegistered]
    cases: dict[str, SettledCase]
    withdrawn: dict[str, CaseState]
    budget: Any | None  # the BudgetSet envelope in force
    prepayments: list[PrepaymentMade]
    clearings: list[Any]  # ClearingCompleted envelopes of the year, by recorded_at
    incentive_caps: dict[str, int] = field(default_factory=dict)


def settle(events: Iterable[Any], pool: str, year: int, known_at: datetime) -> PoolYear:
    """Points of every case of `pool` discharged in `year`, as known at `known_at`.

    RULES.md 3 (points), 4 (verdicts and penalties), and the incentive cap of seed 001 二(二):
    approvals beyond floor(cases x per mille / 1000), in order of recorded_at, are paid as
    ordinary cases.
    """
    with gc_paused():
        return _settle(events, pool, year, known_at)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pauses the cyclic garbage collector, and restarts it only if it was running.

    Settling allocates a few objects per case, none in a cycle (reference counting frees
    them), while hundreds of thousands of parsed events are alive: the collector's passes
    over them made a city year's settlement take 1.7x as long (benchmarks/README.md).
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _settle(events: Iterable[Any], pool: str, year: int, known_at: datetime) -> PoolYear:
    seen = known(events, known_at)
    # The registry, the policy book and the budget, prepayments and clearings read no case
    # event: they pass over the pool's few hundred others, not the year's 300,000 cases.
    others = [e for e in seen if not isinstance(e.payload, CASE_PAYLOADS)]
    hospitals = {h: r for h, r in registry(others).items() if r.pool == pool}
    book = PolicyBook.from_events(pool, others, known_at)
    live: dict[str, CaseState] = {}
    withdrawn: dict[str, CaseState] = {}
    per_hospital: dict[str, int] = {}
    for cid, s in case_states(seen).items():
        case = s.current.payload
        if case.hospital_id not in hospitals or case.discharge_date.year != year:
            continue
        if s.withdrawal is not None:
            withdrawn[cid] = s
        else:
            live[cid] = s
            per_hospital[case.hospital_id] = per_hospital.get(case.hospital_id, 0) + 1
    approved: dict[str, list[Approved]] = {}
    for s in live.values():
        if s.verdict is not None and s.verdict.payload.outcome is Outcome.INCENTIVE_APPROVED:
            approved.setdefault(s.case.hospital_id, []).append(approved_entry(s))
    over_cap: set[str] = set()
    hospital_caps: dict[str, int] = {}
    for hid, entries in approved.items():
        beyond, cap = incentive_over_cap(entries, per_hospital[hid], hospitals[hid], book)
        over_cap |= beyond
        if cap is not None:
            hospital_caps[hid] = cap

    settled: dict[str, SettledCase] = {}
    for cid, s in live.items():
        settled[cid] = settle_case(s, hospitals[s.case.hospital_id], book, cid in over_cap)

    budget = None
    prepayments: list[PrepaymentMade] = []
    clearings: list[Any] = []
    for e in others:
        p = e.payload
        if isinstance(p, BudgetSet) and p.pool == pool and p.year == year:
            if budget is None or (e.recorded_at, e.event_id) > (budget.recorded_at, budget.event_id):
                budget = e
        elif isinstance(p, PrepaymentMade) and p.pool == pool and p.paid_on.year == year:
            prepayments.append(p)
        elif isinstance(p, ClearingCompleted) and p.pool == pool and p.year == year:
            clearings.append(e)
    clearings.sort(key=lambda e: (e.recorded_at, e.event_id))
    return PoolYear(pool, year, known_at, book, hospitals, settled, withdrawn, budget, prepayments, clearings, hospital_caps)


Approved = tuple[datetime, str, str, date]
"""An incentive approval in force: (verdict recorded_at, verdict event_id, case_id, discharge date)."""


def approved_entry(state: CaseState) -> Approved:
    """The approval of a case whose verdict in force is `incentive_approved`."""
    assert state.verdict is not None
    return (state.verdict.recorded_at, state.verdict.event_id, state.case_id, state.case.discharge_date)


def incentive_cap(live_cases: int, hospital: HospitalRegistered, book: PolicyBook, discharge: date) -> int | None:
    """A hospital's yearly incentive cap for a case discharged on `discharge`, or None when the
    rule is not in force (a null per-mille table or grade, EVENTS.md).

    seed 001 二(二): at most 6‰ (level 3) / 4‰ (levels 2, 1) of the hospital's DRG cases of
    the year (`live_cases`); rounded down (RULES.md 3).
    """
    per_mille_table = book.case_rules(discharge).value.incentive_cap_per_mille
    if per_mille_table is None:
        return None
    per_mille = per_mille_table.get(hospital.grade.level)  # type: ignore[call-overload]
    if per_mille is None:
        return None
    return int((Decimal(live_cases) * per_mille / 1000).to_integral_value(rounding=ROUND_FLOOR))


def cap_dates(book: PolicyBook, discharges: Iterable[date]) -> list[date]:
    """One of `discharges` per case-rules version in force on them, in order of first use:
    `incentive_cap` reads a case's discharge date only through that version (seed 001
    二(二)), so at a given live count every case has the cap of its version's date here.
    Raises `PolicyMissing` as `incentive_cap` does."""
    seen: dict[int, date] = {}
    for d in discharges:
        seen.setdefault(id(book.case_rules(d)), d)
    return list(seen.values())


def incentive_over_cap(
    approved: Iterable[Approved], live_cases: int, hospital: HospitalRegistered, book: PolicyBook
) -> tuple[set[str], int | None]:
    """The approved cases of one hospital-year paid as ordinary cases, and the last cap seen.

    seed 001 二(二): approvals beyond the cap, in order of the verdicts' recorded_at (ties by
    event id), are paid as ordinary cases; where the rule is not in force, every approval is.
    Raises `PolicyMissing` when a case's discharge date has no case rules.
    """
    used = 0
    beyond: set[str] = set()
    last: int | None = None
    for _, _, case_id, discharge in sorted(approved):
        cap = incentive_cap(live_cases, hospital, book, discharge)
        if cap is not None:
            last = cap
        if cap is None or used >= cap:
            beyond.add(case_id)
        else:
            used += 1
    return beyond, last


def settle_case(state: CaseState, hospital: HospitalRegistered, book: PolicyBook, over_cap: bool) -> SettledCase:
    """One live case's points after its verdict (RULES.md 3, 4); `over_cap`: an incentive
    approval beyond its hospital's cap, paid as an ordinary case (seed 001 二(二))."""
    verdict = state.verdict.payload if state.verdict is not None else None
    approval: Approval | None = None
    if verdict is not None and verdict.outcome is Outcome.SPECIAL_REVIEW_APPROVED:
        approval = Approval.SPECIAL_REVIEW
    elif verdict is not None and verdict.outcome is Outcome.INCENTIVE_APPROVED and not over_cap:
        approval = Approval.INCENTIVE
    unreasonable = verdict.unreasonable_cost if approval is not None and verdict is not None else None
    priced = case_points(state.case, hospital.hospital_id, hospital.grade, book, approval, unreasonable)
    penalty = None
    settled, deducted = priced.points, ZERO
    if verdict is not None and verdict.outcome is Outcome.VIOLATION:
        rules = book.penalty_rules(state.case.discharge_date).value
        penalty = deduction(priced.points, verdict, rules)
        settled, deducted = penalty.settled, penalty.deducted
    return SettledCase(state, hospital.hospital_id, priced, penalty, settled, deducted, over_cap)


# --------------------------------------------------------------------------- money


@dataclass(frozen=True, slots=True)
class HospitalLine:
    """A hospital's figures (RULES.md 5), as `clear` and `balance` print them."""

    hospital_id: str
    settled_points: Decimal
    deducted_points: Decimal
    net_points: Decimal
    personal_paid: Decimal
    fund_due: Decimal
    prepaid: Decimal
    clearing_amount: Decimal
    cases: int = 0

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hospital_id": self.hospital_id}
        for name in ("settled_points", "deducted_points", "net_points", "personal_paid", "fund_due", "prepaid", "clearing_amount"):
            out[name] = str(getattr(self, name))
        return out

    def as_result(self) -> ClearingResult:
        return ClearingResult(**{k: v for k, v in self.as_json().items()})


@dataclass(frozen=True, slots=True)
class Basis:
    """What an answer rests on: the journal position read, how many events, and the latest
    `ingested_at` among them — so a figure from a half-ingested store says so."""

    journal_position: int
    events_read: int
    latest_ingested_at: datetime | None

    @classmethod
    def of(cls, events: list[Any], journal_position: int) -> Basis:
        stamps = [e.ingested_at for e in events if getattr(e, "ingested_at", None) is not None]
        return cls(journal_position, len(events), max(stamps, default=None))

    def as_json(self) -> dict[str, Any]:
        return {
            "journal_position": self.journal_position,
            "events_read": self.events_read,
            "latest_ingested_at": None if self.latest_ingested_at is None else self.latest_ingested_at.isoformat(),
        }

    def text(self) -> str:
        latest = "none" if self.latest_ingested_at is None else self.latest_ingested_at.isoformat(timespec="seconds")
        return (f"based on {self.events_read:,} events up to journal position {self.journal_position:,}; "
                f"latest ingested at {latest}")


@dataclass(frozen=True, slots=True)
class Clearing:
    """A year-end clearing of a pool (RULES.md 5)."""

    pool: str
    year: int
    known_at: datetime
    point_value: Decimal
    total_points: Decimal
    budget: Decimal
    personal_paid_inside: bool
    hospitals: list[HospitalLine]
    basis: Basis | None = None

    def as_json(self) -> dict[str, Any]:
        out = {
            "pool": self.pool,
            "year": self.year,
            "known_at": self.known_at.isoformat(),
            "point_value": str(self.point_value),
            "total_points": str(self.total_points),
            "budget": str(self.budget),
            "hospitals": [h.as_json() for h in self.hospitals],
        }
        if self.basis is not None:
            out["basis"] = self.basis.as_json()
        return out

    def completed(self) -> ClearingCompleted:
        """The `ClearingCompleted` payload that records this run (RULES.md 6)."""
        return ClearingCompleted(
            pool=self.pool,
            year=self.year,
            known_at=self.known_at,
            point_value=self.point_value,
            total_points=self.total_points,
            budget=self.budget,
            results=[h.as_result() for h in self.hospitals],
        )


def point_value(budget: Decimal, total_points: Decimal, personal_paid: Decimal, inside: bool) -> Decimal:
    """PV = (B + sum personal_paid) / TP when personal payments are inside, else B / TP.

    RULES.md 5; seed 004: the DRG standard covers fund and personal payments together.
    """
    if total_points <= 0:
        raise ClearingError(f"total points are {total_points}: no point value can be computed")
    numerator = budget + personal_paid if inside else budget
    return (numerator / total_points).quantize(POINT_VALUE, rounding=ROUND_HALF_UP)


@dataclass(slots=True)
class CaseSums:
    """A hospital's sums over its cases and prepayments (RULES.md 5): what a clearing line is made of.

    Exact decimals, unrounded: `clearing_of` and `balance_of` round once, as RULES.md says.
    """

    settled: Decimal = ZERO
    deducted: Decimal = ZERO
    personal_paid: Decimal = ZERO
    prepaid: Decimal = ZERO
    cases: int = 0


def case_sums(py: PoolYear, until: date | None = None) -> dict[str, CaseSums]:
    """Every registered hospital's sums over its cases discharged by `until` (all when None)."""
    sums = {h: CaseSums() for h in py.hospitals}
    for c in py.cases.values():
        if until is not None and c.discharge_date > until:
            continue
        s = sums[c.hospital_id]
        s.settled += c.settled
        s.deducted += c.deducted
        s.personal_paid += c.state.case.personal_paid
        s.cases += 1
    return sums


def add_prepaid(py: PoolYear, sums: dict[str, CaseSums], until: date | None = None) -> dict[str, CaseSums]:
    """Adds the prepayments of the year paid by `until` to the hospitals' sums (RULES.md 5, 6)."""
    for p in py.prepayments:
        if p.hospital_id in sums and (until is None or p.paid_on <= until):
            sums[p.hospital_id].prepaid += p.amount
    return sums


def hospital_line(hospital_id: str, s: CaseSums, pv: Decimal, inside: bool) -> HospitalLine:
    """One hospital's clearing figures at point value `pv` (RULES.md 5).

    fund_due = net x PV - personal_paid when personal payments are inside the point value,
    else net x PV; clearing_amount = fund_due - prepaid. Money to 2 places, half up.
    """
    net = s.settled - s.deducted
    fund_due = money(net * pv - s.personal_paid) if inside else money(net * pv)
    prepaid = money(s.prepaid)
    return HospitalLine(
        hospital_id, s.settled, s.deducted, net, money(s.personal_paid), fund_due, prepaid, fund_due - prepaid, s.cases
    )


def clearing_of(
    pool: str, year: int, known_at: datetime, budget: Decimal, inside: bool, sums: dict[str, CaseSums]
) -> Clearing:
    """A clearing from each registered hospital's sums (RULES.md 5): TP, PV, then every line.

    Called by `clearing_from_sums` only.
    """
    total = ZERO
    personal = ZERO
    for s in sums.values():
        total += s.settled - s.deducted
        personal += s.personal_paid
    pv = point_value(budget, total, personal, inside)
    lines = [hospital_line(hid, sums[hid], pv, inside) for hid in sorted(sums)]
    return Clearing(pool, year, known_at, pv, total, budget, inside, lines)


def clearing(py: PoolYear) -> Clearing:
    """Year-end clearing (RULES.md 5) of the cases settled in `py`."""
    return clearing_from_sums(py, case_sums(py))


def clearing_from_sums(py: PoolYear, sums: dict[str, CaseSums]) -> Clearing:
    """Year-end clearing (RULES.md 5) from each registered hospital's case sums: point value,
    then each hospital's fund due and clearing amount, less the year's prepayments.

    `py` gives the hospitals, policy, budget and prepayments (its cases are not read), so the
    case-points projection passes sums from SQL. `clearing_rules` is the version in force on
    31 December of the year.
    """
    if py.budget is None:
        raise ClearingError(f"no BudgetSet for pool {py.pool} year {py.year} recorded by {py.known_at.isoformat()}")
    inside = py.book.clearing_rules(date(py.year, 12, 31)).value.personal_paid_in_point_value
    full = {h: sums.get(h, CaseSums()) for h in py.hospitals}
    return clearing_of(py.pool, py.year, py.known_at, py.budget.payload.amount, inside, add_prepaid(py, full))


@dataclass(frozen=True, slots=True)
class Balance:
    """A hospital's balance at a date (RULES.md 6)."""

    hospital_id: str
    pool: str
    as_of: date
    known_at: datetime
    point_value: Decimal
    point_value_kind: str  # "final" or "provisional"
    line: HospitalLine
    budget_in_window: Decimal | None
    basis: Basis | None = None

    def as_json(self) -> dict[str, Any]:
        out = {
            "hospital_id": self.hospital_id,
            "pool": self.pool,
            "as_of": self.as_of.isoformat(),
            "known_at": self.known_at.isoformat(),
            "point_value": str(self.point_value),
            "point_value_kind": self.point_value_kind,
            **{k: v for k, v in self.line.as_json().items() if k != "hospital_id"},
        }
        if self.basis is not None:
            out["basis"] = self.basis.as_json()
        return out


def balance(py: PoolYear, hospital_id: str, as_of: date) -> Balance:
    """RULES.md 6: the hospital's figures for cases discharged 1 Jan..as_of and prepayments paid by then.

    Point value: the latest ClearingCompleted of the year known at `known_at` (final), else
    the provisional value of the window with the budget pro-rated by days (月度预结算).
    """
    window = case_sums(py, as_of)
    return balance_from_sums(py, hospital_id, as_of, window.get(hospital_id, CaseSums()), window.values())


def balance_from_sums(
    py: PoolYear, hospital_id: str, as_of: date, own: CaseSums, window: Iterable[CaseSums]
) -> Balance:
    """RULES.md 6 from sums: `own` are the hospital's case sums to `as_of`, `window` the pool's.

    `py` gives the hospitals, policy, budget, prepayments and recorded clearings (its cases
    are not read), so the case-points projection passes a PoolYear settled from pool events
    only and sums from SQL; `window` is only read when no clearing is recorded.
    """
    if hospital_id not in py.hospitals:
        raise ClearingError(f"hospital {hospital_id} is not registered in pool {py.pool} as known at {py.known_at.isoformat()}")
    assert as_of.year == py.year
    inside = py.book.clearing_rules(as_of).value.personal_paid_in_point_value
    if py.clearings:
        pv, kind, window_budget = py.clearings[-1].payload.point_value, "final", None
    else:
        if py.budget is None:
            raise ClearingError(f"no BudgetSet for pool {py.pool} year {py.year} recorded by {py.known_at.isoformat()}")
        days = (as_of - date(py.year, 1, 1)).days + 1
        days_in_year = 366 if calendar.isleap(py.year) else 365
        window_budget = money(py.budget.payload.amount * days / days_in_year)
        total = ZERO
        personal = ZERO
        for s in window:
            total += s.settled - s.deducted
            personal += s.personal_paid
        pv, kind = point_value(window_budget, total, personal, inside), "provisional"
    mine = add_prepaid(py, {hospital_id: replace(own, prepaid=ZERO)}, as_of)
    line = hospital_line(hospital_id, mine[hospital_id], pv, inside)
    return Balance(hospital_id, py.pool, as_of, py.known_at, pv, kind, line, window_budget)
