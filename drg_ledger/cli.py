"""`drg-ledger`: the command line of EVENTS.md "Commands", plus the streaming and benchmark tools.

Exit codes: 0 done; 1 input rejected (ingest, publish) or totals differ (reconcile);
2 bad arguments; 3 not found (hospital, case); 4 cannot compute (no budget, policy gap,
no points).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from drg_ledger import moments

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


class _LazyConsole:
    """rich's Console made on first use: a command that prints JSON never imports rich."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def real(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)


console: Any = _LazyConsole()
err: Any = _LazyConsole(stderr=True)
CHINA = moments.CHINA

DatabaseUrl = typer.Option(None, "--database-url", envvar="DRG_LEDGER_DATABASE_URL",
                           help="PostgreSQL URL; default: the embedded SQLite file drg-ledger.db here.")
JsonOut = typer.Option(False, "--json", help="Print JSON instead of tables.")
KnownAt = typer.Option(None, "--known-at", help="What the ledger knew at this moment (ISO date or datetime; "
                       "no zone means +08:00; a date means the end of that day). Default: now.")
WhatIfDraft = typer.Option(None, "--what-if", exists=True, dir_okay=False, help="A draft (JSON Lines: policy "
                           "versions, coefficient changes, budgets, verdicts) applied as if recorded at --known-at; "
                           "never written to the ledger.")

EXIT_REJECTED, EXIT_NOT_FOUND, EXIT_CANNOT_COMPUTE = 1, 3, 4


def parse_moment(text: str | None, option: str = "--known-at") -> datetime | None:
    """`--known-at` as `drg_ledger.moments.parse_moment` reads it (shared with the HTTP service):
    a date means the end of that day; a time without zone is China time."""
    try:
        return moments.parse_moment(text, option)
    except moments.BadMoment as exc:
        raise typer.BadParameter(exc.reason, param_hint=exc.field) from None


def parse_day(text: str, option: str) -> date:
    try:
        return moments.parse_day(text, option)
    except moments.BadMoment as exc:
        raise typer.BadParameter(exc.reason, param_hint=exc.field) from None


def open_store(database_url: str | None, *, heal: bool = True) -> Any:
    from projections.chain import BrokenEntry
    from projections.store import LedgerStore

    try:
        return LedgerStore.open(database_url, heal=heal)
    except BrokenEntry as exc:
        fail(EXIT_REJECTED, f"{exc}; nothing derived is built from it (run `drg-ledger verify`)")


def emit(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


def progress(transient: bool = False) -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err.real(), transient=transient)


def Table(*columns: Any, **options: Any) -> Any:  # noqa: N802 - rich's Table, imported when a command prints one
    from rich.table import Table as RichTable

    return RichTable(*columns, **options)


def fail(code: int, message: str) -> None:
    """The error on stderr and exit `code`: in red on a terminal; plain text otherwise (a
    script's log), without importing rich, so a lookup that finds nothing costs what the
    lookup itself costs."""
    if sys.stderr.isatty():
        err.print(f"[red]error:[/red] {message}")
    else:
        print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


# --------------------------------------------------------------------------- ledger commands


@app.command()
def ingest(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON Lines, one event envelope per line."),
    database_url: Optional[str] = DatabaseUrl,
    as_json: bool = JsonOut,
    batch_size: int = typer.Option(10000, min=1, help="Lines per batch: one journal transaction, one index transaction."),
    backfill: bool = typer.Option(False, "--backfill", help="Load history (operators only): admit recorded_at "
                                  "older than the late-arrival window; journals HistoryBackfilled (EVENTS.md)."),
    run_by: Optional[str] = typer.Option(None, "--run-by", help="Who runs the backfill (default operator:<login>)."),
) -> None:
    """Append events from a file; report accepted, duplicates and every rejected line (EVENTS.md)."""
    from projections.store import Backfill

    with file.open("rb") as fh:
        total = sum(1 for _ in fh)
    load = Backfill.of_file(file, run_by) if backfill else None
    with open_store(database_url) as store, progress() as bar, file.open("rb") as fh:
        task = bar.add_task(f"ingest {file.name}", total=total)
        report = store.ingest(
            (line.rstrip(b"\r\n") for line in fh), origin=f"file:{file}", batch_size=batch_size,
            on_progress=lambda n: bar.update(task, completed=n), backfill=load or False,
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
    cold: bool = typer.Option(False, "--cold", help="Replay the raw journal through the pure core (the "
                              "independent check) instead of summing the case-points projection."),
    what_if: Optional[Path] = WhatIfDraft,
    database_url: Optional[str] = DatabaseUrl,
    as_json: bool = JsonOut,
) -> None:
    """Year-end clearing of a pool and year (RULES.md 5), read-only unless --record."""
    from ledger.clearing import ClearingError
    from ledger.policy import PolicyMissing
    from projections.chain import BrokenEntry
    from projections.queries import clear_pool

    if what_if is not None and record:
        fail(2, "a what-if is never recorded: --what-if takes no --record")
    marked = None
    with open_store(database_url) as store:
        try:
            if what_if is not None:
                marked = _what_if(store, what_if, known_at, as_json, pool=pool,
                                  run=lambda wi, d: wi.what_if_clearing(store, pool, year, d, cold=cold))
                result = marked.result
            else:
                result = clear_pool(store, pool, year, parse_moment(known_at), cold=cold)
                log_digest = recorded_log_digest(store, result) if record else None
        except (ClearingError, PolicyMissing, BrokenEntry) as exc:
            fail(EXIT_CANNOT_COMPUTE, str(exc))
    if as_json:
        emit(marked.as_json() if marked else result.as_json() | ({"log_digest": log_digest} if record else {}))
        return
    table = Table("hospital", "settled", "deducted", "net points", "personal paid", "fund due", "prepaid",
                  "clearing amount", title=_what_if_title(marked)
                  + f"{pool} {year} clearing, as known at {result.known_at.isoformat()}")
    for h in result.hospitals:
        table.add_row(h.hospital_id, f"{h.settled_points:,}", f"{h.deducted_points:,}", f"{h.net_points:,}",
                      f"{h.personal_paid:,}", f"{h.fund_due:,}", f"{h.prepaid:,}", _signed(h.clearing_amount))
    console.print(table)
    console.print(f"point value [bold]{result.point_value}[/bold] yuan/point = "
                  f"({'budget + personal paid' if result.personal_paid_inside else 'budget'}) / {result.total_points:,} points; "
                  f"budget {result.budget:,}" + (" — recorded as ClearingCompleted" if record else ""))
    if result.basis is not None:
        console.print(result.basis.text())
    if record:
        console.print(f"log digest [bold]{log_digest}[/bold]: `drg-ledger verify --digest {log_digest}` proves "
                      "the journal this clearing was computed from unchanged")


