"""Issue 11's "Done when", measured: `python -m benchmarks.run --scale small|city|province [--file F]`.

Per back-end (SQLite file, PostgreSQL database, each fresh): a plain `drg-ledger ingest
--backfill` of a generated pool-year and nothing else (then ANALYZE on PostgreSQL), then every
command through the CLI exactly as a user types it, each in its own process, timed with
`/usr/bin/time` (user, system, wall, peak RSS): `clear` at 2021-05-10, 2021-05-12 and now
against PostgreSQL's own GROUP BY, `clear --cold` at the same moments (figures compared
hospital by hospital), `balance` at random (hospital, date) pairs, the month-end series,
`explain`, a back-dated coefficient change for every 2A hospital (`ingest` + the next
`clear`), `reconcile`. `--skip cold,reconcile` leaves out the cold replays (the default at
province scale, where they take hours; reported as "skipped"). CLI times are also given net
of start-up: the median wall time of a `clear` of a pool with no events (imports, store
open, one empty query). Prints a table and writes benchmarks/results/<scale>-<time>.json;
see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console
from rich.table import Table

from benchmarks.steps import percentiles

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("DRG_BENCH_DATA", HERE / "data"))
"""Generated files and SQLite stores (git-ignored; `$DRG_BENCH_DATA` to put them elsewhere)."""
RESULTS = HERE / "results"
CLI = str(Path(sys.executable).parent / "drg-ledger")
POOL, YEAR, SEED = "panzhihua", 2020, 2020
BEFORE, AFTER = "2021-05-10", "2021-05-12"
"""`--known-at` before and after the back-dated high-tech catalogue (recorded 2021-05-11 00:00 +08:00)."""
MOMENTS = (BEFORE, AFTER, None)
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/drg_bench_scale"
PG_MEMORY = ("shared_buffers", "work_mem", "maintenance_work_mem", "max_parallel_workers_per_gather")

console = Console(width=None if sys.stdout.isatty() else 150)


@dataclass(frozen=True)
class Scale:
    cases: int
    hospitals: int
    balance_samples: int  # CLI `balance` calls, each a process


SCALES = {
    "small": Scale(20_000, 40, 20),
    "city": Scale(300_000, 150, 40),
    "province": Scale(10_000_000, 3_000, 20),
}
SKIPPABLE = ("cold", "reconcile")
"""Steps `--skip` may leave out: `clear --cold` at the three moments, `reconcile` (six cold replays)."""
SKIPPED = {"province": "cold,reconcile"}
"""`--skip` when not given: at province scale a cold replay of 10M cases takes far longer than the run."""
INGEST_TIMEOUT = 6 * 3600.0
"""The load's own limit: a province ingest at ~4,500 events/s is ~40 min, more on a busy machine."""

TARGETS = {
    "ingest_eps": {"postgresql": 20_000, "sqlite": 10_000},
    "clear_over_floor": 3.0,
    "cold_s": 10.0,
    "balance_p95_ms": 100.0,
    "series_ms": 300.0,
    "coefficient_s": 10.0,
    "explain_ms": 200.0,
}


# ----------------------------------------------------------------------------- running things


