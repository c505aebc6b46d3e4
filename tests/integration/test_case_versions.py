"""The bitemporal case-points projection (projections/case_versions.py) against the cold replay.

Every figure the projection gives at a `known_at` must be the one `settle` folds from the
journal's events recorded by then (RULES.md 2-6), whatever order the events arrived in, with
duplicates, back-dated `recorded_at` and revisions; a crash mid-update heals on the next open.
Both databases (tests/conftest.py).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from ledger.clearing import ClearingError, clearing, settle
from ledger.policy import PolicyMissing
from projections import case_versions
from ledger.explain import UnknownCase, explain
from projections.queries import NotFound, clear_pool, explain_case, hospital_balance
from projections.running_totals import projected_totals, reconcile, totals_by_hospital
from projections import store as store_module
from projections.store import LedgerStore
from tests import factories as f
from tests.conftest import fresh_database

POOL = "panzhihua"
START = datetime(2020, 1, 2, tzinfo=UTC)
CAP_RULES = {**f.DEFAULT_BODIES["case_rules"], "incentive_cap_per_mille": {"3": "500", "2": "340", "1": "250"}}
"""A cap of half the cases (3A): a few cases make approvals cross it both ways (seed 001 二(二))."""


def stamp(hours: int) -> str:
    return (START + timedelta(hours=hours)).isoformat()


def world(draw: Any) -> list[dict[str, Any]]:
    """A pool-year with every kind of event that moves a case's figures, each at a drawn moment."""
    events: list[dict[str, Any]] = [
        f.hospital("H001", grade="3A"), f.hospital("H002", grade="2A"), f.budget("500000.00"),
        *(f.policy(c) for c in ("drg_table", "coefficients", "penalty_rules", "clearing_rules")),
        f.policy("case_rules", CAP_RULES),
    ]
    hours = st.integers(min_value=0, max_value=9000)
    if draw(st.booleans()):  # a back-dated catalogue (seed 000: issued 2021, valid from 2020-01-01)
        events.append(f.policy("high_tech_catalogue", recorded_at=stamp(draw(hours))))
    if draw(st.booleans()):  # a coefficient declared later for one hospital (RULES.md 2)
        events.append(f.envelope("CoefficientChanged", {
            "pool": POOL, "hospital_id": "H001", "coefficient": "1.2", "effective_from": "2020-01-01",
            "reason": "declared in January"}, event_id="coef-H001", recorded_at=stamp(draw(hours))))
    if draw(st.booleans()):  # a re-registration: a new grade moves coefficients and the cap's level
        events.append(f.hospital("H002", grade="3B", event_id="reg-H002-3B", recorded_at=stamp(draw(hours))))
    for i in range(draw(st.integers(min_value=1, max_value=9))):
        cid, hospital = f"C{i}", draw(st.sampled_from(["H001", "H002"]))
        day = f"2020-{draw(st.integers(1, 12)):02d}-{draw(st.integers(1, 28)):02d}"
        drg = draw(st.sampled_from(["BJ11", "GB21"]))
        cost = draw(st.sampled_from(["21422.50", "5000", "90000", "800"]))
        codes = ["04.0200x005"] if draw(st.booleans()) else []
        events.append(f.case(cid, hospital_id=hospital, discharge_date=day, drg_code=drg, total_cost=cost,
                             personal_paid="100.50", procedure_codes=codes, recorded_at=stamp(draw(hours))))
        if draw(st.booleans()):  # a revision, perhaps recorded before the first one (EVENTS.md "Order of arrival")
            events.append(f.case(cid, hospital_id=hospital, revision=2, discharge_date=day, drg_code="GB21",
                                 total_cost="12000", recorded_at=stamp(draw(hours))))
        for n in range(draw(st.integers(0, 2))):
            outcome = draw(st.sampled_from(["incentive_approved", "violation", "special_review_approved", "upheld"]))
            extra: dict[str, Any] = {"violation_type": "upcoding", "violating_points": "10"} if outcome == "violation" else {}
            events.append(f.verdict(cid, outcome=outcome, event_id=f"verdict-{cid}-{n}", recorded_at=stamp(draw(hours)),
                                    **extra))
        if draw(st.integers(0, 4)) == 0:
            events.append(f.withdrawal(cid, hospital_id=hospital, recorded_at=stamp(draw(hours))))
    return events


