"""Rich tables of a diff (ledger/diff.py), for `drg-ledger diff` and the demo."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from rich.console import Console

    from ledger.diff import Diff


def _signed(change: str) -> Text:
    x = Decimal(change)
    return Text(f"{x:+,}" if x else f"{x:,}", style="green" if x > 0 else ("red" if x < 0 else "dim"))


def _num(x: str | None) -> str:
    return "-" if x is None else f"{Decimal(x):,}"


def step_text(step: dict[str, Any]) -> str:
    """One `explain` step that differs, as `name: from -> to`."""

    def short(v: Any) -> str:
        if v is None or v is False:
            return "-"
        if not isinstance(v, dict):
            return str(v)
        name = step["step"]
        if name == "coefficient":
            return f"{v['value']} ({v['why']})"
        if name == "catalogue":
            return f"row {v['row']} {v.get('technology') or ''}".strip() if v["matched"] else "no row"
        if name == "case_type":
            return str(v["case_type"])
        if name == "verdict":
            shown = ("outcome", "violation_type", "violating_points")
            return " ".join(str(v[k]) for k in shown if v.get(k) is not None)
        if name == "penalty":
            return f"-{v['deducted_points']} (k {v['multiplier']})"
        if name == "case":
            return f"r{v['revision']} {v['drg_code']} {v['total_cost']}"
        if name == "policy_versions":
            return ", ".join(f"{k} {x['version']}" for k, x in sorted(v.items()))
        return json.dumps(v, ensure_ascii=False)

    return f"{step['step']}: {short(step['from'])} -> {short(step['to'])}"


def render_diff(console: Console, diff: Diff, *, limit: int = 40, names: dict[str, str] | None = None) -> None:
    """The pool figures, the hospitals by size of the money change and, if asked, the cases."""
    data = diff.as_json()
    console.print(
        f"[bold]{diff.pool} {diff.year}[/bold] from [cyan]{diff.before.label}[/cyan] to "
        f"[magenta]{diff.after.label}[/magenta]" + (" — [green]no difference[/green]" if diff.empty else "")
    )
    pool_table = Table("", "from", "to", "change", title="pool", title_justify="left")
    for name, c in data["pool_figures"].items():
        pool_table.add_row(name, str(c["from"]), str(c["to"]), _signed(c["change"]))
    console.print(pool_table)
    table = Table(
        "hospital", "net points from", "to", "change", "fund due change", "clearing amount from", "to",
        "money change", title=f"{len(diff.hospitals)} hospitals changed, by size of the money change "
        f"({diff.unchanged_hospitals} unchanged)", title_justify="left",
    )  # fmt: skip
    for h in data["hospitals"][:limit]:
        label = h["hospital_id"] + (f" {names[h['hospital_id']]}" if names and h["hospital_id"] in names else "")
        net, fund, money = h["net_points"], h["fund_due"], h["clearing_amount"]
        table.add_row(label, _num(net["from"]), _num(net["to"]), _signed(net["change"]), _signed(fund["change"]),
                      _num(money["from"]), _num(money["to"]), _signed(money["change"]))
    console.print(table)
    if diff.cases is not None:
        cases = Table(
            "case", "hospital", "net from", "net to", "change", "what made the difference",
            title=f"{len(diff.cases)} cases whose points changed"
            + (f" ({diff.hospital_filter})" if diff.hospital_filter else ""), title_justify="left", show_lines=True,
        )  # fmt: skip
        for c in data["cases"][:limit]:
            cases.add_row(c["case_id"], c["hospital_id"], str(c["net_points"]["from"]), str(c["net_points"]["to"]),
                          _signed(c["net_points"]["change"]), "\n".join(step_text(s) for s in c["steps"]))
        console.print(cases)
    if len(diff.hospitals) > limit or (diff.cases is not None and len(diff.cases) > limit):
        console.print(f"[dim](tables show {limit} rows each; --json and --csv have them all)[/dim]")
