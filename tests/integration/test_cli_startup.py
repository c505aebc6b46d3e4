"""What a command imports: start-up is most of a lookup's wall time (benchmarks/README.md
"CLI start-up"), so the commands a user types often must not pay for the streams, the
service or the workbench. Each command runs in a fresh interpreter, as the console script
does; the modules it loaded are read from `sys.modules` at exit. No timing: a shared
machine makes those flaky, the module lists are exact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from projections.store import LedgerStore

PROBE = """
import json, sys
args, out = json.loads(sys.argv[1]), sys.argv[2]
sys.argv = ["drg-ledger", *args]
from drg_ledger.cli import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
with open(out, "w") as fh:
    json.dump({"rc": code, "modules": sorted(sys.modules)}, fh)
"""

NEVER = ("faust", "kafka", "aiokafka", "fastapi", "uvicorn", "starlette", "polars", "duckdb", "hypothesis",
         "streams", "drg_ledger.service", "drg_ledger.demo", "drg_ledger.generate", "ledger.workbench",
         "projections.window", "projections.running_totals", "projections.cold")
"""Loaded by no lookup: the Kafka workers, the HTTP service, the benchmarks' and tests'
libraries, the policy workbench, the running totals, the cold replay."""


def imported(tmp_path: Path, *args: str) -> tuple[int, set[str]]:
    out = tmp_path / "modules.json"
    subprocess.run([sys.executable, "-c", PROBE, json.dumps(args), str(out)], check=True, capture_output=True,
                   cwd=tmp_path, timeout=120)
    found = json.loads(out.read_text())
    return found["rc"], set(found["modules"])


def loaded(modules: set[str], *names: str) -> list[str]:
    """Those of `names` (packages or modules) that `modules` holds, or a module of."""
    return sorted(n for n in names if any(m == n or m.startswith(n + ".") for m in modules))


def test_help_loads_neither_the_store_nor_the_core(tmp_path: Path) -> None:
    rc, modules = imported(tmp_path, "--help")
    assert rc == 0
    assert loaded(modules, *NEVER, "sqlalchemy", "psycopg", "eventsourcing", "pydantic", "ledger.events",
                  "projections") == []


@pytest.mark.parametrize("args, rc", [
    (("clear", "--pool", "nosuchpool", "--year", "2020", "--json"), 4),
    (("balance", "--hospital", "NOSUCH", "--as-of", "2020-06-30", "--json"), 3),
    (("explain", "--case", "NOSUCH", "--json"), 3),
])
def test_a_lookup_loads_the_store_only(database_url: str, tmp_path: Path, args: tuple[str, ...], rc: int) -> None:
    LedgerStore.open(database_url).close()  # tables created: the command finds a store with nothing to create
    code, modules = imported(tmp_path, *args, "--database-url", database_url)
    assert code == rc
    assert loaded(modules, *NEVER, "rich") == []  # the error of a lookup that finds nothing is plain text
    if database_url.startswith("sqlite"):
        assert loaded(modules, "psycopg", "psycopg_pool", "eventsourcing.postgres") == []
    else:
        # The index had applied the whole journal: the journal was never opened.
        assert loaded(modules, "psycopg_pool", "eventsourcing.postgres") == []


def test_json_output_loads_no_rich(database_url: str, tmp_path: Path) -> None:
    LedgerStore.open(database_url).close()
    code, modules = imported(tmp_path, "dead-letters", "--json", "--database-url", database_url)
    assert code == 0
    assert loaded(modules, "rich") == []
