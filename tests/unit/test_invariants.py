"""Property tests (hypothesis): arrival order, duplicate delivery and later knowledge never
change a result (EVENTS.md "Order of arrival"; RULES.md 2)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.clearing import balance, clearing, settle
from tests.unit.rules_world import POOL, at, base_policies, budget, case, ev, hospitals, prepayment, verdict

HOSPITALS = ["H1", "H2", "H3", "H4", "H5"]
GROUPS = ["A1", "B1", "C1", "U1", "0000"]
VIOLATIONS: list[dict[str, Any]] = [
    {"violation_type": "bed_blocking"},
    {"violation_type": "split_hospitalisation", "violating_points": "12.5"},
    {"violation_type": "cost_shifting", "violating_points": "30"},
    {"violation_type": "insufficient_service", "violating_points": "8"},
    {"violation_type": "shirking_severe", "violating_points": "150"},
    {"violation_type": "upcoding", "violating_points": "40"},
    {"violation_type": "fraud"},
    {"violation_type": "fraud", "violating_points": "20", "multiplier": "3"},
    {"violation_type": "other", "violating_points": "5", "multiplier": "1.5"},
]
MOMENTS = [at(t) for t in ("2020-06-30T00:00:00+08:00", "2020-12-31T00:00:00+08:00", "2021-05-10T00:00:00+08:00",
                           "2021-05-11T00:00:00+08:00", "2030-01-01T00:00:00+08:00")]


def stamp(day: int) -> str:
    """A recorded_at `day` days into 2020..2021 (0 = 2020-01-02)."""
    from datetime import date, timedelta

    return f"{(date(2020, 1, 2) + timedelta(days=day)).isoformat()}T10:00:00+08:00"


@st.composite
def ledgers(draw: st.DrawFn) -> list[Any]:
    """A random year of a pool: cases, revisions, withdrawals, verdicts, prepayments."""
    events: list[Any] = [*base_policies(), *hospitals(), budget("500000")]
    n = draw(st.integers(min_value=1, max_value=25))
    for i in range(n):
        hid = draw(st.sampled_from(HOSPITALS))
        day = draw(st.integers(min_value=0, max_value=360))
        discharge = stamp(day)[:10]
        cost = draw(st.decimals(min_value="100", max_value="90000", places=2))
        procs = draw(st.sampled_from([[], ["04.0200x005"], ["6.9501"], ["74.0x00", "54.5904"]]))
        drg = draw(st.sampled_from(GROUPS))
        recorded = stamp(day + draw(st.integers(min_value=0, max_value=200)))
        events.append(case(f"c{i}", hid, drg, str(cost), discharge=discharge, procedures=procs,
                           personal=str((cost * Decimal("0.2")).quantize(Decimal("0.01"))), recorded_at=recorded,
                           bilateral=draw(st.booleans())))
        if draw(st.integers(0, 9)) == 0:
            events.append(case(f"c{i}", hid, drg, str(cost * 2), revision=2, discharge=discharge,
                               recorded_at=stamp(day + draw(st.integers(0, 300)))))
        if draw(st.integers(0, 14)) == 0:
            events.append(ev("CaseWithdrawn", {"case_id": f"c{i}", "hospital_id": hid, "reason": "撤回"},
                             recorded_at=stamp(day + draw(st.integers(0, 300))), source=f"his:{hid}"))
        for _ in range(draw(st.integers(0, 2))):
            kind = draw(st.sampled_from(["upheld", "violation", "special_review_approved", "incentive_approved"]))
            fields = draw(st.sampled_from(VIOLATIONS)) if kind == "violation" else {}
            if kind == "special_review_approved":
                fields = {"unreasonable_cost": "50"}
            events.append(verdict(f"c{i}", kind, recorded_at=stamp(draw(st.integers(0, 500))), **fields))
    for hid in draw(st.lists(st.sampled_from(HOSPITALS), max_size=4)):
        events.append(prepayment(hid, "1000", paid_on=stamp(draw(st.integers(0, 360)))[:10]))
    return events


def outcome(events: list[Any], known_at: datetime) -> Any:
    py = settle(events, POOL, 2020, known_at)
    if sum(c.settled - c.deducted for c in py.cases.values()) <= 0:
        return ("no points", sorted((cid, c.settled, c.deducted) for cid, c in py.cases.items()))
    return clearing(py).as_json()


FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(events=ledgers(), order=st.randoms(use_true_random=False), moment=st.sampled_from(MOMENTS))
def test_arrival_order_does_not_change_the_clearing(events: list[Any], order: Any, moment: datetime) -> None:
    shuffled = list(events)
    order.shuffle(shuffled)
    assert outcome(shuffled, moment) == outcome(events, moment)


@FAST
@given(events=ledgers(), again=st.lists(st.integers(min_value=0), max_size=30), moment=st.sampled_from(MOMENTS))
def test_duplicate_delivery_does_not_change_the_clearing(events: list[Any], again: list[int], moment: datetime) -> None:
    doubled = events + [events[i % len(events)] for i in again]
    assert outcome(doubled, moment) == outcome(events, moment)


@FAST
@given(events=ledgers(), moment=st.sampled_from(MOMENTS[:-1]))
def test_clearing_at_t_depends_only_on_events_recorded_by_t(events: list[Any], moment: datetime) -> None:
    before = [e for e in events if e.recorded_at <= moment]
    assert outcome(events, moment) == outcome(before, moment)


@FAST
@given(events=ledgers())
def test_settled_points_never_go_below_zero_and_deductions_never_negative(events: list[Any]) -> None:
    py = settle(events, POOL, 2020, MOMENTS[-1])
    assert all(c.settled >= 0 and c.deducted >= 0 for c in py.cases.values())


@FAST
@given(events=ledgers(), moment=st.sampled_from(MOMENTS))
def test_balance_at_year_end_without_clearing_equals_the_clearing_line(events: list[Any], moment: datetime) -> None:
    # RULES.md 6 at D = 31 December: the window is the whole year and the budget is whole,
    # so the provisional balance is the clearing's own line.
    py = settle(events, POOL, 2020, moment)
    if sum(c.settled - c.deducted for c in py.cases.values()) <= 0:
        return
    from datetime import date

    c = clearing(py)
    for line in c.hospitals:
        b = balance(py, line.hospital_id, date(2020, 12, 31))
        assert b.point_value == c.point_value
        assert b.line.as_json() == line.as_json()