def _signed(x: Any) -> str:
    return f"[green]{x:,}[/green]" if x >= 0 else f"[red]{x:,}[/red]"


@app.command()
def balance(
    hospital: str = typer.Option(..., "--hospital"),
    as_of: str = typer.Option(..., "--as-of", help="Balance date YYYY-MM-DD."),
    known_at: Optional[str] = KnownAt,
    what_if: Optional[Path] = WhatIfDraft,
    database_url: Optional[str] = DatabaseUrl,
    as_json: bool = JsonOut,
) -> None:
    """A hospital's balance at a date, as the ledger knew it (RULES.md 6)."""
    from ledger.clearing import ClearingError
    from ledger.policy import PolicyMissing
    from projections.queries import NotFound, hospital_balance, hospital_pool

    day = parse_day(as_of, "--as-of")
    marked = None
    with open_store(database_url) as store:
        try:
            if what_if is not None:
                marked = _what_if(store, what_if, known_at, as_json, pool=lambda: hospital_pool(store, hospital),
                                  run=lambda wi, d: wi.what_if_balance(store, hospital, day, d))
                result = marked.result
            else:
                result = hospital_balance(store, hospital, day, parse_moment(known_at))
        except NotFound as exc:
            fail(EXIT_NOT_FOUND, str(exc))
        except (ClearingError, PolicyMissing) as exc:
            fail(EXIT_CANNOT_COMPUTE, str(exc))
    data = marked.as_json() if marked else result.as_json()
    if as_json:
        emit(data)
        return
    table = Table("figure", "value", title=_what_if_title(marked)
                  + f"{hospital} balance on {day}, as known at {result.known_at.isoformat()}")
    for key, value in data.items():
        if key != "basis":
            table.add_row(key, str(value))
    console.print(table)
    if result.basis is not None:
        console.print(result.basis.text())


@app.command()
def explain(
    case: str = typer.Option(..., "--case"),
    known_at: Optional[str] = KnownAt,
    what_if: Optional[Path] = WhatIfDraft,
    database_url: Optional[str] = DatabaseUrl,
    as_json: bool = JsonOut,
) -> None:
    """A case's points step by step: policy versions, case type, coefficient and why, verdicts, penalties."""
    from ledger.clearing import ClearingError
    from ledger.policy import PolicyMissing
    from projections.queries import NotFound, explain_case

    marked = None
    with open_store(database_url) as store:
        try:
            if what_if is not None:
                marked = _what_if(store, what_if, known_at, as_json, pool=None,
                                  run=lambda wi, d: wi.what_if_explain(store, case, d))
                data = marked.as_json()
            else:
                data = explain_case(store, case, parse_moment(known_at))
        except NotFound as exc:
            fail(EXIT_NOT_FOUND, str(exc))
        except (ClearingError, PolicyMissing) as exc:
            fail(EXIT_CANNOT_COMPUTE, str(exc))
    if as_json:
        emit(data)
        return
    table = Table("step", "value", title=_what_if_title(marked) + f"case {case}, as known at {data['known_at']}",
                  show_lines=True)
    for key, value in data.items():
        table.add_row(key, json.dumps(value, ensure_ascii=False, indent=1) if isinstance(value, (dict, list)) else str(value))
    console.print(table)


@app.command("dead-letters")
def dead_letters(
    limit: int = typer.Option(50, min=1),
    since: Optional[str] = typer.Option(None, "--since", help="Only those received at or after this moment."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Only those whose field or reason contains this text."),
    raw: bool = typer.Option(False, "--raw", help="Show the raw bytes too (escaped)."),
    database_url: Optional[str] = DatabaseUrl,
    as_json: bool = JsonOut,
) -> None:
    """Refused input, kept whole: origin, field, reason, and the raw bytes on request (EVENTS.md "Bad input")."""
    with open_store(database_url) as store:
        rows = store.dead_letters(limit=limit, since=parse_moment(since, "--since"), reason=reason)
    data = [r.as_json(raw=raw) for r in rows]
    if as_json:
        emit(data)
        return
    table = Table("received", "origin", "event_id", "field", "reason", "bytes", *(["raw"] if raw else []),
                  title="dead letters, newest first", show_lines=raw)
    for r in data:
        table.add_row(r["received_at"], r["origin"], r["event_id"] or "", r["field"], r["reason"],
                      f"{r['raw_length']:,}", *([r["raw"][:500]] if raw else []))
    console.print(table)


@app.command()
def doctor(
    check_only: bool = typer.Option(False, "--check-only", help="Report, repair nothing."),
    database_url: Optional[str] = DatabaseUrl,
    as_json: bool = JsonOut,
) -> None:
    """Check the store (index and derivations caught up with the journal, constraints present) and
    repair what can be derived again, saying what it did. Exit 1 when a problem remains."""
    with open_store(database_url, heal=not check_only) as store:  # --check-only: as found, nothing healed on open
        checks = store.doctor(repair=not check_only)
    if as_json:
        emit([c.as_json() for c in checks])
    else:
        table = Table("check", "status", "detail", title="drg-ledger doctor")
        colour = {"ok": "green", "repaired": "yellow", "problem": "red"}
        for c in checks:
            table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/{colour[c.status]}]", c.detail)
        console.print(table)
    if any(c.status == "problem" for c in checks):
        raise typer.Exit(EXIT_REJECTED)


