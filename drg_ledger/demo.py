"""The demo story: Panzhihua 2020 cleared before and after the high-tech catalogue was issued.

seed 000 was issued on 2021-05-11 and pays 2020-01-01 onwards under it: a question about
2020 asked on 10 May 2021 and the same question asked on 12 May 2021 get different
answers (RULES.md 2, bitemporal policy). The catalogue raises the coefficients of listed
technologies in 3A/3B hospitals; the budget is fixed, so the point value falls and every
other hospital's money falls with it (RULES.md 5: PV = (B + personal) / TP).

`run_demo(store, ...)` generates a synthetic year (drg_ledger.generate), ingests it,
clears the year as known at both moments, records the second clearing as a
`ClearingCompleted`, and shows one hospital's mid-year balance as known at each moment.
"""

from __future__ import annotations

import tempfile
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from drg_ledger.generate import expected_events, generate
from ledger.clearing import Balance, Clearing, PoolYear, balance, clearing, settle
from projections.queries import record_clearing
from projections.store import Backfill

if TYPE_CHECKING:
    from rich.console import Console

    from projections.store import LedgerStore

POOL = "panzhihua"
YEAR = 2020
BEIJING = timezone(timedelta(hours=8))
BEFORE = datetime(2021, 5, 10, 23, 59, 59, tzinfo=BEIJING)
"""Known before the catalogue was issued (seed 000, 2021-05-11), after the January declarations."""
AFTER = datetime(2021, 5, 12, 0, 0, 0, tzinfo=BEIJING)
"""Known after the catalogue was issued."""
BALANCE_AS_OF = date(2020, 6, 30)
TERTIARY = ("3A", "3B")
GRADE_ORDER = ("3A", "3B", "2A", "2B", "1")
MAX_HOSPITAL_ROWS = 40
GRADE_NAMES = {"3A": "三级甲等", "3B": "三级乙等", "2A": "二级甲等", "2B": "二级乙等", "1": "一级及以下"}


def run_demo(
    store: LedgerStore,
    *,
    seed: int = 2020,
    cases: int = 4000,
    hospitals: int = 24,
    console: Console,
    as_json: bool = False,
) -> dict[str, Any]:
    """Generate, ingest and clear Panzhihua 2020 twice; print the story unless `as_json`.

    Returns both clearings (and the balance shown) as JSON-ready data, deterministic for
    a seed on a store holding nothing else for Panzhihua 2020.
    """
    quiet = as_json
    with tempfile.TemporaryDirectory(prefix="drg-ledger-demo-") as tmp:
        path = Path(tmp) / f"{POOL}-{YEAR}-seed{seed}.jsonl"
        with _progress(console, quiet) as progress:
            task = progress.add_task("generating", total=expected_events(cases, hospitals))
            summary = generate(
                path,
                cases=cases,
                hospitals=hospitals,
                year=YEAR,
                seed=seed,
                pool=POOL,
                on_progress=lambda n: progress.update(task, completed=n),
            )
            progress.update(task, total=summary.events, completed=summary.events)
        if not quiet:
            console.print(
                f"generated [bold]{summary.events:,}[/] events ({summary.bytes / 1e6:.1f} MB) for {hospitals} "
                f"hospitals and {cases:,} cases in {summary.seconds:.2f} s: "
                + ", ".join(f"{k} {v:,}" for k, v in summary.counts.items())
            )
        with _progress(console, quiet) as progress, path.open("rb") as fh:
            task = progress.add_task("ingesting", total=summary.events)
            report = store.ingest(fh, origin=f"demo:{path.name}", backfill=Backfill.of_file(path), on_progress=lambda n: progress.update(task, completed=n))
    if not quiet:
        style = "green" if not report.rejected else "red"
        console.print(
            f"ingested: [bold]{report.accepted:,}[/] accepted, {report.duplicates:,} duplicates, "
            f"[{style}]{len(report.rejected):,} rejected[/]"
        )
        for r in report.rejected[:5]:
            console.print(f"  [red]line {r.line}[/] {r.event_id}: {r.message}")
        if report.rejected:
            console.print("  [yellow]the store held other data for these ids; the figures below include it[/]")

    events = store.load(pool=POOL, year=YEAR)
    before_py = settle(events, POOL, YEAR, BEFORE)
    after_py = settle(events, POOL, YEAR, AFTER)
    before, after = clearing(before_py), clearing(after_py)
    recorded_id, recorded_new = record_clearing(store, after)
    grades = {hid: h.grade.value for hid, h in after_py.hospitals.items()}
    names = {hid: h.name for hid, h in after_py.hospitals.items()}
    featured = _featured_hospital(before, after, grades)
    balances = (
        (balance(before_py, featured, BALANCE_AS_OF), balance(after_py, featured, BALANCE_AS_OF)) if featured else None
    )
    matched = _catalogue_matches(after_py)

    result: dict[str, Any] = {
        "pool": POOL,
        "year": YEAR,
        "seed": seed,
        "cases": cases,
        "hospitals": hospitals,
        "events": summary.events,
        "before": before.as_json(),
        "after": after.as_json(),
        "catalogue_cases": matched,
        "by_grade": _by_grade(before, after, grades),
        "recorded": recorded_id,
    }
    if balances is not None:
        result["balance"] = {
            "hospital_id": featured,
            "as_of": BALANCE_AS_OF.isoformat(),
            "before": balances[0].as_json(),
            "after": balances[1].as_json(),
        }
    if not quiet:
        _show(console, before, after, grades, names, matched, balances, recorded_id, recorded_new)
    return result


