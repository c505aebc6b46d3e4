"""HIS -> Kafka -> Faust: running point totals per hospital that always agree with replay.

One test per feature, each through the real broker (conftest.py) and a real PostgreSQL,
with `drg-ledger publish` and `drg-ledger worker` as subprocesses, as an operator runs them.

Size: `$DRG_LEDGER_E2E_EVENTS` lines per test (default 20,000), of which 5% duplicates
and 1% bad lines, with the back-dated 2020 high-tech catalogue in the middle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text

from projections.running_totals import reconcile
from projections.store import LedgerStore, dead_letters_table, index_table
from streams.topics import TopicNames
from benchmarks.worker_process import alive
from tests.e2e.eventfile import LEDGER_REFUSED, PUBLISH_INVALID, EventFile, write_event_file

pytestmark = pytest.mark.e2e

EVENTS = int(os.environ.get("DRG_LEDGER_E2E_EVENTS", "20000"))
POOL = "panzhihua"


# --------------------------------------------------------------------------- helpers


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "drg_ledger.cli", *args], check=False, env=env, capture_output=True, text=True,
                          timeout=timeout)


def stored_ids(url: str) -> set[str]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return set(conn.execute(select(index_table.c.event_id)).scalars())
    finally:
        engine.dispose()


def event_count(url: str) -> int:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            if not engine.dialect.has_table(conn, index_table.name):
                return 0
            return int(conn.execute(select(func.count()).select_from(index_table)).scalar_one())
    finally:
        engine.dispose()


def wait_for_events(url: str, expected: int, timeout_s: float, worker: Any) -> float:
    """Seconds until the store holds `expected` events."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker died:\n{worker.tail()}")
        if event_count(url) >= expected:
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"store has {event_count(url)} of {expected} events after {timeout_s} s:\n{worker.tail()}")


def wait_for_agreement(url: str, years: set[int], timeout_s: float) -> float:
    """Seconds until the running totals of every year agree with a full replay."""
    started = time.monotonic()
    last: Any = None
    with LedgerStore.open(url) as store:
        while time.monotonic() - started < timeout_s:
            results = [reconcile(store, POOL, y) for y in sorted(years)]
            if all(r.ok for r in results):
                return time.monotonic() - started
            last = [r.as_json() for r in results if not r.ok]
            time.sleep(1.0)
    raise AssertionError(f"running totals still differ after {timeout_s} s: {json.dumps(last, indent=1)[:3000]}")


def read_topic(bootstrap: str, topic: str, done: Any, timeout_s: float = 60) -> list[Any]:
    """Every record of `topic` from the beginning, read until `done(records)` or the timeout."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not done(records):
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def check_table_changelog(bootstrap: str, prefix: str, url: str) -> int:
    """The Faust table's changelog ends with the same totals as the SQL mirror, hospital by hospital."""
    from projections.running_totals import read_rows

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        rows = {(r.key.hospital_id, f"{r.key.pool}/{r.key.year}"): r.totals.as_json() for r in read_rows(engine)}
    finally:
        engine.dispose()
    figures = ("cases", "settled_points", "deducted_points", "net_points", "personal_paid")

    def latest(records: list[Any]) -> dict[tuple[str, str], dict[str, Any]]:
        state: dict[tuple[str, str], dict[str, Any]] = {}
        for rec in records:  # one key lives in one partition: offset order is its order
            for pool_year, row in json.loads(rec.value).items():
                state[(rec.key.decode(), pool_year)] = {k: row[k] for k in figures}
        return state

    records = read_topic(bootstrap, f"{prefix}-running-totals-changelog", lambda rs: latest(rs) == rows, 30)
    assert latest(records) == rows, "the table's changelog must end where the SQL mirror is"
    # Co-partitioning: a hospital's totals sit in the partition its recompute requests go to.
    hospitals = {r.key for r in records}
    requests = read_topic(bootstrap, TopicNames(prefix).recompute, lambda rs: hospitals <= {r.key for r in rs}, 30)
    request_partition = {r.key: r.partition for r in requests}
    assert {r.key: r.partition for r in records} == {k: request_partition[k] for k in hospitals}
    return len(records)


def bad_lines(f: EventFile) -> dict[bytes, str]:
    raws = f.path.read_bytes().split(b"\n")
    return {raws[line - 1]: kind for line, kind in f.bad.items()}


