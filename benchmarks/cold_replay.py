"""`drg-ledger clear --cold` through the CLI, as a user types it (issue 11, "Cold replay").

    python -m benchmarks.cold_replay --database-url URL [--known-at T ...] [--workers N ...] [--repeat R]

Per run: wall seconds, CPU seconds (user + system of the command and its worker processes),
the peak of the summed proportional set sizes (PSS) of the command's process tree
(sampled every 200 ms) and of its largest process, and the clearing's digest (every run of one moment must agree).
`--workers` sets `DRG_LEDGER_COLD_WORKERS` (1: the single-process replay). Prints a table and
writes `benchmarks/results/cold-<time>.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def _tree_pss_kib(root: int) -> tuple[int, int]:
    """Summed and largest proportional set size (KiB) of `root` and its descendants: PSS
    shares each copy-on-write page the forked workers still share with the parent among
    them, so the sum is the memory the tree really holds (RSS would count such a page in each)."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    parents[int(entry.name)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree = {root}
    grew = True
    while grew:
        more = {p for p, pp in parents.items() if pp in tree} - tree
        tree |= more
        grew = bool(more)
    sizes = []
    for pid in tree:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                sizes.append(next(int(line.split()[1]) for line in fh if line.startswith("Pss:")))
        except (OSError, StopIteration):
            continue
    return sum(sizes), max(sizes, default=0)


def run_once(url: str, pool: str, year: int, known_at: str | None, workers: int) -> dict[str, Any]:
    cmd = [str(Path(sys.executable).parent / "drg-ledger"), "clear", "--cold", "--pool", pool, "--year", str(year),
           "--json", "--database-url", url]
    if known_at:
        cmd += ["--known-at", known_at]
    env = {**os.environ, "DRG_LEDGER_COLD_WORKERS": str(workers)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            total, largest = _tree_pss_kib(proc.pid)
            peak[0], peak[1] = max(peak[0], total), max(peak[1], largest)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}: {err[-2000:]}")
    result = json.loads(out)
    figures = {k: v for k, v in result.items() if k not in ("known_at", "basis")}
    return {
        "known_at": known_at or "now",
        "workers": workers,
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "peak_tree_pss_mib": peak[0] / 1024,
        "peak_process_pss_mib": peak[1] / 1024,
        "events_read": result["basis"]["events_read"],
        "digest": hashlib.sha256(json.dumps(figures, sort_keys=True).encode()).hexdigest()[:16],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cold_replay")
    p.add_argument("--database-url", required=True)
    p.add_argument("--pool", default="panzhihua")
    p.add_argument("--year", type=int, default=2020)
    p.add_argument("--known-at", action="append", help="moments to clear at (default: 2021-05-10, 2021-05-12, now)")
    p.add_argument("--workers", type=int, action="append", help="worker processes (default: 2, then 1)")
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args(argv)
    moments = args.known_at or ["2021-05-10T00:00:00+08:00", "2021-05-12T00:00:00+08:00", None]
    runs = [run_once(args.database_url, args.pool, args.year, t, w)
            for t in moments for w in (args.workers or [2, 1]) for _ in range(args.repeat)]
    print(f"{'known_at':27} {'workers':>7} {'wall s':>7} {'cpu s':>6} {'tree MiB':>8} {'proc MiB':>8} "
          f"{'events':>8} digest")
    for r in runs:
        print(f"{r['known_at']:27} {r['workers']:7} {r['wall_s']:7.2f} {r['cpu_s']:6.2f} {r['peak_tree_pss_mib']:8.0f} "
              f"{r['peak_process_pss_mib']:8.0f} {r['events_read']:8} {r['digest']}")
    agree = all(len({r["digest"] for r in runs if r["known_at"] == (t or "now")}) == 1 for t in moments)
    print("every run of a moment gives the same clearing:", "yes" if agree else "NO")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"cold-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps({"database_url": args.database_url, "runs": runs, "same": agree,
                                "load_average": os.getloadavg()}, indent=2))
    print(f"written {path}")
    if not agree:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
