"""The in-process steps of the benchmark, each run in its own process: `python -m benchmarks.steps STEP ...`.

Each step prints one JSON object on its last stdout line. What a user types is timed by
`benchmarks/run.py` through the CLI itself; these are the steps that have no CLI command
(ANALYZE, the PostgreSQL floor, the month-end series the web page draws) or that choose the
samples, plus the in-process balance as a reference for the CLI's.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from drg_ledger.moments import parse_moment


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def percentiles(runs: list[float]) -> dict[str, float]:
    """p50, nearest-rank p95 and max of `runs` (seconds)."""
    ordered = sorted(runs)
    return {"p50": statistics.median(ordered), "p95": ordered[max(0, round(0.95 * len(ordered)) - 1)],
            "max": ordered[-1]}


def step_analyze(args: argparse.Namespace) -> dict[str, Any]:
    """PostgreSQL: ANALYZE, as autovacuum does within a minute of a bulk load."""
    import psycopg

    with psycopg.connect(args.url, autocommit=True) as conn:
        seconds, _ = timed(lambda: conn.execute("ANALYZE"))
    return {"seconds": seconds}


def step_floor(args: argparse.Namespace) -> dict[str, Any]:
    """PostgreSQL's own `GROUP BY hospital_id, drg_code` over a plain table with one row per case.

    The table holds each case's last revision, taken from the index's CaseSubmitted rows (no
    pool, year or withdrawal to filter): what PostgreSQL alone needs to sum a year of cases.
    """
    import psycopg

    with psycopg.connect(args.url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS floor_cases")
        conn.execute(
            "CREATE TABLE floor_cases AS SELECT DISTINCT ON (case_id) hospital_id, "
            "body::jsonb -> 'payload' ->> 'drg_code' AS drg_code, "
            "(body::jsonb -> 'payload' ->> 'total_cost')::numeric AS total_cost "
            "FROM ledger_index WHERE event_type = 'CaseSubmitted' AND pool = %s AND year = %s "
            "ORDER BY case_id, (body::jsonb -> 'payload' ->> 'revision')::int DESC",
            (args.pool, args.year),
        )
        conn.execute("VACUUM ANALYZE floor_cases")
        runs = []
        for _ in range(args.repeat):
            seconds, rows = timed(lambda: conn.execute(
                "SELECT hospital_id, drg_code, count(*), sum(total_cost) FROM floor_cases "
                "GROUP BY hospital_id, drg_code").fetchall())
            runs.append(seconds)
        n = conn.execute("SELECT count(*) FROM floor_cases").fetchone()[0]  # type: ignore[index]
    return {"best": min(runs), "runs": runs, "rows": n, "groups": len(rows)}


def step_plan(args: argparse.Namespace) -> dict[str, Any]:
    """The samples, drawn once with a fixed seed: (hospital, date) pairs for `balance`, the
    pool's grade-2A hospitals for the back-dated coefficient change, a case for `explain`."""
    from sqlalchemy import func, select

    from ledger.events import EventType
    from projections.store import LedgerStore, index_table

    rng = random.Random(args.seed)
    with LedgerStore.open(args.url) as store:
        registered = {h: p for h, p in store.hospitals().items() if p.pool == args.pool}
        t = index_table
        with store.engine.connect() as conn:
            n = conn.execute(select(func.count()).where(t.c.event_type == EventType.CASE_SUBMITTED, t.c.pool == args.pool,
                                                        t.c.year == args.year)).scalar_one()
            case_id = conn.execute(
                select(t.c.case_id).where(t.c.event_type == EventType.CASE_SUBMITTED, t.c.pool == args.pool, t.c.year == args.year)
                .order_by(t.c.seq).offset(rng.randrange(n)).limit(1)).scalar_one()
    hospitals = sorted(registered)
    days = (date(args.year + 1, 1, 1) - date(args.year, 1, 1)).days
    asks = [(rng.choice(hospitals), (date(args.year, 1, 1) + timedelta(days=rng.randrange(days))).isoformat())
            for _ in range(args.samples)]
    busiest = max(hospitals, key=lambda h: (registered[h].grade == "3A", h))
    return {"hospitals": hospitals, "grade_2a": sorted(h for h in hospitals if registered[h].grade == "2A"),
            "balance_asks": asks, "explain_case": case_id, "series_hospital": busiest}


def step_balance(args: argparse.Namespace) -> dict[str, Any]:
    """`hospital_balance` in one process over the plan's pairs: the CLI's work without its start-up."""
    from projections.queries import hospital_balance
    from projections.store import LedgerStore

    known_at = parse_moment(args.known_at)
    asks = json.loads(args.asks)
    runs, failed = [], 0
    with LedgerStore.open(args.url) as store:
        for hospital_id, day in asks:
            started = time.perf_counter()
            try:
                hospital_balance(store, hospital_id, date.fromisoformat(day), known_at)
            except Exception:  # noqa: BLE001 - a balance that cannot be computed still costs its time
                failed += 1
            runs.append(time.perf_counter() - started)
    return {"samples": len(runs), "failed": failed, "first": runs[0], **percentiles(runs)}


def step_clear(args: argparse.Namespace) -> dict[str, Any]:
    """`clear_pool` (what `clear` runs) in one process at each `--known-at` ("now" for none),
    best of `--repeat`: the CLI's work without its start-up."""
    from projections.queries import clear_pool
    from projections.store import LedgerStore

    out: dict[str, Any] = {}
    with LedgerStore.open(args.url) as store:
        for text in args.known_at.split(","):
            known_at = parse_moment(text) if text != "now" else None
            runs = [timed(lambda k=known_at: clear_pool(store, args.pool, args.year, k))[0] for _ in range(args.repeat)]
            out[text] = {"first": runs[0], "best": min(runs), "runs": runs}
    return out


def step_series(args: argparse.Namespace) -> dict[str, Any]:
    """`balance_series`: one hospital's 12 month-end balances (the web page's chart), first
    call of a fresh process, then best of `--repeat`."""
    from projections.store import LedgerStore
    from projections.timeline import balance_series

    known_at = parse_moment(args.known_at)
    with LedgerStore.open(args.url) as store:
        runs = []
        for _ in range(args.repeat):
            seconds, months = timed(lambda: balance_series(store, args.hospital, args.year, known_at))
            runs.append(seconds)
    return {"hospital": args.hospital, "first": runs[0], "best": min(runs), "runs": runs,
            "months": len(months), "computed": sum(1 for m in months if m.balance is not None)}


STEPS = {
    "analyze": step_analyze,
    "floor": step_floor,
    "plan": step_plan,
    "balance": step_balance,
    "series": step_series,
    "clear": step_clear,
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.steps")
    p.add_argument("step", choices=sorted(STEPS))
    p.add_argument("--url", required=True)
    p.add_argument("--pool", default="panzhihua")
    p.add_argument("--year", type=int, default=2020)
    p.add_argument("--known-at")
    p.add_argument("--hospital")
    p.add_argument("--asks", help="JSON list of [hospital_id, date] pairs")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    started = datetime.now(UTC)
    out = STEPS[args.step](args)
    out.setdefault("peak_rss_mib", peak_rss_mib())
    out["started_at"] = started.isoformat()
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
