"""The commands of EVENTS.md end to end on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from drg_ledger.cli import app
from drg_ledger.policy_files import POLICIES
from projections.store import LedgerStore
from tests import factories as f
from tests.conftest import fresh_database

runner = CliRunner()
BEFORE = "2021-05-10T23:59:59+08:00"
AFTER = "2021-05-12T00:00:00+08:00"


def run(url: str, *args: str) -> Any:
    result = runner.invoke(app, [*args, "--database-url", url, "--json"])
    return result


def data(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def write(tmp_path: Path, name: str, *envelopes: dict[str, Any] | str) -> Path:
    path = tmp_path / name
    path.write_text("".join((e if isinstance(e, str) else json.dumps(e, ensure_ascii=False)) + "\n" for e in envelopes),
                    encoding="utf-8")
    return path


def story() -> list[dict[str, Any]]:
    """Two hospitals; H001 (3A) does a catalogue operation (BJ11, 04.0200x005) and is caught upcoding."""
    return [
        f.hospital("H001", grade="3A"),
        f.hospital("H002", grade="2A"),
        f.budget("100000", year=2020),
        f.case("C1", hospital_id="H001", total_cost="21422.50", personal_paid="2000",
               procedure_codes=["04.0200x005"]),
        f.case("C2", hospital_id="H002", total_cost="8426.50", drg_code="ES23", personal_paid="1000",
               discharge_date="2020-08-01"),
        f.verdict("C1", outcome="violation", violation_type="upcoding", violating_points="20"),
        f.prepayment("30000", hospital_id="H001", paid_on="2020-06-30", recorded_at="2020-06-30T12:00:00+08:00"),
    ]


@pytest.fixture
def loaded(database_url: str, tmp_path: Path) -> str:
    policies = str(POLICIES / "panzhihua.jsonl")
    assert data(run(database_url, "ingest", "--backfill", policies))["accepted"] == 7
    assert data(run(database_url, "ingest", "--backfill", str(write(tmp_path, "story.jsonl", *story()))))["accepted"] == 7
    return database_url


def test_ingest_reports_every_line_and_a_second_ingest_is_all_duplicates(loaded: str, tmp_path: Path) -> None:
    path = write(tmp_path, "story.jsonl", *story())
    before = data(run(loaded, "clear", "--pool", "panzhihua", "--year", "2020"))
    again = run(loaded, "ingest", "--backfill", str(path))
    assert data(again) == {"accepted": 0, "duplicates": 7, "rejected": []}
    assert data(run(loaded, "clear", "--pool", "panzhihua", "--year", "2020")) | {"known_at": ""} == before | {"known_at": ""}


def test_bad_lines_are_rejected_naming_line_and_field_and_exit_1(database_url: str, tmp_path: Path) -> None:
    bad_cost = f.case("C9", total_cost="12,000")
    his_budget = {**f.budget("1", year=2020), "source": "his:H001", "event_id": "his-budget"}
    path = write(tmp_path, "bad.jsonl", f.hospital("H001"), "{not json", bad_cost,
                 f.case("C8", hospital_id="H404"), his_budget, {"event_id": "x", "event_type": "CaseSubmitted"})
    result = run(database_url, "ingest", "--backfill", str(path))
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["accepted"] == 1
    reasons = {r["line"]: r["reason"] for r in report["rejected"]}
    assert set(reasons) == {2, 3, 4, 5, 6}
    assert reasons[2].startswith("malformed JSON")
    assert reasons[3].startswith("payload.total_cost:")
    assert reasons[4].startswith("payload.hospital_id: unknown hospital 'H404'")
    assert reasons[5].startswith("source: BudgetSet is operator-only")
    assert reasons[6].startswith("source:") or reasons[6].startswith("payload")
    with LedgerStore.open(database_url) as store:
        letters = store.dead_letters()
    assert sorted(bytes(d.raw) for d in letters)[0] == b"{not json" or b"{not json" in [bytes(d.raw) for d in letters]
    assert all(d.origin.startswith(f"file:{path}:") for d in letters)


def test_back_dated_catalogue_changes_the_clearing_only_when_known(loaded: str) -> None:
    before = data(run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--known-at", BEFORE))
    after = data(run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--known-at", AFTER))
    h1 = {h["hospital_id"]: h for h in before["hospitals"]}["H001"]
    h1_after = {h["hospital_id"]: h for h in after["hospitals"]}["H001"]
    # BJ11 at AC exactly: 225.50 x 1.00 = 225.50 before; 225.50 x 1.6 = 360.80 after; upcoding 20
    # is not settled and 4 x 20 = 80 deducted.
    assert (h1["settled_points"], h1["deducted_points"], h1["net_points"]) == ("205.5000", "80.0000", "125.5000")
    assert h1_after["net_points"] == "260.8000"
    # H002: ES23 at AC exactly (88.70 x 95 = 8,426.50): 88.70 x 0.85 = 75.395.
    # PV = (100,000 + 3,000 personal) / (125.5 + 75.395) = 512.705642 before; / 336.195 after
    assert (before["total_points"], before["point_value"]) == ("200.8950", "512.705642")
    assert (after["total_points"], after["point_value"]) == ("336.1950", "306.369815")
    assert set(before) == {"pool", "year", "known_at", "point_value", "total_points", "budget", "hospitals", "basis"}
    assert set(h1) == {"hospital_id", "settled_points", "deducted_points", "net_points", "personal_paid",
                       "fund_due", "prepaid", "clearing_amount"}


def test_cold_replay_of_the_journal_equals_the_projected_clearing(loaded: str) -> None:
    projected = data(run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--known-at", AFTER))
    cold = data(run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--known-at", AFTER, "--cold"))
    # the two read different things (case versions and pool events; the journal's events), at one position
    a, b = projected.pop("basis"), cold.pop("basis")
    assert a["journal_position"] == b["journal_position"] and a["events_read"] and b["events_read"]
    assert cold == projected


def test_recorded_clearing_makes_balances_final(loaded: str) -> None:
    provisional = data(run(loaded, "balance", "--hospital", "H001", "--as-of", "2020-12-31"))
    assert provisional["point_value_kind"] == "provisional"
    cleared = data(run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--record"))
    final = data(run(loaded, "balance", "--hospital", "H001", "--as-of", "2020-12-31"))
    assert final["point_value_kind"] == "final" and final["point_value"] == cleared["point_value"]
    line = {h["hospital_id"]: h for h in cleared["hospitals"]}["H001"]
    assert final["clearing_amount"] == line["clearing_amount"]
    # an auditor asking as known before the clearing was recorded still sees the provisional value
    assert data(run(loaded, "balance", "--hospital", "H001", "--as-of", "2020-12-31", "--known-at", AFTER))[
        "point_value_kind"] == "provisional"


def test_provisional_balance_mid_year(loaded: str) -> None:
    b = data(run(loaded, "balance", "--hospital", "H001", "--as-of", "2020-06-30", "--known-at", AFTER))
    # window 1 Jan..30 Jun 2020: 182 of 366 days; only C1 (260.8 points, 2,000 personal) is in it
    # B_window = 100,000 x 182 / 366 = 49,726.78; PV = (49,726.78 + 2,000) / 260.8 = 198.338880
    assert (b["point_value"], b["net_points"], b["prepaid"]) == ("198.338880", "260.8000", "30000.00")
    assert b["fund_due"] == str((Decimal("260.8") * Decimal("198.338880") - 2000).quantize(Decimal("0.01")))


def test_explain_and_the_derived_penalty(loaded: str) -> None:
    e = data(run(loaded, "explain", "--case", "C1", "--known-at", AFTER))
    assert e["coefficient"]["why"] == "high_tech_catalogue:3A" and e["points_before_verdict"] == "360.8000"
    assert e["penalty"]["clause"] == "攀医保规〔2023〕6号 第十八条(五)"
    with LedgerStore.open(loaded) as store:
        (penalty,) = [ev for ev in store.load(case_ids=["C1"]) if ev.event_type == "PenaltyImposed"]
    # derived when the verdict was recorded, before the catalogue: 4 x 20
    assert penalty.source == "system" and penalty.payload.deducted_points == Decimal("80.0000")


def test_an_answer_counts_each_event_it_rests_on_once(loaded: str) -> None:
    # As known at AFTER the pool's own events are 10: six policy versions (not the penalty rules
    # recorded in 2023), two registrations, the 2020 budget and H001's prepayment.
    e = data(run(loaded, "explain", "--case", "C1", "--known-at", AFTER))
    assert e["basis"]["events_read"] == 10 + 3  # and C1's submission, verdict and derived penalty
    # H002's balance parses no prepayment of H001's, but rests on it: 10, and C1, the one case
    # discharged by 30 June.
    b = data(run(loaded, "balance", "--hospital", "H002", "--as-of", "2020-06-30", "--known-at", AFTER))
    assert b["basis"]["events_read"] == 10 + 1


def test_not_found_and_cannot_compute_exit_codes(loaded: str, database_url: str) -> None:
    assert run(loaded, "balance", "--hospital", "H404", "--as-of", "2020-06-30").exit_code == 3
    assert run(loaded, "explain", "--case", "C404").exit_code == 3
    assert run(loaded, "clear", "--pool", "panzhihua", "--year", "2019").exit_code == 4
    assert run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--known-at", "yesterday").exit_code == 2


def test_a_hospital_cannot_move_to_another_pool(loaded: str, tmp_path: Path) -> None:
    moved = f.hospital("H001", pool="xuancheng", event_id="reg-xc-H001")
    result = run(loaded, "ingest", "--backfill", str(write(tmp_path, "move.jsonl", moved)))
    assert result.exit_code == 1
    assert json.loads(result.stdout)["rejected"][0]["reason"].startswith("payload.pool:")


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(order=st.permutations(list(range(len(story())))), split=st.integers(min_value=1, max_value=6))
def test_arrival_order_and_redelivery_through_the_store_do_not_change_the_clearing(
    database_kind: str, tmp_path_factory: pytest.TempPathFactory, order: list[int], split: int
) -> None:
    # EVENTS.md "Order of arrival": registrations must come first (a case of an unknown
    # hospital is refused), everything else in any order, in two files, the second redelivered.
    events = story()
    regs, rest = events[:2], [events[i] for i in order if i >= 2]
    tmp = tmp_path_factory.mktemp("order")
    first = write(tmp, "a.jsonl", *regs, *rest[:split])
    second = write(tmp, "b.jsonl", *rest[split:])
    with fresh_database(database_kind, tmp) as url:
        for path in (POLICIES / "panzhihua.jsonl", first, second, first, second):
            run(url, "ingest", "--backfill", str(path))
        got = data(run(url, "clear", "--pool", "panzhihua", "--year", "2020", "--known-at", AFTER))
    assert (got["total_points"], got["point_value"]) == ("336.1950", "306.369815")


def test_a_100000_event_file_ingests_exactly_and_a_second_time_is_all_duplicates(
    database_url: str, tmp_path: Path
) -> None:
    """issue 2 "Done when": 100,000 events, reported exactly; the second ingest changes no figure."""
    from drg_ledger.generate import generate

    full = tmp_path / "full.jsonl"
    generate(full, cases=95_000, hospitals=60, year=2020, seed=7)
    with full.open("rb") as src:
        head = [next(src) for _ in range(100_000)]
    path = tmp_path / "100k.jsonl"
    path.write_bytes(b"".join(head))
    first = data(run(database_url, "ingest", "--backfill", str(path)))
    assert first["rejected"] == [] and first["accepted"] + first["duplicates"] == 100_000
    cleared = data(run(database_url, "clear", "--pool", "panzhihua", "--year", "2020", "--known-at", AFTER))
    assert data(run(database_url, "ingest", "--backfill", str(path))) == {"accepted": 0, "duplicates": 100_000, "rejected": []}
    assert data(run(database_url, "clear", "--pool", "panzhihua", "--year", "2020", "--known-at", AFTER)) == cleared


def test_penalty_is_derived_when_the_policy_arrives_after_the_verdict(database_url: str, tmp_path: Path) -> None:
    # EVENTS.md "Order of arrival": the verdict is kept and takes effect once it can.
    data(run(database_url, "ingest", "--backfill", str(write(tmp_path, "story.jsonl", *story()))))
    with LedgerStore.open(database_url) as store:
        assert [e for e in store.load(case_ids=["C1"]) if e.event_type == "PenaltyImposed"] == []
    data(run(database_url, "ingest", "--backfill", str(POLICIES / "panzhihua.jsonl")))
    with LedgerStore.open(database_url) as store:
        (penalty,) = [e for e in store.load(case_ids=["C1"]) if e.event_type == "PenaltyImposed"]
    assert penalty.payload.deducted_points == Decimal("80.0000")


@pytest.mark.parametrize("pool", ["nosuchpool", "emptypool"])
def test_a_pool_without_hospitals_clears_as_the_cold_replay_does(loaded: str, tmp_path: Path, pool: str) -> None:
    # The projection skips summing a pool no hospital is registered in (projections/queries.py
    # `projected_clearing`): the answer, here an error and its exit code, is the replay's.
    data(run(loaded, "ingest", "--backfill", str(write(tmp_path, "budget.jsonl", f.budget("5000", pool="emptypool")))))
    projected = run(loaded, "clear", "--pool", pool, "--year", "2020", "--known-at", AFTER)
    cold = run(loaded, "clear", "--pool", pool, "--year", "2020", "--known-at", AFTER, "--cold")
    assert (projected.exit_code, projected.output) == (cold.exit_code, cold.output)
    assert projected.exit_code == 4, projected.output