@app.command()
def rebuild(database_url: Optional[str] = DatabaseUrl, as_json: bool = JsonOut) -> None:
    """Rebuild everything derived from the journal alone: the index, the case-points projection,
    the pool claims, the penalties."""
    from projections.chain import BrokenEntry

    with open_store(database_url) as store:
        try:
            done = store.rebuild()
        except BrokenEntry as exc:
            fail(EXIT_REJECTED, f"rebuild refused: {exc}; the index is left as it was (run `drg-ledger verify`)")
    if as_json:
        emit(done)
    else:
        console.print(f"rebuilt from the journal: index and case-points projection {done['events']:,} events; "
                      f"{done['pool_claims']} pool "
                      f"claims restored; {done['penalties']} missing penalties derived")


# --------------------------------------------------------------------------- trust (issue 12)


def recorded_log_digest(store: Any, result: Any) -> str | None:
    """Records `result` as a ClearingCompleted; returns the log digest the recorded event carries."""
    from projections.queries import record_clearing, recorded_digest

    event_id, _ = record_clearing(store, result)
    return recorded_digest(store, event_id)


@app.command()
def verify(
    digest: Optional[str] = typer.Option(None, "--digest", help="POSITION:HASH taken earlier (`drg-ledger digest`, "
                                         "a clearing's log digest): prove the journal up to it unchanged."),
    skip_totals: bool = typer.Option(False, "--skip-totals", help="Do not replay the running totals' pool-years."),
    database_url: Optional[str] = DatabaseUrl,
    as_json: bool = JsonOut,
) -> None:
    """Re-walk the journal, recompute every hash, check the chain and every derived table against it.

    Exit 1 naming the first broken link (position, event_id, what differs)."""
    from projections.store import LedgerStore
    from projections.verify import BadDigest, parse_digest
    from projections.verify import verify as run

    if digest is not None:
        try:
            parse_digest(digest)
        except BadDigest as exc:
            raise typer.BadParameter(str(exc), param_hint="--digest") from None
    with LedgerStore.open(database_url, heal=False) as store, progress(transient=True) as bar:
        task = bar.add_task("verify", total=store.journal.head() or None)
        result = run(store, digest=digest, totals=not skip_totals,
                     on_progress=lambda n, head: bar.update(task, completed=n, total=head))
    if as_json:
        emit(result.as_json())
    else:
        table = Table("check", "items", title="drg-ledger verify")
        for name, n in result.checked.items():
            table.add_row(name, f"{n:,}")
        console.print(table)
        rate = f"{result.entries / result.seconds:,.0f} entries/s" if result.seconds else ""
        if result.ok:
            console.print(f"[green]verified[/green]: {result.entries:,} entries, head digest "
                          f"[bold]{result.head_digest}[/bold]" + (f", digest {digest} holds" if digest else "")
                          + f" ({result.seconds:.1f} s, {rate})")
        else:
            problems = Table("check", "position", "event_id", "what differs", title="[red]broken[/red]")
            for f in result.findings:
                problems.add_row(f.check, "" if f.position is None else str(f.position), f.event_id or "", f.detail)
            console.print(problems)
            first = result.first
            assert first is not None
            err.print(f"[red]first broken link:[/red] position {first.position}, event {first.event_id}: {first.detail}"
                      + (f" (and {result.more_findings} more findings)" if result.more_findings else ""))
    if not result.ok:
        raise typer.Exit(EXIT_REJECTED)


@app.command()
def migrate(
    owner_url: str = typer.Option(..., "--owner-url", envvar=["DRG_LEDGER_OWNER_URL", "DRG_LEDGER_DATABASE_URL"],
                                  help="The schema owner's URL (migrations only; never the application's). "
                                  "Default: $DRG_LEDGER_OWNER_URL, else $DRG_LEDGER_DATABASE_URL (a migrate job's)."),
    app_role: Optional[str] = typer.Option(None, "--app-role", help="Create/update this login role with "
                                           "SELECT+INSERT only on the journal (PostgreSQL)."),
    app_password_env: Optional[str] = typer.Option(None, "--app-password-env",
                                                   help="Name of an environment variable holding the role's password."),
    app_password_file: Optional[Path] = typer.Option(None, "--app-password-file", dir_okay=False,
                                                     help="A file holding the role's password (a mounted secret)."),
    as_json: bool = JsonOut,
) -> None:
    """Create the ledger's tables, append-only triggers and the application role (run as the owner)."""
    import os

    from projections.roles import migrate as run

    password = os.environ.get(app_password_env) if app_password_env else None
    if app_password_env and password is None:
        fail(2, f"--app-password-env: ${app_password_env} is not set")
    if app_password_file is not None:
        password = app_password_file.read_text(encoding="utf-8").rstrip("\r\n")  # as docker-entrypoint reads it
    done = run(owner_url, app_role, password)
    if as_json:
        emit(done.as_json())
    else:
        console.print(f"migrated schema [bold]{done.schema}[/bold]: {len(done.tables)} tables, triggers refuse "
                      "UPDATE/DELETE/TRUNCATE on the journal and its chain")
        if done.role:
            table = Table("granted to " + done.role)
            for g in done.grants:
                table.add_row(g)
            console.print(table)


@app.command()
def digest(database_url: Optional[str] = DatabaseUrl, as_json: bool = JsonOut) -> None:
    """Print POSITION:HASH of the journal head; keep it outside the database, check it with `verify --digest`."""
    from projections.store import LedgerStore
    from projections.verify import head_digest

    with LedgerStore.open(database_url, heal=False) as store:
        value = head_digest(store)
    if as_json:
        emit({"digest": value, "position": int(value.split(":", 1)[0])})
    else:
        print(value)


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
        result = run_demo(store, seed=seed, cases=cases, hospitals=hospitals,
                          console=(err if as_json else console).real(), as_json=as_json)
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
    as_json: bool = JsonOut,
) -> None:
    """Write a realistic event file of any size (streamed; bounded memory)."""
    from drg_ledger.generate import generate as run

    with progress() as bar:
        task = bar.add_task(f"generate {output.name}", total=cases)
        summary = run(output, cases=cases, hospitals=hospitals, year=year, seed=seed, pool=pool,
                      on_progress=lambda n: bar.update(task, completed=min(n, cases)))
    if as_json:
        emit(summary.as_json())
        return
    table = Table("event type", "events", title=f"{output} ({summary.pool} {summary.year}, seed {summary.seed})")
    for kind, n in sorted(summary.counts.items()):
        table.add_row(kind, f"{n:,}")
    table.add_row("all", f"{summary.events:,}", style="bold")
    console.print(table)
    console.print(f"{summary.cases:,} cases of {summary.hospitals} hospitals, budget {summary.budget}, "
                  f"catalogue {summary.catalogue}, {summary.bytes:,} bytes in {summary.seconds:.1f} s")


