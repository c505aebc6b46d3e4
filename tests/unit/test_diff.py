"""The diff of two clearings (ledger/diff.py), worked by hand, and its sums as properties."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ledger.clearing import ClearingError, clearing, settle
from ledger.diff import Side, case_table, diff_clearings, hospital_table, recorded_clearing, roundings
from tests.unit.rules_world import NOW, POOL, at, base_policies, budget, case, ev, hospitals, prepayment, verdict

BEFORE = at("2021-05-10T00:00:00+08:00")  # the catalogue (recorded 2021-05-11) is not known yet
AFTER = at("2021-05-12T00:00:00+08:00")


def world() -> list[Any]:
    """H1 (3A): a B1 case of 20,000 with catalogue code 04.0200x005: 200 x 1.00 before the catalogue,
    200 x 1.6 = 320 after. H2 (2A, own 1.05): an A1 case of 10,000: 105. B = 30,500."""
    return [
        *base_policies(),
        *hospitals(),
        case("c1", "H1", "B1", "20000", procedures=["04.0200x005"]),
        case("c2", "H2", "A1", "10000"),
        budget("30500"),
    ]


def side(events: list[Any], known_at: datetime, kind: str = "moment") -> Side:
    py = settle(events, POOL, 2020, known_at)
    return Side(kind, f"as known at {known_at.isoformat()}", clearing(py), py)


def test_the_catalogue_moves_money_from_everyone_else_to_the_tertiary_hospital() -> None:
    events = world()
    d = diff_clearings(side(events, BEFORE), side(events, AFTER), cases=True)
    # Before: TP = 200 + 105 = 305, PV = 30,500 / 305 = 100: H1 20,000.00, H2 10,500.00.
    # After: TP = 425, PV = 30,500 / 425 = 71.7647058... -> 71.764706;
    # H1 320 x 71.764706 = 22,964.70592 -> 22,964.71; H2 105 x 71.764706 = 7,535.29413 -> 7,535.29.
    pool = d.pool_figures
    assert (pool["total_points"].before, pool["total_points"].after) == (Decimal("305.0000"), Decimal("425.0000"))
    assert (pool["point_value"].before, pool["point_value"].after) == (Decimal("100.000000"), Decimal("71.764706"))
    assert pool["budget"].change == 0
    h1, h2 = d.hospitals  # both moved 2,964.71; H1 first: its net points moved too
    assert h1.hospital_id == "H1" and h2.hospital_id == "H2"
    assert (h1.figures["net_points"].change, h1.figures["fund_due"].after) == (Decimal("120.0000"), Decimal("22964.71"))
    assert (h1.money_change, h2.money_change) == (Decimal("2964.71"), Decimal("-2964.71"))
    assert h2.figures["point_value"].change == Decimal("-28.235294")
    assert d.unchanged_hospitals == 3  # H3, H4, H5: registered, no cases, nothing due either side
    # Rounding after: PV leaves 30,500 - 425 x 71.764706 = -0.00005; the cents 30,500.00005 - 30,500.00 = 0.00005.
    assert (pool["rounding_point_value"].after, pool["rounding_cents"].after) == (Decimal("-0.000050"), Decimal("0.00005"))
    (c1,) = d.cases or []
    assert (c1.case_id, c1.points["net_points"].before, c1.points["net_points"].after) == ("c1", Decimal("200.0000"),
                                                                                          Decimal("320.0000"))
    steps = {s["step"]: s for s in c1.steps}
    assert list(steps) == ["policy_versions", "catalogue", "coefficient"]
    assert steps["catalogue"]["from"] == {"matched": False} and steps["catalogue"]["to"]["row"] == 1
    assert steps["catalogue"]["clause"].startswith("seed 000 三(三)")
    assert (steps["coefficient"]["from"]["value"], steps["coefficient"]["to"]["value"]) == ("1.00", "1.6")
    assert steps["coefficient"]["to"]["why"] == "high_tech_catalogue:3A"
    assert "high_tech_catalogue" in steps["policy_versions"]["to"] and "high_tech_catalogue" not in steps["policy_versions"]["from"]


def test_a_verdict_shows_as_the_step_that_made_the_difference() -> None:
    # An upcoding verdict (V = 5, k = 4) on c2 recorded 2021-06-01: c2 settles 105 - 5 = 100 and 20 is deducted.
    events = [*world(), verdict("c2", "violation", violation_type="upcoding", violating_points="5",
                                recorded_at="2021-06-01T00:00:00+08:00")]
    d = diff_clearings(side(events, AFTER), side(events, NOW), cases=True, hospital_id="H2")
    (c2,) = d.cases or []
    assert (c2.points["settled_points"].change, c2.points["deducted_points"].change) == (Decimal("-5.0000"), Decimal("20"))
    assert [s["step"] for s in c2.steps] == ["verdict", "penalty"]
    assert c2.steps[1]["clause"] and "第十八条" in c2.steps[1]["clause"]


def test_a_withdrawal_and_a_revision_show_as_case_steps() -> None:
    # c2 withdrawn on 2021-06-01 (105 -> 0); c1 revised to cost 50,000 (r = 2.5 > H = 2: high ratio,
    # 200 x 1.6 + 200 x (2.5 - 2) = 420) on the same day.
    later = "2021-06-01T00:00:00+08:00"
    events = [*world(), ev("CaseWithdrawn", {"case_id": "c2", "hospital_id": "H2", "reason": "entered in error"},
                           recorded_at=later, source="his:H2"),
              case("c1", "H1", "B1", "50000", revision=2, procedures=["04.0200x005"], recorded_at=later)]
    d = diff_clearings(side(events, AFTER), side(events, NOW), cases=True)
    by_id = {c.case_id: c for c in d.cases or []}
    assert by_id["c2"].points["net_points"].after == 0 and [s["step"] for s in by_id["c2"].steps] == ["withdrawn"]
    assert by_id["c2"].steps[0]["to"]["reason"] == "entered in error" and by_id["c2"].steps[0]["from"] is False
    c1 = by_id["c1"]
    assert (c1.points["net_points"].before, c1.points["net_points"].after) == (Decimal("320.0000"), Decimal("420.0000"))
    assert [s["step"] for s in c1.steps] == ["case", "case_type"]
    assert (c1.steps[1]["from"]["case_type"], c1.steps[1]["to"]["case_type"]) == ("normal", "high_ratio")
    assert c1.steps[1]["clause"].startswith("RULES.md 3 case type 3")


def test_a_clearing_diffed_with_itself_is_empty() -> None:
    events = world()
    d = diff_clearings(side(events, AFTER), side(events, AFTER), cases=True)
    assert d.empty and d.hospitals == [] and d.cases == [] and d.unchanged_hospitals == 5
    assert all(c.change == 0 for c in d.pool_figures.values())


def test_a_recorded_clearing_diffs_empty_with_its_own_moment() -> None:
    c = clearing(settle([*world(), prepayment("H1", "5000")], POOL, 2020, AFTER))
    recorded = Side("clearing", "recorded", recorded_clearing(c.completed(), c.personal_paid_inside))
    assert diff_clearings(recorded, Side("moment", "m", c)).empty


def test_the_spreadsheet_tables_have_chinese_headers() -> None:
    events = world()
    d = diff_clearings(side(events, BEFORE), side(events, AFTER), cases=True)
    t = hospital_table(d)
    assert t.headers[:4] == ["医院", "净点数(前)", "净点数(后)", "净点数变化"] and "清算金额变化" in t.headers
    assert t.rows[0][:4] == ["H1", "200.0000", "320.0000", "120.0000"]
    assert case_table(d).rows[0][:5] == ["c1", "H1", "200.0000", "320.0000", "120.0000"]


# --------------------------------------------------------------------------- sums, as properties

money = st.decimals(min_value="100", max_value="90000", places=2, allow_nan=False, allow_infinity=False)
cases = st.lists(
    st.tuples(st.sampled_from(["H1", "H2", "H3", "H4", "H5"]), st.sampled_from(["A1", "B1", "C1", "U1"]), money,
              st.decimals(min_value="0", max_value="1", places=2), st.booleans()),
    min_size=1, max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(cases=cases, b1=money.map(lambda m: m * 40), b2=money.map(lambda m: m * 40), inside=st.booleans(),
       violations=st.lists(st.integers(min_value=0, max_value=24), max_size=5))
def test_hospital_changes_add_up_to_the_pool_and_the_budget_to_the_cent(
    cases: list[Any], b1: Decimal, b2: Decimal, inside: bool, violations: list[int]
) -> None:
    """Sum of net-point changes = change in TP, exactly; sum of fund-due changes = change in budget
    less the changes of the two roundings (ledger/diff.py), each within its bound."""
    events = [*base_policies(inside=inside), *hospitals(), budget(str(b1))]
    for i, (hid, drg, cost, share, catalogue) in enumerate(cases):
        events.append(case(f"c{i}", hid, drg, str(cost), personal=str((cost * share).quantize(Decimal("0.01"))),
                           procedures=["04.0200x005"] if catalogue else []))
    later = [budget(str(b2), recorded_at="2021-06-01T00:00:00+08:00")]
    later += [verdict(f"c{i}", "violation", violation_type="split_hospitalisation", violating_points="3",
                      recorded_at="2021-06-01T00:00:00+08:00") for i in violations if i < len(cases)]
    try:
        a, b = side(events + later, BEFORE), side(events + later, NOW)
    except ClearingError:  # deductions left no points: no point value (RULES.md 5)
        assume(False)
    d = diff_clearings(a, b, cases=True)
    pool = d.pool_figures
    assert sum((h.figures["net_points"].change for h in d.hospitals), Decimal(0)) == pool["total_points"].change
    assert sum((c.points["net_points"].change for c in d.cases or []), Decimal(0)) == pool["total_points"].change
    fund = sum((h.figures["fund_due"].change for h in d.hospitals), Decimal(0))
    assert fund == pool["fund_due_total"].change
    assert fund + pool["rounding_point_value"].change + pool["rounding_cents"].change == pool["budget"].change
    for s in (a, b):
        r = roundings(s.clearing)
        assert abs(r.point_value) <= s.clearing.total_points * Decimal("0.0000005")
        assert abs(r.cents) <= Decimal("0.005") * len(s.clearing.hospitals)
        assert r.fund_due_total + r.point_value + r.cents == s.clearing.budget
    order = [(-abs(h.money_change), -abs(h.figures["net_points"].change), h.hospital_id) for h in d.hospitals]
    assert order == sorted(order)
