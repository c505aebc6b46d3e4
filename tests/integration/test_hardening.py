"""Hardening the intake on SQLite and PostgreSQL (EVENTS.md "Transaction time, seals and
backfill", "Limits on input", "Bad input"): the late-arrival window and backfill, seals,
a kill at each step of an ingest, concurrent registrations, dead letters kept once, a
clearing recorded once, answers that say what they rest on, and `doctor`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from typer.testing import CliRunner

from drg_ledger.cli import app
from drg_ledger.generate import generate
from drg_ledger.policy_files import POLICIES
from projections.store import FAULT_ENV, FAULT_STEPS, Backfill, LedgerStore, hospital_pools_table, index_table
from tests import factories as f

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
SEAL = "2021-03-01T12:00:00+08:00"


def cli(url: str, *args: str) -> Any:
    return runner.invoke(app, [*args, "--database-url", url, "--json"])


def out(result: Any, code: int = 0) -> Any:
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def write(path: Path, *envelopes: dict[str, Any] | bytes) -> Path:
    path.write_bytes(b"".join((e if isinstance(e, bytes) else json.dumps(e, ensure_ascii=False).encode()) + b"\n"
                              for e in envelopes))
    return path


def story() -> list[dict[str, Any]]:
    return [
        f.hospital("H001", grade="3A"),
        f.hospital("H002", grade="2A"),
        f.budget("100000", year=2020),
        f.case("C1", hospital_id="H001", personal_paid="2000", procedure_codes=["04.0200x005"]),
        f.case("C2", hospital_id="H002", total_cost="8426.50", drg_code="ES23", personal_paid="1000",
               discharge_date="2020-08-01"),
        f.verdict("C1", outcome="violation", violation_type="upcoding", violating_points="20"),
    ]


@pytest.fixture
def loaded(database_url: str, tmp_path: Path) -> str:
    out(cli(database_url, "ingest", "--backfill", str(POLICIES / "panzhihua.jsonl")))
    out(cli(database_url, "ingest", "--backfill", str(write(tmp_path / "story.jsonl", *story()))))
    return database_url


# --------------------------------------------------------------------------- transaction time


def test_the_late_arrival_window_refuses_old_stamps_unless_backfilled(database_url: str) -> None:
    now = datetime(2021, 3, 1, tzinfo=UTC)  # 08:00 China time
    with LedgerStore.open(database_url) as store:
        assert store.ingest(f.lines(f.hospital("H001")), origin="reg", now=now, backfill=True).ok
        late = f.case("C1", recorded_at="2021-02-21T07:59:59+08:00")  # 7 days and 1 s before
        edge = f.case("C2", recorded_at="2021-02-22T08:00:00+08:00")  # exactly 7 days before
        future = f.case("C3", recorded_at="2021-03-01T08:05:01+08:00")  # 5 min 1 s ahead
        near = f.case("C4", recorded_at="2021-03-01T08:05:00+08:00")
        report = store.ingest(f.lines(late, edge, future, near), origin="his", now=now)
        assert report.accepted == 2
        refused = {r.line: r for r in report.rejected}
        assert set(refused) == {1, 3}
        assert refused[1].field == "recorded_at" and "late-arrival window (7 days)" in refused[1].reason
        assert refused[3].field == "recorded_at" and "in the future" in refused[3].reason

        loaded = store.ingest(f.lines(late, future), origin="file:old.jsonl", now=now,
                              backfill=Backfill("operator:alice", "ab" * 32))
        # A backfill admits the old stamp, never a future one.
        assert loaded.accepted == 1 and [r.line for r in loaded.rejected] == [2]
        (record,) = [e for e in store.load() if e.event_type == "HistoryBackfilled"][-1:]
        assert record.source == "system" and record.payload.run_by == "operator:alice"
        assert record.payload.file_sha256 == "ab" * 32 and record.payload.events == 1
        assert record.payload.recorded_from == record.payload.recorded_to == datetime.fromisoformat(late["recorded_at"])
        assert store.event("his-H001-C1-r1").ingested_at == now


def test_the_window_is_configurable(database_url: str) -> None:
    now = datetime(2021, 3, 1, tzinfo=UTC)
    with LedgerStore(database_url, late_window=timedelta(days=30)) as store:
        store.ingest(f.lines(f.hospital("H001")), origin="reg", now=now, backfill=True)
        assert store.ingest(f.lines(f.case("C1", recorded_at="2021-02-10T10:00:00+08:00")), origin="his", now=now).ok


def test_ingest_backfill_journals_who_loaded_which_file(database_url: str, tmp_path: Path) -> None:
    import hashlib

    path = write(tmp_path / "history.jsonl", *story())
    report = out(cli(database_url, "ingest", "--backfill", "--run-by", "operator:bob", str(path)))
    assert report == {"accepted": 6, "duplicates": 0, "rejected": []}
    with LedgerStore.open(database_url) as store:
        (record,) = [e for e in store.load() if e.event_type == "HistoryBackfilled"]
    assert record.payload.file_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (record.payload.run_by, record.payload.events) == ("operator:bob", 6)
    assert record.payload.recorded_from == datetime.fromisoformat(f.T0)
    # The same file again: all duplicates, nothing new to account for.
    assert out(cli(database_url, "ingest", "--backfill", str(path))) == {"accepted": 0, "duplicates": 6, "rejected": []}
    without = cli(database_url, "ingest", str(write(tmp_path / "old.jsonl", f.case("C9"))))
    assert without.exit_code == 1 and "late-arrival window" in without.stdout


def test_a_recorded_clearing_seals_its_pool_year_up_to_its_known_at(loaded: str, tmp_path: Path) -> None:
    sealed = out(cli(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--known-at", SEAL, "--record"))
    back_stamped = [
        f.case("C7", hospital_id="H002", total_cost="9000", drg_code="ES23", recorded_at="2020-06-01T10:00:00+08:00",
               discharge_date="2020-05-30"),
        f.withdrawal("C1", hospital_id="H001", recorded_at="2021-02-01T10:00:00+08:00"),
        f.verdict("C2", outcome="violation", violation_type="upcoding", violating_points="5",
                  recorded_at="2021-01-05T10:00:00+08:00"),
        f.budget("200000", year=2020, event_id="budget-2020-revised", recorded_at="2021-02-01T10:00:00+08:00"),
        f.envelope("CoefficientChanged", {"pool": "panzhihua", "hospital_id": "H002", "coefficient": "1.2",
                                          "effective_from": "2020-01-01", "reason": "back-dated"},
                   event_id="coef-H002-2020", recorded_at="2021-02-01T10:00:00+08:00"),
    ]
    result = cli(loaded, "ingest", "--backfill", str(write(tmp_path / "late.jsonl", *back_stamped)))
    report = out(result, 1)
    assert report["accepted"] == 0 and [r["line"] for r in report["rejected"]] == [1, 2, 3, 4, 5]
    assert all(r["reason"].startswith("recorded_at:") and "seal of panzhihua 2020" in r["reason"]
               for r in report["rejected"])
    # Outside the seal: another pool-year, or recorded after the seal's known_at.
    other_year = f.case("C8", hospital_id="H002", total_cost="9000", drg_code="ES23", discharge_date="2019-12-20",
                        recorded_at="2020-06-01T10:00:00+08:00")
    after_seal = f.case("C9", hospital_id="H002", total_cost="9000", drg_code="ES23", discharge_date="2020-05-30",
                        recorded_at="2021-03-02T10:00:00+08:00")
    assert out(cli(loaded, "ingest", "--backfill", str(write(tmp_path / "ok.jsonl", other_year, after_seal))))[
        "accepted"] == 2
    again = out(cli(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--known-at", SEAL))
    assert {k: v for k, v in again.items() if k != "basis"} == {k: v for k, v in sealed.items() if k not in ("basis", "log_digest")}
    now = out(cli(loaded, "clear", "--pool", "panzhihua", "--year", "2020"))
    assert now["total_points"] != sealed["total_points"]  # the correction shows in the next clearing


def test_recording_the_same_clearing_twice_is_one_event(loaded: str) -> None:
    args = ("clear", "--pool", "panzhihua", "--year", "2020", "--known-at", SEAL, "--record")
    assert out(cli(loaded, *args)) | {"basis": None} == out(cli(loaded, *args)) | {"basis": None}
    with LedgerStore.open(loaded) as store:
        assert store.counts()["ClearingCompleted"] == 1


def test_answers_say_what_they_rest_on(loaded: str) -> None:
    with LedgerStore.open(loaded) as store:
        head = store.journal.head()
    for args in (("clear", "--pool", "panzhihua", "--year", "2020"),
                 ("clear", "--pool", "panzhihua", "--year", "2020", "--cold"),
                 ("balance", "--hospital", "H001", "--as-of", "2020-12-31"),
                 ("explain", "--case", "C1")):
        basis = out(cli(loaded, *args))["basis"]
        assert basis["journal_position"] == head
        assert basis["events_read"] >= 5
        assert datetime.fromisoformat(basis["latest_ingested_at"]) > datetime.now(UTC) - timedelta(minutes=5)
    assert set(out(cli(loaded, "explain", "--case", "C1"))["ingested_at"]) == {"his-H001-C1-r1"}
    text = runner.invoke(app, ["clear", "--pool", "panzhihua", "--year", "2020", "--database-url", loaded])
    assert f"up to journal position {head:,}" in text.stdout


# --------------------------------------------------------------------------- dead letters, doctor


def test_dead_letters_are_kept_once_and_shown_with_field_and_raw_bytes(database_url: str, tmp_path: Path) -> None:
    nul = json.dumps(f.hospital("H\u0000X")).encode()
    path = write(tmp_path / "bad.jsonl", f.hospital("H001"), b"{not json", nul, b"\xff\xfe")
    for _ in range(2):
        assert cli(database_url, "ingest", "--backfill", str(path)).exit_code == 1
    letters = out(cli(database_url, "dead-letters", "--raw"))
    assert len(letters) == 3 and {d["origin"] for d in letters} == {f"file:{path}:{n}" for n in (2, 3, 4)}
    by_line = {int(d["origin"].rsplit(":", 1)[1]): d for d in letters}
    assert by_line[2]["raw"] == "{not json" and by_line[2]["field"] == ""
    assert "\\x00" in by_line[3]["raw"] or "\\u0000" in by_line[3]["raw"]
    assert by_line[4]["raw"] == "\\xff\\xfe" and by_line[4]["raw_length"] == 2
    assert "raw" not in out(cli(database_url, "dead-letters"))[0]
    assert out(cli(database_url, "dead-letters", "--since", "2999-01-01")) == []
    assert len(out(cli(database_url, "dead-letters", "--reason", "malformed JSON"))) == 1
    table = runner.invoke(app, ["dead-letters", "--raw", "--database-url", database_url])
    assert table.exit_code == 0 and "not json" in table.stdout


def test_doctor_says_a_healthy_store_is_healthy_and_mends_what_can_be_derived(loaded: str) -> None:
    checks = out(cli(loaded, "doctor"))
    assert {c["status"] for c in checks} == {"ok"}, checks
    with LedgerStore.open(loaded) as store, store.engine.begin() as conn:
        conn.execute(delete(hospital_pools_table))
    problems = out(cli(loaded, "doctor", "--check-only"), 1)
    assert {c["check"]: c["status"] for c in problems}["pools never mix"] == "problem"
    mended = out(cli(loaded, "doctor"))
    assert {c["check"]: c["status"] for c in mended}["pools never mix"] == "repaired"
    assert {c["status"] for c in out(cli(loaded, "doctor"))} == {"ok"}
    before = out(cli(loaded, "clear", "--pool", "panzhihua", "--year", "2020"))
    from projections import case_versions

    with LedgerStore.open(loaded) as store, store.engine.begin() as conn:
        case_versions.clear_rows(conn)  # the projection lost, as an older store has none
    problems = out(cli(loaded, "doctor", "--check-only"), 1)
    assert {c["check"]: c["status"] for c in problems}["case-points projection caught up"] == "problem"
    assert {c["check"]: c["status"] for c in out(cli(loaded, "doctor"))}["case-points projection caught up"] in (
        "ok", "repaired")  # opening the store heals it already
    after = out(cli(loaded, "clear", "--pool", "panzhihua", "--year", "2020"))
    assert after["hospitals"] == before["hospitals"] and after["point_value"] == before["point_value"]
    rebuilt = out(cli(loaded, "rebuild"))
    assert rebuilt["events"] > 0 and rebuilt["penalties"] == 0


# --------------------------------------------------------------------------- races and kills


def test_two_concurrent_registrations_of_one_hospital_in_two_pools_one_wins(database_url: str) -> None:
    with LedgerStore.open(database_url):
        pass  # tables exist before the race
    for attempt in range(3):
        hid = f"HX{attempt}"
        barrier = threading.Barrier(2)
        reports: dict[str, Any] = {}

        def register(pool: str) -> None:
            with LedgerStore.open(database_url) as store:
                barrier.wait()
                reports[pool] = store.ingest(f.lines(f.hospital(hid, pool=pool)), origin=pool, backfill=True)

        threads = [threading.Thread(target=register, args=(p,)) for p in ("panzhihua", "xuancheng")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r.accepted for r in reports.values()) == [0, 1]
        (loser,) = [r for r in reports.values() if not r.ok]
        assert loser.rejected[0].field == "payload.pool"
        with LedgerStore.open(database_url) as store:
            assert [p.pool for h, p in store.hospitals().items() if h == hid] == [
                p for p, r in reports.items() if r.ok]


def snapshot(url: str) -> dict[str, Any]:
    """What a clean ingest leaves: every event once (by id and submitted content), the
    penalties, the dead letters, and the clearing. `HistoryBackfilled` records are left out:
    they follow the load's transactions, which a kill splits differently."""
    with LedgerStore.open(url) as store, store.engine.connect() as conn:
        t = index_table
        rows = sorted(conn.execute(select(t.c.event_id, t.c.event_type, t.c.content_hash)
                                   .where(t.c.event_type != "HistoryBackfilled")).all())
        assert store.journal.count() == conn.execute(select(func.count()).select_from(t)).scalar_one()
        letters = len(store.dead_letters(limit=10_000))
    clearing = out(cli(url, "clear", "--pool", "panzhihua", "--year", "2020", "--known-at", "2021-06-01"))
    clearing.pop("basis")
    return {"events": rows, "penalties": sum(1 for r in rows if r[1] == "PenaltyImposed"),
            "dead_letters": letters, "clearing": clearing}