def check_dead_letters(f: EventFile, url: str, bootstrap: str, prefix: str) -> dict[str, int]:
    """Every bad line is in the store once and in the dead-letter topic, each with its reason and origin."""
    bad = bad_lines(f)
    assert len(bad) == len(f.bad), "bad lines must be distinct to be traced"
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(dead_letters_table)).mappings().all()
    finally:
        engine.dispose()
    stored = {bytes(r["raw"]): r for r in rows}
    assert set(stored) == set(bad), (
        f"store dead letters: missing {len(set(bad) - set(stored))}, unexpected {len(set(stored) - set(bad))}"
    )
    origins = Counter(r["origin"] for r in rows)
    assert max(origins.values()) == 1, f"a message was dead-lettered twice in the store: {origins.most_common(3)}"
    assert len(rows) == len(bad)
    for raw, r in stored.items():
        assert r["reason"], r
        assert r["origin"].startswith(f"kafka:{prefix}.events/"), r["origin"]
        kind = bad[raw]
        if kind == "unknown_hospital":
            assert "unknown hospital" in r["reason"]
        elif kind == "other_content":
            assert "other content" in r["reason"]
        elif kind in ("bad_decimal", "missing_field"):
            assert r["field"].startswith("payload."), r

    # Tansu's end offsets are not to be trusted: read until every refused value was seen.
    records = read_topic(bootstrap, TopicNames(prefix).dead_letters, lambda rs: set(bad) <= {r.value for r in rs})
    by_value: dict[bytes, list[Any]] = {}
    for rec in records:
        by_value.setdefault(rec.value, []).append(rec)
    assert set(by_value) == set(bad), f"topic dead letters: missing {len(set(bad) - set(by_value))}"
    for raw, recs in by_value.items():
        for rec in recs:
            headers = {k: v.decode() for k, v in rec.headers}
            assert headers["reason"] and headers["origin"] == stored[raw]["origin"], headers
    return {"store": len(rows), "topic_records": len(records)}


def check_against_clearing(env: dict[str, str]) -> None:
    """The worker's running totals equal `drg-ledger clear --cold`'s points per hospital (an
    independent fold of the journal), and so do the store's own totals."""
    totals = cli(env, "totals", "--worker", "--pool", POOL, "--year", "2020", "--json")
    assert totals.returncode == 0, totals.stderr
    store_totals = cli(env, "totals", "--pool", POOL, "--year", "2020", "--json")
    assert store_totals.returncode == 0, store_totals.stderr
    clear = cli(env, "clear", "--cold", "--pool", POOL, "--year", "2020", "--json")
    assert clear.returncode == 0, clear.stderr
    rows = {r["hospital_id"]: r for r in json.loads(totals.stdout)}
    mine = {r["hospital_id"]: r for r in json.loads(store_totals.stdout)}
    for h in json.loads(clear.stdout)["hospitals"]:
        assert Decimal(mine[h["hospital_id"]]["net_points"]) == Decimal(h["net_points"])
        r = rows.get(h["hospital_id"])
        if r is None:
            assert Decimal(h["settled_points"]) == 0 and Decimal(h["deducted_points"]) == 0
            continue
        for name in ("settled_points", "deducted_points", "net_points"):
            assert Decimal(r[name]) == Decimal(h[name]), (h["hospital_id"], name, r[name], h[name])
        assert Decimal(r["personal_paid"]).quantize(Decimal("0.01")) == Decimal(h["personal_paid"])
        assert r["error"] is None


def publish_args(f: EventFile) -> list[str]:
    return ["publish", str(f.path), "--send-invalid", "--json"]


def check_publish_report(f: EventFile, report: dict[str, Any]) -> None:
    assert report["sent"] == f.lines and report["failed"] == 0
    kinds = Counter(f.bad.values())
    caught = sum(n for k, n in kinds.items() if k in PUBLISH_INVALID)
    assert len(report["invalid"]) == report["invalid_sent"] == caught
    assert {i["line"] for i in report["invalid"]} == {line for line, k in f.bad.items() if k in PUBLISH_INVALID}
    assert all(k in PUBLISH_INVALID + LEDGER_REFUSED for k in kinds)


def timings_file(name: str, data: dict[str, Any]) -> None:
    out = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"e2e-{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"\n{name}: {json.dumps(data)}")


# --------------------------------------------------------------------------- tests


