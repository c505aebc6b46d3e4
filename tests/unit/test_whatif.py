"""What-if drafts in the pure core (ledger/whatif.py), worked by hand on the round-number pool."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from ledger.clearing import balance, clearing, settle
from ledger.explain import explain
from ledger.whatif import Draft, WhatIf, draft_refusal, sha256_of, with_draft
from tests.unit.rules_world import (
    CATALOGUE,
    NOW,
    POOL,
    at,
    base_policies,
    budget,
    case,
    coefficient_change,
    hospitals,
    policy,
    verdict,
)


def world() -> list[Any]:
    """H1 (3A): a B1 case of 20,000 (r = 1, normal) with catalogue code 04.0200x005 -> c = 1.6 from
    2021-05-11: 200 x 1.6 = 320 points. H2 (2A, own 1.05): an A1 case of 10,000: 100 x 1.05 = 105.
    B = 42,500, no personal payments: PV = 42,500 / 425 = 100."""
    return [
        *base_policies(),
        *hospitals(),
        case("c1", "H1", "B1", "20000", procedures=["04.0200x005"]),
        case("c2", "H2", "A1", "10000"),
        budget("42500"),
    ]


def draft(*events: Any, known_at: datetime = NOW, content: bytes = b"draft") -> Draft:
    stamped = tuple(e.model_copy(update={"recorded_at": known_at}) for e in events)
    return Draft(name="draft.jsonl", sha256=sha256_of(content), known_at=known_at, events=stamped)


def line(c: Any, hid: str) -> Any:
    return next(h for h in c.hospitals if h.hospital_id == hid)


def test_an_empty_draft_is_the_clearing() -> None:
    events = world()
    assert clearing(settle(with_draft(events, draft()), POOL, 2020, NOW)) == clearing(settle(events, POOL, 2020, NOW))


def test_a_draft_catalogue_wins_over_the_one_recorded_before() -> None:
    # The draft raises row 1's 3A coefficient 1.6 -> 1.7: c1 = 200 x 1.7 = 340; TP = 445.
    rows = [{**r, "coef_3a": "1.7"} if r["seq"] == 1 else r for r in CATALOGUE["rows"]]
    d = draft(policy("high_tech_catalogue", {"rows": rows}, version="draft", effective_to="2022-05-10",
                     event_id="draft-catalogue"))
    known = clearing(settle(world(), POOL, 2020, NOW))
    assert (known.total_points, known.point_value) == (Decimal("425.0000"), Decimal("100.000000"))
    c = clearing(settle(with_draft(world(), d), POOL, 2020, NOW))
    # PV = 42,500 / 445 = 95.5056179... -> 95.505618
    assert (c.total_points, c.point_value) == (Decimal("445.0000"), Decimal("95.505618"))
    # H1: 340 x 95.505618 = 32,471.91012 -> 32,471.91; H2: 105 x 95.505618 = 10,028.08989 -> 10,028.09
    assert (line(c, "H1").fund_due, line(c, "H2").fund_due) == (Decimal("32471.91"), Decimal("10028.09"))
    e = explain(with_draft(world(), d), "c1", NOW)
    assert e["coefficient"]["value"] == "1.7" and e["policy_versions"]["high_tech_catalogue"]["version"] == "draft"


def test_a_draft_before_the_catalogue_was_issued_sees_no_catalogue() -> None:
    # As known at 2021-05-10 the catalogue is not known: c1 = 200 x 1.00 (grade 3A); a draft coefficient
    # change for B1 and 3A (RULES.md 3 step 3) of 1.2 then pays c1 200 x 1.2 = 240.
    before = at("2021-05-10T00:00:00+08:00")
    d = draft(coefficient_change("1.2", drg_code="B1", grade="3A"), known_at=before)
    c = clearing(settle(with_draft(world(), d), POOL, 2020, before))
    assert line(c, "H1").net_points == Decimal("240.0000")
    assert c.total_points == Decimal("345.0000")


def test_a_draft_budget_and_verdict_change_the_point_value_and_the_case() -> None:
    # Budget 50,000 and an upcoding verdict on c2 with V = 5: c2 settles 100, and 4 x 5 = 20 is deducted:
    # H2 net 80; TP = 320 + 80 = 400; PV = 50,000 / 400 = 125.
    d = draft(budget("50000", event_id="draft-budget"),
              verdict("c2", "violation", violation_type="upcoding", violating_points="5"))
    py = settle(with_draft(world(), d), POOL, 2020, NOW)
    c = clearing(py)
    assert (line(c, "H2").settled_points, line(c, "H2").deducted_points) == (Decimal("100.0000"), Decimal("20"))
    assert (c.total_points, c.point_value, c.budget) == (Decimal("400.0000"), Decimal("125.000000"), Decimal("50000"))
    # The balance on 30 June (no clearing recorded): budget pro-rated 50,000 x 182 / 366 = 24,863.39;
    # PV = 24,863.39 / 400 = 62.158475 (both cases were discharged by 15 June).
    b = balance(py, "H1", at("2020-06-30T00:00:00+08:00").date())
    assert (b.point_value_kind, b.budget_in_window, b.point_value) == ("provisional", Decimal("24863.39"), Decimal("62.158475"))


def test_only_operator_decisions_can_be_drafted_and_only_for_the_pool() -> None:
    assert draft_refusal(budget("1", event_id="b")) is None
    assert draft_refusal(verdict("c1", "upheld")) is None
    refused = draft_refusal(case("c9", "H1", "A1", "100"))
    assert refused is not None and refused.field == "event_type" and "CaseSubmitted cannot be drafted" in refused.reason
    other_pool = draft_refusal(budget("1", event_id="b"), pool="elsewhere")
    assert other_pool is not None and other_pool.field == "payload.pool"
    assert draft_refusal(hospitals()[0]) is not None


def test_a_what_if_says_what_it_is_and_cannot_be_recorded() -> None:
    d = draft(budget("50000", event_id="draft-budget"), content=b'{"x": 1}\n')
    wi = WhatIf(d, clearing(settle(with_draft(world(), d), POOL, 2020, NOW)))
    out = wi.as_json()
    assert out["what_if"] == {"draft": "draft.jsonl", "sha256": sha256_of(b'{"x": 1}\n'), "known_at": NOW.isoformat(),
                              "event_ids": ["draft-budget"], "recorded": False}
    assert out["budget"] == "50000" and not hasattr(wi, "completed")


def test_a_draft_holds_only_events_stamped_at_its_moment() -> None:
    with pytest.raises(AssertionError):
        Draft(name="d", sha256="0", known_at=NOW, events=(budget("1", event_id="b"),))