@pytest.fixture(scope="module")
def year_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kill") / "year.jsonl"
    generate(path, cases=300, hospitals=5, year=2020, seed=11)
    return path


@pytest.mark.parametrize("step", FAULT_STEPS)
def test_a_kill_at_each_step_of_an_ingest_heals_on_the_next_run(
    database_kind: str, tmp_path: Path, year_file: Path, step: str
) -> None:
    from tests.conftest import fresh_database

    with fresh_database(database_kind, tmp_path) as clean, fresh_database(database_kind, tmp_path) as killed:
        out(cli(clean, "ingest", "--backfill", "--batch-size", "100", str(year_file)))
        expected = snapshot(clean)
        assert expected["penalties"] > 0
        env = {**os.environ, FAULT_ENV: step, "PYTHONPATH": str(ROOT)}
        died = subprocess.run(
            [sys.executable, "-m", "drg_ledger.cli", "ingest", "--backfill", "--batch-size", "100", "--json",
             "--database-url", killed, str(year_file)],
            env=env, capture_output=True, timeout=300,
        )
        assert died.returncode == 99, died.stderr.decode()[-2000:]
        # Opening the store completes what the journal implies (doctor says so); the next run adds the rest.
        assert {c["status"] for c in out(cli(killed, "doctor"))} <= {"ok", "repaired"}
        again = cli(killed, "ingest", "--backfill", "--batch-size", "100", str(year_file))
        assert again.exit_code == 0, again.output
        assert snapshot(killed) == expected