@app.command("policy-file")
def policy_file(pool: str = typer.Argument(..., help="panzhihua or xuancheng")) -> None:
    """Print the path of a shipped policy file, for `drg-ledger ingest`."""
    from drg_ledger.policy_files import POLICIES

    path = POLICIES / f"{pool}.jsonl"
    if not path.exists():
        fail(EXIT_NOT_FOUND, f"no shipped policy file for pool {pool}")
    print(path)


# --------------------------------------------------------------------------- policy workbench (RULES.md 7)

policy_app = typer.Typer(no_args_is_help=True, help="The policy workbench: next year's policy from the ledger's "
                         "history (RULES.md 7).")
app.add_typer(policy_app, name="policy")


def _workbench_defaults() -> Any:
    from ledger.workbench_parameters import SOURCES, DeriveParameters

    return DeriveParameters(), SOURCES


_WB, _WB_SOURCES = _workbench_defaults()


def _wb_option(name: str) -> Any:
    value = getattr(_WB, name)
    return typer.Option("none" if value is None else str(value), f"--{name.replace('_', '-')}", help=_WB_SOURCES[name])


def parse_years(text: str | None, for_year: int | None) -> list[int]:
    """`--years 2021-2023` or `2021,2022`; absent: the three years before `--for` (seed 001 一(一) 近三年)."""
    if text is None:
        if for_year is None:
            raise typer.BadParameter("give --years (e.g. 2021-2023) or --for", param_hint="--years")
        return [for_year - 3, for_year - 2, for_year - 1]
    try:
        if "-" in text:
            first, last = (int(p) for p in text.split("-", 1))
            years = list(range(first, last + 1))
        else:
            years = sorted({int(p) for p in text.split(",")})
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not YYYY-YYYY or YYYY,YYYY", param_hint="--years") from None
    if not years or any(y < 2000 or y > 2099 for y in years):
        raise typer.BadParameter(f"{text!r} names no year in 2000..2099", param_hint="--years")
    return years


def _decimal(text: str, option: str, *, none: bool = False) -> Any:
    from decimal import Decimal, InvalidOperation

    if none and text.lower() == "none":
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise typer.BadParameter(f"{text!r} is not a decimal number", param_hint=option) from None
    if not value.is_finite():
        raise typer.BadParameter(f"{text!r} is not a finite number", param_hint=option)
    return value


@policy_app.command("derive")
def policy_derive(
    pool: str = typer.Option(..., "--pool"),
    years: Optional[str] = typer.Option(None, "--years", help="The window: YYYY-YYYY or YYYY,YYYY "
                                        "(default: the three years before --for)."),
    for_year: Optional[int] = typer.Option(None, "--for", help="The year the draft is effective for "
                                           "(default: the year after the window)."),
    known_at: Optional[str] = KnownAt,
    output: Path = typer.Option(..., "-o", "--output", help="Draft PolicyVersionPublished events (JSON Lines)."),
    csv_file: Optional[Path] = typer.Option(None, "--csv", help="The report as CSV (UTF-8 with BOM)."),
    recorded_at: Optional[str] = typer.Option(None, "--recorded-at", help="recorded_at of the draft events "
                                              "(default: left out, the ledger stamps the ingest time)."),
    source: str = typer.Option("operator:workbench", "--source", help="The draft's source."),
    year_weight: Optional[list[str]] = typer.Option(None, "--year-weight", help="YEAR=WEIGHT, repeatable; "
                                                    + _WB_SOURCES["year_weights"]),
    level_share: str = _wb_option("level_share"),
    cost_share: str = _wb_option("cost_share"),
    new_hospital_share: str = _wb_option("new_hospital_share"),
    stable_min_cases: int = typer.Option(_WB.stable_min_cases, "--stable-min-cases",
                                         help=_WB_SOURCES["stable_min_cases"]),
    stable_max_cv: str = _wb_option("stable_max_cv"),
    large_sample_cases: Optional[int] = typer.Option(None, "--large-sample-cases",
                                                     help=_WB_SOURCES["large_sample_cases"]),
    positive_gap_max: str = _wb_option("positive_gap_max"),
    small_uplift: str = _wb_option("small_uplift"),
    shortfall_floor: str = _wb_option("shortfall_floor"),
    middle_uplift_min: str = _wb_option("middle_uplift_min"),
    middle_uplift_max: str = _wb_option("middle_uplift_max"),
    middle_tier: str = typer.Option(_WB.middle_tier.value, "--middle-tier", help="linear, lowest or highest; "
                                    + _WB_SOURCES["middle_tier"]),
    raised_to: str = _wb_option("raised_to"),
    coefficient_cap: str = _wb_option("coefficient_cap"),
    grade_3b_discount: str = _wb_option("grade_3b_discount"),
    min_tertiary_share: str = _wb_option("min_tertiary_share"),
    database_url: Optional[str] = DatabaseUrl,
    as_json: bool = JsonOut,
) -> None:
    """Derive next year's drg_table, coefficients and catalogue from the window; write the draft (RULES.md 7).

    Nothing is written to the store: the draft is a file to what-if, or to `ingest` when published.
    """
    from ledger.clearing import ClearingError
    from ledger.policy import PolicyMissing
    from ledger.workbench import DeriveParameters, MiddleTier, WorkbenchError, draft_events, draft_lines
    from projections.window import derive_policy

    window = parse_years(years, for_year)
    target = for_year if for_year is not None else max(window) + 1
    weights = []
    for text in year_weight or []:
        year_text, _, weight_text = text.partition("=")
        if not year_text.strip().isdigit() or not weight_text:
            raise typer.BadParameter(f"{text!r} is not YEAR=WEIGHT", param_hint="--year-weight")
        weights.append((int(year_text), _decimal(weight_text, "--year-weight")))
    try:
        tier = MiddleTier(middle_tier)
    except ValueError:
        raise typer.BadParameter(f"{middle_tier!r} is not linear, lowest or highest",
                                 param_hint="--middle-tier") from None
    try:
        params = DeriveParameters(
            year_weights=tuple(weights), level_share=_decimal(level_share, "--level-share"),
            cost_share=_decimal(cost_share, "--cost-share"),
            new_hospital_share=_decimal(new_hospital_share, "--new-hospital-share"),
            stable_min_cases=stable_min_cases, stable_max_cv=_decimal(stable_max_cv, "--stable-max-cv"),
            large_sample_cases=large_sample_cases, positive_gap_max=_decimal(positive_gap_max, "--positive-gap-max"),
            small_uplift=_decimal(small_uplift, "--small-uplift"),
            shortfall_floor=_decimal(shortfall_floor, "--shortfall-floor"),
            middle_uplift_min=_decimal(middle_uplift_min, "--middle-uplift-min"),
            middle_uplift_max=_decimal(middle_uplift_max, "--middle-uplift-max"), middle_tier=tier,
            raised_to=_decimal(raised_to, "--raised-to"),
            coefficient_cap=_decimal(coefficient_cap, "--coefficient-cap", none=True),
            grade_3b_discount=_decimal(grade_3b_discount, "--grade-3b-discount"),
            min_tertiary_share=_decimal(min_tertiary_share, "--min-tertiary-share"),
        )
    except WorkbenchError as exc:
        fail(2, str(exc))
    stamp = parse_moment(recorded_at)
    if recorded_at is not None and stamp is not None and len(recorded_at) == 10:
        stamp = datetime.combine(date.fromisoformat(recorded_at), time(9), CHINA)  # a date: 09:00 that day
    moment = parse_moment(known_at) or datetime.now(timezone.utc)
    with open_store(database_url) as store, progress(transient=True) as bar:
        task = bar.add_task(f"read {pool} {window[0]}-{window[-1]}", total=2 * len(window))
        try:
            result = derive_policy(store, pool, window, moment, target, params,
                                   on_year=lambda y, step: bar.update(task, advance=1, description=f"{step} {y}"))
        except (WorkbenchError, ClearingError, PolicyMissing) as exc:
            fail(EXIT_CANNOT_COMPUTE, str(exc))
    events = draft_events(result, source=source, recorded_at=stamp)
    output.write_text("".join(line + "\n" for line in draft_lines(events)), encoding="utf-8")
    if csv_file is not None:
        from drg_ledger.workbench_report import write_csv

        write_csv(result, csv_file)
    if as_json:
        emit(result.as_json() | {"draft": str(output), "csv": str(csv_file) if csv_file else None,
                                 "events": [{"event_id": e.event_id, "component": e.payload.component.value,
                                             "version": e.payload.version} for e in events]})
        return
    from drg_ledger.workbench_report import print_report

    print_report(result, console.real())
    components = ", ".join(e.payload.component.value for e in events)
    console.print(f"draft: {len(events)} PolicyVersionPublished for {target} ({components}) written to {output}"
                  + (f"; report CSV {csv_file}" if csv_file else "") + "; nothing written to the store")


