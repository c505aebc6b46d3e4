"""What-if and diff timings on a loaded store (issue 14), run by hand, never by the test suite.

    .venv/bin/drg-ledger generate --cases 300000 --hospitals 60 --year 2020 --seed 2020 -o benchmarks/data/city.jsonl
    .venv/bin/drg-ledger ingest --backfill --database-url sqlite:///benchmarks/data/city.db benchmarks/data/city.jsonl
    .venv/bin/python -m benchmarks.whatif --database-url sqlite:///benchmarks/data/city.db

Times, in one process, with the functions the CLI calls (`projections.whatif`,
`projections.diff`): the plain clearing as a reference; loading and clearing a draft
catalogue (the shipped 2020 catalogue, every 3A coefficient + 0.1: `drg_ledger.demo`);
loading and clearing a draft coefficient table (every grade + 0.05, and an own coefficient
for every registered hospital); the diff of the two demo moments (before and after the
catalogue was issued) without and with case changes. Prints a table and writes
`benchmarks/results/whatif-<time>.json`. Peak RSS is the process's, after each step.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from drg_ledger.demo import AFTER, BEFORE, POOL, YEAR, catalogue_draft
from drg_ledger.policy_files import POLICIES
from projections.diff import SideSpec, diff_pool_year
from projections.queries import clear_pool
from projections.store import LedgerStore
from projections.whatif import load_draft, what_if_clearing

RESULTS = Path(__file__).parent / "results"


def coefficient_table_draft(hospital_ids: list[str]) -> bytes:
    """The shipped 2020 coefficients with every grade + 0.05 and an own 1.01 for every hospital."""
    with (POLICIES / f"{POOL}.jsonl").open(encoding="utf-8") as fh:
        shipped = next(e for e in map(json.loads, fh) if e["event_id"] == "policy-panzhihua-coefficients-2020")
    body = shipped["payload"]["body"]
    grades = {g: str(Decimal(str(v)) + Decimal("0.05")) for g, v in body["grades"].items()}
    payload = {**shipped["payload"], "version": "2020-draft-table",
               "body": {"grades": grades, "hospitals": {h: "1.01" for h in hospital_ids}}}
    draft = {**shipped, "event_id": "draft:coefficients-2020", "payload": payload}
    draft.pop("recorded_at", None)
    return (json.dumps(draft, ensure_ascii=False) + "\n").encode("utf-8")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    args = parser.parse_args()
    console = Console()
    steps: list[dict[str, Any]] = []

    def timed(name: str, run: Callable[[], Any], describe: Callable[[Any], str] = lambda _: "") -> Any:
        start = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - start
        steps.append({"step": name, "seconds": round(seconds, 3), "peak_rss_mib": round(peak_rss_mib(), 1),
                      "result": describe(result)})
        console.print(f"{name}: {seconds:.2f} s {describe(result)}")
        return result

    with LedgerStore.open(args.database_url) as store:
        counts = store.counts()
        hospitals = sorted(h for h, p in store.hospitals().items() if p.pool == POOL)
        cases = counts.get("CaseSubmitted", 0)
        console.print(f"store: {counts['events']:,} events, {cases:,} case submissions, {len(hospitals)} hospitals")
        moment = datetime.now(UTC)

        def pv(c: Any) -> str:
            return f"PV {c.point_value}, TP {c.total_points}"

        timed("clear (reference, index path)", lambda: clear_pool(store, POOL, YEAR, moment), pv)
        catalogue = timed("load + validate draft catalogue",
                          lambda: load_draft(store, catalogue_draft(), moment, name="catalogue", pool=POOL))
        timed("what-if: draft catalogue", lambda: what_if_clearing(store, POOL, YEAR, catalogue).result, pv)
        table = timed("load + validate draft coefficient table",
                      lambda: load_draft(store, coefficient_table_draft(hospitals), moment, name="table", pool=POOL))
        timed("what-if: draft coefficient table", lambda: what_if_clearing(store, POOL, YEAR, table).result, pv)

        def hospitals_moved(d: Any) -> str:
            return f"{len(d.hospitals)} hospitals" + (f", {len(d.cases)} cases" if d.cases is not None else "")

        timed("diff of two moments", lambda: diff_pool_year(store, POOL, YEAR, SideSpec(known_at=BEFORE),
                                                            SideSpec(known_at=AFTER)), hospitals_moved)
        timed("diff of two moments --cases", lambda: diff_pool_year(store, POOL, YEAR, SideSpec(known_at=BEFORE),
                                                                    SideSpec(known_at=AFTER), cases=True),
              hospitals_moved)
        timed("diff now vs draft catalogue --cases", lambda: diff_pool_year(
            store, POOL, YEAR, SideSpec(known_at=moment), SideSpec(draft=catalogue), cases=True), hospitals_moved)

    out = Table("step", "seconds", "peak RSS MiB", "result", title=f"what-if and diff, {args.database_url}")
    for s in steps:
        out.add_row(s["step"], f"{s['seconds']:.2f}", f"{s['peak_rss_mib']:.0f}", s["result"])
    console.print(out)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"whatif-{stamp}.json"
    path.write_text(json.dumps({"database_url": args.database_url.split("@")[-1], "counts": counts,
                                "hospitals": len(hospitals), "python": platform.python_version(), "steps": steps},
                               indent=2), encoding="utf-8")
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