def test_a_large_batch_never_hangs_the_journal_write(database_url: str, tmp_path: Path) -> None:
    """psycopg 3.3.9 hangs for good in the pipeline sync of `eventsourcing.postgres` once one
    journal insert carries ~3-4.5 MB (psycopg/psycopg#685's class; reproduced here with
    3,000 events of ~1.6 KB in one transaction): the store's recorder writes the journal with
    COPY instead, the whole 4.5 MB batch in one transaction. Run in a subprocess so a
    regression fails, not hangs."""
    codes = [f"{i:02d}.{i:04d}x{'9' * 20}" for i in range(40)]
    events = [f.hospital("H001")] + [f.case(f"C{i}", procedure_codes=codes) for i in range(3000)]
    path = write(tmp_path / "wide.jsonl", *events)
    assert path.stat().st_size > 4_500_000
    done = subprocess.run(
        [sys.executable, "-m", "drg_ledger.cli", "ingest", "--backfill", "--batch-size", "5000", "--json",
         "--database-url", database_url, str(path)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads(done.stdout)["accepted"] == 3001


# --------------------------------------------------------------------------- the hostile file


def test_a_file_of_hostile_lines_spread_through_a_valid_scenario(
    database_kind: str, tmp_path: Path, year_file: Path
) -> None:
    """Every hostile line of `tests/hostile.py` (each class of the issue's probe, each limit of
    EVENTS.md "Limits on input", hypothesis-found variants) is refused and dead-lettered once,
    twice ingested; every valid event is stored once; the clearing equals the clean file's;
    every command answers afterwards."""
    from tests.conftest import fresh_database
    from tests.hostile import HOSTILE

    valid = year_file.read_bytes().splitlines()
    hostile = [h.raw for h in HOSTILE if b"\n" not in h.raw]
    assert len(hostile) >= 40
    mixed: list[bytes] = []
    hostile_lines: set[int] = set()
    step = max(1, len(valid) // len(hostile))
    pending = list(hostile)
    for i, line in enumerate(valid):
        mixed.append(line)
        if i % step == 0 and pending:
            mixed.append(pending.pop(0))
            hostile_lines.add(len(mixed))
    for line in pending:
        mixed.append(line)
        hostile_lines.add(len(mixed))
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(mixed) + b"\n")

    with fresh_database(database_kind, tmp_path) as clean, fresh_database(database_kind, tmp_path) as url:
        out(cli(clean, "ingest", "--backfill", str(year_file)))
        for attempt in range(2):
            result = cli(url, "ingest", "--backfill", str(path))
            assert result.exit_code == 1 and not isinstance(result.exception, Exception), result.output[-3000:]
            report = json.loads(result.stdout)
            assert {r["line"] for r in report["rejected"]} == hostile_lines
            assert report["accepted"] == (len(valid) if attempt == 0 else 0)
        letters = out(cli(url, "dead-letters", "--limit", "1000", "--raw"))
        assert len(letters) == len(hostile_lines)
        # The clean store has no dead letters; everything else is the same.
        assert snapshot(url) == {**snapshot(clean), "dead_letters": len(hostile_lines)}
        for args in (("clear", "--pool", "panzhihua", "--year", "2020"),
                     ("clear", "--pool", "panzhihua", "--year", "2020", "--cold"),
                     ("balance", "--hospital", "H001", "--as-of", "2020-06-30"),
                     ("explain", "--case", next(json.loads(v)["payload"]["case_id"] for v in valid
                                                if b'"CaseSubmitted"' in v)),
                     ("doctor",), ("rebuild",)):
            answered = cli(url, *args)
            assert answered.exit_code == 0, (args, answered.output[-2000:])
            assert not isinstance(answered.exception, Exception) or isinstance(answered.exception, SystemExit)