def outcome(fn: Any) -> Any:
    try:
        return fn()
    except (ClearingError, PolicyMissing) as exc:
        return ("cannot be computed", str(exc).split(":")[0][:0])


def check_against_replay(store: LedgerStore, moments: list[datetime]) -> None:
    journal = list(store.replay())
    for at in moments:
        cold = outcome(lambda: totals_by_hospital(settle(journal, POOL, 2020, at)))
        projected = outcome(lambda: projected_totals(store, POOL, 2020, at))
        if isinstance(cold, dict) and isinstance(projected, dict):
            for h in set(cold) | set(projected):
                assert projected.get(h, cold.get(h)) == cold.get(h, projected.get(h)), (at, h)
                if h in cold and cold[h].cases:
                    assert projected[h] == cold[h], (at, h)
        else:
            assert projected == cold, at
        expected = outcome(lambda: clearing(settle(journal, POOL, 2020, at)).as_json())
        got = outcome(lambda: {k: v for k, v in clear_pool(store, POOL, 2020, at).as_json().items() if k != "basis"})
        assert got == expected, at
    # `explain` reads only the case's events, its pool's and the projection's cap answer
    at = moments[-1]
    for case_id in sorted({e.payload.case_id for e in journal if e.event_type == "CaseSubmitted"}):
        try:
            expected = explain(journal, case_id, at)
        except (UnknownCase, ClearingError, PolicyMissing) as exc:
            expected = type(exc).__name__
        try:
            got = explain_case(store, case_id, at)
            got.pop("basis"), got.pop("ingested_at")
        except (NotFound, ClearingError, PolicyMissing) as exc:
            got = "UnknownCase" if isinstance(exc, NotFound) else type(exc).__name__
        assert got == expected, case_id


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_the_projection_at_any_known_at_equals_the_cold_replay(database_kind: str, tmp_path: Path, data: Any) -> None:
    events = world(data.draw)
    order = data.draw(st.randoms(use_true_random=False))
    arrivals = list(events) + [order.choice(events) for _ in range(3)]  # redelivered
    order.shuffle(arrivals)
    # Registrations first: the store refuses a case of a hospital it does not know (EVENTS.md).
    arrivals.sort(key=lambda e: e["event_type"] != "HospitalRegistered")
    # Two writers on one database, taking batches in turn at random: each projector keeps the
    # cap's rows between its own batches and must drop them when the other has written. The
    # cases a batch reaches are recomputed in chunks of a drawn size.
    chunk, case_versions._CHUNK = case_versions._CHUNK, data.draw(st.sampled_from([1, 2, 20_000]))
    try:
        with fresh_database(database_kind, tmp_path) as url, LedgerStore(url) as store, LedgerStore(url) as other:
            at = 0
            while at < len(arrivals):
                size = order.randint(1, 6)
                order.choice([store, other]).ingest(f.lines(*arrivals[at : at + size]), backfill=True,
                                                    origin=f"batch-{at}")
                at += size
            moments = sorted({datetime.fromisoformat(e["recorded_at"]) for e in events})
            probes = [START + timedelta(hours=order.randint(0, 9500)) for _ in range(6)]
            check_against_replay(store, [*moments, *probes, datetime.now(UTC)])
    finally:
        case_versions._CHUNK = chunk


