"""One measured step of the benchmark, run in its own process: `python -m benchmarks.steps STEP ...`.

Each step prints one JSON object on its last stdout line. A fresh process per step makes
`peak_rss_mib` (getrusage ru_maxrss, the resident set high-water mark) the step's own, and
times a clearing the way a `drg-ledger` command would meet it: a new process, warm OS cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import statistics
import sys
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any, Callable

from ledger.clearing import Clearing


def rss_mib() -> float:
    """Current resident set size (VmRSS)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def digest(result: Clearing) -> str:
    """The clearing's figures without its known_at: equal digests, equal clearings."""
    data = result.as_json()
    data.pop("known_at")
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def step_ingest(args: argparse.Namespace) -> dict[str, Any]:
    from projections.store import Backfill, LedgerStore

    with LedgerStore.open(args.url) as store, open(args.file, "rb") as fh:
        seconds, report = timed(
            lambda: store.ingest((line.rstrip(b"\r\n") for line in fh), origin=f"file:{args.file}", batch_size=10000,
                                 backfill=Backfill.of_file(args.file))
        )
    return {
        "accepted": report.accepted,
        "duplicates": report.duplicates,
        "rejected": len(report.rejected),
        "seconds": seconds,
        "events_per_s": report.accepted / seconds,
    }


def step_analyze(args: argparse.Namespace) -> dict[str, Any]:
    """PostgreSQL: ANALYZE, as autovacuum does within a minute of a bulk load."""
    import psycopg

    with psycopg.connect(args.url, autocommit=True) as conn:
        seconds, _ = timed(lambda: conn.execute("ANALYZE"))
    return {"seconds": seconds}


def step_refresh(args: argparse.Namespace) -> dict[str, Any]:
    from projections.case_points import refresh
    from projections.store import LedgerStore

    with LedgerStore.open(args.url) as store:
        seconds, report = timed(lambda: refresh(store, args.pool, args.year))
    return {**report.as_json(), "seconds": seconds}


def step_clear(args: argparse.Namespace) -> dict[str, Any]:
    """Clearing through the product paths: `cold` (journal replay), `index`, `warm` (projection)."""
    from projections.case_points import warm_clearing
    from projections.queries import clear_pool
    from projections.store import LedgerStore

    with LedgerStore.open(args.url) as store:
        baseline = rss_mib()
        runs: list[float] = []
        result: Clearing | None = None
        for _ in range(args.repeat):
            if args.path == "warm":
                seconds, result = timed(lambda: warm_clearing(store, args.pool, args.year))
            else:
                seconds, result = timed(lambda: clear_pool(store, args.pool, args.year, cold=args.path == "cold"))
            runs.append(seconds)
        assert result is not None
        out: dict[str, Any] = {
            "path": args.path,
            "first": runs[0],
            "best": min(runs),
            "runs": runs,
            "digest": digest(result),
            "hospitals": len(result.hospitals),
            "cases": sum(h.cases for h in result.hospitals),
            "point_value": str(result.point_value),
            "baseline_rss_mib": baseline,
        }
        if args.path == "warm" and store.engine.dialect.name == "postgresql":
            out["floor"] = floor(args.url, args.pool, args.year, args.repeat)
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def floor(url: str, pool: str, year: int, repeat: int) -> dict[str, Any]:
    """The PostgreSQL floor: a plain GROUP BY hospital over a table with one row per case.

    The table is a copy of the pool-year's case rows in a table of its own (no pool or year
    to filter), so the floor is what PostgreSQL alone needs to sum a year by hospital.
    """
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS floor_cases")
        conn.execute(
            "CREATE TABLE floor_cases AS SELECT hospital_id, settled_points, deducted_points, personal_paid "
            "FROM case_points WHERE pool = %s AND year = %s",
            (pool, year),
        )
        conn.execute("VACUUM ANALYZE floor_cases")
        runs = []
        for _ in range(repeat):
            seconds, rows = timed(
                lambda: conn.execute(
                    "SELECT hospital_id, sum(settled_points), sum(deducted_points), sum(personal_paid), count(*) "
                    "FROM floor_cases GROUP BY hospital_id"
                ).fetchall()
            )
            runs.append(seconds)
        n = conn.execute("SELECT count(*) FROM floor_cases").fetchone()[0]  # type: ignore[index]
    return {"best": min(runs), "runs": runs, "rows": n, "groups": len(rows)}


def step_balance(args: argparse.Namespace) -> dict[str, Any]:
    """Balances of random hospitals at random dates: `warm` (projection) or `index` (events)."""
    from projections.case_points import warm_balance
    from projections.queries import hospital_balance
    from projections.store import LedgerStore

    rng = random.Random(args.seed)
    with LedgerStore.open(args.url) as store:
        hospitals = sorted(h for h, p in store.hospitals().items() if p.pool == args.pool)
        days = (date(args.year + 1, 1, 1) - date(args.year, 1, 1)).days
        asks = [(rng.choice(hospitals), date(args.year, 1, 1) + timedelta(days=rng.randrange(days)))
                for _ in range(args.samples)]
        runs = []
        for hospital_id, as_of in asks:
            if args.path == "warm":
                seconds, _ = timed(lambda: warm_balance(store, hospital_id, as_of))
            else:
                seconds, _ = timed(lambda: hospital_balance(store, hospital_id, as_of))
            runs.append(seconds)
    runs_sorted = sorted(runs)
    return {
        "path": args.path,
        "samples": len(runs),
        "p50": statistics.median(runs),
        "p95": runs_sorted[max(0, int(round(0.95 * len(runs))) - 1)],
        "max": runs_sorted[-1],
        "first": runs[0],
        "peak_rss_mib": peak_rss_mib(),
    }


def step_bulk_index(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.bulk_index import bulk_index

    seconds, n = timed(lambda: bulk_index(args.url, args.file))
    return {"events": n, "seconds": seconds, "events_per_s": n / seconds, "peak_rss_mib": peak_rss_mib()}


STEPS = {
    "ingest": step_ingest,
    "analyze": step_analyze,
    "refresh": step_refresh,
    "clear": step_clear,
    "balance": step_balance,
    "bulk-index": step_bulk_index,
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.steps")
    p.add_argument("step", choices=sorted(STEPS))
    p.add_argument("--url", required=True)
    p.add_argument("--file")
    p.add_argument("--pool", default="panzhihua")
    p.add_argument("--year", type=int, default=2020)
    p.add_argument("--path", choices=("cold", "index", "warm"), default="warm")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    started = datetime.now(UTC)
    out = STEPS[args.step](args)
    out.setdefault("peak_rss_mib", peak_rss_mib())
    out["started_at"] = started.isoformat()
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
