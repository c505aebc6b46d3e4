"""Streaming that loses nothing across rebalances (issue 16), through the real broker and PostgreSQL.

- The rebalance scenario of `benchmarks/rebalance.py` (two workers, one SIGKILLed and
  restarted mid-stream, the other running throughout), `$DRG_LEDGER_E2E_REBALANCE_RUNS`
  times (default 3): each run ends exact — the streamed store's clearing equals a plain
  `ingest --backfill` of the same feed hospital by hospital, every hospital's totals equal
  the clearing's points, `stream-audit` finds no hole, `reconcile` exits 0.
- Records dropped inside the consumer (`$DRG_LEDGER_FAULT_DROP`, at the library boundary):
  `stream-audit` names exactly those offsets, the worker re-reads them, the run ends exact.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.rebalance import Reference, cli, prepare_reference, run_scenario, stored_ids
from benchmarks.worker_process import worker_env
from streams.topics import PARTITIONS, key_for, partition_of
from tests.conftest import postgres_url
from benchmarks.worker_process import WorkerProcess

pytestmark = pytest.mark.e2e

RUNS = int(os.environ.get("DRG_LEDGER_E2E_REBALANCE_RUNS", "3"))
FEED_LINES = int(os.environ.get("DRG_LEDGER_E2E_REBALANCE_EVENTS", "3000"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return prepare_reference(tmp_path_factory.mktemp("feed"), FEED_LINES, postgres_url())


def test_rebalance_scenario_ends_exact_every_run(kafka_bootstrap: str, reference: Reference, tmp_path: Path) -> None:
    results = [run_scenario(n, kafka_bootstrap, postgres_url(), reference, tmp_path, timeout_s=180, publish_s=15)
               for n in range(1, RUNS + 1)]
    report = [{"run": r.run, "killed_at": r.killed_at, "b_ingested": r.b_ingested_before_kill,
               "stored_s": r.stored_s, "agree_s": r.agree_s, "problems": r.problems} for r in results]
    print(json.dumps(report, indent=1))
    assert all(r.exact for r in results), json.dumps(report, indent=1)[:6000]
    # The kill was mid-stream at least once: B had ingested, and the store was not complete yet.
    assert any(r.b_ingested_before_kill and r.killed_at < r.expected for r in results), report
    assert all(r.holes == 0 for r in results)


def _busiest_partition(path: Path) -> int:
    load = [0] * PARTITIONS
    for line in path.read_bytes().splitlines():
        try:
            key = key_for(json.loads(line))
        except ValueError:
            continue
        if key is not None:
            load[partition_of(key.encode("utf-8"), PARTITIONS)] += 1
    return max(range(PARTITIONS), key=load.__getitem__)


def test_records_lost_inside_the_consumer_are_named_by_the_audit_and_re_read(
    e2e_database_url: str, reference: Reference, stream_env: dict[str, str],
) -> None:
    partition = _busiest_partition(reference.path)
    env = {**stream_env, "DRG_LEDGER_FAULT_DROP": f"{partition}:7", "DRG_LEDGER_AUDIT_INTERVAL_S": "40"}
    # A static member (group.instance.id): the option is exercised against the real broker too.
    worker = WorkerProcess(env, Path(reference.path).parent, 99, ("--instance-id", "fault-worker-1"))
    try:
        worker.wait_ready()
        published = cli(stream_env, "publish", str(reference.path), "--send-invalid", "--json")
        assert published.returncode == 0, published.stderr[-2000:]

        deadline = time.monotonic() + 60
        found = None
        while found is None and time.monotonic() < deadline:
            found = re.search(r"fault injection: dropped offsets (\S+)/(\d+) \[(\d+),(\d+)\]", worker.log.read_text())
            time.sleep(0.2)
        assert found is not None, worker.tail()
        assert int(found.group(2)) == partition
        lost = list(range(int(found.group(3)), int(found.group(4)) + 1))
        assert len(lost) == 7

        # The audit names exactly the lost offsets (once the rest of their batch is stored).
        named: list[int] = []
        audit: Any = None
        while time.monotonic() < deadline and not named:
            audit = cli(stream_env, "stream-audit", "--json")
            result = json.loads(audit.stdout)
            named = [o for p in result["partitions"] if p["partition"] == partition for o in p["missing_offsets"]]
        assert audit is not None and audit.returncode == 1, audit.stdout[-2000:] if audit else None
        assert named == lost and result["holes"] == 7
        assert "re-reading" not in worker.log.read_text(), "the audit ran before the worker's check"

        # The worker's periodic check re-reads them; everything ends exact.
        expected = reference.event_ids
        assert _until(lambda: stored_ids(e2e_database_url) >= expected, 120), worker.tail()
        log = worker.log.read_text()
        assert f"have no fate in the store: re-reading from {lost[0]}" in log, worker.tail()
        assert stored_ids(e2e_database_url) == expected
        assert _until(lambda: cli(stream_env, "reconcile", "--pool", "panzhihua", "--year", "2020").returncode == 0, 120)
        final = cli(stream_env, "stream-audit", "--json")
        assert final.returncode == 0 and json.loads(final.stdout)["holes"] == 0, final.stdout[-2000:]
        assert json.loads(final.stdout)["lag"] == 0
        clear = cli(stream_env, "clear", "--pool", "panzhihua", "--year", "2020", "--json")
        streamed = {h["hospital_id"]: h for h in json.loads(clear.stdout)["hospitals"]}
        assert streamed == reference.hospitals
        assert worker.errors() == [], worker.errors()[:5]
        assert "as static member fault-worker-1" in log
    finally:
        worker.stop()


def _until(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(1.0)
    return False


def test_stream_audit_without_a_broker_checks_the_store_alone(e2e_database_url: str) -> None:
    env = worker_env("unused:9092", "drg-audit", e2e_database_url)
    env.pop("KAFKA_BOOTSTRAP_SERVERS")
    done = cli(env, "stream-audit", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"ok": True, "broker": None, "holes": 0, "lag": 0, "partitions": []}