# --------------------------------------------------------------------------- streaming commands

BootstrapServers = typer.Option("127.0.0.1:9092", "--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS",
                                help="Kafka bootstrap servers host:port[,host:port].")
AuditBroker = typer.Option(None, "--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS",
                           help="Kafka to read the log ends from; without it only the store's offsets are checked.")
TopicPrefix = typer.Option("drg-ledger", "--topic-prefix", envvar="DRG_LEDGER_TOPIC_PREFIX",
                           help="Topics <prefix>.events, .dead-letters, .recompute; also the consumer group.")


KeyFile = typer.Option(None, "--key-file", envvar="DRG_LEDGER_KEY_FILE", dir_okay=False,
                       help="Signing keys (streams/signing.py): publish signs with them; the worker then "
                       "requires every message signed by a key allowed to sign it.")


def keyring_of(path: Path | None) -> Any:
    """The keyring of a --key-file (None without one); a bad file is a bad argument."""
    from streams.signing import KeyFileError, load_keyring

    try:
        return load_keyring(path)
    except KeyFileError as exc:
        raise typer.BadParameter(str(exc), param_hint="--key-file") from None


@app.command()
def publish(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON Lines, one event envelope per line."),
    bootstrap_servers: str = BootstrapServers,
    topic: Optional[str] = typer.Option(None, "--topic", help="Default: <topic prefix>.events."),
    his: Optional[str] = typer.Option(None, "--his", help="Publish to this hospital's own topic "
                                      "<topic prefix>.his.<hospital_id>, which only its HIS may write "
                                      "(deploy/README.md 'Who may write')."),
    topic_prefix: str = TopicPrefix,
    send_invalid: bool = typer.Option(False, "--send-invalid",
                                      help="Send invalid lines too (tests push malformed messages on purpose)."),
    key_file: Optional[Path] = KeyFile,
    resume: bool = typer.Option(False, "--resume", help="Ask the store (--database-url) which of the file's "
                                "events never arrived and send only those (after a broker outage)."),
    database_url: Optional[str] = DatabaseUrl,
    as_json: bool = JsonOut,
) -> None:
    """Validate each line and publish it to Kafka, keyed by hospital (streams/README.md).

    Exit 1 when a delivery failed, or a line was invalid (unless --send-invalid sent it).
    """
    from streams.publish import publish as run
    from streams.topics import TopicNames

    if his is not None and topic is not None:
        fail(2, "--his names the topic: give --his or --topic, not both")
    try:
        topic = TopicNames(topic_prefix).his(his) if his is not None else (topic or TopicNames(topic_prefix).events)
    except ValueError as exc:
        fail(2, str(exc))
    with file.open("rb") as fh:
        total = sum(1 for _ in fh)
    keyring = keyring_of(key_file)
    stored: set[str] = set()
    if resume:
        from streams.resume import stored_of

        with open_store(database_url) as store:
            stored = stored_of(file, store)
    with progress() as bar, file.open("rb") as fh:
        from streams.resume import missing_lines

        task = bar.add_task(f"publish {file.name}", total=total)
        report = run(missing_lines(file, stored) if resume else fh, bootstrap_servers, topic=topic,
                     send_invalid=send_invalid, on_progress=lambda n: bar.update(task, completed=n), keyring=keyring)
    out = report.as_json() | ({"resumed_skipped": len(stored)} if resume else {})
    if as_json:
        emit(out)
    else:
        console.print(f"sent [green]{report.sent}[/green] to {topic}, failed [red]{report.failed}[/red], "
                      f"invalid [red]{len(report.invalid)}[/red]"
                      + (f" ({report.invalid_sent} sent on purpose)" if report.invalid_sent else "")
                      + f" in {report.seconds:.1f} s")
        if report.invalid:
            table = Table("line", "event_id", "field", "reason", title="invalid lines" + ("" if send_invalid else " (not sent)"))
            for r in report.invalid[:50]:
                table.add_row(str(r.line), r.event_id or "", r.field, r.reason)
            console.print(table)
            if len(report.invalid) > 50:
                console.print(f"... and {len(report.invalid) - 50} more (use --json)")
        for e in report.errors:
            err.print(f"[red]delivery failed:[/red] {e}")
    if report.failed or (report.invalid and not send_invalid):
        raise typer.Exit(EXIT_REJECTED)


