"""The read side through time: a hospital's month-end balances, a pool-year's policy moments,
the policy in force, a hospital's cases, the pools and their hospitals.

Adapters over what exists, no rule of their own (STYLE.md 9): balances are
the case-points projection's sums through `ledger.clearing`; policy resolution is
`ledger.policy.PolicyBook`; case points are `settle`'s. The HTTP service and its web page
read these.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import distinct, func, select

from ledger.catalogue import Catalogue
from ledger.clearing import Balance, ClearingError, settle
from ledger.events import Component, EventType, decode_stored
from ledger.policy import InForce, PolicyBook, PolicyMissing, latest_covering
from projections.queries import NotFound, hospital_pool, now, projected_balances
from projections.store import index_table

if TYPE_CHECKING:
    from projections.store import LedgerStore

POLICY_EVENTS = (EventType.POLICY_VERSION_PUBLISHED, EventType.COEFFICIENT_CHANGED, EventType.BUDGET_SET, EventType.CLEARING_COMPLETED)
"""The pool-level events that change a pool-year's figures: the moments of a known-at slider."""


def month_ends(year: int) -> list[date]:
    """The last day of each month of `year`."""
    return [date(year, m, calendar.monthrange(year, m)[1]) for m in range(1, 13)]


@dataclass(frozen=True, slots=True)
class MonthEnd:
    """The balance at one month end, or why it cannot be computed (no budget, no points yet...)."""

    as_of: date
    balance: Balance | None
    error: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "balance": self.balance.as_json() if self.balance is not None else None,
            "error": self.error,
        }


def balance_series(store: LedgerStore, hospital_id: str, year: int, known_at: datetime | None = None) -> list[MonthEnd]:
    """A hospital's balance at every month end of `year`, as known at `known_at` (RULES.md 6).

    One aggregate over the case-points projection, cut at each month end
    (`projected_balances`): the same figures as twelve `hospital_balance` calls. A month end
    that cannot be computed (RULES.md 6 needs a budget, and points in the window) carries the
    reason instead.
    """
    known_at = known_at or now()
    hospital_pool(store, hospital_id)  # NotFound first
    try:
        found = projected_balances(store, hospital_id, month_ends(year), known_at, keep_errors=True)
    except (ClearingError, PolicyMissing) as exc:  # a case of the year cannot be settled as known then
        return [MonthEnd(day, None, str(exc)) for day in month_ends(year)]
    return [MonthEnd(day, None, str(b)) if isinstance(b, Exception) else MonthEnd(day, b, None)
            for day, b in zip(month_ends(year), found, strict=True)]


def _pool_events(store: LedgerStore, pool: str, event_types: tuple[str, ...]) -> list[Any]:
    """The pool-level events of `pool` of these types, in recording order (no case lookup)."""
    t = index_table
    query = select(t.c.event_type, t.c.body).where(t.c.pool == pool, t.c.event_type.in_(event_types)).order_by(t.c.seq)
    with store.engine.connect() as conn:
        return [decode_stored(et, body) for et, body in conn.execute(query)]


def _overlaps(effective_from: date, effective_to: date | None, year: int) -> bool:
    return effective_from <= date(year, 12, 31) and (effective_to is None or effective_to >= date(year, 1, 1))


def _moment_event(e: Any) -> dict[str, Any]:
    p = e.payload
    out: dict[str, Any] = {"event_id": e.event_id, "event_type": e.event_type, "source": e.source}
    if e.event_type == EventType.POLICY_VERSION_PUBLISHED:
        out.update(component=p.component.value, version=p.version, effective_from=p.effective_from.isoformat(),
                   effective_to=p.effective_to.isoformat() if p.effective_to else None)
    elif e.event_type == EventType.COEFFICIENT_CHANGED:
        out.update(hospital_id=p.hospital_id, drg_code=p.drg_code, grade=p.grade.value if p.grade else None,
                   coefficient=str(p.coefficient), reason=p.reason, effective_from=p.effective_from.isoformat(),
                   effective_to=p.effective_to.isoformat() if p.effective_to else None)
    elif e.event_type == EventType.BUDGET_SET:
        out.update(amount=str(p.amount))
    elif e.event_type == EventType.CLEARING_COMPLETED:
        out.update(known_at=p.known_at.isoformat(), point_value=str(p.point_value))
    return out


def policy_moments(store: LedgerStore, pool: str, year: int) -> list[dict[str, Any]]:
    """The moments (distinct `recorded_at`) at which the pool's figures for `year` can change.

    A policy version or coefficient change whose valid interval meets the year (RULES.md 2:
    a back-dated version changes every answer asked after its `recorded_at`), the year's
    budget, and the year's recorded clearings (RULES.md 6: a balance then takes the final
    point value). Oldest first, each with the events recorded at that instant.
    """
    moments: dict[datetime, list[dict[str, Any]]] = {}
    for e in _pool_events(store, pool, POLICY_EVENTS):
        p = e.payload
        if e.event_type in (EventType.POLICY_VERSION_PUBLISHED, EventType.COEFFICIENT_CHANGED):
            relevant = _overlaps(p.effective_from, p.effective_to, year)
        else:
            relevant = p.year == year
        if relevant:
            moments.setdefault(e.recorded_at, []).append(_moment_event(e))
    return [{"at": at.isoformat(), "events": evs} for at, evs in sorted(moments.items())]


