"""PenaltyImposed derived from violation verdicts (RULES.md 4), and explain (EVENTS.md)."""

from __future__ import annotations

from decimal import Decimal

from ledger.derivation import penalty_events
from ledger.explain import explain
from tests.unit.rules_world import NOW, at, base_policies, case, hospitals, verdict


def test_a_violation_verdict_yields_one_penalty_with_clause_and_the_verdicts_time() -> None:
    c = case("c", "H1", "B1", "50000")  # 300 points (r = 2.5 at 3A)
    v = verdict("c", "violation", violation_type="upcoding", violating_points="50")
    (p,) = penalty_events([*base_policies(), *hospitals(), c, v, verdict("c", "upheld")])
    assert p.event_id == f"penalty:{v.event_id}" and p.source == "system" and p.recorded_at == v.recorded_at
    assert (p.payload.multiplier, p.payload.deducted_points) == (Decimal("4"), Decimal("200.0000"))
    assert p.payload.clause == "攀医保规〔2023〕6号 第十八条(五)"


def test_a_verdict_before_its_case_is_penalised_when_the_case_becomes_known() -> None:
    v = verdict("c", "violation", violation_type="bed_blocking", recorded_at="2020-05-01T00:00:00+08:00")
    assert penalty_events([*base_policies(), *hospitals(), v]) == []
    c = case("c", "H1", "B1", "50000", recorded_at="2020-06-20T10:00:00+08:00")
    (p,) = penalty_events([*base_policies(), *hospitals(), v, c])
    assert p.recorded_at == c.recorded_at  # not before the case was known
    assert p.payload.deducted_points == Decimal("300.0000")  # 1 x P, seed 003 第十八条(一)


def test_penalty_uses_the_policy_known_at_the_verdict_not_later_back_dated_ones() -> None:
    # the catalogue (recorded 2021-05-11) would make P = 320; the verdict of 2020-09 saw 200
    c = case("c", "H1", "B1", "20000", procedures=["04.0200x005"])
    v = verdict("c", "violation", violation_type="bed_blocking")
    (p,) = penalty_events([*base_policies(), *hospitals(), c, v])
    assert p.payload.deducted_points == Decimal("200.0000")


def test_explain_names_versions_coefficient_source_and_penalty() -> None:
    c = case("c", "H3", "B1", "20000", procedures=["04.0200x005"])
    v = verdict("c", "violation", violation_type="upcoding", violating_points="10")
    events = [*base_policies(), *hospitals(), c, v]
    before = explain(events, "c", at("2021-05-10T00:00:00+08:00"))
    after = explain(events, "c", NOW)
    assert before["coefficient"]["why"] == "coefficients:grade 3B" and before["points_before_verdict"] == "184.0000"
    assert after["coefficient"]["why"] == "high_tech_catalogue:3B" and after["points_before_verdict"] == "294.0000"
    assert after["coefficient"]["from"]["row"] == 1
    assert after["policy_versions"]["high_tech_catalogue"]["recorded_at"].startswith("2021-05-11")
    assert after["penalty"] == {"violating_points": "10", "multiplier": "4", "deducted_points": "40.0000",
                                "clause": "攀医保规〔2023〕6号 第十八条(五)"}
    assert after["net_points"] == "244.0000"  # 294 - 10 settled, 40 deducted