@app.command()
def worker(
    bootstrap_servers: str = BootstrapServers,
    topic_prefix: str = TopicPrefix,
    database_url: Optional[str] = DatabaseUrl,
    store: str = typer.Option("memory://", "--store", help="Faust table store: memory:// or rocksdb://"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Faust data directory (RocksDB tables)."),
    batch_size: int = typer.Option(4000, "--batch-size", min=1, help="Events per ingest batch (at most)."),
    partitions: int = typer.Option(12, "--partitions", min=1, envvar="DRG_LEDGER_PARTITIONS",
                                   help="Partitions of the topics the worker creates when missing."),
    instance_id: Optional[str] = typer.Option(None, "--instance-id", envvar="DRG_LEDGER_INSTANCE_ID",
                                              help="Static membership (group.instance.id) of the intake group: "
                                                   "a restart within the session timeout keeps the partitions."),
    without_web: bool = typer.Option(True, "--without-web/--with-web", hidden=True,
                                     help="The worker never starts Faust's web server."),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l"),
    key_file: Optional[Path] = KeyFile,
) -> None:
    """Run the stream worker: events -> ledger, dead letters, running totals (streams/README.md)."""
    from streams.app import WorkerSettings, run_worker

    if not without_web:
        fail(2, "the worker runs without Faust's web server")
    run_worker(WorkerSettings(bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix,
                              database_url=database_url, store=store,
                              data_dir=str(data_dir) if data_dir else None, batch_size=batch_size,
                              partitions=partitions, instance_id=instance_id,
                              loglevel=loglevel.upper(),
                              key_file=str(key_file) if keyring_of(key_file) is not None else None))


@app.command()
def totals(
    pool: str = typer.Option(..., "--pool"),
    year: int = typer.Option(..., "--year"),
    hospital: Optional[str] = typer.Option(None, "--hospital"),
    known_at: Optional[str] = KnownAt,
    worker: bool = typer.Option(False, "--worker", help="The totals the stream worker last mirrored (with the "
                                "position each reflects) instead of the store's as known at --known-at."),
    database_url: Optional[str] = DatabaseUrl,
    as_json: bool = JsonOut,
) -> None:
    """Point totals per hospital: the case-points projection's as known at --known-at (default
    now), or with --worker the running totals the stream worker last computed."""
    from ledger.clearing import ClearingError
    from ledger.policy import PolicyMissing
    from projections.running_totals import create_tables, read_rows, store_engine

    if worker and known_at is not None:
        fail(2, "--worker shows the totals as the worker last computed them: it takes no --known-at")
    with open_store(database_url) as store:
        engine = store_engine(store)
        create_tables(engine)
        if worker:
            rows = read_rows(engine, pool, year, hospital)
        else:
            from projections import case_versions
            from projections.running_totals import HospitalTotals, Key, TotalsRow, projected_totals

            moment = parse_moment(known_at) or datetime.now(timezone.utc)
            position = case_versions.fresh(store)
            try:
                found = projected_totals(store, pool, year, moment, hospital)
            except (ClearingError, PolicyMissing) as exc:
                fail(EXIT_CANNOT_COMPUTE, str(exc))
            registered = {h for h, r in store.hospitals().items() if r.pool == pool}
            wanted = sorted(registered | set(found)) if hospital is None else [hospital] if hospital in registered else []
            stamp = datetime.now(timezone.utc)
            rows = [TotalsRow(Key(pool, year, h), found.get(h, HospitalTotals()), position, moment, stamp) for h in wanted]
    if as_json:
        emit([r.as_json() for r in rows])
        return
    table = Table("hospital", "cases", "settled", "deducted", "net points", "personal paid", "position", "computed at",
                  "error", title=f"{pool} {year} running totals")
    for r in rows:
        t = r.totals
        table.add_row(r.key.hospital_id, f"{t.cases:,}", f"{t.settled_points:,}", f"{t.deducted_points:,}",
                      f"{t.net_points:,}", f"{t.personal_paid:,}", str(r.position),
                      r.computed_at.isoformat(timespec="seconds"), r.error or "")
    console.print(table)
    if hospital is not None and not rows:
        fail(EXIT_NOT_FOUND, f"no running totals for hospital {hospital} in {pool} {year}")


@app.command()
def reconcile(
    pool: str = typer.Option(..., "--pool"),
    year: int = typer.Option(..., "--year"),
    known_at: Optional[list[str]] = typer.Option(
        None, "--known-at", help="A moment to compare the projection at (repeatable; ISO 8601). Default: now and "
        "the recorded_at of every policy version and coefficient change of the pool-year."),
    database_url: Optional[str] = DatabaseUrl,
    bootstrap_servers: Optional[str] = AuditBroker,
    topic_prefix: str = TopicPrefix,
    as_json: bool = JsonOut,
) -> None:
    """Compare the case-points projection at each moment, and the running totals now, with a
    cold replay of the journal; check no running total lags the store beyond the bound and no
    consumed record is missing (stream-audit); exit 1 on any difference, lag or hole."""
    from ledger.clearing import ClearingError
    from ledger.policy import PolicyMissing
    from projections.running_totals import create_tables, store_engine
    from projections.running_totals import reconcile as run
    from streams.audit import audit as stream_audit
    from streams.audit import intake_topics

    with open_store(database_url) as store:
        create_tables(store_engine(store))
        try:
            moments = [m for m in (parse_moment(t) for t in known_at or []) if m is not None] or None
            result = run(store, pool, year, moments=moments)
        except (ClearingError, PolicyMissing) as exc:
            fail(EXIT_CANNOT_COMPUTE, str(exc))
        stream = stream_audit(store, intake_topics(topic_prefix, bootstrap_servers, store), bootstrap_servers)
    if as_json:
        emit({**result.as_json(), "ok": result.ok and stream.ok, "stream_audit": stream.as_json()})
    if not as_json:
        moments_table = Table("known at", "hospitals", "projection = replay", "differences", "error",
                              title=f"{pool} {year}: the case-points projection against a cold replay of the journal")
        for m in result.moments:
            error = "" if m.projection_error == m.replay_error else f"projection: {m.projection_error}; replay: {m.replay_error}"
            moments_table.add_row(m.known_at.isoformat(), str(m.hospitals), "[green]yes[/green]" if m.ok else "[red]no[/red]",
                                  ", ".join(d.hospital_id for d in m.differences[:10]), error or (m.replay_error or ""))
        console.print(moments_table)
    if as_json:
        pass
    elif not result.differences:
        console.print(f"[green]{pool} {year}: running totals of {result.hospitals} hospitals agree with the replay[/green] "
                      f"(store position {result.store_position}, known at {result.known_at.isoformat()})")
    else:
        table = Table("hospital", "figure", "running", "replay", "position", "behind store", "error",
                      title=f"{pool} {year}: {len(result.differences)} hospitals differ from the replay")
        for d in result.differences:
            behind = "" if d.position is None else str(result.store_position - d.position)
            figures = list(d.figures.items()) or [("", ("", ""))]
            for name, (running, replay) in figures:
                table.add_row(d.hospital_id, name, running, replay, "no row" if d.position is None else str(d.position),
                              behind, d.error or "")
        console.print(table)
    if not as_json:
        for lag in result.lagging:
            console.print(f"[red]{lag.key.text()}: totals at position {lag.position} differ from the store's at {lag.latest}, "
                          f"stale since {lag.missed_since} (bound {result.bound.total_seconds():g} s)[/red]")
        print_stream_audit(stream)
    if not result.ok or not stream.ok:
        raise typer.Exit(EXIT_REJECTED)


def print_stream_audit(result: Any) -> None:
    table = Table("topic", "partition", "log start", "log end", "store mark", "highest", "processed", "lag", "holes",
                  title="consumed offsets: broker against store" if result.broker else "consumed offsets in the store")
    for p in result.partitions:
        m = p.mark
        holes = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in m.holes[:20]) + (" ..." if len(m.holes) > 20 else "")
        table.add_row(m.topic, str(m.partition), str(m.start), "" if p.log_end is None else str(p.log_end), str(m.mark),
                      str(m.highest), f"{m.processed:,}", "" if p.lag is None else f"{p.lag:,}",
                      f"[red]{holes}[/red]" if holes else "none")
    console.print(table)
    if result.ok:
        console.print("[green]no hole: every consumed record has a fate in the store[/green]")
    else:
        console.print(f"[red]{result.holes} offsets were never processed by the store[/red]")


