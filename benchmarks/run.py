"""Speed and scale of drg-ledger on this machine: `python -m benchmarks.run --scale small|city|province`.

Generates a pool-year (cached in benchmarks/data/), loads it into SQLite and PostgreSQL,
refreshes the warm projection and times every way of clearing it, the balances, and the
PostgreSQL floor; prints a table and writes benchmarks/results/<scale>-<time>.json.
See benchmarks/README.md for the targets and the numbers measured.

`province` (10M cases) loads the PostgreSQL index in bulk instead of ingesting through the
journal (benchmarks/bulk_index.py): the ingest and cold paths are extrapolated from the
smaller runs, not measured at that scale.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RESULTS = HERE / "results"
POOL, YEAR, SEED = "panzhihua", 2020, 2020
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/drg_bench_scale"

console = Console()


@dataclass(frozen=True)
class Scale:
    cases: int
    hospitals: int
    balance_samples: int  # warm balances (random hospital, random date)
    index_balance_samples: int  # balances through the event path (slow at scale)
    bulk: bool = False  # PostgreSQL index loaded in bulk, no journal (benchmarks/bulk_index.py)


SCALES = {
    "small": Scale(20_000, 40, 200, 5),
    "city": Scale(300_000, 150, 200, 3),
    "province": Scale(10_000_000, 3_000, 30, 0, bulk=True),
}

TARGETS = {
    "city": {"warm_s": 2.0, "cold_s": 15.0, "balance_p95_ms": 100.0, "ingest_eps": 20_000, "warm_over_floor": 3.0},
    "province": {"warm_s": 60.0, "peak_rss_mib": 4096.0},
}


WORK_MEM_OPTIONS = "-c work_mem=64MB"
"""libpq PGOPTIONS for the `index (work_mem=64MB)` variant on PostgreSQL (benchmarks/README.md)."""


def step(name: str, url: str, *extra: str, timeout: float = 4 * 3600, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs `python -m benchmarks.steps` in a fresh process; returns its JSON, or {"error": ...}."""
    cmd = [sys.executable, "-m", "benchmarks.steps", name, "--url", url, "--pool", POOL, "--year", str(YEAR), *extra]
    console.log(f"[dim]{' '.join(cmd[2:])}{' with ' + str(env) if env else ''}[/dim]")
    try:
        proc = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        cancel_queries(url)
        console.log(f"[red]{name} {' '.join(extra)}: no result within {timeout:.0f} s[/red]")
        return {"error": f"no result within {timeout:.0f} s", "timeout_s": timeout}
    if proc.returncode != 0:
        console.print(proc.stderr[-3000:])
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    console.log(f"{name} {' '.join(extra)}: " + ", ".join(f"{k}={_short(v)}" for k, v in out.items() if k != "runs"))
    return out