@pytest.mark.parametrize("chunk", [1, 2])
def test_the_cases_a_pool_event_reaches_are_read_a_page_at_a_time_each_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    # A back-dated coefficient (RULES.md 2) reaches every case of H001: they are read in
    # case-id order, at most `_CHUNK` a page (a province's catalogue reaches 5M), a case's
    # rows never split over two pages (C2 holds two rows live after the coefficient, more
    # than a page of one). BJ11 225.50 x 1.2 = 270.6000 a case (RULES.md 3 type 5).
    monkeypatch.setattr(case_versions, "_CHUNK", chunk)
    pages: list[list[str]] = []
    real = case_versions._reached

    def spy(conn: Any, reaching: Any) -> Any:
        for page in real(conn, reaching):
            pages.append(sorted(page))
            yield page

    monkeypatch.setattr(case_versions, "_reached", spy)
    cases = ["C1", "C2", "C3", "C4", "C5"]
    with LedgerStore(database_url) as store:
        store.ingest(f.lines(f.hospital("H001"), f.budget("100000.00"),
                             *(f.policy(c) for c in ("drg_table", "coefficients", "case_rules", "penalty_rules",
                                                     "clearing_rules")),
                             *(f.case(c) for c in cases),
                             f.case("C2", revision=2, personal_paid="100", recorded_at="2021-03-01T10:00:00+08:00")),
                     backfill=True, origin="t")
        pages.clear()
        store.ingest(f.lines(f.envelope("CoefficientChanged", {
            "pool": POOL, "hospital_id": "H001", "coefficient": "1.2", "effective_from": "2020-01-01",
            "reason": "declared in January"}, event_id="coef-H001", recorded_at="2021-01-20T10:00:00+08:00")),
            backfill=True, origin="t2")
        assert all(0 < len(p) <= chunk for p in pages) and [c for p in pages for c in p] == cases
        for at in (datetime(2021, 2, 1, tzinfo=UTC), datetime(2021, 4, 1, tzinfo=UTC)):
            assert str(clear_pool(store, POOL, 2020, at).total_points) == "1353.0000"
        assert str(clear_pool(store, POOL, 2020, datetime(2021, 1, 1, tzinfo=UTC)).total_points) == "1127.5000"


def test_a_back_dated_coefficient_moves_only_the_answers_asked_after_it_was_recorded(database_url: str) -> None:
    # RULES.md 2: a version recorded at R changes every answer as known at or after R, never before.
    with LedgerStore(database_url) as store:
        store.ingest(f.lines(f.hospital("H001"), f.budget("100000.00"),
                             *(f.policy(c) for c in ("drg_table", "coefficients", "case_rules", "penalty_rules",
                                                     "clearing_rules")),
                             f.case("C1"), f.case("C2", drg_code="GB21", total_cost="9500.00")),
                     backfill=True, origin="t")
        before = clear_pool(store, POOL, 2020, datetime(2021, 1, 1, tzinfo=UTC))
        store.ingest(f.lines(f.envelope("CoefficientChanged", {
            "pool": POOL, "hospital_id": "H001", "coefficient": "1.2", "effective_from": "2020-01-01",
            "reason": "declared in January"}, event_id="coef-H001", recorded_at="2021-01-20T10:00:00+08:00")),
            backfill=True, origin="t2")
        # BJ11 225.50 x 1.2 = 270.6000; GB21 100 x 1.2 = 120.0000 (RULES.md 3 type 5)
        after = clear_pool(store, POOL, 2020, datetime(2021, 2, 1, tzinfo=UTC))
        assert before.total_points == 325.5 and str(after.total_points) == "390.6000"
        again = clear_pool(store, POOL, 2020, datetime(2021, 1, 1, tzinfo=UTC))  # asked again: as known then
        assert (again.hospitals, again.point_value) == (before.hospitals, before.point_value)
        with store.engine.connect() as conn:
            rows = case_versions.versions_of(conn, "C1")
        assert [(str(r.figures.settled), r.known_until is None) for r in rows] == [("225.5000", False), ("270.6000", True)]
        assert hospital_balance(store, "H001", datetime(2020, 12, 31).date(),
                                datetime(2021, 2, 1, tzinfo=UTC)).line.net_points == after.total_points
        assert reconcile(store, POOL, 2020, running=False).ok


