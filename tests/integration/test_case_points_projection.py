"""The warm case-points projection on a real database (SQLite file and PostgreSQL).

Given a generated year in the ledger, when the projection is refreshed, then the warm
clearing and balances equal the ones folded from the events, figure for figure (the same
decimal strings); when a new event could change a case, the projection is stale and is
refused until refreshed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from drg_ledger.generate import generate
from ledger.events import parse_event
from projections.case_points import (
    StaleProjection,
    case_points_table,
    freshness,
    refresh,
    warm_balance,
    warm_clearing,
)
from projections.queries import clear_pool, hospital_balance
from projections.store import LedgerStore
from tests.factories import budget, case, hospital, lines, policy, verdict

POOL, YEAR = "panzhihua", 2020


@pytest.fixture(scope="module")
def year_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("generated") / "year.jsonl"
    generate(path, cases=1500, hospitals=12, year=YEAR, seed=11)
    return path


@pytest.fixture
def store(database_url: str, year_file: Path) -> Iterator[LedgerStore]:
    with LedgerStore.open(database_url) as s:
        with year_file.open("rb") as fh:
            report = s.ingest((line.rstrip(b"\n") for line in fh), backfill=True, origin=f"file:{year_file}")
        assert report.ok
        yield s


def as_text(x: object) -> str:
    """The figures, without the basis (the warm path reads no events)."""
    return json.dumps({k: v for k, v in x.as_json().items() if k != "basis"}, ensure_ascii=False)  # type: ignore[attr-defined]


def a_case_with_no_verdict(year_file: Path) -> str:
    cases: list[str] = []
    untouched: set[str] = set()
    with year_file.open("rb") as fh:
        for line in fh:
            ev = parse_event(line)
            if ev.event_type == "CaseSubmitted" and ev.payload.revision == 1:
                cases.append(ev.payload.case_id)
            elif ev.event_type in ("ReviewVerdictRecorded", "CaseWithdrawn"):
                untouched.add(ev.payload.case_id)
    return next(c for c in cases if c not in untouched)


def test_warm_clearing_equals_the_clearing_folded_from_the_events(store: LedgerStore) -> None:
    report = refresh(store, POOL, YEAR, chunk_cases=200)  # several hospital chunks
    assert report.chunks > 1

    warm = warm_clearing(store, POOL, YEAR)
    folded = clear_pool(store, POOL, YEAR, warm.known_at)

    assert as_text(warm) == as_text(folded)
    assert [h.cases for h in warm.hospitals] == [h.cases for h in folded.hospitals]
    assert sum(h.cases for h in warm.hospitals) == report.cases


def test_chunking_never_changes_the_rows(store: LedgerStore) -> None:
    cp = case_points_table

    def rows() -> list[tuple[object, ...]]:
        with store.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(select(cp).order_by(cp.c.case_id))]

    refresh(store, POOL, YEAR, chunk_cases=1)
    one_hospital_at_a_time = rows()
    refresh(store, POOL, YEAR)
    assert rows() == one_hospital_at_a_time


def test_warm_balances_equal_the_balances_folded_from_the_events(store: LedgerStore) -> None:
    refresh(store, POOL, YEAR)
    for hospital_id in ("H001", "H005", "H012"):
        for as_of in (date(YEAR, 1, 1), date(YEAR, 1, 31), date(YEAR, 6, 30), date(YEAR, 12, 31)):
            warm = warm_balance(store, hospital_id, as_of)
            folded = hospital_balance(store, hospital_id, as_of, warm.known_at)
            assert warm.point_value_kind == "provisional"
            assert as_text(warm) == as_text(folded), (hospital_id, as_of)


def test_after_a_recorded_clearing_warm_balances_use_its_final_point_value(store: LedgerStore) -> None:
    refresh(store, POOL, YEAR)
    recorded = clear_pool(store, POOL, YEAR, record=True)

    assert freshness(store, POOL, YEAR).fresh  # a ClearingCompleted changes no case row
    warm = warm_balance(store, "H003", date(YEAR, 9, 30))
    assert warm.point_value_kind == "final" and warm.point_value == recorded.point_value
    assert as_text(warm) == as_text(hospital_balance(store, "H003", date(YEAR, 9, 30), warm.known_at))


def test_a_new_verdict_makes_the_projection_stale_until_refreshed(store: LedgerStore, year_file: Path) -> None:
    refresh(store, POOL, YEAR)
    assert freshness(store, POOL, YEAR).fresh
    case_id = a_case_with_no_verdict(year_file)

    store.ingest(
        lines(verdict(case_id, outcome="violation", violation_type="upcoding", violating_points="12.5",
                      recorded_at="2021-02-01T10:00:00+08:00")),
        backfill=True, origin="test",
    )

    state = freshness(store, POOL, YEAR)
    assert not state.fresh and f"verdict-{case_id}-violation" in state.reason
    with pytest.raises(StaleProjection):
        warm_clearing(store, POOL, YEAR)
    warm = warm_clearing(store, POOL, YEAR, refresh_if_stale=True)
    assert as_text(warm) == as_text(clear_pool(store, POOL, YEAR, warm.known_at))


def test_a_new_budget_is_read_live_and_leaves_the_rows_fresh(store: LedgerStore) -> None:
    refresh(store, POOL, YEAR)
    before = warm_clearing(store, POOL, YEAR)

    store.ingest(lines(budget("123456789.00", year=YEAR, event_id="budget-revised",
                              recorded_at="2021-03-01T09:00:00+08:00")), backfill=True, origin="test")

    assert freshness(store, POOL, YEAR).fresh
    after = warm_clearing(store, POOL, YEAR)
    assert after.budget == 123456789 and after.point_value != before.point_value
    assert as_text(after) == as_text(clear_pool(store, POOL, YEAR, after.known_at))


def test_an_event_recorded_in_the_future_is_refused_and_leaves_the_projection_fresh(store: LedgerStore) -> None:
    refresh(store, POOL, YEAR)
    future = (datetime.now(UTC) + timedelta(minutes=6)).isoformat()
    report = store.ingest(lines(verdict("H001-2020-000001", outcome="upheld", event_id="verdict-from-the-future",
                                        recorded_at=future)), backfill=True, origin="test")

    assert [r.field for r in report.rejected] == ["recorded_at"]  # EVENTS.md "Transaction time"
    assert freshness(store, POOL, YEAR).fresh


def test_a_pool_year_never_refreshed_is_refused(store: LedgerStore) -> None:
    with pytest.raises(StaleProjection, match="refresh-projections"):
        warm_clearing(store, POOL, YEAR)
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(case_points_table)).scalar_one() == 0


def test_a_case_moved_to_another_hospital_keeps_both_hospitals_in_one_chunk(database_url: str) -> None:
    # Incentive approvals are capped per hospital (seed 001 二(二)): with one hospital per
    # chunk, a case whose revision names another hospital must bring both together.
    components = ("drg_table", "coefficients", "high_tech_catalogue", "case_rules", "penalty_rules", "clearing_rules")
    events = [hospital(h, grade="3A") for h in ("H001", "H002", "H003", "H004")]
    events += [policy(c) for c in components] + [budget()]
    events += [case(f"{h}-C{n}", hospital_id=h, total_cost=str(20000 + 97 * n)) for h in ("H001", "H002", "H003", "H004")
               for n in range(1, 4)]
    events += [case("MOVED", hospital_id="H001"), case("MOVED", hospital_id="H003", revision=2, total_cost="30000")]
    events += [verdict(c, outcome="incentive_approved", unreasonable_cost="100") for c in ("MOVED", "H003-C1")]
    with LedgerStore.open(database_url) as store:
        assert store.ingest(lines(*events), backfill=True, origin="test").ok
        report = refresh(store, POOL, YEAR, chunk_cases=1)
        assert report.chunks == 2  # H001..H003 (MOVED spans them), then H004
        warm = warm_clearing(store, POOL, YEAR)
        assert as_text(warm) == as_text(clear_pool(store, POOL, YEAR, warm.known_at))
