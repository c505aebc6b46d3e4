"""The difference between two clearings of a pool-year, hospital by hospital and case by case.

Each side is a clearing (RULES.md 5): computed as known at a moment, with or without a
what-if draft, or recorded as a `ClearingCompleted`. `diff_clearings` compares the pool's
budget, total points and point value and every hospital's net points, point value, fund
due and clearing amount; `case_changes` lists every case whose points changed with the
steps of `explain` (ledger/explain.py `describe`) that differ, in its words and clauses.

Sums (checked by tests/unit/test_diff.py):
- net points are exact sums of 4-place case points, so the hospitals' changes add up to
  the change in total points exactly;
- fund due is rounded twice: the point value to 6 places (RULES.md preamble) and each
  hospital's money to the cent. On each side
  `budget = sum(fund_due) + rounding_point_value + rounding_cents`, exactly, where
  `rounding_point_value = (B [+ personal paid]) - TP x PV` (what the 6-place point value
  leaves over or overspends) and `rounding_cents = sum(net x PV [- personal paid]) -
  sum(fund_due)` (the cents each hospital's line rounds away). So the hospitals' changes
  in fund due add up to the change in budget less the changes of the two roundings; both
  are reported, with their change, next to the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from ledger.clearing import ZERO, Clearing, HospitalLine, PoolYear
from ledger.events import ClearingCompleted
from ledger.explain import describe

HOSPITAL_FIGURES = ("net_points", "point_value", "fund_due", "clearing_amount")
"""What the diff compares per hospital (the issue's "net points, point value, fund due and clearing amount")."""


def recorded_clearing(completed: ClearingCompleted, personal_paid_inside: bool) -> Clearing:
    """A recorded `ClearingCompleted` as a `Clearing` (RULES.md 6: every run is on the record).

    `personal_paid_inside` is the clearing rule in force then (the record does not carry it).
    """
    if completed.budget is None:
        raise ValueError(f"the recorded clearing of {completed.pool} {completed.year} carries no budget")
    lines = [
        HospitalLine(r.hospital_id, r.settled_points, r.deducted_points, r.net_points, r.personal_paid, r.fund_due,
                     r.prepaid, r.clearing_amount)
        for r in completed.results
    ]
    total = completed.total_points if completed.total_points is not None else sum((h.net_points for h in lines), ZERO)
    return Clearing(completed.pool, completed.year, completed.known_at, completed.point_value, total, completed.budget,
                    personal_paid_inside, sorted(lines, key=lambda h: h.hospital_id))


@dataclass(frozen=True, slots=True)
class Side:
    """One side of a diff: what it is (`kind`: moment, clearing or what_if) and its clearing."""

    kind: str
    label: str
    clearing: Clearing
    pool_year: PoolYear | None = None  # the settled cases, when case changes are asked
    clearing_id: str | None = None
    what_if: dict[str, Any] | None = None  # the draft's marker (ledger.whatif.Draft.marker)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "label": self.label, "known_at": self.clearing.known_at.isoformat()}
        if self.clearing_id is not None:
            out["clearing_id"] = self.clearing_id
        if self.what_if is not None:
            out["what_if"] = self.what_if
        return out


@dataclass(frozen=True, slots=True)
class Change:
    """One figure on both sides; `None` when the side has no such line (a hospital not registered yet)."""

    before: Decimal | None
    after: Decimal | None

    @property
    def change(self) -> Decimal:
        return (self.after if self.after is not None else ZERO) - (self.before if self.before is not None else ZERO)

    def as_json(self) -> dict[str, Any]:
        return {
            "from": None if self.before is None else str(self.before),
            "to": None if self.after is None else str(self.after),
            "change": str(self.change),
        }


@dataclass(frozen=True, slots=True)
class Roundings:
    """What rounding leaves between the budget and the fund due paid out, on one side (module docstring)."""

    point_value: Decimal
    cents: Decimal
    fund_due_total: Decimal


def roundings(c: Clearing) -> Roundings:
    """`budget = fund_due_total + point_value + cents`, exactly (RULES.md 5 and its preamble)."""
    personal = sum((h.personal_paid for h in c.hospitals), ZERO)
    paid_by_points = c.budget + personal if c.personal_paid_inside else c.budget
    exact_lines = sum((h.net_points * c.point_value for h in c.hospitals), ZERO)
    if c.personal_paid_inside:
        exact_lines -= personal
    fund_due_total = sum((h.fund_due for h in c.hospitals), ZERO)
    return Roundings(paid_by_points - c.total_points * c.point_value, exact_lines - fund_due_total, fund_due_total)


@dataclass(frozen=True, slots=True)
class HospitalChange:
    hospital_id: str
    figures: dict[str, Change]

    @property
    def money_change(self) -> Decimal:
        return self.figures["clearing_amount"].change

    def as_json(self) -> dict[str, Any]:
        return {"hospital_id": self.hospital_id, **{k: v.as_json() for k, v in self.figures.items()}}


@dataclass(frozen=True, slots=True)
class CaseChange:
    """A case whose points differ between the sides, and the `explain` steps that differ."""

    case_id: str
    hospital_id: str
    points: dict[str, Change]  # settled_points, deducted_points, net_points
    steps: list[dict[str, Any]]
    formula: tuple[str | None, str | None]

    def as_json(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "hospital_id": self.hospital_id,
            **{k: v.as_json() for k, v in self.points.items()},
            "formula": {"from": self.formula[0], "to": self.formula[1]},
            "steps": self.steps,
        }


@dataclass(frozen=True, slots=True)
class Diff:
    """Two clearings of one pool-year compared (module docstring)."""

    pool: str
    year: int
    before: Side
    after: Side
    pool_figures: dict[str, Change]
    hospitals: list[HospitalChange]
    unchanged_hospitals: int
    cases: list[CaseChange] | None = None
    hospital_filter: str | None = None

    @property
    def empty(self) -> bool:
        """Nothing moved: no hospital, no case, no pool figure."""
        return not self.hospitals and not self.cases and all(c.change == 0 for c in self.pool_figures.values())

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pool": self.pool,
            "year": self.year,
            "from": self.before.as_json(),
            "to": self.after.as_json(),
            "empty": self.empty,
            "pool_figures": {k: v.as_json() for k, v in self.pool_figures.items()},
            "hospitals": [h.as_json() for h in self.hospitals],
            "unchanged_hospitals": self.unchanged_hospitals,
        }
        if self.cases is not None:
            out["cases"] = [c.as_json() for c in self.cases]
            if self.hospital_filter is not None:
                out["cases_of_hospital"] = self.hospital_filter
        return out


