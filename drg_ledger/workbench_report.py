"""The policy workbench's report: every derived figure with its inputs (RULES.md 7).

Rich tables for a person, and a CSV for a spreadsheet: UTF-8 with a byte-order mark, so
Excel and WPS open the Chinese headers intact; one section after another, each under its
title row, figures as the JSON report writes them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ledger.workbench import SOURCES, Derivation, HospitalKind

PARAMETERS = ("参数 parameter", "值 value", "依据 source")
READ = ("年度 year", "读取病例 read", "撤销 withdrawn", "未入组 ungrouped (0000)", "有修订 revised",
        "纳入 used", "点值 point value", "点值来源 point value source")
GROUPS = ("病组 DRG", "病例数 n", "权重 weight", "费用合计 cost sum", "次均费用 AC_g", "变异系数 CV",
          "基准点数 BP", "稳定 stable", "判定 why", "原基准点数 BP before", "原次均费用 AC before", "原稳定 stable before")
LEVELS = ("级别 level", "病例数 cases", "费用合计 cost sum", "病组均费合计 sum of AC_g", "级别系数 level ratio",
          "有历史数据的医疗机构 hospitals with history", "同级最低系数 lowest coefficient")
HOSPITALS = ("医疗机构 hospital", "等级 grade", "类别 kind", "病例数 cases", "费用合计 cost sum",
             "病组均费合计 sum of AC_g", "成本系数 cost ratio", "级别系数 level ratio", "医疗机构系数 coefficient",
             "原系数 before", "算式 formula")
CATALOGUE = ("序号 seq", "技术 technology", "病组 DRG", "等级 grade", "入组病例 cases", "可计价 priced",
             "次均DRG支付 mean payment", "次均费用 mean cost", "差额 d", "档次 tier", "原调整系数 c0",
             "调整前 before", "调整后 after", "算式 formula", "三级占比 tertiary share")
KIND_ZH = {HospitalKind.HISTORY: "有历史数据 history", HospitalKind.NEW: "新增/无历史数据 new",
           HospitalKind.NO_LEVEL_HISTORY: "同级无历史数据 level without history"}


def _s(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return "是 yes" if x else "否 no"
    return str(x)


def sections(d: Derivation) -> Iterator[tuple[str, tuple[str, ...], list[list[str]]]]:
    """(title, header, rows) of every part of the report, in order."""
    data = d.as_json()
    title = (f"{d.pool} {d.window} -> {d.for_year}, as known at {d.known_at.isoformat()} "
             f"(RULES.md 7; AC_all {d.overall_average_cost} over {d.total_cases} cases)")
    yield f"参数 Parameters — {title}", PARAMETERS, [
        [name,
         _s(value) if not isinstance(value, dict) else ", ".join(f"{k}={v}" for k, v in value.items()) or "(none)",
         SOURCES[name]] for name, value in data["parameters"].items()]
    yield "读取 Cases read", READ, [
        [str(y), *(str(r[k]) for k in ("read", "withdrawn", "ungrouped", "revised", "used")),
         _s(pv["point_value"]) if (pv := data["point_values"][str(y)]) else "",
         (f"{pv['source']} {pv['event_id'] or ''}".strip() if pv else "not needed: no catalogue case")]
        for y, r in d.read.items()]
    yield "病组 Groups (seed 001 一(二))", GROUPS, [
        [g.drg_code, str(g.cases), str(g.weight), str(g.cost_sum), _s(g.mean_cost), _s(g.cv), _s(g.base_points),
         _s(g.stable), g.stable_why, _s(g.before.base_points if g.before else None),
         _s(g.before.average_cost if g.before else None), _s(g.before.stable if g.before else None)]
        for g in d.groups] + [[code, "0", "", "", "", "", "", "", "no case in the window: not in the draft",
                               "", "", ""] for code in d.dropped_groups]
    yield "级别 Levels (seed 001 二(一))", LEVELS, [
        [lv["level"], str(lv["cases"]), lv["cost_sum"], lv["expected_sum"], _s(lv["ratio"]),
         " ".join(lv["hospitals_with_history"]), _s(lv["lowest_coefficient"])] for lv in data["levels"]]
    yield "医疗机构 Hospitals (seed 001 二(一))", HOSPITALS, [
        [h["hospital_id"], h["grade"], KIND_ZH[HospitalKind(h["kind"])], str(h["cost_ratio"]["cases"]),
         h["cost_ratio"]["cost_sum"], h["cost_ratio"]["expected_sum"], _s(h["cost_ratio"]["ratio"]),
         _s(h["level_ratio"]), _s(h["coefficient"]), _s(h["before"]), h["formula"]] for h in data["hospitals"]]
    yield "高精尖目录 High-tech catalogue (seed 000 三(三))", CATALOGUE, [
        [_s(c.seq), _s(c.technology), c.drg_code, c.grade.value, str(c.cases), str(c.priced), _s(c.mean_payment),
         _s(c.mean_cost), _s(c.d), c.tier.describe(d.parameters), _s(c.c0_grade), str(c.before), str(c.after),
         c.formula, _share(c.tertiary_share, d)] for c in d.catalogue_rows]


def _share(share: Any, d: Derivation) -> str:
    """The row's group share at tertiary hospitals, flagged below seed 000 三(二)'s 70%."""
    if share is None:
        return ""
    low = share < d.parameters.min_tertiary_share
    return f"{share} (< {d.parameters.min_tertiary_share}, seed 000 三(二))" if low else str(share)


def write_csv(d: Derivation, path: Path) -> None:
    """The report as CSV, UTF-8 with BOM (`utf-8-sig`), one titled section after another."""
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        out = csv.writer(fh)
        for n, (title, header, rows) in enumerate(sections(d)):
            if n:
                out.writerow([])
            out.writerow([title])
            out.writerow(header)
            out.writerows(rows)


def print_report(d: Derivation, console: Console) -> None:
    """Every section as a rich table, then what the draft leaves without a coefficient."""
    for title, header, rows in sections(d):
        table = Table(*header, title=title, show_lines=False)
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))  # "[assumed]" is text, not rich markup
        # Never squeeze a figure into "66.…": a table wider than the terminal is printed whole.
        needed = console.measure(table, options=console.options.update_width(100_000)).maximum
        wide = console if needed <= console.width else Console(file=console.file, width=needed)
        wide.print(table)
    for level, hospitals in sorted(d.levels_without_history.items()):
        console.print(f"[yellow]level {level} has no case in the window: no coefficient derived for "
                      f"{', '.join(hospitals)} (their grade's value applies)[/yellow]")
    if d.catalogue_version is None:
        console.print("[yellow]no high-tech catalogue in force at the window's end: none derived[/yellow]")
