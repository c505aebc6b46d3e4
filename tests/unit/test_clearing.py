"""RULES.md 5 and 6: year-end clearing and balances, worked by hand."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from ledger.clearing import ClearingError, balance, cap_dates, clearing, incentive_cap, point_value, settle
from ledger.events import ClearingCompleted
from tests.unit.rules_world import (
    NOW,
    POOL,
    at,
    base_policies,
    budget,
    case,
    ev,
    hospitals,
    CASE_RULES,
    policy,
    prepayment,
    verdict,
)


def world(*, inside: bool = True) -> list[Any]:
    """H1 (3A): a B1 case with r = 2.5 -> 300 points, personal 6,000, prepaid 20,000.
    H2: a U1 (unstable) case of 10,000 -> 100 points, personal 1,000, prepaid 5,000. B = 36,000.
    """
    return [
        *base_policies(inside=inside),
        *hospitals(),
        case("c1", "H1", "B1", "50000", personal="6000", discharge="2020-02-10"),
        case("c2", "H2", "U1", "10000", personal="1000", discharge="2020-08-10"),
        budget("36000"),
        prepayment("H1", "20000"),
        prepayment("H2", "5000", paid_on="2020-09-30"),
        prepayment("H2", "999", paid_on="2021-01-05"),  # next year's: not counted
    ]


def line(c: Any, hid: str) -> Any:
    return next(h for h in c.hospitals if h.hospital_id == hid)


def test_point_value_includes_personal_payments_when_the_rules_say_so() -> None:
    # seed 004 / RULES.md 5: PV = (36,000 + 7,000) / 400 = 107.5
    c = clearing(settle(world(), POOL, 2020, NOW))
    assert (c.total_points, c.point_value) == (Decimal("400.0000"), Decimal("107.500000"))
    # fund_due = net x PV - personal: H1 300 x 107.5 - 6,000 = 26,250; clearing 26,250 - 20,000
    h1, h2 = line(c, "H1"), line(c, "H2")
    assert (h1.fund_due, h1.prepaid, h1.clearing_amount) == (Decimal("26250.00"), Decimal("20000.00"), Decimal("6250.00"))
    # H2 100 x 107.5 - 1,000 = 9,750; clearing 9,750 - 5,000 = 4,750
    assert (h2.fund_due, h2.clearing_amount) == (Decimal("9750.00"), Decimal("4750.00"))
    # the fund pays out exactly the budget
    assert sum(h.fund_due for h in c.hospitals) == Decimal("36000.00")


def test_point_value_without_personal_payments_is_budget_over_points() -> None:
    c = clearing(settle(world(inside=False), POOL, 2020, NOW))
    assert c.point_value == Decimal("90.000000")
    assert (line(c, "H1").fund_due, line(c, "H2").fund_due) == (Decimal("27000.00"), Decimal("9000.00"))


def test_deductions_reduce_net_points_and_raise_everyone_elses_point_value() -> None:
    # upcoding V = 50 on c1: settled 250, deducted 200 -> net 50; TP = 150
    # PV = 43,000 / 150 = 286.666667; H2: 100 x 286.666667 - 1,000 = 27,666.67
    events = [*world(), verdict("c1", "violation", violation_type="upcoding", violating_points="50")]
    c = clearing(settle(events, POOL, 2020, NOW))
    h1 = line(c, "H1")
    assert (h1.settled_points, h1.deducted_points, h1.net_points) == (Decimal("250.0000"), Decimal("200.0000"), Decimal("50.0000"))
    assert c.point_value == Decimal("286.666667")
    assert line(c, "H2").fund_due == Decimal("27666.67")


def test_a_hospital_can_owe_money_back() -> None:
    # bed blocking: c1 settles 0 and deducts 1 x 300 -> H1 net -300. H2 gets a second U1 case
    # of 50,000 (500 points), so H2 has 600.
    events = [
        *world(),
        case("c3", "H2", "U1", "50000", personal="0"),
        verdict("c1", "violation", violation_type="bed_blocking"),
    ]
    c = clearing(settle(events, POOL, 2020, NOW))
    h1 = line(c, "H1")
    # TP = -300 + 600 = 300; PV = (36,000 + 7,000) / 300 = 143.333333
    assert (h1.net_points, c.total_points, c.point_value) == (Decimal("-300.0000"), Decimal("300.0000"), Decimal("143.333333"))
    # H1: -300 x 143.333333 - 6,000 = -48,999.9999 -> -49,000.00; minus prepaid 20,000
    assert (h1.fund_due, h1.clearing_amount) == (Decimal("-49000.00"), Decimal("-69000.00"))


def test_withdrawn_cases_earn_nothing_and_resubmission_restores_them() -> None:
    gone = ev("CaseWithdrawn", {"case_id": "c1", "hospital_id": "H1", "reason": "重复上传"},
              recorded_at="2020-07-01T00:00:00+08:00", source="his:H1")
    c = clearing(settle([*world(), gone], POOL, 2020, NOW))
    assert line(c, "H1").net_points == Decimal("0")
    again = case("c1", "H1", "B1", "20000", revision=2, recorded_at="2020-08-01T00:00:00+08:00")
    c = clearing(settle([*world(), gone, again], POOL, 2020, NOW))
    assert line(c, "H1").net_points == Decimal("200.0000")


def test_higher_revision_replaces_the_case_whatever_the_arrival_order() -> None:
    r2 = case("c1", "H1", "B1", "20000", revision=2, recorded_at="2020-06-25T00:00:00+08:00")
    events = world()
    assert line(clearing(settle([r2, *events], POOL, 2020, NOW)), "H1").net_points == Decimal("200.0000")
    assert line(clearing(settle([*events, r2], POOL, 2020, NOW)), "H1").net_points == Decimal("200.0000")


def test_latest_budget_recorded_by_known_at_is_used() -> None:
    later = budget("43000", recorded_at="2021-02-01T00:00:00+08:00")
    assert clearing(settle([*world(), later], POOL, 2020, at("2021-01-31T00:00:00+08:00"))).budget == Decimal("36000")
    assert clearing(settle([*world(), later], POOL, 2020, NOW)).point_value == Decimal("125.000000")  # 50,000 / 400


def test_clearing_without_a_budget_is_refused() -> None:
    events = [e for e in world() if e.event_type != "BudgetSet"]
    with pytest.raises(ClearingError, match="no BudgetSet"):
        clearing(settle(events, POOL, 2020, NOW))


def test_point_value_needs_positive_points() -> None:
    with pytest.raises(ClearingError):
        point_value(Decimal(1), Decimal(0), Decimal(0), True)


def test_provisional_balance_pro_rates_the_budget_over_the_window() -> None:
    # RULES.md 6: as of 2020-03-31 (91 days of leap-year 2020's 366). Only c1 is in the
    # window: B_window = 36,600 x 91 / 366 = 9,100; PV = (9,100 + 6,000) / 300 = 50.333333
    events = [e for e in world() if e.event_type != "BudgetSet"] + [budget("36600")]
    py = settle(events, POOL, 2020, NOW)
    b = balance(py, "H1", date(2020, 3, 31))
    assert (b.point_value_kind, b.budget_in_window, b.point_value) == ("provisional", Decimal("9100.00"), Decimal("50.333333"))
    # fund due 300 x 50.333333 - 6,000 = 9,099.9999 -> 9,100.00; prepaid by 31 March 20,000
    assert (b.line.fund_due, b.line.prepaid, b.line.clearing_amount) == (Decimal("9100.00"), Decimal("20000.00"), Decimal("-10900.00"))


def test_balance_uses_the_final_point_value_once_a_clearing_is_recorded() -> None:
    py = settle(world(), POOL, 2020, NOW)
    done = clearing(py).completed()
    recorded = ev("ClearingCompleted", done.model_dump(mode="json"), recorded_at="2021-03-01T00:00:00+08:00", source="system")
    py = settle([*world(), recorded], POOL, 2020, NOW)
    b = balance(py, "H2", date(2020, 12, 31))
    assert (b.point_value_kind, b.point_value) == ("final", Decimal("107.500000"))
    assert b.line.clearing_amount == Decimal("4750.00")
    # known before the clearing was recorded: provisional
    early = settle([*world(), recorded], POOL, 2020, at("2021-02-28T00:00:00+08:00"))
    assert balance(early, "H2", date(2020, 12, 31)).point_value_kind == "provisional"
    assert isinstance(done, ClearingCompleted)


def test_balance_of_an_unknown_hospital_is_refused() -> None:
    with pytest.raises(ClearingError, match="not registered"):
        balance(settle(world(), POOL, 2020, NOW), "H9", date(2020, 6, 30))


def test_pools_never_mix() -> None:
    other = [ev("HospitalRegistered", {"hospital_id": "X1", "name": "外市医院", "pool": "q", "grade": "3A"}),
             case("x1", "X1", "B1", "20000")]
    c = clearing(settle([*world(), *other], POOL, 2020, NOW))
    assert {h.hospital_id for h in c.hospitals} == {"H1", "H2", "H3", "H4", "H5"}
    assert c.total_points == Decimal("400.0000")


def test_cap_dates_name_one_discharge_per_case_rules_version_and_the_caps_follow_them() -> None:
    """seed 001 二(二): a case's cap reads its discharge date only through the case rules in
    force. 2020 at 6 per mille (3A), 2021 at 10: of 1,000 live cases, caps 6 and 10."""
    from ledger.policy import PolicyBook

    rules_2021 = {**CASE_RULES, "incentive_cap_per_mille": {"3": "10", "2": "4", "1": "4"}}
    events = [
        policy("case_rules", CASE_RULES, effective_to="2020-12-31"),
        policy("case_rules", rules_2021, version="2", effective_from="2021-01-01"),
        *hospitals(),
    ]
    book = PolicyBook.from_events(POOL, events, NOW)
    h1 = next(e.payload for e in events if e.event_type == "HospitalRegistered" and e.payload.hospital_id == "H1")
    discharges = [date(2020, 3, 1), date(2020, 11, 30), date(2021, 2, 1), date(2020, 5, 5), date(2021, 7, 1)]
    assert cap_dates(book, discharges) == [date(2020, 3, 1), date(2021, 2, 1)]
    assert [incentive_cap(1000, h1, book, d) for d in cap_dates(book, discharges)] == [6, 10]
    assert {incentive_cap(1000, h1, book, d) for d in discharges[:2] + discharges[3:4]} == {6}
    assert cap_dates(book, []) == []
    with pytest.raises(LookupError):  # PolicyMissing: no case rules in force in 2019
        cap_dates(book, [date(2019, 12, 31)])