def test_a_lost_projection_heals_when_the_store_opens(database_url: str) -> None:
    events = [f.hospital("H001"), f.budget("100000.00"),
              *(f.policy(c) for c in ("drg_table", "coefficients", "case_rules", "penalty_rules", "clearing_rules")),
              *(f.case(f"C{i}", discharge_date=f"2020-0{1 + i % 9}-10") for i in range(20)),
              f.verdict("C3", outcome="violation", violation_type="upcoding", violating_points="10")]
    with LedgerStore(database_url) as store:
        store.ingest(f.lines(*events), backfill=True, origin="t")
        expected = clear_pool(store, POOL, 2020).as_json()
        with store.engine.begin() as conn:
            case_versions.clear_rows(conn)  # as a store from before the projection, or a crash, leaves it
    with LedgerStore(database_url) as store:
        with store.engine.connect() as conn:
            assert case_versions.position(conn) == store.position
        got = clear_pool(store, POOL, 2020).as_json()
        assert {k: v for k, v in got.items() if k not in ("basis", "known_at")} == \
            {k: v for k, v in expected.items() if k not in ("basis", "known_at")}
        assert store.rebuild()["events"] == store.journal.head()
        assert reconcile(store, POOL, 2020, running=False).ok


def test_random_arrival_in_one_pool_year_on_the_cli(database_url: str, tmp_path: Path) -> None:
    """`reconcile` as a user types it: every policy moment, exit 0; `totals --known-at` equals
    the cold clearing's points per hospital."""
    import json

    from typer.testing import CliRunner

    from drg_ledger.cli import app

    events = [f.hospital("H001"), f.hospital("H002", grade="2A"), f.budget("100000.00"),
              *(f.policy(c) for c in ("drg_table", "coefficients", "case_rules", "penalty_rules", "clearing_rules")),
              f.policy("high_tech_catalogue", recorded_at="2021-05-11T00:00:00+08:00"),
              *(f.case(f"C{i}", hospital_id=f"H00{1 + i % 2}", procedure_codes=["04.0200x005"]) for i in range(8))]
    random.Random(3).shuffle(events)
    events.sort(key=lambda e: e["event_type"] != "HospitalRegistered")
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(f.lines(*events)) + b"\n")
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", "--backfill", "--database-url", database_url, str(path)]).exit_code == 0
    done = runner.invoke(app, ["reconcile", "--pool", POOL, "--year", "2020", "--database-url", database_url, "--json"])
    assert done.exit_code == 0, done.output
    assert len(json.loads(done.stdout)["projection"]) == 3  # T0, the catalogue, now
    for at in ("2021-05-10T00:00:00+08:00", "2021-05-12T00:00:00+08:00"):
        totals = runner.invoke(app, ["totals", "--pool", POOL, "--year", "2020", "--known-at", at,
                                     "--database-url", database_url, "--json"])
        cold = runner.invoke(app, ["clear", "--cold", "--pool", POOL, "--year", "2020", "--known-at", at,
                                   "--database-url", database_url, "--json"])
        assert totals.exit_code == 0 and cold.exit_code == 0, (totals.output, cold.output)
        net = {r["hospital_id"]: r["net_points"] for r in json.loads(totals.stdout)}
        assert net == {h["hospital_id"]: h["net_points"] for h in json.loads(cold.stdout)["hospitals"]}


def test_a_bulk_load_keeps_the_projection_s_planner_statistics(tmp_path: Path, monkeypatch: Any) -> None:
    # A load outruns autovacuum (off on some servers): without statistics on the projection,
    # PostgreSQL read a province pool-year's clearing through the pool-year index, 6x slower.
    monkeypatch.setattr(store_module, "_ANALYZE_ROWS", 5)
    events = [f.hospital("H001"), f.budget("100000.00"),
              *(f.policy(c) for c in ("drg_table", "coefficients", "case_rules", "penalty_rules", "clearing_rules")),
              *(f.case(f"C{i}", discharge_date=f"2020-0{1 + i % 9}-10") for i in range(20))]
    with fresh_database("postgresql", tmp_path) as url, LedgerStore(url) as store:
        store.ingest(f.lines(*events), backfill=True, origin="t", batch_size=5)
        with store.engine.connect() as conn:
            tuples = dict(conn.execute(text(
                "SELECT relname, reltuples FROM pg_class WHERE relnamespace = current_schema()::regnamespace "
                "AND relname IN ('ledger_index', 'case_versions')")).all())
    assert tuples["ledger_index"] > 0 and tuples["case_versions"] > 0, tuples