@app.command("stream-audit")
def stream_audit_command(
    bootstrap_servers: Optional[str] = AuditBroker,
    topic_prefix: str = TopicPrefix,
    settle: float = typer.Option(5.0, "--settle", min=0, help="Seconds between the two looks a hole must "
                                 "survive (an ingest in flight shows passing holes)."),
    database_url: Optional[str] = DatabaseUrl,
    as_json: bool = JsonOut,
) -> None:
    """Per partition of the events topic and of every per-HIS topic: the broker's offsets
    against what the store processed.

    Names every offset the store never saw (a hole) and the lag; exit 1 when a hole remains.
    """
    from streams.audit import audit, intake_topics

    with open_store(database_url) as store:
        result = audit(store, intake_topics(topic_prefix, bootstrap_servers, store), bootstrap_servers, settle)
    if as_json:
        emit(result.as_json())
    else:
        print_stream_audit(result)
    if not result.ok:
        raise typer.Exit(EXIT_REJECTED)


# --------------------------------------------------------------------------- what-if and diff


def _what_if(store: Any, path: Path, known_at: str | None, as_json: bool, *, pool: Any, run: Any) -> Any:
    """The draft at `path` loaded at --known-at (default now) and `run(projections.whatif, draft)`;
    a refused draft prints every refused line and exits 1, nothing applied."""
    from projections import whatif as wi

    moment = parse_moment(known_at) or datetime.now(timezone.utc)
    try:
        draft = wi.load_draft(store, path.read_bytes(), moment, name=path.name, pool=pool() if callable(pool) else pool)
    except wi.DraftRejected as exc:
        _draft_rejected(exc, as_json)
    return run(wi, draft)


def _draft_rejected(exc: Any, as_json: bool) -> None:
    if as_json:
        emit(exc.as_json())
    else:
        err.print(f"[red]draft {exc.name} refused: nothing applied[/red]")
        table = Table("line", "event_id", "reason", title="refused lines of the draft")
        for r in exc.report.rejected[:50]:
            table.add_row(str(r.line), str(r.event_id or ""), r.message)
        err.print(table)
    raise typer.Exit(EXIT_REJECTED)


def _what_if_title(marked: Any) -> str:
    if marked is None:
        return ""
    d = marked.draft
    ids = ", ".join(d.event_ids[:5]) + (f" and {len(d.event_ids) - 5} more" if len(d.event_ids) > 5 else "")
    return f"WHAT-IF {d.name} (sha256 {d.sha256}; {len(d.events)} events: {ids or 'none'}; never recorded): "