def cli(*args: str, url: str | None = None, label: str = "", timeout: float = 3600) -> dict[str, Any]:
    """`drg-ledger ARGS --database-url URL` in its own process, under `/usr/bin/time`."""
    cmd = [CLI, *args, *(["--database-url", url] if url else [])]
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        started = time.perf_counter()
        try:
            proc = subprocess.run(["/usr/bin/time", "-f", "%U %S %e %M", "-o", tf.name, *cmd], check=False,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            cancel_queries(url)
            console.log(f"[red]{label or args[0]}: no result within {timeout:.0f} s[/red]")
            return {"error": f"no result within {timeout:.0f} s", "rc": None}
        wall = time.perf_counter() - started
        timed = tf.read().split()
    if len(timed) < 4:  # /usr/bin/time itself killed (a signal to both, e.g. from outside)
        console.log(f"[red]{label or args[0]}: killed after {wall:.0f} s (exit {proc.returncode}), no timing[/red]")
        return {"error": f"killed after {wall:.0f} s (exit {proc.returncode}), no timing", "rc": proc.returncode,
                "wall": wall, "stdout": proc.stdout}
    user, system, _, rss_kib = timed[-4:]
    out = {"rc": proc.returncode, "wall": wall, "user": float(user), "sys": float(system),
           "peak_rss_mib": int(rss_kib) / 1024, "stdout": proc.stdout}
    if proc.returncode not in (0, 1, 3, 4):
        out["error"] = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        console.print(proc.stderr[-2000:])
    if label:
        console.log(f"{label}: rc {proc.returncode}, wall {wall:.3f} s, cpu {out['user'] + out['sys']:.2f} s, "
                    f"rss {out['peak_rss_mib']:.0f} MiB")
    return out


def step(name: str, url: str, *extra: str, timeout: float = 3600) -> dict[str, Any]:
    """`python -m benchmarks.steps NAME` in a fresh process; returns its JSON, or {"error": ...}."""
    cmd = [sys.executable, "-m", "benchmarks.steps", name, "--url", url, "--pool", POOL, "--year", str(YEAR), *extra]
    try:
        proc = subprocess.run(cmd, check=False, cwd=HERE.parent, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        cancel_queries(url)
        return {"error": f"no result within {timeout:.0f} s"}
    if proc.returncode != 0:
        console.print(proc.stderr[-3000:])
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    console.log(f"{name}: " + ", ".join(f"{k}={_short(v)}" for k, v in out.items() if not isinstance(v, list)))
    return out


def cancel_queries(url: str | None) -> None:
    """Cancels what a killed step left running in the benchmark database (PostgreSQL keeps going)."""
    if not url or not url.startswith("postgres"):
        return
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(urlsplit(url)._replace(path="/postgres").geturl(), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


def _short(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def strip(run: dict[str, Any]) -> dict[str, Any]:
    """A CLI run without its stdout, for the results file."""
    return {k: v for k, v in run.items() if k != "stdout"}


# ----------------------------------------------------------------------------- data and stores


def data_file(scale: Scale, given: str | None) -> tuple[Path, dict[str, Any] | None]:
    """`--file` as given, or the generated pool-year, cached in benchmarks/data/."""
    if given:
        return Path(given).resolve(), None
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
    DATA.mkdir(exist_ok=True)
    path = DATA / f"bench-{tag}.db"
    for p in DATA.glob(f"bench-{tag}.db*"):
        p.unlink()
    return f"sqlite:///{path}"


def machine(pg_url: str) -> dict[str, Any]:
    import psycopg

    info: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                            "platform": platform.platform(), "loadavg_at_start": os.getloadavg()}
    try:
        with psycopg.connect(urlsplit(pg_url)._replace(path="/postgres").geturl()) as conn:
            info["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            # The server's memory is not in any command's peak RSS: what bounds it.
            info["postgresql_memory"] = {name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                                         for name in PG_MEMORY}
    except Exception as exc:  # noqa: BLE001 - informative only
        info["postgresql"] = f"unreachable: {exc}"
    return info


def load_backend(backend: str, url: str, file: Path, events: int) -> dict[str, Any]:
    """A plain `drg-ledger ingest --backfill` of the file, then ANALYZE on PostgreSQL."""
    run = cli("ingest", "--backfill", str(file), "--json", url=url, label="ingest --backfill", timeout=INGEST_TIMEOUT)
    out: dict[str, Any] = {"url": url, "ingest": strip(run)}
    if "error" not in run:
        report = json.loads(run["stdout"])
        run = out["ingest"]
        run.update(accepted=report["accepted"], duplicates=report["duplicates"], rejected=len(report["rejected"]),
                   lines=events, events_per_s=events / run["wall"])
    if backend == "postgresql":
        # Autovacuum analyses a freshly loaded table within a minute; do it now.
        out["analyze"] = step("analyze", url)
    return out


# ----------------------------------------------------------------------------- measuring


def figures(stdout: str) -> dict[str, Any]:
    """A `clear --json` output without `basis` and `known_at` (what the two paths read, and
    "now", differ between runs; the figures must not)."""
    data = json.loads(stdout)
    return {k: v for k, v in data.items() if k not in ("basis", "known_at")}


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What differs between two clearings: the hospitals by id, then the pool's own figures."""
    ha = {h["hospital_id"]: h for h in a.get("hospitals", [])}
    hb = {h["hospital_id"]: h for h in b.get("hospitals", [])}
    out = sorted(h for h in ha.keys() | hb.keys() if ha.get(h) != hb.get(h))
    out += [k for k in a.keys() | b.keys() if k != "hospitals" and a.get(k) != b.get(k)]
    return out


def moment_args(known_at: str | None) -> list[str]:
    return ["--known-at", known_at] if known_at else []


def clear_args(*extra: str) -> list[str]:
    return ["clear", "--pool", POOL, "--year", str(YEAR), "--json", *extra]


def measure_backend(url: str, scale: Scale, floor: dict[str, Any] | None, repeat: int,
                    skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    out: dict[str, Any] = {"skipped": sorted(skip)}
    # CLI start-up: `--help` (interpreter, typer), and each measured command asking for what
    # does not exist (the same imports and store open, a lookup that finds nothing: exit 3 or 4),
    # 9 runs each. A best of 3 (clear, explain) is reported net of its command's best start-up,
    # each balance sample net of the median.
    helps = [cli("--help")["wall"] for _ in range(9)]
    out["startup"] = {"help_best": min(helps), "help_median": statistics.median(helps), "help_runs": helps}
    for name, args in (("clear", ["clear", "--pool", "nosuchpool", "--year", str(YEAR), "--json"]),
                       ("balance", ["balance", "--hospital", "NOSUCH", "--as-of", f"{YEAR}-06-30", "--known-at", AFTER,
                                    "--json"]),
                       ("explain", ["explain", "--case", "NOSUCH", "--known-at", AFTER, "--json"])):
        runs = [cli(*args, url=url) for _ in range(9)]
        walls = [r["wall"] for r in runs]
        out["startup"][name] = {"best": min(walls), "median": statistics.median(walls),
                                "cpu_best": min(r["user"] + r["sys"] for r in runs), "rc": runs[0]["rc"], "runs": walls}
        console.log(f"start-up of {name}: best {min(walls):.3f} s, median {statistics.median(walls):.3f} s")
    startup, startup_cpu = out["startup"]["clear"]["best"], out["startup"]["clear"]["cpu_best"]

    plan = step("plan", url, "--samples", str(scale.balance_samples))
    out["plan"] = {k: plan.get(k) for k in ("explain_case", "series_hospital", "grade_2a")}
    floor_best = floor["best"] if floor and "best" in floor else None

    out["clear"], out["cold"], clearings = {}, {}, {}
    for known_at in MOMENTS:
        name = known_at or "now"
        runs = [cli(*clear_args(*moment_args(known_at)), url=url, label=f"clear {name}") for _ in range(repeat)]
        best = min(r["wall"] for r in runs)
        clearings[name] = figures(runs[0]["stdout"]) if runs[0]["rc"] == 0 else {}
        cpu = min(r["user"] + r["sys"] for r in runs)
        out["clear"][name] = {"runs": [strip(r) for r in runs], "best": best, "net": best - startup,
                              "cpu_best": cpu, "cpu_net": cpu - startup_cpu,
                              "over_floor": (best - startup) / floor_best if floor_best else None,
                              "peak_rss_mib": max(r["peak_rss_mib"] for r in runs), "rc": runs[0]["rc"]}
        if "cold" in skip:
            continue
        cold = cli(*clear_args("--cold", *moment_args(known_at)), url=url, label=f"clear --cold {name}")
        diff = differences(clearings[name], figures(cold["stdout"])) if cold["rc"] == 0 else ["cold failed"]
        out["cold"][name] = {**strip(cold), "same_as_projection": not diff and bool(clearings[name]),
                             "differences": diff[:20]}
        if diff:
            console.print(f"[red]clear and clear --cold differ at {name}: {diff[:10]}[/red]")

    out["clear_in_process"] = step("clear", url, "--known-at", ",".join(m or "now" for m in MOMENTS),
                                   "--repeat", str(repeat))

    # balance at a historical known_at: the CLI per (hospital, date) pair, and the same pairs in one process
    asks = plan.get("balance_asks", [])
    runs = [cli("balance", "--hospital", h, "--as-of", day, "--known-at", AFTER, "--json", url=url)
            for h, day in asks]
    nets = [r["wall"] - out["startup"]["balance"]["median"] for r in runs]
    out["balance"] = {"wall": percentiles([r["wall"] for r in runs]), "known_at": AFTER, "samples": len(runs), "failed": sum(1 for r in runs if r["rc"] != 0),
                      "rcs": sorted({r["rc"] for r in runs}), **percentiles(nets), "peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}
    console.log(f"balance: p50 {out['balance']['p50'] * 1e3:.0f} ms, p95 {out['balance']['p95'] * 1e3:.0f} ms net")
    out["balance_in_process"] = step("balance", url, "--known-at", AFTER, "--asks", json.dumps(asks))
    out["series"] = step("series", url, "--known-at", AFTER, "--hospital", str(plan.get("series_hospital")))

    case = str(plan.get("explain_case"))
    runs = [cli("explain", "--case", case, "--known-at", AFTER, "--json", url=url, label=f"explain {case}")
            for _ in range(repeat)]
    best = min(r["wall"] for r in runs)
    out["explain"] = {"case": case, "runs": [strip(r) for r in runs], "best": best,
                      "net": best - out["startup"]["explain"]["best"],
                      "rc": runs[0]["rc"]}

    out["coefficient"] = backdated_coefficients(url, plan.get("grade_2a", []), clearings["now"])
    if "reconcile" not in skip:
        run = cli("reconcile", "--pool", POOL, "--year", str(YEAR), url=url, label="reconcile")
        out["reconcile"] = strip(run) | {"tail": run.get("stdout", "")[-1500:]}
    return out


def backdated_coefficients(url: str, hospitals: list[str], before: dict[str, Any]) -> dict[str, Any]:
    """A CoefficientChanged for every 2A hospital, effective 2020-01-01, recorded now: `ingest`
    of the file, then the next `clear`; whose settled points moved (and whose money: all, as
    the point value moves with the points)."""
    from ledger.events import EventType

    recorded = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    lines = [json.dumps({
        "event_id": f"bench-coef-{POOL}-{YEAR}-{h}-{stamp}", "event_type": EventType.COEFFICIENT_CHANGED, "schema_version": 1,
        "source": "operator:coefficients", "recorded_at": recorded,
        "payload": {"pool": POOL, "hospital_id": h, "coefficient": "1.05", "effective_from": f"{YEAR}-01-01",
                    "effective_to": f"{YEAR}-12-31", "reason": "benchmark: back-dated coefficient for every 2A hospital"},
    }, ensure_ascii=False) for h in hospitals]
    DATA.mkdir(exist_ok=True)
    path = DATA / f"coefficients-2a-{stamp}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    ingest = cli("ingest", str(path), "--json", url=url, label=f"ingest {len(lines)} coefficient changes")
    clear = cli(*clear_args(), url=url, label="clear after the coefficient changes")
    after = figures(clear["stdout"]) if clear["rc"] == 0 else {}
    points = [{h["hospital_id"]: h["settled_points"] for h in c.get("hospitals", [])} for c in (before, after)]
    moved = sorted(h for h in points[0].keys() | points[1].keys() if points[0].get(h) != points[1].get(h))
    return {"file": str(path), "events": len(lines), "ingest": strip(ingest), "clear": strip(clear),
            "seconds": ingest["wall"] + clear["wall"], "settled_points_moved": moved,
            "money_moved": differences(before, after),
            "all_2a_moved": bool(hospitals) and set(hospitals) <= set(moved),
            "accepted": json.loads(ingest["stdout"])["accepted"] if ingest["rc"] == 0 else None}


# ----------------------------------------------------------------------------- the report


def report(result: dict[str, Any]) -> None:
    t = TARGETS
    table = Table(title=f"drg-ledger {result['scale']}: {result['cases']:,} cases, {result['hospitals']} hospitals "
                        f"({result['events']:,} lines of {Path(result['data_file']).name})")
    table.add_column("measure")
    for backend in result["backends"]:
        table.add_column(backend, justify="right")
    table.add_column("target", justify="right")
    floor = result.get("floor") or {}

    def row(label: str, fn: Any, target: str | dict[str, str] = "", step: str = "") -> None:
        cells = []
        for backend in result["backends"]:
            if step in result["backends"][backend].get("skipped", ()):
                cells.append("skipped")
                continue
            try:
                cells.append(fn(result["backends"][backend]))
            except (KeyError, TypeError, ZeroDivisionError, IndexError):
                cells.append("-")
        table.add_row(label, *cells, target if isinstance(target, str) else " / ".join(target.values()))

    def cpu(r: dict[str, Any]) -> str:
        return f"{r['user'] + r['sys']:.1f}"

    def yes(ok: bool) -> str:
        return "yes" if ok else "[red]NO[/red]"

    row("ingest --backfill events/s (lines / wall)", lambda b: f"{b['ingest']['events_per_s']:,.0f}",
        {k: f"{k[:2]} >= {v:,}" for k, v in t["ingest_eps"].items()})  # type: ignore[attr-defined]
    row("  wall / CPU s, peak RSS MiB", lambda b: f"{b['ingest']['wall']:.1f} / {cpu(b['ingest'])}, "
        f"{b['ingest']['peak_rss_mib']:,.0f}")
    row("  ANALYZE s", lambda b: f"{b['analyze']['seconds']:.2f}")
    row("CLI start-up s, best / median of 9: --help", lambda b: f"{b['startup']['help_best']:.2f} / "
        f"{b['startup']['help_median']:.2f}")
    for name in ("clear", "balance", "explain"):
        row(f"  {name} of nothing (what is subtracted)", lambda b, n=name: f"{b['startup'][n]['best']:.2f} / "
            f"{b['startup'][n]['median']:.2f}")
    table.add_row("PostgreSQL GROUP BY hospital, drg (floor) ms", *[f"{floor['best'] * 1e3:.0f}" if "best" in floor
                  else "-" for _ in result["backends"]], "best of 3")
    for name in ("2021-05-10", "2021-05-12", "now"):
        row(f"clear at {name}: best wall / net s", lambda b, n=name: f"{b['clear'][n]['best']:.2f} / "
            f"{b['clear'][n]['net']:.2f}")
        row("  net / floor", lambda b, n=name: f"{b['clear'][n]['over_floor']:.1f}x", f"<= {t['clear_over_floor']}x")
        row("  CPU net of start-up's CPU s", lambda b, n=name: f"{b['clear'][n]['cpu_net']:.2f}")
        row("  in one process, best of 3 s / floor", lambda b, n=name: f"{b['clear_in_process'][n]['best']:.3f} / "
            f"{b['clear_in_process'][n]['best'] / floor['best']:.1f}x")
        row("  = clear --cold, hospital by hospital", lambda b, n=name: yes(b["cold"][n]["same_as_projection"]),
            step="cold")
        row("  clear --cold wall / CPU s", lambda b, n=name: f"{b['cold'][n]['wall']:.1f} / {cpu(b['cold'][n])}",
            f"<= {t['cold_s']:.0f} s", step="cold")
    row("clear peak RSS MiB (max of the moments)", lambda b: f"{max(c['peak_rss_mib'] for c in b['clear'].values()):,.0f}")
    row("clear --cold peak RSS MiB (parent)", lambda b: f"{max(c['peak_rss_mib'] for c in b['cold'].values()):,.0f}",
        step="cold")
    row("balance at 2021-05-12, wall p50 / p95 ms", lambda b: f"{b['balance']['wall']['p50'] * 1e3:.0f} / "
        f"{b['balance']['wall']['p95'] * 1e3:.0f}")
    row("  net of start-up p50 / p95 ms", lambda b: f"{b['balance']['p50'] * 1e3:.0f} / "
        f"{b['balance']['p95'] * 1e3:.0f} ({b['balance']['samples']})", f"p95 <= {t['balance_p95_ms']:.0f}")
    row("  in one process p50 / p95 ms", lambda b: f"{b['balance_in_process']['p50'] * 1e3:.0f} / "
        f"{b['balance_in_process']['p95'] * 1e3:.0f}")
    row("12 month-end balances ms, first / best of 3", lambda b: f"{b['series']['first'] * 1e3:.0f} / "
        f"{b['series']['best'] * 1e3:.0f}", f"<= {t['series_ms']:.0f}")
    row("explain best wall / net ms", lambda b: f"{b['explain']['best'] * 1e3:.0f} / {b['explain']['net'] * 1e3:.0f}",
        f"<= {t['explain_ms']:.0f}")
    row("2A coefficient changes: ingest + clear s", lambda b: f"{b['coefficient']['ingest']['wall']:.2f} + "
        f"{b['coefficient']['clear']['wall']:.2f} = {b['coefficient']['seconds']:.2f}", f"<= {t['coefficient_s']:.0f}")
    row("  every 2A hospital moved", lambda b: f"{yes(b['coefficient']['all_2a_moved'])} "
        f"({len(b['coefficient']['settled_points_moved'])} hospitals' points)")
    row("reconcile: exit code, wall s", lambda b: f"{b['reconcile']['rc']}, {b['reconcile']['wall']:.1f}", "0",
        step="reconcile")
    console.print(table)
    if "postgresql_memory" in result["machine"]:
        console.print("PostgreSQL memory settings (not in the peak RSS above): "
                      + ", ".join(f"{k} {v}" for k, v in result["machine"]["postgresql_memory"].items()))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    p.add_argument("--cases", type=int, help="override the scale's case count")
    p.add_argument("--hospitals", type=int, help="override the scale's hospital count")
    p.add_argument("--file", help="an existing pool-year (Panzhihua 2020) to ingest instead of generating one; "
                   "--cases and --hospitals then only label the results")
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--postgres-url", default=os.environ.get("DRG_BENCH_POSTGRES_URL", DEFAULT_PG),
                   help="a database this benchmark may drop and recreate")
    p.add_argument("--phase", choices=("all", "load", "measure"), default="all",
                   help="load: generate and ingest; measure: measure what `load` left")
    p.add_argument("--balance-samples", type=int, help="override the scale's number of `balance` calls")
    p.add_argument("--repeat", type=int, default=3, help="runs of each `clear` and `explain` (best is reported)")
    p.add_argument("--skip", help=f"steps to leave out, comma-separated, of {','.join(SKIPPABLE)} "
                   f"(default: {SKIPPED['province']} at province scale, none otherwise; '' runs all)")
    args = p.parse_args(argv)
    skip = frozenset(s for s in (SKIPPED.get(args.scale, "") if args.skip is None else args.skip).split(",") if s)
    if skip - set(SKIPPABLE):
        p.error(f"--skip: not a step that can be skipped: {','.join(sorted(skip - set(SKIPPABLE)))}")
    scale = SCALES[args.scale]
    scale = Scale(args.cases or scale.cases, args.hospitals or scale.hospitals,
                  args.balance_samples or scale.balance_samples)
    backends = [b for b in args.backends.split(",") if b]
    started = time.perf_counter()
    file, generated = data_file(scale, args.file)
    with file.open("rb") as fh:
        events = sum(1 for _ in fh)
    result: dict[str, Any] = {"scale": args.scale, "cases": scale.cases, "hospitals": scale.hospitals,
                              "started_at": datetime.now(UTC).isoformat(), "machine": machine(args.postgres_url),
                              "data_file": str(file), "generate": generated, "events": events, "backends": {}}
    tag = f"{args.scale}-{file.stem}"
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"{args.scale}{'' if args.phase == 'all' else '-' + args.phase}-{stamp}.json"
    for backend in backends:  # PostgreSQL first gives the SQLite run its floor
        loaded = DATA / f"bench-{tag}-{backend}-load.json"
        if args.phase in ("all", "load"):
            url = fresh_sqlite(tag) if backend == "sqlite" else fresh_postgres(args.postgres_url)
            load = load_backend(backend, url, file, events)
            DATA.mkdir(exist_ok=True)
            loaded.write_text(json.dumps({**load, "data_file": str(file)}, indent=2) + "\n")
        else:
            load = json.loads(loaded.read_text())
            if load.pop("data_file") != str(file):
                raise SystemExit(f"{loaded} was loaded from another file: run --phase load first")
        result["backends"][backend] = load
        if args.phase in ("all", "measure"):
            if backend == "postgresql":
                result["floor"] = step("floor", load["url"])
            load.update(measure_backend(load["url"], scale, result.get("floor"), args.repeat, skip))
        result["seconds"] = time.perf_counter() - started
        result["machine"]["loadavg_at_end"] = os.getloadavg()
        out.write_text(json.dumps(result, indent=2) + "\n")  # after each back-end: a partial run keeps what it measured
    if args.phase != "load":
        report(result)
    console.print(f"{result['seconds']:.0f} s in all; written to {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
