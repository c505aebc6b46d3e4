"""RULES.md 3: case points, worked by hand on the round-number pool of rules_world."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from ledger.catalogue import normalise_code
from ledger.clearing import settle
from ledger.points import CaseType, round_points
from tests.unit.rules_world import (
    CASE_RULES,
    NOW,
    POOL,
    at,
    base_policies,
    case,
    coefficient_change,
    ev,
    hospitals,
    policy,
    verdict,
)


def settled(*events: Any, known_at: Any = NOW, catalogue: bool = True) -> Any:
    return settle([*base_policies(catalogue=catalogue), *hospitals(), *events], POOL, 2020, known_at)


def points_of(c: Any, *extra: Any, known_at: Any = NOW) -> tuple[Decimal, CaseType]:
    py = settled(c, *extra, known_at=known_at)
    sc = py.cases[c.payload.case_id]
    return sc.priced.points, sc.priced.case_type


def test_normal_case_is_base_points_times_grade_coefficient() -> None:
    # RULES.md 3 type 5: A1 at 2B -> 100 x 0.80; at 3A -> 100 x 1.00
    assert points_of(case("c", "H4", "A1", "10000")) == (Decimal("80.0000"), CaseType.NORMAL)
    assert points_of(case("c", "H1", "A1", "10000")) == (Decimal("100.0000"), CaseType.NORMAL)


def test_hospital_own_coefficient_wins_over_its_grade() -> None:
    # RULES.md 3 step 5 / EVENTS.md: H2 is 2A (0.85) but has its own 1.05 -> 100 x 1.05
    assert points_of(case("c", "H2", "A1", "10000"))[0] == Decimal("105.0000")


def test_high_ratio_pays_the_excess_over_the_threshold() -> None:
    # B1: BP 200, AC 20,000, H = 2 (100 < BP <= 300). cost 50,000 -> r = 2.5
    # P = 200 x 1.00 + 200 x (2.5 - 2) = 300
    assert points_of(case("c", "H1", "B1", "50000")) == (Decimal("300.0000"), CaseType.HIGH_RATIO)


def test_high_ratio_threshold_steps_by_base_points() -> None:
    # A1 (BP 100): H = 3, so r = 2.5 is normal; C1 (BP 400): H = 1.5, r = 1.6 is high:
    # 400 x 1 + 400 x (1.6 - 1.5) = 440
    assert points_of(case("c", "H1", "A1", "25000")) == (Decimal("100.0000"), CaseType.NORMAL)
    assert points_of(case("c", "H1", "C1", "64000")) == (Decimal("440.0000"), CaseType.HIGH_RATIO)


def test_ratio_exactly_at_threshold_is_not_high() -> None:
    # "costs above H times": r = 2 exactly for B1 is normal
    assert points_of(case("c", "H1", "B1", "40000")) == (Decimal("200.0000"), CaseType.NORMAL)


def test_low_ratio_pays_the_smaller_of_cost_points_and_normal_points() -> None:
    # 2B (c 0.80), A1, cost 3,000 -> r = 0.3 < 0.4: min(100 x 0.3, 100 x 0.8) = 30
    assert points_of(case("c", "H4", "A1", "3000")) == (Decimal("30.0000"), CaseType.LOW_RATIO)


def test_level_one_hospitals_use_the_lower_low_ratio_threshold() -> None:
    # seed 001 三: level 1 low ratio is 0.3. r = 0.35 is normal there (100 x 0.75 = 75) ...
    assert points_of(case("c", "H5", "A1", "3500")) == (Decimal("75.0000"), CaseType.NORMAL)
    # ... but low at level 2 (min(35, 80) = 35)
    assert points_of(case("c", "H4", "A1", "3500")) == (Decimal("35.0000"), CaseType.LOW_RATIO)
    # and r = 0.2 is low at level 1: min(20, 75) = 20
    assert points_of(case("c", "H5", "A1", "2000")) == (Decimal("20.0000"), CaseType.LOW_RATIO)


def test_unstable_group_and_ungrouped_cases_are_paid_by_cost() -> None:
    # RULES.md 3 type 2: cost / AC_all x 100 -> 7,500 / 10,000 x 100 = 75; 12,345.67 -> 123.4567
    assert points_of(case("c", "H1", "U1", "7500")) == (Decimal("75.0000"), CaseType.UNSTABLE)
    assert points_of(case("c", "H1", "0000", "12345.67")) == (Decimal("123.4567"), CaseType.UNSTABLE)


def test_case_points_round_half_up_to_four_places() -> None:
    # RULES.md preamble, ROUND_HALF_UP: 12.34565 / 10,000 x 100 = 0.1234565 -> 0.1235. A case's
    # cost has at most 2 decimal places (EVENTS.md "Limits on input"), which this pool's round
    # AC_all of 10,000 divides exactly, so the rounding is shown on the helper every rule calls.
    assert round_points(Decimal("12.34565") / 10_000 * 100) == Decimal("0.1235")
    assert round_points(Decimal("0.12344999")) == Decimal("0.1234")
    assert points_of(case("c", "H1", "U1", "12.35"))[0] == Decimal("0.1235")


def test_special_review_pays_cost_less_unreasonable_cost() -> None:
    # RULES.md 3 type 1: (30,000 - 5,000) / 10,000 x 100 = 250, whatever the group
    c = case("c", "H1", "B1", "30000")
    v = verdict("c", "special_review_approved", unreasonable_cost="5000")
    assert points_of(c, v) == (Decimal("250.0000"), CaseType.SPECIAL_REVIEW)


def test_catalogue_raises_the_coefficient_for_3a_and_3b_only() -> None:
    # seed 000 三(三): B1 at 3A -> 200 x 1.6 = 320; 3B -> 200 x 1.47 = 294; 2B keeps 0.80 -> 160
    proc = ["04.0200X005"]  # the seed prints both x and X
    assert points_of(case("c", "H1", "B1", "20000", procedures=proc))[0] == Decimal("320.0000")
    assert points_of(case("c", "H3", "B1", "20000", procedures=proc))[0] == Decimal("294.0000")
    assert points_of(case("c", "H4", "B1", "20000", procedures=proc))[0] == Decimal("160.0000")


def test_catalogue_needs_the_same_drg_code() -> None:
    assert points_of(case("c", "H1", "C1", "40000", procedures=["04.0200x005"]))[0] == Decimal("400.0000")


def test_catalogue_codes_match_after_normalising_a_dropped_chapter_zero() -> None:
    # catalogue row 37 prints 6.9501; the HIS sends 06.9501 -> 3B: 100 x 1.47 = 147
    assert normalise_code(" 6.9501 ") == "06.9501" and normalise_code("04.0200x005") == "04.0200X005"
    assert points_of(case("c", "H3", "A1", "10000", procedures=["06.9501"]))[0] == Decimal("147.0000")


def test_combination_rows_need_one_code_of_each_list() -> None:
    # row 48: 74.0x00 alone does not match (400 x 1.00); with 54.5904 it does (400 x 1.3 = 520)
    assert points_of(case("c", "H1", "C1", "40000", procedures=["74.0x00"]))[0] == Decimal("400.0000")
    assert points_of(case("c", "H1", "C1", "40000", procedures=["74.0X00", "54.5904"]))[0] == Decimal("520.0000")


def test_coefficient_precedence_most_specific_first() -> None:
    proc = ["04.0200x005"]
    c = case("c", "H1", "B1", "20000", procedures=proc)
    # 1. hospital + DRG change beats the catalogue: 200 x 1.2
    assert points_of(c, coefficient_change("1.2", hospital_id="H1", drg_code="B1"))[0] == Decimal("240.0000")
    # 3. DRG + grade change loses to the catalogue (320) ...
    assert points_of(c, coefficient_change("1.1", drg_code="B1", grade="3A"))[0] == Decimal("320.0000")
    # ... but applies without a catalogue match: 200 x 1.1 = 220, and beats a hospital change (4.)
    plain = case("d", "H1", "B1", "20000")
    both = (coefficient_change("1.1", drg_code="B1", grade="3A"), coefficient_change("0.95", hospital_id="H1"))
    assert points_of(plain, *both)[0] == Decimal("220.0000")
    # 4. hospital change beats the coefficients component: 100 x 0.95
    assert points_of(case("e", "H1", "A1", "10000"), coefficient_change("0.95", hospital_id="H1"))[0] == Decimal("95.0000")


def test_cases_of_one_hospital_and_day_in_one_book_each_get_their_own_coefficient() -> None:
    # RULES.md 3 steps 3-5, resolved once per hospital and day in a book (points.py `_c0`):
    # a DRG + grade change (B1 at 3A: 1.1) applies to H1's B1 cases only, H1's A1 case of the
    # same day keeps the grade's 1.00 and H1's own change (0.95) where it is in force.
    change = coefficient_change("1.1", drg_code="B1", grade="3A")
    cases = [case("a", "H1", "A1", "10000"), case("b", "H1", "B1", "20000"), case("c", "H1", "A1", "10000"),
             case("d", "H1", "B1", "20000"), case("e", "H3", "B1", "20000")]
    py = settled(*cases, change, catalogue=False)
    got = {cid: (sc.priced.points, sc.priced.coefficient.source) for cid, sc in py.cases.items()}
    assert got == {"a": (Decimal("100.0000"), "coefficients:grade 3A"),
                   "b": (Decimal("220.0000"), "coefficient_change:drg+grade"),
                   "c": (Decimal("100.0000"), "coefficients:grade 3A"),
                   "d": (Decimal("220.0000"), "coefficient_change:drg+grade"),
                   "e": (Decimal("184.0000"), "coefficients:grade 3B")}  # B1 BP 200 x 0.92
    assert py.cases["a"].priced.coefficient.cite is not py.cases["c"].priced.coefficient.cite  # each its own
    hospital = settled(*cases, change, coefficient_change("0.95", hospital_id="H1"), catalogue=False)
    assert [hospital.cases[c].priced.points for c in "abcd"] == [Decimal("95.0000"), Decimal("220.0000"),
                                                                   Decimal("95.0000"), Decimal("220.0000")]


def test_coefficient_change_declared_in_january_applies_only_once_known() -> None:
    # seed 000 四: declared 2021-01-20 for 2020; asked on 2021-01-19 the old value applies
    change = coefficient_change("1.3", hospital_id="H1", drg_code="A1", recorded_at="2021-01-20T10:00:00+08:00")
    c = case("c", "H1", "A1", "10000")
    assert points_of(c, change, known_at=at("2021-01-19T23:59:59+08:00"))[0] == Decimal("100.0000")
    assert points_of(c, change, known_at=at("2021-01-20T10:00:00+08:00"))[0] == Decimal("130.0000")


def test_back_dated_catalogue_changes_2020_only_for_questions_asked_after_it_was_issued() -> None:
    # RULES.md 2: recorded 2021-05-11, effective 2020-01-01
    c = case("c", "H1", "B1", "20000", procedures=["04.0200x005"])
    assert points_of(c, known_at=at("2021-05-10T23:59:59+08:00"))[0] == Decimal("200.0000")
    assert points_of(c, known_at=at("2021-05-11T00:00:00+08:00"))[0] == Decimal("320.0000")


def test_bilateral_cases_use_one_and_a_half_base_points() -> None:
    # seed 001 二(四): 1.5 x 100 = 150 base points; 2B: 150 x 0.80 = 120; 3A: 150 x 1.00
    assert points_of(case("c", "H4", "A1", "10000", bilateral=True))[0] == Decimal("120.0000")
    assert points_of(case("c", "H1", "A1", "10000", bilateral=True))[0] == Decimal("150.0000")
    # r and H still use the group's own figures: r = 3.5 > 3 -> 150 x 1 + 150 x 0.5 = 225
    assert points_of(case("c", "H1", "A1", "35000", bilateral=True)) == (Decimal("225.0000"), CaseType.HIGH_RATIO)


def test_multi_site_adds_half_the_secondary_groups_base_points_without_coefficient() -> None:
    # seed 001 二(四): 200 x 0.92 (3B) + 0.5 x 100 = 234
    assert points_of(case("c", "H3", "B1", "20000", secondary_drg_code="A1"))[0] == Decimal("234.0000")


def test_the_formula_is_written_with_the_figures_each_case_type_used() -> None:
    # What explain shows (written only when read): B1 at 3A, r = 2.5 > H 2 -> 200 x 1 + 200 x 0.5;
    # A1 at 2B, r = 0.3 < 0.4 -> min(30, 80); B1 at 3B with secondary A1 -> 200 x 0.92 + 0.5 x 100;
    # bilateral A1 at 3A, r = 3.5 > 3 -> 150 x 1 + 150 x 0.5; ungrouped 12,345 / AC_all 10,000 x 100.
    py = settled(case("a", "H1", "B1", "50000"), case("b", "H4", "A1", "3000"),
                 case("c", "H3", "B1", "20000", secondary_drg_code="A1"),
                 case("d", "H1", "A1", "35000", bilateral=True), case("e", "H1", "0000", "12345"))
    assert {k: py.cases[k].priced.formula for k in "abcde"} == {
        "a": "200 x 1.00 + 200 x (r 2.5000 - H 2) = 300.0000",
        "b": "min(100 x r 0.3000, 100 x 0.80) = 30.0000",
        "c": "200 x 0.92 + 0.5 x 100 (A1) = 234.0000",
        "d": "150.0 x 1.00 + 150.0 x (r 3.5000 - H 3) = 225.0000",
        "e": "12345 / 10000 x 100 = 123.4500",
    }


def test_bilateral_and_multi_site_do_not_apply_when_the_pool_has_no_such_rule() -> None:
    rules = {**CASE_RULES, "bilateral_factor": None, "multi_site_share": None}
    later = policy("case_rules", rules, version="2", recorded_at="2020-02-01T00:00:00+08:00")
    c = case("c", "H1", "B1", "20000", bilateral=True, secondary_drg_code="A1")
    assert points_of(c, later)[0] == Decimal("200.0000")


@pytest.mark.parametrize(
    ("violation", "fields", "settled_points", "deducted_points"),
    [
        # P = 300 (B1, r = 2.5 at 3A). seed 003 第十八条:
        ("upcoding", {"violating_points": "50"}, "250.0000", "200.0000"),  # (五) 4 x 50
        ("bed_blocking", {}, "0.0000", "300.0000"),  # (一) whole case, 1 x P
        ("split_hospitalisation", {"violating_points": "20"}, "280.0000", "40.0000"),  # (二) 2 x 20
        ("cost_shifting", {"violating_points": "30"}, "270.0000", "90.0000"),  # (三) 3 x 30
        ("insufficient_service", {"violating_points": "30"}, "270.0000", "90.0000"),  # (三) 3 x 30
        ("shirking_severe", {"violating_points": "400", "related_case_ids": ["c0"]}, "0.0000", "1200.0000"),  # (四)
        ("fraud", {}, "0.0000", "1500.0000"),  # (六) whole case, V = P, k = 5
        ("fraud", {"violating_points": "40", "multiplier": "3"}, "0.0000", "120.0000"),  # (六) 3 x 40
        ("fraud", {"violating_points": "40", "multiplier": "9"}, "0.0000", "200.0000"),  # capped at 5
        ("other", {"violating_points": "10", "multiplier": "3"}, "290.0000", "20.0000"),  # (七) at most 2
        ("other", {"violating_points": "10"}, "290.0000", "20.0000"),  # (七) 2 when absent
    ],
)
def test_violation_verdicts_settle_and_deduct_per_seed_003(
    violation: str, fields: dict[str, Any], settled_points: str, deducted_points: str
) -> None:
    c = case("c", "H1", "B1", "50000")
    v = verdict("c", "violation", violation_type=violation, **fields)
    sc = settled(c, v).cases["c"]
    assert sc.priced.points == Decimal("300.0000")
    assert (sc.settled, sc.deducted) == (Decimal(settled_points), Decimal(deducted_points))


def test_a_later_verdict_supersedes_the_earlier_one() -> None:
    c = case("c", "H1", "B1", "50000")
    first = verdict("c", "violation", violation_type="upcoding", violating_points="50", recorded_at="2020-09-01T00:00:00+08:00")
    second = verdict("c", "upheld", recorded_at="2020-10-01T00:00:00+08:00")
    sc = settled(c, second, first).cases["c"]
    assert (sc.settled, sc.deducted) == (Decimal("300.0000"), Decimal("0"))
    sc = settled(c, second, first, known_at=at("2020-09-15T00:00:00+08:00")).cases["c"]
    assert (sc.settled, sc.deducted) == (Decimal("250.0000"), Decimal("200.0000"))


def test_incentive_approvals_beyond_the_cap_are_paid_as_ordinary_cases() -> None:
    # seed 001 二(二): 3A, 500 cases -> floor(500 x 6 / 1000) = 3 incentive cases; the 4th
    # approval (recorded last) is paid as an ordinary case.
    cases = [case(f"c{i}", "H1", "A1", "10000") for i in range(500)]
    approvals = [
        verdict(f"c{i}", "incentive_approved", unreasonable_cost="0", recorded_at=f"2020-09-0{i + 1}T00:00:00+08:00")
        for i in range(4)
    ]
    py = settled(*cases, *approvals)
    assert [py.cases[f"c{i}"].priced.case_type for i in range(4)] == [CaseType.INCENTIVE] * 3 + [CaseType.NORMAL]
    assert py.cases["c3"].incentive_over_cap
    # incentive points: 10,000 / 10,000 x 100 = 100 (same as normal here); make one expensive
    assert py.cases["c0"].priced.points == Decimal("100.0000")


def test_incentive_cap_rounds_down_and_withdrawn_cases_do_not_count() -> None:
    # level 2: 4‰ of 499 live cases = 1.996 -> 1
    cases = [case(f"c{i}", "H4", "A1", "10000") for i in range(501)]
    gone = [ev("CaseWithdrawn", {"case_id": f"c{i}", "hospital_id": "H4", "reason": "错报"},
               recorded_at="2020-07-01T00:00:00+08:00", source="his:H4") for i in (499, 500)]
    approvals = [verdict(f"c{i}", "incentive_approved", recorded_at=f"2020-09-0{i + 1}T00:00:00+08:00") for i in range(2)]
    py = settled(*cases, *gone, *approvals)
    assert [py.cases[f"c{i}"].priced.case_type for i in range(2)] == [CaseType.INCENTIVE, CaseType.NORMAL]


def test_incentive_is_ordinary_where_the_pool_has_no_incentive_rule() -> None:
    rules = {**CASE_RULES, "incentive_cap_per_mille": None}
    later = policy("case_rules", rules, version="2", recorded_at="2020-02-01T00:00:00+08:00")
    c = case("c", "H1", "A1", "30000")
    assert points_of(c, later, verdict("c", "incentive_approved"))[1] == CaseType.NORMAL


def test_explain_says_why_an_approval_is_paid_as_ordinary() -> None:
    from ledger.explain import describe

    # No incentive rule in force: every approval is ordinary, and explain says so (no "cap of None").
    rules = {**CASE_RULES, "incentive_cap_per_mille": None}
    later = policy("case_rules", rules, version="2", recorded_at="2020-02-01T00:00:00+08:00")
    py = settled(case("c", "H1", "A1", "30000"), later, verdict("c", "incentive_approved"))
    (note,) = [n for n in describe(py, "c")["notes"] if "incentive" in n]
    assert note == "incentive approval paid as ordinary: no incentive cap is in force for the hospital's grade (seed 001 二(二))"
    # Level 2 with 4‰ of 1 case = 0.004 -> cap 0: the approval is beyond a cap of 0.
    py = settled(case("c", "H4", "A1", "10000"), verdict("c", "incentive_approved"))
    (note,) = [n for n in describe(py, "c")["notes"] if "incentive" in n]
    assert note.startswith("incentive approval beyond the hospital's yearly cap of 0: paid as ordinary")
