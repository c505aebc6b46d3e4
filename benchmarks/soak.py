"""A bounded soak: a steady rate of events through Tansu -> worker -> PostgreSQL (issue 12).

    python benchmarks/soak.py --seconds 600 --rate 100 [--postgres postgresql://postgres@127.0.0.1:5432/postgres]

Everything runs on loopback (a Tansu broker on 127.0.0.1, the local PostgreSQL) and stops by
itself: it publishes `--rate` events per second for `--seconds`, then waits at most 120 s
for the worker to drain. Every `--sample` seconds it records events stored, throughput,
consumer lag (the producer's delivered offsets minus the group's committed offsets, per
partition: Tansu's end offsets are wrong, KAFKA-AND-STORES.md) and the RSS of the worker's
process tree. Prints a rich table, writes `benchmarks/results/soak-<time>.json` and a PNG
chart next to it, and exits 1 when the lag did not drain, an event is missing, or RSS grew
more than `--max-growth-mb` between the first and the last quarter of the run (after a
warm-up of one sample). CI runs `--seconds 60` (tests/e2e/test_soak.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.streaming_throughput import create_database, drop_database, start_tansu  # noqa: E402
from benchmarks.worker_process import descendants  # noqa: E402


def rss_mb(pid: int) -> float:
    """RSS of `pid` and every descendant, in MB."""
    total = 0
    for p in (pid, *descendants(pid)):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class Publisher(threading.Thread):
    """Sends the file's lines at a steady rate; remembers the last delivered offset per partition."""

    def __init__(self, bootstrap: str, topic: str, lines: list[bytes], rate: float, seconds: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.lines, self.rate, self.seconds = bootstrap, topic, lines, rate, seconds
        self.delivered: dict[int, int] = {}
        self.sent = 0
        self.lock = threading.Lock()

    def run(self) -> None:
        from streams.publish import producer

        kp = producer(self.bootstrap)
        started = time.monotonic()

        def ok(meta: Any) -> None:
            with self.lock:
                self.delivered[meta.partition] = max(self.delivered.get(meta.partition, -1), meta.offset)

        try:
            for i, line in enumerate(self.lines):
                due = started + i / self.rate
                if due - started > self.seconds:
                    break
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                key = json.loads(line).get("payload", {}).get("hospital_id", "pool")
                kp.send(self.topic, key=str(key).encode(), value=line).add_callback(ok)
                self.sent += 1
            kp.flush()
        finally:
            kp.close()


def lag(admin: Any, group: str, topic: str, delivered: dict[int, int]) -> int:
    from kafka import TopicPartition

    committed = admin.list_group_offsets(group).get(group, {})
    out = 0
    for partition, last in delivered.items():
        meta = committed.get(TopicPartition(topic, partition))
        done = meta.offset if meta is not None and meta.offset >= 0 else 0
        out += max(0, last + 1 - done)
    return out


def stored(engine: Any) -> int:
    from sqlalchemy import text

    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM ledger_index WHERE source <> 'system'")).scalar_one())
    except Exception:  # noqa: BLE001 - tables not created yet
        return 0


def chart(samples: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for ax, key, label in zip(axes, ("events_per_s", "lag", "rss_mb"),
                              ("stored events/s", "consumer lag (messages)", "worker RSS (MB)"), strict=True):
        ax.plot(t, [s[key] for s in samples])
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("seconds")
    fig.suptitle("drg-ledger soak: Tansu -> worker -> PostgreSQL")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--rate", type=float, default=100, help="events per second")
    parser.add_argument("--sample", type=float, default=5)
    parser.add_argument("--max-growth-mb", type=float, default=150)
    parser.add_argument("--postgres", default=os.environ.get("DRG_BENCH_POSTGRES_URL",
                                                             "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    console = Console(stderr=args.json)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / f"soak-{stamp}"
    work.mkdir()
    events = int(args.seconds * args.rate) + 10
    data = work / "events.jsonl"
    subprocess.run([sys.executable, "-m", "drg_ledger.cli", "generate", "--cases", str(max(100, events // 1)),
                    "--hospitals", "30", "--year", "2020", "--seed", "3", "-o", str(data)], check=True,
                   capture_output=True)
    lines = [ln for ln in data.read_bytes().splitlines() if ln.strip()][:events]
    broker, bootstrap = start_tansu(work / "tansu.log")
    db_name, url = create_database(args.postgres)
    prefix = f"drg-soak-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ) | {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DRG_LEDGER_TOPIC_PREFIX": prefix,
                              "DRG_LEDGER_DATABASE_URL": url, "DRG_LEDGER_LATE_WINDOW_DAYS": "36500",
                              "PYTHONWARNINGS": "ignore::DeprecationWarning",
                              "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = (work / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "drg_ledger.cli", "worker"], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    samples: list[dict[str, float]] = []
    try:
        from kafka.admin import KafkaAdminClient
        from sqlalchemy import create_engine

        deadline = time.monotonic() + 120
        while b"Worker]: Ready" not in (work / "worker.log").read_bytes():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("worker did not start: " + (work / "worker.log").read_text()[-2000:])
            time.sleep(0.2)
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        publisher = Publisher(bootstrap, f"{prefix}.events", lines, args.rate, args.seconds)
        started = time.monotonic()
        publisher.start()
        last_n, last_t = 0, started
        drain_deadline: float | None = None
        while True:
            time.sleep(args.sample)
            now = time.monotonic()
            n = stored(engine)
            with publisher.lock:
                delivered = dict(publisher.delivered)
            current_lag = lag(admin, f"{prefix}.intake", f"{prefix}.events", delivered)  # streams/intake.py's group
            samples.append({"t_s": round(now - started, 1), "stored": n, "events_per_s": round((n - last_n) / (now - last_t), 1),
                            "lag": current_lag, "rss_mb": round(rss_mb(worker.pid), 1), "sent": publisher.sent})
            if not args.json:
                console.print(f"t={samples[-1]['t_s']:>6.1f}s stored {n:,} ({samples[-1]['events_per_s']}/s) "
                              f"lag {current_lag:,} rss {samples[-1]['rss_mb']} MB")
            last_n, last_t = n, now
            if worker.poll() is not None:
                raise RuntimeError("worker died: " + (work / "worker.log").read_text()[-2000:])
            if not publisher.is_alive():
                drain_deadline = drain_deadline or now + 120
                if n >= publisher.sent or now > drain_deadline:
                    break
        admin.close()
        engine.dispose()
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
        log.close()
        broker.terminate()
        broker.wait(10)
        drop_database(args.postgres, db_name)

    body = samples[1:] or samples
    quarter = max(1, len(body) // 4)
    growth = median(s["rss_mb"] for s in body[-quarter:]) - median(s["rss_mb"] for s in body[:quarter])
    sent = samples[-1]["sent"]
    result = {
        "seconds": args.seconds, "rate": args.rate, "sent": sent, "stored": samples[-1]["stored"],
        "throughput_per_s": round(samples[-1]["stored"] / max(samples[-1]["t_s"], 1e-9), 1),
        "max_lag": max(s["lag"] for s in samples), "final_lag": samples[-1]["lag"],
        "rss_first_mb": body[0]["rss_mb"], "rss_max_mb": max(s["rss_mb"] for s in samples),
        "rss_growth_mb": round(growth, 1), "max_growth_mb": args.max_growth_mb, "samples": samples,
    }
    ok = result["stored"] >= sent and result["final_lag"] == 0 and growth <= args.max_growth_mb
    result["ok"] = ok
    (work / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    chart(samples, work / "soak.png")
    table = Table("t s", "stored", "events/s", "lag", "RSS MB", title=f"soak {args.seconds:.0f} s at {args.rate:g}/s")
    for s in samples:
        table.add_row(f"{s['t_s']:.0f}", f"{s['stored']:,}", f"{s['events_per_s']}", f"{s['lag']:,}", f"{s['rss_mb']}")
    console.print(table)
    console.print(f"sent {sent:,}, stored {result['stored']:,}, final lag {result['final_lag']}, RSS growth "
                  f"{growth:+.1f} MB (bound {args.max_growth_mb} MB): {'[green]ok' if ok else '[red]FAILED'}; "
                  f"chart {work / 'soak.png'}")
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "samples"} | {"dir": str(work)}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
