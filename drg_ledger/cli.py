"""`drg-ledger`: the command line of EVENTS.md "Commands", plus the streaming and benchmark tools.

Exit codes: 0 done; 1 input rejected (ingest, publish) or totals differ (reconcile);
2 bad arguments; 3 not found (hospital, case); 4 cannot compute (no budget, policy gap,
no points).
"""

from __future__ import annotations

import json
import sys
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ledger.clearing import ClearingError
from ledger.policy import PolicyMissing

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
err = Console(stderr=True)
CHINA = timezone(timedelta(hours=8))

DatabaseUrl = typer.Option(None, "--database-url", envvar="DRG_LEDGER_DATABASE_URL",
                           help="PostgreSQL URL; default: the embedded SQLite file drg-ledger.db here.")
JsonOut = typer.Option(False, "--json", help="Print JSON instead of tables.")
KnownAt = typer.Option(None, "--known-at", help="What the ledger knew at this moment (ISO date or datetime; "
                       "no zone means +08:00; a date means the end of that day). Default: now.")

EXIT_REJECTED, EXIT_NOT_FOUND, EXIT_CANNOT_COMPUTE = 1, 3, 4


def parse_moment(text: str | None) -> datetime | None:
    """`--known-at`: a date means the end of that day; a time without zone is China time."""
    if text is None:
        return None
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time.max, CHINA)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO date or datetime", param_hint="--known-at") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=CHINA)


def parse_day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO date YYYY-MM-DD", param_hint=option) from None


def open_store(database_url: str | None) -> Any:
    from projections.store import LedgerStore

    return LedgerStore.open(database_url)


def emit(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


def progress(transient: bool = False) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err, transient=transient)


def fail(code: int, message: str) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


# --------------------------------------------------------------------------- ledger commands


@app.command()
def ingest(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON Lines, one event envelope per line."),
    database_url: Optional[str] = DatabaseUrl,
    as_json: bool = JsonOut,
    batch_size: int = typer.Option(2000, min=1, help="Events per journal transaction."),
) -> None:
    """Append events from a file; report accepted, duplicates and every rejected line (EVENTS.md)."""
    with file.open("rb") as fh:
        total = sum(1 for _ in fh)
    with open_store(database_url) as store, progress() as bar, file.open("rb") as fh:
        task = bar.add_task(f"ingest {file.name}", total=total)
        report = store.ingest(
            (line.rstrip(b"\r\n") for line in fh), origin=f"file:{file}", batch_size=batch_size,
            on_progress=lambda n: bar.update(task, completed=n),
        )
    out = report.to_json()
    if as_json:
        emit(out)
    else:
        console.print(f"accepted [green]{out['accepted']}[/green], duplicates {out['duplicates']}, "
                      f"rejected [red]{len(out['rejected'])}[/red]")
        if out["rejected"]:
            table = Table("line", "event_id", "reason", title="rejected (kept in the dead-letter store)")
            for r in out["rejected"][:50]:
                table.add_row(str(r["line"]), str(r["event_id"] or ""), r["reason"])
            console.print(table)
            if len(out["rejected"]) > 50:
                console.print(f"... and {len(out['rejected']) - 50} more (use --json)")
    raise typer.Exit(0 if not out["rejected"] else EXIT_REJECTED)


@app.command()
def clear(
    pool: str = typer.Option(..., "--pool"),
    year: int = typer.Option(..., "--year"),
    known_at: Optional[str] = KnownAt,
    record: bool = typer.Option(False, "--record", help="Append a ClearingCompleted event."),
    cold: bool = typer.Option(False, "--cold", help="Replay the raw journal instead of the index."),
    database_url: Optional[str] = DatabaseUrl,
    as_json: bool = JsonOut,
) -> None:
    """Year-end clearing of a pool and year (RULES.md 5), read-only unless --record."""
    from projections.queries import clear_pool

    with open_store(database_url) as store:
        try:
            result = clear_pool(store, pool, year, parse_moment(known_at), record=record, cold=cold)
        except (ClearingError, PolicyMissing) as exc:
            fail(EXIT_CANNOT_COMPUTE, str(exc))
    if as_json:
        emit(result.as_json())
        return
    table = Table("hospital", "settled", "deducted", "net points", "personal paid", "fund due", "prepaid",
                  "clearing amount", title=f"{pool} {year} clearing, as known at {result.known_at.isoformat()}")
    for h in result.hospitals:
        table.add_row(h.hospital_id, f"{h.settled_points:,}", f"{h.deducted_points:,}", f"{h.net_points:,}",
                      f"{h.personal_paid:,}", f"{h.fund_due:,}", f"{h.prepaid:,}", _signed(h.clearing_amount))
    console.print(table)
    console.print(f"point value [bold]{result.point_value}[/bold] yuan/point = "
                  f"({'budget + personal paid' if result.personal_paid_inside else 'budget'}) / {result.total_points:,} points; "
                  f"budget {result.budget:,}" + (" — recorded as ClearingCompleted" if record else ""))


def _signed(x: Any) -> str:
    return f"[green]{x:,}[/green]" if x >= 0 else f"[red]{x:,}[/red]"


