"""Which running totals an event recomputes, and why a redelivered batch changes nothing.

The worker's blocking half (`streams.intake.run_batch`) and the recomputation
(`projections.running_totals`) on a real store: SQLite and PostgreSQL (tests/conftest.py).
No broker needed: the broker tests are test_streaming.py.
"""

from __future__ import annotations

import pytest

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from projections.running_totals import (
    HospitalTotals,
    Key,
    create_tables,
    keys_for,
    read_rows,
    recompute,
    reconcile,
    totals_by_hospital,
    store_engine,
    upsert,
)
from ledger.clearing import settle
from projections.store import LedgerStore
from streams.intake import Inbound, run_batch
from streams.topics import describe, key_for
from tests import factories as f

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def wide_late_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker never backfills; these batches are 2020 history, so the intake's late-arrival
    window is configured to admit them, as the streaming tests configure their workers."""
    monkeypatch.setenv("DRG_LEDGER_LATE_WINDOW_DAYS", "36500")
POLICIES = [f.policy(c) for c in ("drg_table", "coefficients", "case_rules", "penalty_rules", "clearing_rules")]


def messages(*envelopes: Any, partition: int = 0, first_offset: int = 0) -> list[Inbound]:
    out = []
    for i, e in enumerate(envelopes):
        value = e if isinstance(e, bytes) else json.dumps(e, ensure_ascii=False).encode()
        out.append(Inbound("t.events", partition, first_offset + i, None, value))
    return out


def parsed(*envelopes: dict[str, Any]) -> list[Any]:
    from ledger.events import parse_event

    return [parse_event(e) for e in envelopes]


def world(store: LedgerStore) -> None:
    """Two hospitals of panzhihua with cases in 2020 and 2021, one of another pool."""
    store.ingest(f.lines(
        *POLICIES,
        f.hospital("H001"), f.hospital("H002", grade="2A"), f.hospital("X001", pool="xuancheng"),
        f.case("C1", hospital_id="H001"), f.case("C2", hospital_id="H002"),
        f.case("C3", hospital_id="H002", discharge_date="2021-02-01"),
        f.case("X1", hospital_id="X001"),
    ), backfill=True, origin="test")


def test_a_revision_recomputes_its_hospital_in_every_year_the_case_was_discharged_in(database_url: str) -> None:
    with LedgerStore.open(database_url) as store:
        world(store)
        moved = f.case("C1", hospital_id="H001", revision=2, discharge_date="2021-01-05")
        store.ingest(f.lines(moved), backfill=True, origin="test")
        assert keys_for(store, parsed(moved)) == {Key("panzhihua", 2020, "H001"), Key("panzhihua", 2021, "H001")}


def test_a_verdict_recomputes_its_case_hospital_and_a_verdict_on_an_unknown_case_nothing(database_url: str) -> None:
    with LedgerStore.open(database_url) as store:
        world(store)
        assert keys_for(store, parsed(f.verdict("C2"))) == {Key("panzhihua", 2020, "H002")}
        assert keys_for(store, parsed(f.verdict("C404"))) == set()


def test_a_policy_version_recomputes_every_hospital_of_its_pool_in_the_years_its_interval_touches(
    database_url: str,
) -> None:
    with LedgerStore.open(database_url) as store:
        world(store)
        only_2021 = f.policy("case_rules", version="2021", effective_from="2021-01-01", effective_to="2021-12-31")
        open_ended = f.policy("drg_table", version="2020b", effective_from="2020-01-01")
        assert keys_for(store, parsed(only_2021)) == {Key("panzhihua", 2021, "H002")}
        assert keys_for(store, parsed(open_ended)) == {
            Key("panzhihua", 2020, "H001"), Key("panzhihua", 2020, "H002"), Key("panzhihua", 2021, "H002"),
        }


def test_a_hospital_coefficient_recomputes_that_hospital_and_a_grade_coefficient_the_whole_pool(
    database_url: str,
) -> None:
    with LedgerStore.open(database_url) as store:
        world(store)
        own = f.envelope("CoefficientChanged", {"pool": "panzhihua", "hospital_id": "H002", "coefficient": "1.1",
                                                "effective_from": "2020-01-01", "effective_to": "2020-12-31",
                                                "reason": "declared"}, event_id="coef-1")
        grade = f.envelope("CoefficientChanged", {"pool": "panzhihua", "drg_code": "BJ11", "grade": "3A",
                                                  "coefficient": "1.2", "effective_from": "2020-01-01",
                                                  "reason": "declared"}, event_id="coef-2")
        assert keys_for(store, parsed(own)) == {Key("panzhihua", 2020, "H002")}
        assert {k.hospital_id for k in keys_for(store, parsed(grade))} == {"H001", "H002"}


def test_budgets_and_prepayments_recompute_nothing(database_url: str) -> None:
    with LedgerStore.open(database_url) as store:
        world(store)
        assert keys_for(store, parsed(f.budget(), f.prepayment())) == set()


def test_a_redelivered_batch_stores_nothing_twice_and_leaves_the_totals_unchanged(database_url: str) -> None:
    with LedgerStore.open(database_url) as store:
        batch = messages(
            *POLICIES, f.hospital("H001"), f.case("C1", total_cost="30000"), b'{"event_id": "x", "truncated',
            f.case("C9", hospital_id="H404"), f.verdict("C1", outcome="violation", violation_type="upcoding",
                                                        violating_points="10"),
        )
        first = run_batch(store, batch)
        assert (first.accepted, first.duplicates) == (len(batch) - 2, 0)
        assert sorted(r.message.offset for r in first.refused) == [7, 8]
        create_tables(store_engine(store))
        rows = [recompute(store, k, NOW) for k in first.recompute]
        upsert(store_engine(store), rows)

        again = run_batch(store, batch)  # the worker died before committing the offsets
        assert (again.accepted, again.duplicates) == (0, len(batch) - 2)
        assert {r.message.origin for r in again.refused} == {r.message.origin for r in first.refused}
        assert {r.reason for r in again.refused} == {r.reason for r in first.refused}
        assert len(store.dead_letters()) == 2, "one dead letter per message, however often it is delivered"
        assert set(again.recompute) == set(first.recompute) == {Key("panzhihua", 2020, "H001")}
        upsert(store_engine(store), [recompute(store, k, NOW) for k in again.recompute])
        assert [r.totals for r in read_rows(store_engine(store))] == [r.totals for r in rows]
        assert reconcile(store, "panzhihua", 2020, NOW).ok


def test_each_dead_letter_keeps_the_exact_offset_it_came_from(database_url: str) -> None:
    with LedgerStore.open(database_url) as store:
        batch = messages(f.hospital("H001"), b"not json", partition=2, first_offset=100)
        batch += messages(b"[]", partition=1, first_offset=7)
        batch += messages(b"{}", partition=2, first_offset=205)  # a gap: compacted or skipped offsets
        result = run_batch(store, batch)
        assert sorted(r.message.origin for r in result.refused) == [
            "kafka:t.events/1/7", "kafka:t.events/2/101", "kafka:t.events/2/205",
        ]
        assert sorted(d.origin for d in store.dead_letters()) == [
            "kafka:t.events/1/7", "kafka:t.events/2/101", "kafka:t.events/2/205",
        ]
        headers = dict(result.refused[0].headers())
        assert set(headers) == {"reason", "field", "event_id", "origin"}


def test_a_policy_arriving_after_verdicts_of_other_partitions_still_yields_their_penalties(database_url: str) -> None:
    with LedgerStore.open(database_url) as store:
        run_batch(store, messages(f.hospital("H001"), f.case("C1"), f.verdict(
            "C1", outcome="violation", violation_type="upcoding", violating_points="10"), partition=1))
        assert store.counts().get("PenaltyImposed", 0) == 0  # no policy yet: nothing to price the case with
        run_batch(store, messages(*POLICIES, partition=3))
        assert store.counts().get("PenaltyImposed", 0) == 1


def test_hospital_totals_are_the_hospital_slice_of_one_settlement_of_the_pool_year(database_url: str) -> None:
    with LedgerStore.open(database_url) as store:
        world(store)
        store.ingest(f.lines(
            f.case("C4", hospital_id="H001", total_cost="90000", personal_paid="1000.50"),
            f.verdict("C4", outcome="violation", violation_type="cost_shifting", violating_points="20"),
            f.withdrawal("C2", hospital_id="H002"),
        ), backfill=True, origin="test")
        replay = totals_by_hospital(settle(list(store.replay()), "panzhihua", 2020, NOW))  # the cold truth
        for hospital in ("H001", "H002"):
            assert recompute(store, Key("panzhihua", 2020, hospital), NOW).totals == replay[hospital]
        h1 = replay["H001"]
        assert h1.cases == 2 and h1.deducted_points == 60 and h1.personal_paid == Decimal("1000.50")
        assert h1.net_points == h1.settled_points - h1.deducted_points
        assert replay["H002"] == HospitalTotals()  # its only 2020 case was withdrawn


def test_a_policy_gap_keeps_the_last_totals_and_says_why(database_url: str) -> None:
    with LedgerStore.open(database_url) as store:
        world(store)
        key = Key("panzhihua", 2020, "H001")
        good = recompute(store, key, NOW)
        store.ingest(f.lines(f.case("C5", hospital_id="H001", discharge_date="2019-12-31")), backfill=True, origin="test")
        gap = recompute(store, Key("panzhihua", 2019, "H001"), NOW, last=None)
        assert gap.error is not None and "policy" in gap.error and gap.totals == HospitalTotals()
        assert recompute(store, key, NOW, last=good).error is None


def test_events_are_keyed_by_hospital_and_pool_wide_events_by_pool() -> None:
    cases = {"C1": "H001"}
    pools = {"H001": "panzhihua"}
    assert key_for(f.case("C1")) == "H001"
    assert key_for(f.hospital("H002")) == "H002"
    assert key_for(f.verdict("C1"), cases, pools) == "H001"
    assert key_for(f.verdict("C7"), cases, pools) == "panzhihua"
    assert key_for(f.verdict("C7"), cases, {"H001": "panzhihua", "X1": "xuancheng"}) == "C7"
    assert key_for(f.policy()) == "panzhihua"
    assert key_for(f.budget()) == "panzhihua"
    assert key_for({"nonsense": 1}) is None


def test_the_topics_description_in_schemas_is_up_to_date() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "schemas" / "topics.json").read_text(encoding="utf-8")
    assert json.loads(text) == describe(), "run: python -m streams.topics"


