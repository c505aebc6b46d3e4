"""RULES.md 7, the policy workbench: every formula worked by hand.

The world is `rules_world`'s pool `p`: groups A1 (BP 100), B1 (BP 200), C1 (BP 400); grades
3A 1.00, 3B 0.92, 2A 0.85, 2B 0.80, 1 0.75; H1 3A, H2 2A (own 1.05), H3 3B, H4 2B, H5 1.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.events import parse_event
from ledger.workbench import (
    DeriveParameters,
    Derivation,
    HospitalKind,
    MiddleTier,
    Tier,
    WorkbenchError,
    derive,
    draft_events,
    draft_lines,
    read_year,
    tier_of,
    uplifted,
)
from tests.unit.rules_world import (
    COEFFICIENTS,
    NOW,
    POOL,
    at,
    base_policies,
    budget,
    case,
    ev,
    hospital,
    hospitals,
    policy,
    verdict,
)

D = Decimal
P = DeriveParameters()


def derived(events: list[Any], years: tuple[int, ...] = (2020,), known_at: datetime = NOW,
            params: DeriveParameters | None = None, for_year: int | None = None) -> Derivation:
    end = date(max(years), 12, 31)
    window = [read_year(events, POOL, y, known_at, end) for y in years]
    return derive(window, POOL, known_at, for_year or max(years) + 1, params)


def costs(drg: str, hid: str, *amounts: str | int, prefix: str = "", discharge: str = "2020-06-15") -> list[Any]:
    return [case(f"{prefix or drg}-{hid}-{i}", hid, drg, str(a), discharge=discharge) for i, a in enumerate(amounts)]


def group(d: Derivation, code: str) -> Any:
    return next(g for g in d.groups if g.drg_code == code)


def hosp(d: Derivation, hid: str) -> Any:
    return next(h for h in d.hospitals if h.hospital_id == hid)


# --------------------------------------------------------------------------- groups


def test_base_points_are_group_mean_over_overall_mean_times_100() -> None:
    # A1: 1,000 and 3,000 -> AC 2,000; B1: 4,000. AC_all = 8,000 / 3 = 2,666.67.
    # BP_A1 = 2,000 / 2,666.666.. x 100 = 75.00; BP_B1 = 4,000 / 2,666.666.. x 100 = 150.00
    d = derived([*base_policies(catalogue=False), *hospitals(), *costs("A1", "H2", 1000, 3000), *costs("B1", "H2", 4000)])
    assert d.overall_average_cost == D("2666.67")
    a1, b1 = group(d, "A1"), group(d, "B1")
    assert (a1.cases, a1.mean_cost, a1.base_points) == (2, D("2000.00"), D("75.00"))
    assert (b1.cases, b1.mean_cost, b1.base_points) == (1, D("4000.00"), D("150.00"))
    # population CV of 1,000 and 3,000: sd 1,000 / mean 2,000 = 0.5 (a sample sd would give 0.7071)
    assert a1.cv == D("0.500000")
    # the table in force before is shown next to it; groups with no case in the window are dropped
    assert a1.before is not None and a1.before.base_points == D("100")
    assert d.dropped_groups == ["C1", "U1"]


def test_base_points_round_half_up_to_two_places() -> None:
    # A1: 1,000; B1: 1,000 and 1,001 -> AC_all = 3,001 / 3 = 1,000.333..; BP_A1 = 99.9667 -> 99.97;
    # BP_B1 = 1,000.5 / 1,000.333.. x 100 = 100.01666 -> 100.02
    d = derived([*base_policies(catalogue=False), *hospitals(), *costs("A1", "H2", 1000), *costs("B1", "H2", 1000, 1001)])
    assert (group(d, "A1").base_points, group(d, "B1").base_points) == (D("99.97"), D("100.02"))
    assert group(d, "B1").mean_cost == D("1000.50")


def test_five_cases_are_unstable_whatever_their_cv() -> None:
    # seed 001 一(二): 病例数>5例 — five identical costs (CV 0) are still too few
    d = derived([*base_policies(catalogue=False), *hospitals(), *costs("A1", "H2", *[1000] * 5)])
    a1 = group(d, "A1")
    assert (a1.cases, a1.cv, a1.stable) == (5, D("0.000000"), False)
    assert a1.stable_why == "n 5 <= 5"


def test_six_cases_just_below_cv_1_are_stable_and_just_above_are_not() -> None:
    # A1: 1,000 x 5 and 5,854: mean 1,809; population variance 5 x 4,854^2 / 36 = 3,272,405
    # < mean^2 3,272,481, so CV = 0.999988 <= 1: stable.
    # B1: 1,000 x 5 and 5,855: mean 1,809.1667; variance 3,273,753.47 > mean^2 3,273,084.03,
    # CV = 1.000102 > 1: unstable.
    d = derived([*base_policies(catalogue=False), *hospitals(), *costs("A1", "H2", *[1000] * 5, 5854),
                 *costs("B1", "H2", *[1000] * 5, 5855)])
    a1, b1 = group(d, "A1"), group(d, "B1")
    assert (a1.cases, a1.cv, a1.stable) == (6, D("0.999988"), True)
    assert (b1.cases, b1.cv, b1.stable) == (6, D("1.000102"), False)
    assert a1.mean_cost == D("1809.00")


def test_cv_of_exactly_1_is_stable_decided_without_a_square_root() -> None:
    # 0, 0, 0, 2,000, 2,000, 2,000: mean 1,000, population sd 1,000: CV = 1 exactly, and CV <= 1
    # (a sample sd, sqrt(6/5) x 1,000, would make it 1.0954 and unstable)
    d = derived([*base_policies(catalogue=False), *hospitals(), *costs("A1", "H2", 0, 0, 0, 2000, 2000, 2000)])
    a1 = group(d, "A1")
    assert (a1.cv, a1.stable) == (D("1.000000"), True)


def test_the_large_numbers_threshold_makes_a_group_stable_whatever_its_cv() -> None:
    # seed 001 一(二) 符合大数定理界值要求或者...: with the threshold at 6 the CV 1.000102 group is stable
    events = [*base_policies(catalogue=False), *hospitals(), *costs("B1", "H2", *[1000] * 5, 5855)]
    assert group(derived(events), "B1").stable is False
    assert group(derived(events, params=DeriveParameters(large_sample_cases=6)), "B1").stable is True


def test_ungrouped_withdrawn_and_later_cases_are_left_out_and_the_latest_revision_counts() -> None:
    # c1 revised 1,000 -> 3,000 (its r2 counts); c2 withdrawn; c3 ungrouped 0000; c4 recorded after
    # known_at; c5's revision 2 (9,000) recorded after known_at, so its r1 (1,000) counts; c6 has a
    # violation verdict, which does not change its cost. A1 = 3,000, 1,000, 2,000 -> AC 2,000.
    known_at = at("2021-01-31T00:00:00+08:00")
    events = [
        *base_policies(catalogue=False), *hospitals(),
        case("c1", "H2", "A1", "1000"), case("c1", "H2", "A1", "3000", revision=2, recorded_at="2020-07-01T10:00:00+08:00"),
        case("c2", "H2", "A1", "50000"),
        ev("CaseWithdrawn", {"case_id": "c2", "hospital_id": "H2", "reason": "录入错误"},
           recorded_at="2020-07-01T10:00:00+08:00", source="his:H2"),
        case("c3", "H2", "0000", "70000"),
        case("c4", "H2", "A1", "90000", recorded_at="2021-02-01T10:00:00+08:00"),
        case("c5", "H2", "A1", "1000"), case("c5", "H2", "A1", "9000", revision=2, recorded_at="2021-03-01T10:00:00+08:00"),
        case("c6", "H2", "A1", "2000"),
        verdict("c6", "violation", violation_type="upcoding", violating_points="10"),
        case("c7", "H2", "A1", "5000", discharge="2019-12-31", recorded_at="2020-01-02T10:00:00+08:00"),
    ]
    d = derived(events, known_at=known_at)
    assert d.read[2020] == {"read": 5, "withdrawn": 1, "ungrouped": 1, "revised": 1, "used": 3}
    a1 = group(d, "A1")
    assert (a1.cases, a1.cost_sum, a1.mean_cost) == (3, D("6000"), D("2000.00"))
    assert [g.drg_code for g in d.groups] == ["A1"]  # 0000 never becomes a group
    assert d.overall_average_cost == D("2000.00")


def test_year_weights_weight_every_mean() -> None:
    # A1: 1,000 in 2020 (weight 1), 2,000 in 2021 (weight 3): AC = (1,000 + 6,000) / 4 = 1,750
    events = [*base_policies(catalogue=False), *hospitals(), *costs("A1", "H2", 1000),
              *costs("A1", "H2", 2000, prefix="y21", discharge="2021-06-15")]
    plain = derived(events, years=(2020, 2021))
    assert group(plain, "A1").mean_cost == D("1500.00")
    weighted = derived(events, years=(2020, 2021), params=DeriveParameters(year_weights=((2021, D(3)),)))
    a1 = group(weighted, "A1")
    assert (a1.cases, a1.weight, a1.mean_cost) == (2, D(4), D("1750.00"))


# --------------------------------------------------------------------------- hospital coefficients


def coefficient_world() -> list[Any]:
    """A1: H1 1,200, H3 800, H2 1,000 -> AC 1,000. B1: H1 6,000, H2 4,000 -> AC 5,000.
    H4 (2B) and H6 (3B, new) have no case; level 1 (H5) has no case at all."""
    return [*base_policies(catalogue=False), *hospitals(), hospital("H6", "3B"),
            *costs("A1", "H1", 1200), *costs("A1", "H3", 800), *costs("A1", "H2", 1000),
            *costs("B1", "H1", 6000), *costs("B1", "H2", 4000)]


def test_level_and_cost_ratios_compare_cost_with_the_group_averages_of_the_same_cases() -> None:
    d = derived(coefficient_world())
    levels = {lv.level: lv for lv in d.levels}
    # level 3 (H1, H3): cost 1,200 + 6,000 + 800 = 8,000 against 1,000 + 5,000 + 1,000 = 7,000: 8/7
    assert (levels["3"].ratio.cost_sum, levels["3"].ratio.expected_sum) == (D(8000), D(7000))
    assert levels["3"].ratio.as_json()["ratio"] == "1.142857"
    # level 2 (H2 only has cases): 5,000 / 6,000
    assert (levels["2"].ratio.cost_sum, levels["2"].ratio.expected_sum) == (D(5000), D(6000))
    h1, h3, h2 = hosp(d, "H1"), hosp(d, "H3"), hosp(d, "H2")
    # cost ratios: H1 7,200 / 6,000 = 1.2; H3 800 / 1,000 = 0.8; H2 5,000 / 6,000
    assert (h1.own.ratio, h3.own.ratio, h2.own.as_json()["ratio"]) == (D("1.2"), D("0.8"), "0.833333")
    # c = level x 0.8 + cost x 0.2: H1 8/7 x 0.8 + 0.24 = 1.154286 -> 1.1543; H3 0.914286 + 0.16 -> 1.0743;
    # H2 5/6 x 0.8 + 5/6 x 0.2 = 0.8333 (its own 1.05 before)
    assert (h1.coefficient, h3.coefficient, h2.coefficient) == (D("1.1543"), D("1.0743"), D("0.8333"))
    assert (h1.kind, h1.before, h2.before) == (HospitalKind.HISTORY, D("1.00"), D("1.05"))


def test_a_new_hospital_gets_the_level_s_lowest_when_it_beats_80_percent_of_the_level_ratio() -> None:
    # H6 (3B, no case): max(0.8 x 8/7 = 0.914286, lowest of level 3 = H3's 1.0743) = 1.0743
    # H4 (2B, no case): max(0.8 x 5/6 = 0.666667, lowest of level 2 = H2's 0.8333) = 0.8333
    d = derived(coefficient_world())
    h6, h4 = hosp(d, "H6"), hosp(d, "H4")
    assert (h6.kind, h6.coefficient) == (HospitalKind.NEW, D("1.0743"))
    assert h6.formula.endswith("(the level's lowest)")
    assert h4.coefficient == D("0.8333")


def test_a_new_hospital_gets_its_share_of_the_level_ratio_when_that_is_higher() -> None:
    # With the seed's 0.8 / 0.2 and 80%, c_h = 0.8 L + 0.2 r_h > 0.8 L, so the level's lowest always
    # wins; at a 95% share: max(0.95 x 8/7 = 1.085714, 1.0743) = 1.0857
    d = derived(coefficient_world(), params=DeriveParameters(new_hospital_share=D("0.95")))
    h6 = hosp(d, "H6")
    assert h6.coefficient == D("1.0857")
    assert h6.formula.endswith("(share of the level ratio)")


def test_a_level_without_history_gets_no_coefficient_and_is_named() -> None:
    d = derived(coefficient_world())
    assert d.levels_without_history == {"1": ["H5"]}
    h5 = hosp(d, "H5")
    assert (h5.kind, h5.coefficient) == (HospitalKind.NO_LEVEL_HISTORY, None)
    coefficients = d.bodies[next(c for c in d.bodies if c.value == "coefficients")]
    assert "H5" not in coefficients.hospitals
    assert coefficients.hospitals == {"H1": D("1.1543"), "H2": D("0.8333"), "H3": D("1.0743"), "H4": D("0.8333"),
                                      "H6": D("1.0743")}
    # the grades of the version in force at the window's end, unchanged
    assert {g.value: str(v) for g, v in coefficients.grades.items()} == COEFFICIENTS["grades"]


def test_the_0_8_and_0_2_weights_are_parameters() -> None:
    # H1 at 0.5 / 0.5: 8/7 x 0.5 + 1.2 x 0.5 = 1.171429 -> 1.1714
    d = derived(coefficient_world(), params=DeriveParameters(level_share=D("0.5"), cost_share=D("0.5")))
    assert hosp(d, "H1").coefficient == D("1.1714")


# --------------------------------------------------------------------------- catalogue tiers


@pytest.mark.parametrize(
    ("d", "tier", "after"),
    [
        (D("-5500.01"), Tier.RAISED_TO, D("1.6000")),
        (D("-5500"), Tier.RAISED_TO, D("1.6000")),  # 负5500元及以上: -5,500 itself is raised to 1.6
        (D("-5499.99"), Tier.MIDDLE, D("1.5000")),  # 1.00 + 0.15 + 0.35 x 5,499.99 / 5,500 = 1.49999936
        (D("-2750"), Tier.MIDDLE, D("1.3250")),  # 1.00 + 0.15 + 0.175
        (D("0"), Tier.MIDDLE, D("1.1500")),  # 0-负5499: 0 is in the middle tier, its lower end
        (D("0.01"), Tier.SMALL, D("1.1000")),
        (D("10000"), Tier.SMALL, D("1.1000")),  # 正10000元以下: 10,000 itself gets +0.1 (seed over RULES.md)
        (D("10000.01"), Tier.NONE, D("1.0000")),
    ],
)
def test_every_catalogue_tier_and_its_boundaries(d: Decimal, tier: Tier, after: Decimal) -> None:
    assert tier_of(d, P) is tier
    assert uplifted(D("1.00"), d, P)[0] == after


def test_the_uplift_never_passes_the_cap_and_the_cap_and_middle_tier_are_parameters() -> None:
    # c0 1.5, d = -100: 1.5 + 0.15 + 0.35 x 100 / 5,500 = 1.656364 -> capped at 1.6
    assert uplifted(D("1.5"), D("-100"), P)[0:2] == (D("1.6000"), Tier.MIDDLE)
    assert uplifted(D("1.5"), D("-100"), DeriveParameters(coefficient_cap=None))[0] == D("1.6564")
    assert uplifted(D("1.00"), D("-2750"), DeriveParameters(middle_tier=MiddleTier.LOWEST))[0] == D("1.1500")
    assert uplifted(D("1.00"), D("-2750"), DeriveParameters(middle_tier=MiddleTier.HIGHEST))[0] == D("1.5000")


CATALOGUE = {"rows": [
    {"seq": 1, "drg_code": "B1", "procedure_codes": ["04.0200x005"], "combined_with_codes": [], "coef_3a": "1.6", "coef_3b": "1.47"},
    {"seq": 37, "drg_code": "A1", "procedure_codes": ["6.9501"], "combined_with_codes": [], "coef_3a": "1.6", "coef_3b": "1.47"},
    {"seq": 48, "drg_code": "C1", "procedure_codes": ["74.0x00", "74.1x00"], "combined_with_codes": ["54.5904"],
     "coef_3a": "1.3", "coef_3b": "1.3"},
    {"seq": 50, "drg_code": "A1", "procedure_codes": ["38.0000"], "combined_with_codes": [], "coef_3a": "1.2", "coef_3b": "1.1"},
]}


def clearing_recorded(point_value: str, year: int = 2020) -> Any:
    return ev("ClearingCompleted", {"pool": POOL, "year": year, "known_at": "2021-03-01T00:00:00+08:00",
                                    "point_value": point_value, "results": []},
              recorded_at="2021-03-01T00:00:00+08:00", source="system")


def catalogue_world() -> list[Any]:
    """PV 100 from a recorded clearing. Payment = BP x c0 x 100: 3A (c0 1.00) B1 20,000, A1 10,000,
    C1 40,000; 3B (c0 0.92) A1 9,200, C1 36,800."""
    return [
        *base_policies(catalogue=False), *hospitals(), policy("high_tech_catalogue", CATALOGUE), clearing_recorded("100"),
        # row 1 (B1), 3A: cost 20,000, d = 0 -> 1.00 + 0.15 = 1.15; no 3B case -> 1.15 - 0.08 = 1.07.
        # The code as the HIS writes it, upper-cased; a 2A hospital's case never matches.
        case("k1", "H1", "B1", "20000", procedures=["04.0200X005"]),
        case("k2", "H2", "B1", "1", procedures=["04.0200x005"]),
        # row 37 (A1, `6.9501` as printed; the HIS writes 06.9501): 3A cost 15,500, d = -5,500 -> 1.6;
        # 3B cost 14,699.99, d = -5,499.99 -> 0.92 + 0.15 + 0.35 x 5,499.99 / 5,500 = 1.41999936 -> 1.4200
        case("k3", "H1", "A1", "15500", procedures=["06.9501"]),
        case("k4", "H3", "A1", "14699.99", procedures=["06.9501"]),
        # row 48 (C1, a combination): 3A cost 29,999.99, d = 10,000.01 -> no uplift, 1.00;
        # 3B cost 26,800, d = 10,000 -> 0.92 + 0.1 = 1.02; a 3B case without the combined code does not match
        case("k5", "H1", "C1", "29999.99", procedures=["74.0x00", "54.5904"]),
        case("k6", "H3", "C1", "26800", procedures=["74.1X00", "54.5904"]),
        case("k7", "H3", "C1", "1", procedures=["74.1x00"]),
        # row 50 (A1, 38.0000): no case at either grade -> keeps 1.2 / 1.1
    ]


def row(d: Derivation, seq: int, grade: str) -> Any:
    return next(c for c in d.catalogue_rows if c.seq == seq and c.grade.value == grade)


def test_catalogue_rows_by_tier_with_the_3b_discount_and_a_row_without_cases() -> None:
    d = derived(catalogue_world())
    r1a, r1b = row(d, 1, "3A"), row(d, 1, "3B")
    assert (r1a.cases, r1a.mean_payment, r1a.mean_cost, r1a.d, r1a.tier, r1a.after) == (
        1, D("20000.00"), D("20000.00"), D("0.00"), Tier.MIDDLE, D("1.1500"))
    assert (r1b.cases, r1b.tier, r1b.after, r1b.before) == (0, Tier.FROM_3A, D("1.0700"), D("1.47"))
    r37a, r37b = row(d, 37, "3A"), row(d, 37, "3B")
    assert (r37a.d, r37a.tier, r37a.after) == (D("-5500.00"), Tier.RAISED_TO, D("1.6000"))
    assert (r37b.mean_payment, r37b.d, r37b.tier, r37b.after) == (D("9200.00"), D("-5499.99"), Tier.MIDDLE, D("1.4200"))
    r48a, r48b = row(d, 48, "3A"), row(d, 48, "3B")
    assert (r48a.d, r48a.tier, r48a.after) == (D("10000.01"), Tier.NONE, D("1.0000"))
    assert (r48b.cases, r48b.d, r48b.tier, r48b.after) == (1, D("10000.00"), Tier.SMALL, D("1.0200"))
    r50a, r50b = row(d, 50, "3A"), row(d, 50, "3B")
    assert (r50a.tier, r50a.after, r50b.tier, r50b.after) == (Tier.NO_CASE, D("1.2"), Tier.NO_CASE, D("1.1"))
    # the draft catalogue is the current one with these coefficients
    body = d.bodies[next(c for c in d.bodies if c.value == "high_tech_catalogue")]
    assert [(r.seq, r.coef_3a, r.coef_3b) for r in body.rows] == [
        (1, D("1.1500"), D("1.0700")), (37, D("1.6000"), D("1.4200")), (48, D("1.0000"), D("1.0200")),
        (50, D("1.2"), D("1.1"))]
    assert d.point_values[2020] is not None and d.point_values[2020].source == "ClearingCompleted"
    # seed 000 三(二): B1's cases are k1 (3A) and k2 (2A): a tertiary share of 0.5, below 70%, reported
    shown = next(c for c in d.as_json()["catalogue"] if c["seq"] == 1)
    assert (shown["tertiary_share"], shown["tertiary_share_below_min"]) == ("0.500000", True)


def test_the_3b_discount_is_a_parameter() -> None:
    d = derived(catalogue_world(), params=DeriveParameters(grade_3b_discount=D("0.1")))
    assert row(d, 1, "3B").after == D("1.0500")


def test_c0_is_the_coefficient_without_the_catalogue_steps_3_to_5() -> None:
    # H1 has a CoefficientChanged of 1.10 for 2020 (step 4): row 1's 3A payment is 200 x 1.10 x 100
    # = 22,000 and d = 22,000 - 20,000 = 2,000 -> 1.00 + 0.1 (the uplift is on the grade's 1.00)
    change = ev("CoefficientChanged", {"pool": POOL, "hospital_id": "H1", "coefficient": "1.10",
                                       "effective_from": "2020-01-01", "effective_to": "2020-12-31", "reason": "申报"})
    d = derived([*catalogue_world(), change])
    r1a = row(d, 1, "3A")
    assert (r1a.mean_payment, r1a.d, r1a.tier, r1a.c0_grade, r1a.after) == (
        D("22000.00"), D("2000.00"), Tier.SMALL, D("1.00"), D("1.1000"))


def test_without_a_recorded_clearing_the_point_value_is_the_year_s_clearing_as_known() -> None:
    # One 3A B1 case of 20,000 with the catalogue code: in 2020 it is paid 200 x 1.6 (row 1) = 320
    # points; budget 32,000 -> PV 100. Its DRG payment 200 x 1.00 x 100 = 20,000: d = 0 -> 1.15.
    events = [*base_policies(catalogue=False), *hospitals(), budget("32000"),
              policy("high_tech_catalogue", CATALOGUE, recorded_at="2021-05-11T00:00:00+08:00"),
              case("k1", "H1", "B1", "20000", procedures=["04.0200x005"])]
    d = derived(events)
    pv = d.point_values[2020]
    assert pv is not None and (pv.value, pv.source) == (D("100.000000"), "clearing as known")
    assert row(d, 1, "3A").after == D("1.1500")
    # known before the catalogue was issued: no catalogue in force, none derived, no PV needed
    early = derived(events, known_at=at("2021-05-10T00:00:00+08:00"))
    assert (early.catalogue_version, early.catalogue_rows, early.point_values[2020]) == (None, [], None)
    assert [c.value for c in early.bodies] == ["drg_table", "coefficients"]


def test_a_catalogue_year_that_cannot_be_priced_is_refused_naming_the_year() -> None:
    events = [*base_policies(catalogue=False), *hospitals(), policy("high_tech_catalogue", CATALOGUE),
              case("k1", "H1", "B1", "20000", procedures=["04.0200x005"])]
    with pytest.raises(WorkbenchError, match="year 2020: its catalogue cases cannot be priced"):
        derived(events)


# --------------------------------------------------------------------------- the draft


def test_the_draft_events_parse_are_effective_for_the_target_year_and_say_where_they_come_from() -> None:
    d = derived(catalogue_world(), for_year=2024, known_at=at("2023-12-31T12:00:00+08:00"))
    events = draft_events(d, recorded_at=at("2024-01-05T09:00:00+08:00"))
    lines = draft_lines(events)
    parsed = [parse_event(line) for line in lines]
    assert [e.payload.component.value for e in parsed] == ["drg_table", "coefficients", "high_tech_catalogue"]
    for e in parsed:
        assert (e.source, e.payload.effective_from, e.payload.effective_to) == (
            "operator:workbench", date(2024, 1, 1), date(2024, 12, 31))
        assert "derived" in e.payload.note and "RULES.md 7" in e.payload.note
        assert "discharged 2020" in e.payload.note and "2023-12-31T12:00:00+08:00" in e.payload.note
        assert len(e.payload.note) <= 512 and len(e.event_id) <= 128
    # the same history derives the same events, ids included
    again = draft_lines(draft_events(derived(catalogue_world(), for_year=2024, known_at=at("2023-12-31T12:00:00+08:00")),
                                     recorded_at=at("2024-01-05T09:00:00+08:00")))
    assert again == lines
    # without recorded_at the lines leave it out, for the ledger to stamp
    assert all("recorded_at" not in line for line in draft_lines(draft_events(d)))


def test_bad_parameters_are_refused_naming_the_field() -> None:
    with pytest.raises(WorkbenchError, match="^year_weights:"):
        DeriveParameters(year_weights=((2021, D(0)),))
    with pytest.raises(WorkbenchError, match="^shortfall_floor:"):
        DeriveParameters(shortfall_floor=D(1))
    with pytest.raises(WorkbenchError, match="^middle_uplift_min:"):
        DeriveParameters(middle_uplift_min=D("0.6"))


def test_a_coefficient_that_rounds_to_zero_is_refused_naming_the_hospital() -> None:
    # H1: one case of 1 yuan in A1, whose mean H2's 400,000 makes 200,000.5: cost ratio 0.000005 and, alone at
    # level 3, level ratio the same: c = 0.000005 -> 0.0000, which no coefficients version can carry
    events = [*base_policies(catalogue=False), *hospitals(), *costs("A1", "H1", 1), *costs("A1", "H2", 400000)]
    with pytest.raises(WorkbenchError, match="^coefficients: H1's coefficient rounds to 0.0000"):
        derived(events)


def test_a_window_without_cases_cannot_be_derived() -> None:
    with pytest.raises(WorkbenchError, match="no grouped, unwithdrawn case"):
        derived([*base_policies(catalogue=False), *hospitals(), case("c3", "H2", "0000", "70000")])


# --------------------------------------------------------------------------- invariants

amounts = st.lists(st.integers(min_value=1, max_value=200_000), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None)
@given(a1=amounts, b1=amounts, factor=st.integers(min_value=2, max_value=9))
def test_scaling_every_cost_leaves_base_points_cv_and_coefficients_unchanged(a1: list[int], b1: list[int], factor: int) -> None:
    def world(k: int) -> list[Any]:
        return [*base_policies(catalogue=False), *hospitals(), *costs("A1", "H1", *[x * k for x in a1]),
                *costs("B1", "H2", *[x * k for x in b1])]

    one, scaled = derived(world(1)), derived(world(factor))
    for g1, g2 in zip(one.groups, scaled.groups):
        assert (g1.base_points, g1.cv, g1.stable) == (g2.base_points, g2.cv, g2.stable)
    assert [h.coefficient for h in one.hospitals] == [h.coefficient for h in scaled.hospitals]


@settings(max_examples=200, deadline=None)
@given(c0=st.decimals(min_value="0.5", max_value="1.6", places=2),
       d1=st.decimals(min_value="-20000", max_value="20000", places=2),
       d2=st.decimals(min_value="-20000", max_value="20000", places=2))
def test_a_larger_shortfall_never_gives_a_smaller_coefficient_and_never_passes_the_cap(
        c0: Decimal, d1: Decimal, d2: Decimal) -> None:
    low, high = sorted((d1, d2))
    a, b = uplifted(c0, low, P)[0], uplifted(c0, high, P)[0]
    assert c0 <= b <= a <= D("1.6")


@settings(max_examples=25, deadline=None)
@given(order=st.randoms(use_true_random=False))
def test_the_derivation_does_not_depend_on_the_order_events_arrive_in(order: Any) -> None:
    # EVENTS.md "Order of arrival": recorded_at, not arrival, decides; a shuffled history derives the same draft
    events = [*catalogue_world(), *costs("A1", "H2", 1000, 3000), case("k1", "H1", "B1", "21000", revision=2,
                                                                      procedures=["04.0200x005"])]
    shuffled = list(events)
    order.shuffle(shuffled)
    one, two = derived(events), derived(shuffled)
    assert one.as_json() == two.as_json()
    assert draft_lines(draft_events(one)) == draft_lines(draft_events(two))


@settings(max_examples=40, deadline=None)
@given(h1=st.lists(st.integers(min_value=100, max_value=200_000), min_size=1, max_size=12),
       h3=st.lists(st.integers(min_value=100, max_value=200_000), min_size=1, max_size=12),
       h2=st.lists(st.integers(min_value=100, max_value=200_000), min_size=1, max_size=12))
def test_a_coefficient_lies_between_its_level_ratio_and_its_cost_ratio(h1: list[int], h3: list[int], h2: list[int]) -> None:
    # seed 001 二(一): c = 0.8 x level ratio + 0.2 x cost ratio, weights summing to 1, so c is between them
    # (to the 4th place); and a level's ratio lies between its hospitals' cost ratios
    d = derived([*base_policies(catalogue=False), *hospitals(), *costs("A1", "H1", *h1), *costs("B1", "H3", *h3),
                 *costs("A1", "H2", *h2, prefix="x"), *costs("B1", "H2", *h2, prefix="y")])
    tolerance = D("0.00005")
    for h in d.hospitals:
        if h.kind is HospitalKind.HISTORY:
            low, high = sorted((h.level_ratio, h.own.ratio))
            assert low - tolerance <= h.coefficient <= high + tolerance
    level3 = next(lv for lv in d.levels if lv.level == "3").ratio.ratio
    ratios = [hosp(d, h).own.ratio for h in ("H1", "H3")]
    ulp = D("1e-50")  # ratios are divided at 60 digits: a weighted mean may round one unit past a bound
    assert min(ratios) - level3 <= ulp and level3 - max(ratios) <= ulp