def _version_json(found: InForce[Any], component: Component, with_body: bool) -> dict[str, Any]:
    out = {"component": component.value, **found.cite()}
    if with_body:
        value = found.value
        body = value.body if isinstance(value, Catalogue) else value  # PolicyBook indexes the catalogue
        out["body"] = body.model_dump(mode="json")
    return out


def policies_in_force(
    store: LedgerStore, pool: str, on: date, known_at: datetime | None = None, *, with_body: bool = False
) -> dict[str, Any]:
    """The component versions and coefficient changes of `pool` in force on `on`, as known at
    `known_at` (RULES.md 2, 3 "In force"), resolved by `ledger.policy.PolicyBook`."""
    known_at = known_at or now()
    events = _pool_events(store, pool, (EventType.POLICY_VERSION_PUBLISHED, EventType.COEFFICIENT_CHANGED))
    book = PolicyBook.from_events(pool, events, known_at)
    versions = []
    missing = []
    for component in Component:
        found = book.version(component, on)
        if found is None:
            missing.append(component.value)
        else:
            versions.append(_version_json(found, component, with_body))
    changes = []
    for scope, table in (("hospital_drg", book.by_hospital_drg), ("drg_grade", book.by_drg_grade),
                         ("hospital", book.by_hospital)):
        for key, candidates in sorted(table.items(), key=lambda kv: str(kv[0])):
            found = latest_covering(candidates, on)
            if found is not None:
                keys = key if isinstance(key, tuple) else (key,)
                changes.append({"scope": scope, "key": [str(k) for k in keys], "coefficient": str(found.value),
                                "reason": found.version, **{k: v for k, v in found.cite().items() if k != "version"}})
    return {"pool": pool, "on": on.isoformat(), "known_at": known_at.isoformat(), "versions": versions,
            "missing": missing, "coefficient_changes": changes}


def pools(store: LedgerStore) -> list[dict[str, Any]]:
    """Every pool with a registered hospital: its hospital count and the years it has cases or a budget."""
    t = index_table
    registry = store.hospitals()
    counts: dict[str, int] = {}
    for h in registry.values():
        counts[h.pool] = counts.get(h.pool, 0) + 1
    query = (
        select(t.c.pool, t.c.year)
        .where(t.c.event_type.in_((EventType.CASE_SUBMITTED, EventType.BUDGET_SET)), t.c.pool.is_not(None), t.c.year.is_not(None))
        .group_by(t.c.pool, t.c.year)
    )
    years: dict[str, set[int]] = {}
    with store.engine.connect() as conn:
        for pool, year in conn.execute(query):
            years.setdefault(pool, set()).add(int(year))
    return [{"pool": p, "hospitals": counts[p], "years": sorted(years.get(p, ()))} for p in sorted(counts)]


def pool_hospitals(store: LedgerStore, pool: str) -> list[dict[str, Any]]:
    """The hospitals registered in `pool` (the latest registration of each, RULES.md 1)."""
    found = [h for h in store.hospitals().values() if h.pool == pool]
    if not found:
        raise NotFound(f"pool {pool} has no registered hospital")
    return [{"hospital_id": h.hospital_id, "name": h.name, "grade": h.grade.value, "pool": h.pool}
            for h in sorted(found, key=lambda h: h.hospital_id)]


def case_count(store: LedgerStore) -> int:
    """Distinct cases submitted to the ledger (for the service's health report)."""
    t = index_table
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count(distinct(t.c.case_id))).where(t.c.event_type == EventType.CASE_SUBMITTED))
                   .scalar_one())


def hospital_cases(
    store: LedgerStore, hospital_id: str, year: int, known_at: datetime | None = None, *, limit: int = 100,
    offset: int = 0,
) -> dict[str, Any]:
    """A hospital's live cases discharged in `year` as known at `known_at`, with their points
    (RULES.md 3, 4), largest net points first.

    Settled from the pool's policy and this hospital's cases only: a case's points and the
    hospital's incentive cap depend on nothing else (`ledger.clearing.settle`).
    """
    known_at = known_at or now()
    pool = hospital_pool(store, hospital_id)
    py = settle(store.load(pool=pool, year=year, hospital_id=hospital_id, known_at=known_at), pool, year, known_at)
    mine = [c for c in py.cases.values() if c.hospital_id == hospital_id]
    mine.sort(key=lambda c: (-(c.settled - c.deducted), c.state.case_id))
    rows = []
    for c in mine[offset : offset + limit]:
        coefficient = c.priced.coefficient
        rows.append({
            "case_id": c.state.case_id,
            "discharge_date": c.discharge_date.isoformat(),
            "drg_code": c.state.case.drg_code,
            "case_type": c.priced.case_type.value,
            "coefficient": str(coefficient.value) if coefficient is not None else None,
            "coefficient_why": coefficient.source if coefficient is not None else None,
            "points_before_verdict": str(c.priced.points),
            "settled_points": str(c.settled),
            "deducted_points": str(c.deducted),
            "net_points": str(c.settled - c.deducted),
        })
    withdrawn = sum(1 for s in py.withdrawn.values() if s.case.hospital_id == hospital_id)
    return {"hospital_id": hospital_id, "pool": pool, "year": year, "known_at": known_at.isoformat(),
            "total": len(mine), "withdrawn": withdrawn, "offset": offset, "limit": limit, "cases": rows}