def cancel_queries(url: str) -> None:
    """Cancels what a killed step left running in the benchmark database (PostgreSQL keeps going)."""
    if not url.startswith("postgres"):
        return
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(urlsplit(url)._replace(path="/postgres").geturl(), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


def _short(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def data_file(scale: Scale) -> tuple[Path, dict[str, Any] | None]:
    """The generated pool-year, cached: generated only when missing."""
    from drg_ledger.generate import generate

    DATA.mkdir(exist_ok=True)
    path = DATA / f"{POOL}-{YEAR}-{scale.cases}c-{scale.hospitals}h-s{SEED}.jsonl"
    if path.exists():
        return path, None
    console.log(f"generating {path.name}")
    tmp = path.with_suffix(".partial")
    summary = generate(tmp, cases=scale.cases, hospitals=scale.hospitals, year=YEAR, seed=SEED, pool=POOL)
    tmp.rename(path)
    return path, {"events": summary.events, "seconds": summary.seconds, "events_per_s": summary.events_per_second}


def fresh_postgres(url: str) -> str:
    """Drops and recreates the benchmark database; returns its URL."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return url


def fresh_sqlite(tag: str) -> str:
    path = DATA / f"bench-{tag}.db"
    for p in DATA.glob(f"bench-{tag}.db*"):
        p.unlink()
    return f"sqlite:///{path}"


def machine() -> dict[str, Any]:
    import psycopg

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
    }
    try:
        with psycopg.connect(urlsplit(DEFAULT_PG)._replace(path="/postgres").geturl()) as conn:
            info["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    except Exception as exc:  # noqa: BLE001 - informative only
        info["postgresql"] = f"unreachable: {exc}"
    return info


def load_backend(backend: str, url: str, file: Path, scale: Scale) -> dict[str, Any]:
    """Loads the pool-year: ingest through the journal, or (province) the index in bulk."""
    out: dict[str, Any] = {"url": url}
    if scale.bulk:
        out["bulk_index"] = step("bulk-index", url, "--file", str(file))
    else:
        out["ingest"] = step("ingest", url, "--file", str(file))
        if backend == "postgresql":
            # Autovacuum analyses a freshly loaded table within a minute; do it now.
            out["analyze"] = step("analyze", url)
    return out


def measure_backend(backend: str, url: str, scale: Scale, skip_cold: bool, slow_timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["refresh"] = step("refresh", url)
    out["warm"] = step("clear", url, "--path", "warm", "--repeat", "3")
    pg = backend == "postgresql"
    if not scale.bulk:
        out["index"] = step("clear", url, "--path", "index", timeout=slow_timeout)
        if pg:
            out["index_work_mem"] = step("clear", url, "--path", "index", timeout=slow_timeout,
                                         env={"PGOPTIONS": WORK_MEM_OPTIONS})
        if not skip_cold:
            out["cold"] = step("clear", url, "--path", "cold", timeout=slow_timeout)
        digests = {p: out[p]["digest"] for p in ("warm", "index", "index_work_mem", "cold") if "digest" in out.get(p, {})}
        out["same_result"] = len(set(digests.values())) == 1
        if not out["same_result"]:
            console.print(f"[red]clearings differ: {digests}[/red]")
    out["balance_warm"] = step("balance", url, "--path", "warm", "--samples", str(scale.balance_samples))
    if scale.index_balance_samples:
        n = str(scale.index_balance_samples)
        out["balance_index"] = step("balance", url, "--path", "index", "--samples", n, timeout=slow_timeout)
        if pg:
            out["balance_index_work_mem"] = step("balance", url, "--path", "index", "--samples", n,
                                                 timeout=slow_timeout, env={"PGOPTIONS": WORK_MEM_OPTIONS})
    return out


def cell(x: dict[str, Any], fmt: Any) -> str:
    return f"[red]{x['error']}[/red]" if "error" in x else str(fmt(x))


def report(name: str, result: dict[str, Any]) -> None:
    t = TARGETS.get(name, {})
    table = Table(title=f"drg-ledger {name}: {result['cases']:,} cases, {result['hospitals']} hospitals "
                        f"({result.get('events', '?'):,} events)")
    table.add_column("measure")
    for backend in result["backends"]:
        table.add_column(backend, justify="right")
    table.add_column("target", justify="right")

    def row(label: str, fn: Any, target: str = "") -> None:
        cells = []
        for backend in result["backends"]:
            try:
                cells.append(fn(result["backends"][backend]))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("-")
        table.add_row(label, *cells, target)

    def goal(key: str, fmt: str) -> str:
        return fmt.format(t[key]) if key in t else ""

    def ms(x: dict[str, Any], a: str, b: str) -> str:
        return f"{x[a] * 1e3:,.0f} / {x[b] * 1e3:,.0f}"

    row("ingest events/s", lambda b: f"{b['ingest']['events_per_s']:,.0f}", goal("ingest_eps", ">= {:,}"))
    row("bulk index load events/s", lambda b: f"{b['bulk_index']['events_per_s']:,.0f}")
    row("refresh projection s", lambda b: f"{b['refresh']['seconds']:.1f}")
    row("refresh peak RSS MiB", lambda b: f"{b['refresh']['peak_rss_mib']:,.0f}", goal("peak_rss_mib", "<= {:,.0f}"))
    row("clear cold (journal replay) s", lambda b: cell(b["cold"], lambda x: f"{x['first']:.2f}"), goal("cold_s", "<= {}"))
    row("  peak RSS MiB", lambda b: f"{b['cold']['peak_rss_mib']:,.0f}")
    row("clear from the index s", lambda b: cell(b["index"], lambda x: f"{x['first']:.2f}"))
    row("  peak RSS MiB", lambda b: f"{b['index']['peak_rss_mib']:,.0f}")
    row("clear from the index, work_mem=64MB s", lambda b: cell(b["index_work_mem"], lambda x: f"{x['first']:.2f}"))
    row("clear warm s (first / best of 3)", lambda b: f"{b['warm']['first']:.3f} / {b['warm']['best']:.3f}",
        goal("warm_s", "<= {}"))
    row("  peak RSS MiB", lambda b: f"{b['warm']['peak_rss_mib']:,.0f}", goal("peak_rss_mib", "<= {:,.0f}"))
    row("PostgreSQL floor s (best of 3)", lambda b: f"{b['warm']['floor']['best']:.3f}")
    row("warm / floor (best of 3 each)", lambda b: f"{b['warm']['best'] / b['warm']['floor']['best']:.2f}x",
        goal("warm_over_floor", "<= {}x"))
    row("balance warm p50 / p95 ms", lambda b: ms(b["balance_warm"], "p50", "p95"), goal("balance_p95_ms", "p95 <= {:.0f}"))
    row("balance from the index p50 / max ms", lambda b: cell(b["balance_index"], lambda x: ms(x, "p50", "max")))
    row("  same, work_mem=64MB", lambda b: cell(b["balance_index_work_mem"], lambda x: ms(x, "p50", "max")))
    row("same clearing (warm = index = cold)", lambda b: "yes" if b["same_result"] else "[red]NO[/red]")
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    p.add_argument("--cases", type=int, help="override the scale's case count")
    p.add_argument("--hospitals", type=int, help="override the scale's hospital count")
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--postgres-url", default=os.environ.get("DRG_BENCH_POSTGRES_URL", DEFAULT_PG),
                   help="a database this benchmark may drop and recreate")
    p.add_argument("--phase", choices=("all", "load", "measure"), default="all",
                   help="load: generate and load the databases; measure: measure what `load` left (province "
                        "runs in two commands, each well under 25 minutes)")
    p.add_argument("--skip-cold", action="store_true", help="do not replay the journal")
    p.add_argument("--slow-timeout", type=float, default=600,
                   help="seconds allowed to one cold or index clearing, or one batch of index balances")
    args = p.parse_args(argv)
    scale = SCALES[args.scale]
    if args.cases or args.hospitals:
        scale = Scale(args.cases or scale.cases, args.hospitals or scale.hospitals, scale.balance_samples,
                      scale.index_balance_samples, scale.bulk)
    backends = [b for b in args.backends.split(",") if b]
    if scale.bulk and backends != ["postgresql"]:
        backends = ["postgresql"]
        console.log("province: PostgreSQL only (the index is bulk-loaded)")
    started = time.perf_counter()
    result: dict[str, Any] = {
        "scale": args.scale,
        "cases": scale.cases,
        "hospitals": scale.hospitals,
        "started_at": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "backends": {},
    }
    file, generated = data_file(scale)
    result["data_file"] = str(file.relative_to(HERE.parent))
    result["generate"] = generated
    with file.open("rb") as fh:
        result["events"] = sum(1 for _ in fh)
    for backend in backends:
        loaded = DATA / f"bench-{args.scale}-{backend}-load.json"
        if args.phase in ("all", "load"):
            url = fresh_sqlite(args.scale) if backend == "sqlite" else fresh_postgres(args.postgres_url)
            load = load_backend(backend, url, file, scale)
            loaded.write_text(json.dumps({**load, "data_file": str(file)}, indent=2) + "\n")
        else:
            load = json.loads(loaded.read_text())
            if load.pop("data_file") != str(file):
                raise SystemExit(f"{loaded} was loaded from another file: run --phase load first")
        result["backends"][backend] = load
        if args.phase in ("all", "measure"):
            load.update(measure_backend(backend, load["url"], scale, args.skip_cold, args.slow_timeout))
    result["seconds"] = time.perf_counter() - started
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"{args.scale}{'' if args.phase == 'all' else '-' + args.phase}-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    report(args.scale, result)
    console.print(f"{result['seconds']:.0f} s in all; written to {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