@app.command()
def balance(
    hospital: str = typer.Option(..., "--hospital"),
    as_of: str = typer.Option(..., "--as-of", help="Balance date YYYY-MM-DD."),
    known_at: Optional[str] = KnownAt,
    database_url: Optional[str] = DatabaseUrl,
    as_json: bool = JsonOut,
) -> None:
    """A hospital's balance at a date, as the ledger knew it (RULES.md 6)."""
    from projections.queries import NotFound, hospital_balance

    day = parse_day(as_of, "--as-of")
    with open_store(database_url) as store:
        try:
            result = hospital_balance(store, hospital, day, parse_moment(known_at))
        except NotFound as exc:
            fail(EXIT_NOT_FOUND, str(exc))
        except (ClearingError, PolicyMissing) as exc:
            fail(EXIT_CANNOT_COMPUTE, str(exc))
    data = result.as_json()
    if as_json:
        emit(data)
        return
    table = Table("figure", "value", title=f"{hospital} balance on {day}, as known at {result.known_at.isoformat()}")
    for key, value in data.items():
        table.add_row(key, str(value))
    console.print(table)


@app.command()
def explain(
    case: str = typer.Option(..., "--case"),
    known_at: Optional[str] = KnownAt,
    database_url: Optional[str] = DatabaseUrl,
    as_json: bool = JsonOut,
) -> None:
    """A case's points step by step: policy versions, case type, coefficient and why, verdicts, penalties."""
    from projections.queries import NotFound, explain_case

    with open_store(database_url) as store:
        try:
            data = explain_case(store, case, parse_moment(known_at))
        except NotFound as exc:
            fail(EXIT_NOT_FOUND, str(exc))
        except (ClearingError, PolicyMissing) as exc:
            fail(EXIT_CANNOT_COMPUTE, str(exc))
    if as_json:
        emit(data)
        return
    table = Table("step", "value", title=f"case {case}, as known at {data['known_at']}", show_lines=True)
    for key, value in data.items():
        table.add_row(key, json.dumps(value, ensure_ascii=False, indent=1) if isinstance(value, (dict, list)) else str(value))
    console.print(table)


@app.command("dead-letters")
def dead_letters(
    limit: int = typer.Option(50, min=1),
    database_url: Optional[str] = DatabaseUrl,
    as_json: bool = JsonOut,
) -> None:
    """Rejected input, kept whole with its reason and origin (EVENTS.md "Bad input")."""
    with open_store(database_url) as store:
        rows = store.dead_letters(limit=limit)
    data = [r.to_json() if hasattr(r, "to_json") else r.__dict__ for r in rows]
    if as_json:
        emit(data)
        return
    table = Table("received", "origin", "event_id", "reason")
    for r in data:
        table.add_row(str(r.get("received_at")), str(r.get("origin")), str(r.get("event_id") or ""), str(r.get("reason")))
    console.print(table)


@app.command("rebuild-projections")
def rebuild_projections(database_url: Optional[str] = DatabaseUrl) -> None:
    """Drop the index and rebuild it from the journal alone."""
    with open_store(database_url) as store:
        n = store.rebuild_index()
    console.print(f"index rebuilt from the journal: {n} events")


@app.command()
def demo(
    seed: int = typer.Option(2020, help="Random seed: the same seed tells the same story."),
    cases: int = typer.Option(4000, min=100),
    hospitals: int = typer.Option(24, min=5),
    database_url: Optional[str] = DatabaseUrl,
    as_json: bool = JsonOut,
) -> None:
    """Panzhihua 2020, cleared twice: before and after the back-dated high-tech catalogue."""
    from drg_ledger.demo import run_demo

    with open_store(database_url) as store:
        result = run_demo(store, seed=seed, cases=cases, hospitals=hospitals, console=err if as_json else console,
                          as_json=as_json)
    if as_json:
        emit(result)


@app.command()
def generate(
    cases: int = typer.Option(..., "--cases", min=1),
    hospitals: int = typer.Option(..., "--hospitals", min=1),
    year: int = typer.Option(2020, "--year"),
    seed: int = typer.Option(1, "--seed"),
    pool: str = typer.Option("panzhihua", "--pool"),
    output: Path = typer.Option(..., "-o", "--output"),
) -> None:
    """Write a realistic event file of any size (streamed; bounded memory)."""
    from drg_ledger.generate import generate as run

    with progress() as bar:
        task = bar.add_task(f"generate {output.name}", total=cases)
        summary = run(output, cases=cases, hospitals=hospitals, year=year, seed=seed, pool=pool,
                      on_progress=lambda n: bar.update(task, completed=min(n, cases)))
    console.print(summary)


@app.command("policy-file")
def policy_file(pool: str = typer.Argument(..., help="panzhihua or xuancheng")) -> None:
    """Print the path of a shipped policy file, for `drg-ledger ingest`."""
    from drg_ledger.policy_files import POLICIES

    path = POLICIES / f"{pool}.jsonl"
    if not path.exists():
        fail(EXIT_NOT_FOUND, f"no shipped policy file for pool {pool}")
    print(path)


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    main()