def test_running_totals_agree_with_replay_after_twenty_thousand_events(
    tmp_path: Path, stream_env: dict[str, str], workers: Any, kafka_bootstrap: str, topic_prefix: str,
    e2e_database_url: str,
) -> None:
    t0 = time.monotonic()
    f = write_event_file(tmp_path / "events.jsonl", EVENTS)
    assert f.lines >= EVENTS and f.duplicates >= 0.05 * f.lines and len(f.bad) >= 0.01 * f.lines
    assert 0.3 * f.lines < f.catalogue_line < 0.7 * f.lines  # the back-dated catalogue arrives mid-stream

    worker = workers()
    ready_s = worker.wait_ready()
    t_publish = time.monotonic()
    published = cli(stream_env, *publish_args(f))
    assert published.returncode == 0, published.stderr[-3000:]
    report = json.loads(published.stdout)
    check_publish_report(f, report)
    publish_s = time.monotonic() - t_publish

    stored_s = wait_for_events(e2e_database_url, len(f.valid_ids | f.penalty_ids), 120 + EVENTS / 100, worker)
    assert stored_ids(e2e_database_url) == f.valid_ids | f.penalty_ids, "no valid event missing, none extra"
    agree_s = wait_for_agreement(e2e_database_url, f.years, 180)
    end_to_end_s = time.monotonic() - t_publish

    result = cli(stream_env, "reconcile", "--pool", POOL, "--year", "2020", "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    reconciled = json.loads(result.stdout)
    assert reconciled["ok"] and reconciled["differences"] == [] and reconciled["hospitals"] == len(f.hospitals)
    check_against_clearing(stream_env)
    letters = check_dead_letters(f, e2e_database_url, kafka_bootstrap, topic_prefix)
    assert worker.errors() == [], worker.errors()[:10]

    timings_file("running-totals", {
        "lines": f.lines, "valid_events": len(f.valid_ids), "duplicates": f.duplicates, "bad": len(f.bad),
        "worker_ready_s": round(ready_s, 1), "publish_s": round(publish_s, 1),
        "all_stored_after_publish_start_s": round(publish_s + stored_s, 1),
        "totals_agree_after_publish_start_s": round(end_to_end_s, 1), "agree_after_stored_s": round(agree_s, 1),
        "dead_letters": letters, "test_s": round(time.monotonic() - t0, 1),
    })


def test_worker_killed_mid_stream_resumes_without_double_counting(
    tmp_path: Path, stream_env: dict[str, str], workers: Any, kafka_bootstrap: str, topic_prefix: str,
    e2e_database_url: str,
) -> None:
    t0 = time.monotonic()
    f = write_event_file(tmp_path / "events.jsonl", EVENTS, seed=11)
    # RocksDB tables: the store a worker that may be killed should keep (memory:// is test (a)).
    first = workers("--store", "rocksdb://")
    first.wait_ready()
    publisher = subprocess.Popen([sys.executable, "-m", "drg_ledger.cli", *publish_args(f)], env=stream_env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Kill the worker once it has stored about 40% of the events: publishing goes on.
    target = int(0.4 * len(f.valid_ids))
    deadline = time.monotonic() + 120
    while event_count(e2e_database_url) < target:
        assert time.monotonic() < deadline, first.tail()
        time.sleep(0.1)
    orphans = first.kill()
    at_kill = event_count(e2e_database_url)
    out, errs = publisher.communicate(timeout=300)
    assert publisher.returncode == 0, errs[-3000:]
    check_publish_report(f, json.loads(out))

    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in orphans):
        assert time.monotonic() < deadline, f"processes of the killed worker outlived it: {orphans}"
        time.sleep(0.2)

    t_restart = time.monotonic()
    second = workers("--store", "rocksdb://")
    ready_s = second.wait_ready()
    stored_s = wait_for_events(e2e_database_url, len(f.valid_ids | f.penalty_ids), 120 + EVENTS / 100, second)
    agree_s = wait_for_agreement(e2e_database_url, f.years, 180)
    recovery_s = time.monotonic() - t_restart

    assert stored_ids(e2e_database_url) == f.valid_ids | f.penalty_ids
    engine = create_engine(e2e_database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            journalled = conn.execute(text("SELECT count(*) FROM journal_events")).scalar_one()
    finally:
        engine.dispose()
    assert journalled == len(f.valid_ids | f.penalty_ids), "each event journalled exactly once"
    result = cli(stream_env, "reconcile", "--pool", POOL, "--year", "2020", "--json")
    assert result.returncode == 0, result.stdout[-3000:]
    assert json.loads(result.stdout)["differences"] == []
    check_against_clearing(stream_env)
    letters = check_dead_letters(f, e2e_database_url, kafka_bootstrap, topic_prefix)
    changelog_records = check_table_changelog(kafka_bootstrap, topic_prefix, e2e_database_url)
    assert first.errors() == [] and second.errors() == [], (first.errors() + second.errors())[:10]

    redelivered = sum(int(line.split("(+")[1].split(" ")[0]) for line in second.log.read_text().splitlines()
                      if "ingested" in line and "(+" in line)
    timings_file("crash-restart", {
        "lines": f.lines, "valid_events": len(f.valid_ids), "stored_when_killed": at_kill,
        "duplicates_seen_by_second_worker": redelivered, "file_duplicates": f.duplicates,
        "second_worker_ready_s": round(ready_s, 1), "stored_after_restart_s": round(stored_s, 1),
        "agree_after_restart_s": round(recovery_s, 1), "agree_after_stored_s": round(agree_s, 1),
        "dead_letters": letters, "changelog_records": changelog_records, "test_s": round(time.monotonic() - t0, 1),
    })