def _side_spec(store: Any, which: str, known_at: str | None, clearing_id: str | None, draft: Path | None,
               pool: str, as_json: bool) -> Any:
    from projections.diff import SideSpec

    if clearing_id is not None and (known_at is not None or draft is not None):
        fail(2, f"--{which}-clearing is its own moment: it takes no --{which}-known-at or --{which}-what-if")
    if clearing_id is not None:
        return SideSpec(clearing_id=clearing_id)
    moment = parse_moment(known_at) or datetime.now(timezone.utc)
    if draft is None:
        return SideSpec(known_at=moment)
    return _what_if(store, draft, known_at, as_json, pool=pool, run=lambda wi, d: SideSpec(draft=d))


@app.command()
def diff(
    pool: str = typer.Option(..., "--pool"),
    year: int = typer.Option(..., "--year"),
    from_known_at: Optional[str] = typer.Option(None, "--from-known-at", help="One side: as known at this moment."),
    from_clearing: Optional[str] = typer.Option(None, "--from-clearing", help="One side: a recorded clearing "
                                                "(the event_id of its ClearingCompleted)."),
    from_what_if: Optional[Path] = typer.Option(None, "--from-what-if", exists=True, dir_okay=False,
                                                help="One side: a draft, at --from-known-at (default now)."),
    to_known_at: Optional[str] = typer.Option(None, "--to-known-at", help="Other side (default: now)."),
    to_clearing: Optional[str] = typer.Option(None, "--to-clearing"),
    to_what_if: Optional[Path] = typer.Option(None, "--to-what-if", exists=True, dir_okay=False,
                                              help="Other side: a draft, at --to-known-at (default now)."),
    cases: bool = typer.Option(False, "--cases", help="Every case whose points changed, and the step that did it."),
    hospital: Optional[str] = typer.Option(None, "--hospital", help="With --cases: that hospital's cases only."),
    csv_file: Optional[Path] = typer.Option(None, "--csv", dir_okay=False, help="Write the hospitals (and, with "
                                            "--cases, FILE.cases.csv) as UTF-8 CSV with BOM, Chinese headers."),
    limit: int = typer.Option(40, "--limit", min=1, help="Rows shown per table (--json and --csv have all)."),
    database_url: Optional[str] = DatabaseUrl,
    as_json: bool = JsonOut,
) -> None:
    """What changed between two clearings of a pool-year: pool figures, hospitals, cases."""
    from ledger.clearing import ClearingError
    from ledger.policy import PolicyMissing
    from projections.diff import diff_pool_year, export_csv
    from projections.queries import NotFound

    if from_known_at is None and from_clearing is None and from_what_if is None:
        fail(2, "give the first side: --from-known-at, --from-clearing or --from-what-if")
    if hospital is not None and not cases:
        fail(2, "--hospital narrows --cases: give --cases too")
    with open_store(database_url) as store:
        before = _side_spec(store, "from", from_known_at, from_clearing, from_what_if, pool, as_json)
        after = _side_spec(store, "to", to_known_at, to_clearing, to_what_if, pool, as_json)
        try:
            result = diff_pool_year(store, pool, year, before, after, cases=cases, hospital_id=hospital)
        except NotFound as exc:
            fail(EXIT_NOT_FOUND, str(exc))
        except (ClearingError, PolicyMissing) as exc:
            fail(EXIT_CANNOT_COMPUTE, str(exc))
    written = export_csv(result, csv_file) if csv_file is not None else []
    for path in written:
        err.print(f"wrote {path}")
    if as_json:
        emit(result.as_json())
        return
    from drg_ledger.diff_view import render_diff

    render_diff(console.real(), result, limit=limit)
# --------------------------------------------------------------------------- HTTP service


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    tokens: Optional[Path] = typer.Option(None, "--tokens", envvar="DRG_LEDGER_TOKENS", dir_okay=False,
                                          help="Token file (drg-ledger token writes it); without one every "
                                          "API call but /healthz and /metrics is refused 401."),
    stores: int = typer.Option(4, "--stores", min=1, max=32, help="Store connections answering at once."),
    database_url: Optional[str] = DatabaseUrl,
    log_level: str = typer.Option("info", "--log-level"),
    as_json: bool = JsonOut,
) -> None:
    """The HTTP API, web page and docs (drg_ledger/service; README "The service")."""
    import uvicorn

    from drg_ledger.service.app import create_app
    from drg_ledger.service.auth import TokenBook, TokenFileError
    from projections.store import DATABASE_URL_ENV, DEFAULT_DATABASE_URL

    try:
        book = TokenBook.load(tokens) if tokens is not None else TokenBook.empty()
    except TokenFileError as exc:
        fail(2, f"--tokens {tokens}: {exc}")
    url = database_url or os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL
    with open_store(url):
        pass  # refuse to start on a store that cannot be opened
    service = create_app(url, book, stores=stores)
    config = uvicorn.Config(service, host=host, port=port, log_level=log_level.lower(), access_log=False)
    server = uvicorn.Server(config)
    started = {"url": f"http://{host}:{port}/", "docs": f"http://{host}:{port}/docs", "tokens": len(book)}
    if as_json:
        print(json.dumps(started), flush=True)
    else:
        err.print(f"drg-ledger service on [bold]{started['url']}[/bold] (docs {started['docs']}), "
                  f"{len(book)} token(s)" + ("" if tokens else " — no token file: the API refuses every call 401"))
    server.run()


@app.command()
def token(
    tokens: Path = typer.Option(..., "--tokens", dir_okay=False, help="Token file to create or extend."),
    role: str = typer.Option(..., "--role", help="operator, auditor or his:<hospital_id>"),
    name: str = typer.Option(..., "--name", help="Who holds it (unique in the file), e.g. bureau-ops."),
    as_json: bool = JsonOut,
) -> None:
    """Make a bearer token for a role; the file keeps only its SHA-256, the token is printed once."""
    from drg_ledger.service.auth import TokenFileError, add_token

    try:
        secret = add_token(tokens, name, role)
    except TokenFileError as exc:
        fail(2, f"--tokens {tokens}: {exc}")
    except ValueError as exc:
        fail(2, f"--tokens {tokens} is not a token file: {exc}")
    if as_json:
        emit({"name": name, "role": role, "token": secret, "tokens": str(tokens)})
    else:
        console.print(f"token for [bold]{name}[/bold] ({role}), shown once — its hash is in {tokens}:")
        print(secret)


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    main()
