"""HTTP service latency under concurrent clients: `python -m benchmarks.service --database-url URL`.

Starts `drg-ledger serve` on a free loopback port over an existing store (with a fresh
auditor token), then, for the balance-series endpoint and the clearing endpoint in turn,
runs `--clients` concurrent clients (threads, one HTTP connection each) that each send
`--requests` requests at a historical `--known-at`, hospitals taken round-robin. Reports
p50/p95/max latency per endpoint (nearest-rank percentiles over every request), the
single-client latency measured first, and writes benchmarks/results/service-<time>.json.

Bounded: no request starts after `--max-seconds` per endpoint, and each request times out
then; the whole run is capped at about 2 x `--max-seconds` plus start-up. Traffic goes to
127.0.0.1 only. See benchmarks/README.md ("HTTP service").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from drg_ledger.service.auth import add_token

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CLI = str(Path(sys.executable).with_name("drg-ledger"))
console = Console()


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p% of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(database_url: str, tokens: Path, port: int, stores: int, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    proc = subprocess.Popen([CLI, "serve", "--host", "127.0.0.1", "--port", str(port), "--tokens", str(tokens),
                             "--stores", str(stores), "--database-url", database_url, "--log-level", "warning"],
                            stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"drg-ledger serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise SystemExit("drg-ledger serve did not answer /healthz in 120 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_clients(base: str, token: str, paths: list[tuple[str, dict[str, Any]]], clients: int, requests: int,
                max_seconds: float) -> dict[str, Any]:
    """`clients` threads, each sending `requests` requests (taken round-robin from `paths`)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    lock = threading.Lock()
    started = time.monotonic()
    cutoff = started + max_seconds

    def client(n: int) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=max_seconds) as http:
            for i in range(requests):
                if time.monotonic() >= cutoff:
                    return
                path, params = paths[(n * requests + i) % len(paths)]
                t0 = time.perf_counter()
                try:
                    r = http.get(path, params=params)
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                elapsed = time.perf_counter() - t0
                with lock:
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors.append(f"{r.status_code}: {r.text[:200]}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    out: dict[str, Any] = {"clients": clients, "requests_per_client": requests, "answered": len(latencies),
                           "statuses": statuses, "errors": errors[:5], "wall_s": round(wall, 2)}
    if latencies:
        out.update(p50_s=round(percentile(latencies, 50), 3), p95_s=round(percentile(latencies, 95), 3),
                   max_s=round(max(latencies), 3), min_s=round(min(latencies), 3),
                   throughput_rps=round(len(latencies) / wall, 3))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", required=True, help="An existing store (e.g. the city PostgreSQL database).")
    parser.add_argument("--pool", default="panzhihua")
    parser.add_argument("--year", type=int, default=2020)
    parser.add_argument("--known-at", default="2021-05-12", help="The historical moment asked about.")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2, help="Requests per client per endpoint.")
    parser.add_argument("--stores", type=int, default=4, help="drg-ledger serve --stores.")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="Per endpoint: no request starts after it.")
    parser.add_argument("--label", default="", help="Free text kept in the result (e.g. the store's size).")
    args = parser.parse_args()

    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="drg-bench-service-") as tmp:
        tokens = Path(tmp) / "tokens.json"
        token = add_token(tokens, "benchmark", "auditor")
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        proc = _start(args.database_url, tokens, port, args.stores, Path(tmp) / "serve.log")
        try:
            http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=args.max_seconds)
            hospitals = [h["hospital_id"] for h in http.get("/hospitals", params={"pool": args.pool}).json()]
            health = http.get("/healthz").json()
            series_paths = [("/balance-series", {"hospital": h, "year": args.year, "known_at": args.known_at})
                            for h in hospitals]
            clearing_paths = [("/clearing", {"pool": args.pool, "year": args.year, "known_at": args.known_at})]
            single: dict[str, float] = {}
            for name, (path, params) in (("balance-series", series_paths[0]), ("clearing", clearing_paths[0])):
                t0 = time.perf_counter()
                r = http.get(path, params=params)
                r.raise_for_status()
                single[name] = round(time.perf_counter() - t0, 3)
                console.print(f"single client {name}: {single[name]} s")
            results: dict[str, Any] = {}
            for name, paths in (("balance-series", series_paths), ("clearing", clearing_paths)):
                console.print(f"{args.clients} clients x {args.requests} requests: {name} ...")
                results[name] = run_clients(base, token, paths, args.clients, args.requests, args.max_seconds)
                console.print(results[name])
            peak = _rss_mib(proc.pid)
        finally:
            _stop(proc)

    record = {
        "benchmark": "service", "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "database": args.database_url.split("@")[-1], "pool": args.pool, "year": args.year,
        "known_at": args.known_at, "label": args.label, "events": health.get("position"),
        "hospitals": len(hospitals), "stores": args.stores, "single_client_s": single, "concurrent": results,
        "server_peak_rss_mib": peak, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    path = RESULTS / f"service-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    table = Table("endpoint", "single client", "requests", "p50", "p95", "max", "wall",
                  title=f"drg-ledger serve, {args.clients} clients, known_at {args.known_at}")
    for name, r in results.items():
        table.add_row(name, f"{single[name]} s", f"{r['answered']}/{args.clients * args.requests}",
                      f"{r.get('p50_s', '-')} s", f"{r.get('p95_s', '-')} s", f"{r.get('max_s', '-')} s",
                      f"{r['wall_s']} s")
    console.print(table)
    console.print(f"written {path}")


if __name__ == "__main__":
    main()