def diff_clearings(before: Side, after: Side, *, cases: bool = False, hospital_id: str | None = None) -> Diff:
    """The pool figures and every hospital whose figures changed, by size of the money change.

    Money change = the change in clearing amount (what the hospital is paid or pays back at
    year end); ties by the size of the net-points change, then hospital id. With `cases`
    (both sides need their `pool_year`), every case whose points changed (`case_changes`).
    """
    a, b = before.clearing, after.clearing
    assert (a.pool, a.year) == (b.pool, b.year), "a diff compares one pool-year"
    ra, rb = roundings(a), roundings(b)
    pool_figures = {
        "budget": Change(a.budget, b.budget),
        "total_points": Change(a.total_points, b.total_points),
        "point_value": Change(a.point_value, b.point_value),
        "fund_due_total": Change(ra.fund_due_total, rb.fund_due_total),
        "rounding_point_value": Change(ra.point_value, rb.point_value),
        "rounding_cents": Change(ra.cents, rb.cents),
    }
    lines_a = {h.hospital_id: h for h in a.hospitals}
    lines_b = {h.hospital_id: h for h in b.hospitals}
    changed: list[HospitalChange] = []
    unchanged = 0
    for hid in sorted(lines_a.keys() | lines_b.keys()):
        ha, hb = lines_a.get(hid), lines_b.get(hid)
        figures = {
            "net_points": Change(ha.net_points if ha else None, hb.net_points if hb else None),
            "point_value": Change(a.point_value if ha else None, b.point_value if hb else None),
            "fund_due": Change(ha.fund_due if ha else None, hb.fund_due if hb else None),
            "clearing_amount": Change(ha.clearing_amount if ha else None, hb.clearing_amount if hb else None),
        }
        # Listed when its points or its money moved; the point value alone moves for every
        # hospital, including those with no case on either side.
        moved = any(figures[k].change != 0 for k in ("net_points", "fund_due", "clearing_amount"))
        if (ha is None) != (hb is None) or moved:
            changed.append(HospitalChange(hid, figures))
        else:
            unchanged += 1
    changed.sort(key=lambda h: (-abs(h.money_change), -abs(h.figures["net_points"].change), h.hospital_id))
    case_list = None
    if cases:
        if before.pool_year is None or after.pool_year is None:
            raise ValueError("case changes need both sides' settled cases (pool_year)")
        case_list = case_changes(before.pool_year, after.pool_year, hospital_id)
    return Diff(a.pool, a.year, before, after, pool_figures, changed, unchanged, case_list, hospital_id)