# --------------------------------------------------------------------------- steps


def _progress(console: Console, quiet: bool) -> Progress:
    return Progress(
        TextColumn("[bold blue]{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=quiet,
    )


def _featured_hospital(before: Clearing, after: Clearing, grades: dict[str, str]) -> str | None:
    """The 3A/3B hospital the catalogue helps most (else the first hospital): whose balance to show."""
    was = {h.hospital_id: h.clearing_amount for h in before.hospitals}
    gains = [(h.clearing_amount - was.get(h.hospital_id, Decimal(0)), h.hospital_id) for h in after.hospitals]
    tertiary = [g for g in gains if grades.get(g[1]) in TERTIARY]
    pick = max(tertiary or gains, default=None, key=lambda g: (g[0], g[1]))
    return pick[1] if pick else None


def _catalogue_matches(py: PoolYear) -> dict[str, int]:
    """Cases whose coefficient came from the high-tech catalogue, per grade (RULES.md 3 step 2)."""
    out: dict[str, int] = {}
    for c in py.cases.values():
        coefficient = c.priced.coefficient
        if coefficient is not None and coefficient.source.startswith("high_tech_catalogue"):
            grade = coefficient.source.split(":", 1)[1]
            out[grade] = out.get(grade, 0) + 1
    return dict(sorted(out.items()))


def _by_grade(before: Clearing, after: Clearing, grades: dict[str, str]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    was = {h.hospital_id: h for h in before.hospitals}
    zero = Decimal(0)
    for h in after.hospitals:
        grade = grades.get(h.hospital_id, "?")
        row = rows.setdefault(
            grade,
            {"grade": grade, "hospitals": 0, "net_points_before": zero, "net_points_after": zero,
             "clearing_before": zero, "clearing_after": zero},
        )  # fmt: skip
        b = was.get(h.hospital_id)
        row["hospitals"] += 1
        row["net_points_before"] += b.net_points if b else zero
        row["net_points_after"] += h.net_points
        row["clearing_before"] += b.clearing_amount if b else zero
        row["clearing_after"] += h.clearing_amount
    out = []
    for grade in sorted(rows, key=lambda g: GRADE_ORDER.index(g) if g in GRADE_ORDER else 99):
        row = rows[grade]
        row["money_change"] = row["clearing_after"] - row["clearing_before"]
        out.append({k: (str(v) if isinstance(v, Decimal) else v) for k, v in row.items()})
    return out


# --------------------------------------------------------------------------- rendering


def _yuan(x: Decimal) -> str:
    return f"{x:,.2f}"


def _change(x: Decimal, places: int = 2) -> Text:
    style = "green" if x > 0 else ("red" if x < 0 else "dim")
    return Text(f"{x:+,.{places}f}", style=style)


def _show(
    console: Console,
    before: Clearing,
    after: Clearing,
    grades: dict[str, str],
    names: dict[str, str],
    matched: dict[str, int],
    balances: tuple[Balance, Balance] | None,
    recorded_id: str,
    recorded_new: bool,
) -> None:
    b_at, a_at = BEFORE.isoformat(), AFTER.isoformat()
    console.print()
    console.print(
        Panel(
            Text.from_markup(
                f"[bold]Panzhihua {YEAR} year-end clearing, asked twice[/]\n"
                "The high-tech catalogue (seed 000) was issued on [bold]2021-05-11[/] and pays cases from "
                "2020-01-01 under it. The same question about 2020 has two answers:\n"
                f"  [cyan]before[/] = as known at {b_at}   [magenta]after[/] = as known at {a_at}\n"
                f"Catalogue matches known after: "
                + (", ".join(f"{g} {n} cases" for g, n in matched.items()) or "none")
            ),
            title="drg-ledger demo",
            border_style="blue",
        )
    )

    pool_table = Table(title="Pool", title_justify="left")
    pool_table.add_column("")
    pool_table.add_column("before", justify="right", style="cyan")
    pool_table.add_column("after", justify="right", style="magenta")
    pool_table.add_column("change", justify="right")
    pool_table.add_row("budget B (yuan)", _yuan(before.budget), _yuan(after.budget), _change(after.budget - before.budget))
    pool_table.add_row(
        "total points TP", f"{before.total_points:,.4f}", f"{after.total_points:,.4f}",
        _change(after.total_points - before.total_points, 4),
    )  # fmt: skip
    pool_table.add_row(
        "point value PV (yuan)", f"{before.point_value:.6f}", f"{after.point_value:.6f}",
        _change(after.point_value - before.point_value, 6),
    )  # fmt: skip
    console.print(pool_table)

    grade_table = Table(title="By grade: 3A/3B gain from the catalogue, everyone else loses through a lower PV", title_justify="left")
    for col, justify in (
        ("grade", "left"), ("hospitals", "right"), ("net points before", "right"), ("net points after", "right"),
        ("clearing before", "right"), ("clearing after", "right"), ("money change", "right"),
    ):  # fmt: skip
        grade_table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in _by_grade(before, after, grades):
        grade = row["grade"]
        style = "bold green" if grade in TERTIARY else None
        grade_table.add_row(
            f"{grade} {GRADE_NAMES.get(grade, '')}",
            str(row["hospitals"]),
            f"{Decimal(row['net_points_before']):,.4f}",
            f"{Decimal(row['net_points_after']):,.4f}",
            _yuan(Decimal(row["clearing_before"])),
            _yuan(Decimal(row["clearing_after"])),
            _change(Decimal(row["money_change"])),
            style=style,
        )
    console.print(grade_table)

    hospital_table = Table(
        title="By hospital (clearing amount = fund due - prepaid; negative: the hospital pays back)", title_justify="left"
    )
    for col, justify in (
        ("hospital", "left"), ("grade", "left"), ("net points before", "right"), ("net points after", "right"),
        ("clearing before", "right"), ("clearing after", "right"), ("money change", "right"),
    ):  # fmt: skip
        hospital_table.add_column(col, justify=justify)  # type: ignore[arg-type]
    was = {h.hospital_id: h for h in before.hospitals}
    shown = after.hospitals
    if len(shown) > MAX_HOSPITAL_ROWS:
        # A big pool: every 3A/3B hospital, then the others that lose most.
        def loss(h: Any) -> Decimal:
            b = was.get(h.hospital_id)
            return h.clearing_amount - (b.clearing_amount if b else Decimal(0))

        tertiary_rows = [h for h in shown if grades.get(h.hospital_id) in TERTIARY]
        others = sorted((h for h in shown if grades.get(h.hospital_id) not in TERTIARY), key=lambda h: (loss(h), h.hospital_id))
        keep = {h.hospital_id for h in tertiary_rows + others[: max(MAX_HOSPITAL_ROWS - len(tertiary_rows), 5)]}
        shown = [h for h in shown if h.hospital_id in keep]
    for h in shown:
        b = was.get(h.hospital_id)
        grade = grades.get(h.hospital_id, "?")
        tertiary = grade in TERTIARY
        hospital_table.add_row(
            f"{h.hospital_id} {names.get(h.hospital_id, '')}",
            grade,
            f"{b.net_points:,.4f}" if b else "-",
            Text(f"{h.net_points:,.4f}", style="bold green" if tertiary and b and h.net_points > b.net_points else ""),
            _yuan(b.clearing_amount) if b else "-",
            _yuan(h.clearing_amount),
            _change(h.clearing_amount - (b.clearing_amount if b else Decimal(0))),
            style="bold" if tertiary else None,
        )
    console.print(hospital_table)
    if len(shown) < len(after.hospitals):
        console.print(f"[dim]({len(after.hospitals) - len(shown)} more hospitals not shown; --json has them all)[/]")

    state = "recorded" if recorded_new else "already recorded"
    console.print(f"{state} the [magenta]after[/] clearing as ClearingCompleted [bold]{recorded_id}[/] (source system)")

    if balances is not None:
        b, a = balances
        table = Table(
            title=f"Balance of {b.hospital_id} {names.get(b.hospital_id, '')} on {BALANCE_AS_OF.isoformat()} "
            "(RULES.md 6: budget pro-rated to 1 Jan..30 Jun)",
            title_justify="left",
        )
        table.add_column("")
        table.add_column(f"known at {b_at}", justify="right", style="cyan")
        table.add_column(f"known at {a_at}", justify="right", style="magenta")
        table.add_column("change", justify="right")
        table.add_row("point value", f"{b.point_value} ({b.point_value_kind})", f"{a.point_value} ({a.point_value_kind})",
                      _change(a.point_value - b.point_value, 6))  # fmt: skip
        for label, attr in (
            ("net points", "net_points"), ("personal paid", "personal_paid"), ("fund due", "fund_due"),
            ("prepaid", "prepaid"), ("balance (fund due - prepaid)", "clearing_amount"),
        ):  # fmt: skip
            x, y = getattr(b.line, attr), getattr(a.line, attr)
            places = 4 if attr == "net_points" else 2
            table.add_row(label, f"{x:,.{places}f}", f"{y:,.{places}f}", _change(y - x, places))
        console.print(table)
    console.print()
