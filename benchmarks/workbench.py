"""`drg-ledger policy derive` over a window of city-years on PostgreSQL: time and peak memory (RULES.md 7).

Run by hand (benchmarks/README.md "The policy workbench"):

    .venv/bin/python -m benchmarks.workbench --phase load      # generate + ingest --backfill 3 x 300k cases
    .venv/bin/python -m benchmarks.workbench --phase measure   # policy derive, twice: the command and its phases
    .venv/bin/python -m benchmarks.workbench --phase measure --record-clearings   # ... then with clearings recorded

`load` generates `--years` (default 2021-2023) with `drg-ledger generate --cases 300000
--hospitals 60 --seed 7` (the same seed registers the same hospitals every year, so the
files go into one store) and ingests each with `drg-ledger ingest --backfill` into a fresh
database (`--postgres-url`, default postgresql://postgres@127.0.0.1:5432/drg_bench_workbench).
`measure` runs, each in its own process so each peak RSS is its own:
- **command**: `drg-ledger policy derive --pool panzhihua --years Y0-Y1 -o DRAFT --csv REPORT --json`,
  wall time and the child's ru_maxrss;
- **phases**: the same derivation in-process, timing each year's `LedgerStore.load` and
  `read_year`, then `derive`, and the draft written;
- with `--record-clearings`: `clear --record` of each year, then the command again, each
  year's point value now read from its `ClearingCompleted`.
Results go to `benchmarks/results/workbench-<time>.json` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RESULTS = HERE / "results"
POOL = "panzhihua"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/drg_bench_workbench"
CLI = [sys.executable, "-m", "drg_ledger.cli"]


def log(message: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fresh_postgres(url: str) -> None:
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def child(cmd: list[str]) -> dict[str, Any]:
    """Runs `cmd`; its wall time, its own peak RSS (ru_maxrss from wait4) and its stdout."""
    with tempfile.TemporaryFile("w+", encoding="utf-8") as out, tempfile.TemporaryFile("w+", encoding="utf-8") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=HERE.parent, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {stderr[-2000:]}")
    return {"seconds": round(seconds, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "load_average_1m": round(os.getloadavg()[0], 2),
            "stdout": stdout}


def load(args: argparse.Namespace, years: list[int]) -> dict[str, Any]:
    DATA.mkdir(exist_ok=True)
    fresh_postgres(args.postgres_url)
    out: dict[str, Any] = {"years": {}}
    for year in years:
        path = DATA / f"{POOL}-{year}-{args.cases}c-{args.hospitals}h-s{args.seed}.jsonl"
        if not path.exists():
            log(f"generate {path.name}")
            child([*CLI, "generate", "--cases", str(args.cases), "--hospitals", str(args.hospitals),
                   "--year", str(year),
                   "--seed", str(args.seed), "--pool", POOL, "-o", str(path)])
        log(f"ingest --backfill {path.name}")
        run = child([*CLI, "ingest", "--backfill", "--json", "--database-url", args.postgres_url, str(path)])
        report = json.loads(run["stdout"])
        out["years"][str(year)] = {"accepted": report["accepted"], "rejected": len(report["rejected"]),
                                   "seconds": run["seconds"],
                                   "events_per_s": round(report["accepted"] / run["seconds"], 1)}
        log(f"{year}: {out['years'][str(year)]}")
    return out


def phases(url: str, years: list[int], draft: Path, known_at: datetime) -> dict[str, Any]:
    """The derivation in this process, phase by phase (the `--step phases` child)."""
    from ledger.clearing import gc_paused
    from ledger.workbench import derive, draft_events, draft_lines, read_year
    from projections.store import LedgerStore
    from projections.window import pool_years

    timings: dict[str, Any] = {}
    window = []
    end = date(max(years), 12, 31)
    started = time.perf_counter()
    with LedgerStore.open(url) as store, gc_paused():
        mark = time.perf_counter()
        for year, events in pool_years(store, POOL, years, known_at):
            loaded = time.perf_counter()
            n = len(events)
            window.append(read_year(events, POOL, year, known_at, end))
            del events
            read = time.perf_counter()
            timings[str(year)] = {"events": n, "load_s": round(loaded - mark, 2),
                                  "read_year_s": round(read - loaded, 2),
                                  "cases_used": len(window[-1].cases)}
            mark = time.perf_counter()
    d0 = time.perf_counter()
    derivation = derive(window, POOL, known_at, max(years) + 1)
    d1 = time.perf_counter()
    draft.write_text("".join(line + "\n" for line in draft_lines(draft_events(derivation))), encoding="utf-8")
    d2 = time.perf_counter()
    return {"years": timings, "derive_s": round(d1 - d0, 2), "draft_s": round(d2 - d1, 2),
            "total_s": round(d2 - started, 2), "groups": len(derivation.groups),
            "hospitals": len(derivation.hospitals), "catalogue_rows": len(derivation.catalogue_rows),
            "cases": derivation.total_cases,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def measure(args: argparse.Namespace, years: list[int]) -> dict[str, Any]:
    RESULTS.mkdir(exist_ok=True)
    draft, report = DATA / "workbench-draft.jsonl", DATA / "workbench-report.csv"
    DATA.mkdir(exist_ok=True)
    span = f"{years[0]}-{years[-1]}"
    log(f"policy derive --years {span} (the command)")
    at = ["--known-at", args.known_at] if args.known_at else []
    cmd = child([*CLI, "policy", "derive", "--pool", POOL, "--years", span, "-o", str(draft), "--csv", str(report),
                 "--json", "--database-url", args.postgres_url, *at])
    result = json.loads(cmd["stdout"])
    command = {"seconds": cmd["seconds"], "cpu_s": cmd["cpu_s"], "peak_rss_mib": cmd["peak_rss_mib"],
               "load_average_1m": cmd["load_average_1m"],
               "point_values": {y: pv["source"] for y, pv in result["point_values"].items() if pv},
               "cases": result["overall"]["cases"], "read": result["read"], "events": result["events"]}
    log(f"command: {cmd['seconds']} s, peak {cmd['peak_rss_mib']} MiB")
    log("the same derivation phase by phase")
    ph = child([sys.executable, "-m", "benchmarks.workbench", "--step", "phases", "--postgres-url", args.postgres_url,
                "--years", span, *at])
    phased = json.loads(ph["stdout"].strip().splitlines()[-1]) | {"cpu_s": ph["cpu_s"],
                                                                   "load_average_1m": ph["load_average_1m"]}
    log(f"phases: {phased}")
    out = {"command": command, "phases": phased}
    if args.record_clearings:
        # A bureau derives after clearing the window's years: each year's PV is then read from
        # its ClearingCompleted instead of a settlement of the year (RULES.md 7).
        for year in years:
            log(f"clear --record {year}")
            child([*CLI, "clear", "--pool", POOL, "--year", str(year), "--record", "--json",
                   "--database-url", args.postgres_url])
        log(f"policy derive --years {span} with every year's clearing recorded")
        again = child([*CLI, "policy", "derive", "--pool", POOL, "--years", span, "-o", str(draft), "--json",
                       "--database-url", args.postgres_url])
        recorded = json.loads(again["stdout"])
        out["command_after_recorded_clearings"] = {
            "seconds": again["seconds"], "cpu_s": again["cpu_s"], "peak_rss_mib": again["peak_rss_mib"],
            "load_average_1m": again["load_average_1m"],
            "point_values": {y: pv["source"] for y, pv in recorded["point_values"].items() if pv}}
        log(f"after recorded clearings: {again['seconds']} s, peak {again['peak_rss_mib']} MiB")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.workbench", description=__doc__.split("\n")[0])
    p.add_argument("--phase", choices=("all", "load", "measure"), default="all")
    p.add_argument("--step", choices=("phases",), help=argparse.SUPPRESS)
    p.add_argument("--years", default="2021-2023")
    p.add_argument("--cases", type=int, default=300_000)
    p.add_argument("--hospitals", type=int, default=60)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--postgres-url", default=os.environ.get("DRG_BENCH_POSTGRES_URL", DEFAULT_PG))
    p.add_argument("--known-at", help="measure: derive as known at this moment (default now)")
    p.add_argument("--record-clearings", action="store_true", help="measure: then record each year's clearing "
                   "and derive again (PV from ClearingCompleted); changes the benchmark database")
    args = p.parse_args(argv)
    first, last = (int(y) for y in args.years.split("-"))
    years = list(range(first, last + 1))
    if args.step == "phases":
        moment = datetime.fromisoformat(args.known_at) if args.known_at else datetime.now(UTC)
        print(json.dumps(phases(args.postgres_url, years, DATA / "workbench-draft-phases.jsonl", moment)))
        return
    out: dict[str, Any] = {"started": datetime.now(UTC).isoformat(), "years": years, "cases_per_year": args.cases,
                           "hospitals": args.hospitals, "seed": args.seed,
                           "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()}}
    if args.phase in ("all", "load"):
        out["load"] = load(args, years)
    if args.phase in ("all", "measure"):
        out["measure"] = measure(args, years)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"workbench-{args.phase}-{stamp}.json"
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2, ensure_ascii=False), encoding="utf-8")
    log(f"written {path}")
    print(json.dumps(out, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