# --------------------------------------------------------------------------- cases

STEP_CLAUSES = {
    "case": "EVENTS.md CaseSubmitted: a higher revision replaces; README Readings 3",
    "withdrawn": "README Readings 3: a withdrawal recorded after the current revision withdraws the case",
    "policy_versions": "RULES.md 2: the version valid on the discharge date, recorded last by known_at",
    "catalogue": "seed 000 三(三); RULES.md 3 coefficient step 2",
    "verdict": "RULES.md 4; README Readings 3: the verdict recorded last is in force",
}
"""Clauses of the steps that carry none of their own (case type, coefficient and penalty
cite theirs, as `explain` shows them)."""

STEP_ORDER = (
    "case", "withdrawn", "policy_versions", "case_type", "catalogue", "coefficient", "verdict", "penalty", "notes",
)
"""The steps of `explain`, in the order a case is priced (RULES.md 3, then 4)."""

_CASE_KEYS = ("revision", "event_id", "discharge_date", "drg_code", "total_cost", "procedure_codes")


def _steps(d: dict[str, Any] | None) -> dict[str, Any]:
    """The comparable steps of an `explain` description (None: the case is not on that side)."""
    if d is None:
        return {"case": None}
    if d["withdrawn"]:
        return {"case": {k: d[k] for k in _CASE_KEYS}, "withdrawn": d["withdrawal"]}
    coefficient = d.get("coefficient")
    catalogue: dict[str, Any] = {"matched": False}
    if coefficient is not None and coefficient["why"].startswith("high_tech_catalogue"):
        cite = coefficient["from"]
        catalogue = {"matched": True, "row": cite.get("row"), "technology": cite.get("technology"),
                     "matched_code": cite.get("matched_code"), "version": cite.get("version"),
                     "event_id": cite.get("event_id")}
    return {
        "case": {k: d[k] for k in _CASE_KEYS},
        "withdrawn": False,
        "policy_versions": {k: {"version": v["version"], "event_id": v["event_id"]}
                            for k, v in d.get("policy_versions", {}).items()},
        "case_type": {"case_type": d["case_type"], "clause": d["case_type_clause"]} if "case_type" in d else None,
        "catalogue": catalogue,
        "coefficient": ({"value": coefficient["value"], "why": coefficient["why"], "clause": coefficient["clause"],
                         "event_id": coefficient["from"].get("event_id"), "row": coefficient["from"].get("row")}
                        if coefficient is not None else None),
        "verdict": ({k: d["verdict"].get(k) for k in ("event_id", "outcome", "violation_type", "violating_points",
                                                       "unreasonable_cost")} if "verdict" in d else None),
        "penalty": d.get("penalty"),
        "notes": d.get("notes") or None,
    }


def _clause(step: str, before: Any, after: Any) -> str | None:
    if step in STEP_CLAUSES:
        return STEP_CLAUSES[step]
    for side in (after, before):
        if isinstance(side, dict) and side.get("clause"):
            return str(side["clause"])
    return None


def _points(py: PoolYear, case_id: str) -> tuple[Decimal, Decimal] | None:
    sc = py.cases.get(case_id)
    if sc is not None:
        return sc.settled, sc.deducted
    return (ZERO, ZERO) if case_id in py.withdrawn else None


def case_changes(before: PoolYear, after: PoolYear, hospital_id: str | None = None) -> list[CaseChange]:
    """Every case (of `hospital_id`, when given) whose settled or deducted points differ,
    largest change of net points first, with the `explain` steps that differ."""
    ids = before.cases.keys() | before.withdrawn.keys() | after.cases.keys() | after.withdrawn.keys()
    out: list[CaseChange] = []
    for cid in ids:
        pa, pb = _points(before, cid), _points(after, cid)
        if (pa or (ZERO, ZERO)) == (pb or (ZERO, ZERO)):
            continue
        da = describe(before, cid) if pa is not None else None
        db = describe(after, cid) if pb is not None else None
        hid = (db or da or {}).get("hospital_id")
        if hospital_id is not None and hid != hospital_id:
            continue
        sa, sb = _steps(da), _steps(db)
        # A case withdrawn or unknown on one side is not priced there: only its submission
        # and withdrawal compare.
        names = (sa.keys() & sb.keys()) | {"case"}
        steps = [
            {"step": name, "from": sa.get(name), "to": sb.get(name),
             "clause": _clause(name, sa.get(name), sb.get(name))}
            for name in names
            if sa.get(name) != sb.get(name)
        ]
        steps.sort(key=lambda s: STEP_ORDER.index(s["step"]))
        points = {
            "settled_points": Change(pa[0] if pa else None, pb[0] if pb else None),
            "deducted_points": Change(pa[1] if pa else None, pb[1] if pb else None),
            "net_points": Change(pa[0] - pa[1] if pa else None, pb[0] - pb[1] if pb else None),
        }
        formula = ((da or {}).get("formula"), (db or {}).get("formula"))
        out.append(CaseChange(cid, str(hid), points, steps, formula))
    out.sort(key=lambda c: (-abs(c.points["net_points"].change), c.case_id))
    return out


@dataclass(frozen=True, slots=True)
class Table:
    """Rows for a spreadsheet: Chinese headers (the bureau's words), English keys in the JSON."""

    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)


HOSPITAL_HEADERS = {
    "net_points": "净点数",
    "point_value": "点值",
    "fund_due": "应付基金",
    "clearing_amount": "清算金额",
}


def hospital_table(d: Diff) -> Table:
    """The hospitals of a diff: 医院, then each figure before (前), after (后) and its change (变化)."""
    headers = ["医院"]
    for name in HOSPITAL_FIGURES:
        zh = HOSPITAL_HEADERS[name]
        headers += [f"{zh}(前)", f"{zh}(后)", f"{zh}变化"]
    table = Table(headers)
    for h in d.hospitals:
        row = [h.hospital_id]
        for name in HOSPITAL_FIGURES:
            c = h.figures[name]
            row += ["" if c.before is None else str(c.before), "" if c.after is None else str(c.after), str(c.change)]
        table.rows.append(row)
    return table


def case_table(d: Diff) -> Table:
    """The changed cases of a diff: 病例, 医院, net points before/after/change, and the steps that differ."""
    table = Table(["病例", "医院", "净点数(前)", "净点数(后)", "净点数变化", "差异环节", "依据"])
    for c in d.cases or []:
        net = c.points["net_points"]
        table.rows.append([
            c.case_id, c.hospital_id, "" if net.before is None else str(net.before),
            "" if net.after is None else str(net.after), str(net.change),
            "; ".join(s["step"] for s in c.steps), "; ".join(str(s["clause"]) for s in c.steps if s["clause"]),
        ])
    return table


def moment_label(known_at: datetime) -> str:
    return f"as known at {known_at.isoformat()}"
