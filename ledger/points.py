"""Points of one case: coefficient precedence and case type (RULES.md 3).

Pure functions: the policy book is an argument, never looked up (STYLE.md 4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any

from ledger.events import CaseRulesBody, CaseSubmitted, DrgGroup, Grade
from ledger.policy import InForce, PolicyBook

POINTS = Decimal("0.0001")
"""Case points to 4 places, ROUND_HALF_UP (RULES.md, preamble)."""
HUNDRED = Decimal(100)
UNGROUPED = "0000"


def round_points(x: Decimal) -> Decimal:
    """Round points to 4 places, half up (RULES.md preamble)."""
    return x.quantize(POINTS, rounding=ROUND_HALF_UP)


class CaseType(StrEnum):
    """How a case is paid (RULES.md 3 "Case type", first that applies)."""

    SPECIAL_REVIEW = "special_review"
    INCENTIVE = "incentive"
    UNSTABLE = "unstable"
    HIGH_RATIO = "high_ratio"
    LOW_RATIO = "low_ratio"
    NORMAL = "normal"


class Approval(StrEnum):
    """An approved review that changes how the case is paid (RULES.md 3 type 1)."""

    SPECIAL_REVIEW = "special_review"
    INCENTIVE = "incentive"


@dataclass(frozen=True, slots=True)
class Coefficient:
    """The coefficient c and why it applies (RULES.md 3 "Coefficient c")."""

    value: Decimal
    source: str
    cite: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CasePoints:
    """A case's points before verdicts, with the steps that produced them."""

    points: Decimal
    case_type: CaseType
    written: Callable[[], str] = field(compare=False, repr=False)
    """Writes `formula`: only `explain` and audits read it, so a recompute does not format it."""
    coefficient: Coefficient | None = None
    ratio: Decimal | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def formula(self) -> str:
        """How the points were worked out, as `explain` shows them."""
        return self.written()


def coefficient_for(case: CaseSubmitted, hospital_id: str, grade: Grade, book: PolicyBook) -> Coefficient:
    """The first coefficient that applies, most specific first (RULES.md 3 steps 1-5).

    1. CoefficientChanged for this hospital and DRG code; 2. high-tech catalogue match for a
    3A/3B hospital (seed 000 三(三)); 3. CoefficientChanged for this DRG code and grade;
    4. CoefficientChanged for this hospital; 5. the `coefficients` component, hospital's own
    value else its grade's.
    """
    on = case.discharge_date
    change = book.coefficient_change("hospital_drg", (hospital_id, case.drg_code), on)
    if change is not None:
        return Coefficient(change.value, "coefficient_change:hospital+drg", change.cite())
    catalogue = book.catalogue(on)
    if catalogue is not None:
        hit = catalogue.value.match(case.drg_code, case.procedure_codes, grade)
        if hit is not None:
            cite = catalogue.cite() | {
                "row": hit.row.seq,
                "rows_matched": list(hit.rows),
                "technology": hit.row.technology,
                "matched_code": hit.matched_code,
                "combined_code": hit.combined_code,
            }
            return Coefficient(hit.coefficient, f"high_tech_catalogue:{grade.value}", cite)
    return coefficient_without_catalogue(case, hospital_id, grade, book)


def coefficient_without_catalogue(case: CaseSubmitted, hospital_id: str, grade: Grade, book: PolicyBook) -> Coefficient:
    """The coefficient of RULES.md 3 steps 3-5, as if no catalogue row matched (RULES.md 7 `c0`).

    3. CoefficientChanged for this DRG code and grade; 4. CoefficientChanged for this hospital;
    5. the `coefficients` component, hospital's own value else its grade's.

    Unless a change names the case's DRG code and grade (step 3), the same for every case of
    one hospital and discharge date: resolved once per book (`_c0`), each case given its own
    copy (its own `cite`).
    """
    on = case.discharge_date
    if (case.drg_code, grade) in book.by_drg_grade:
        return _c0(case.drg_code, hospital_id, grade, on, book)
    key = ("c0", hospital_id, grade, on)
    found: Coefficient | None = book._cache.get(key)
    if found is None:
        found = book._cache[key] = _c0(case.drg_code, hospital_id, grade, on, book)
    return Coefficient(found.value, found.source, dict(found.cite))


def _c0(drg_code: str, hospital_id: str, grade: Grade, on: date, book: PolicyBook) -> Coefficient:
    """`coefficient_without_catalogue` of a case of `drg_code` discharged `on` (RULES.md 3 steps 3-5)."""
    change = book.coefficient_change("drg_grade", (drg_code, grade), on)
    if change is not None:
        return Coefficient(change.value, "coefficient_change:drg+grade", change.cite())
    change = book.coefficient_change("hospital", hospital_id, on)
    if change is not None:
        return Coefficient(change.value, "coefficient_change:hospital", change.cite())
    table = book.coefficients(on)
    if hospital_id in table.value.hospitals:
        return Coefficient(table.value.hospitals[hospital_id], "coefficients:hospital", _cite(table, book))
    if grade in table.value.grades:
        return Coefficient(table.value.grades[grade], f"coefficients:grade {grade.value}", _cite(table, book))
    raise LookupError(f"coefficients version {table.version} has no value for grade {grade.value}")


def high_ratio_threshold(rules: CaseRulesBody, base_points: Decimal) -> Decimal:
    """H for a group, stepped by the group's own base points (RULES.md 3 type 3, [assumed])."""
    for step in rules.high_ratio:
        if step.max_base_points is None or base_points <= step.max_base_points:
            return step.threshold
    raise AssertionError("validated case_rules end with an open step")


def low_ratio_threshold(rules: CaseRulesBody, grade: Grade) -> Decimal:
    """L for the hospital's level (RULES.md 3 type 4; seed 001 三: level 1 -> 0.3)."""
    return rules.low_ratio.by_level.get(grade.level, rules.low_ratio.default)  # type: ignore[call-overload]


def by_cost(cost: Decimal, overall_average_cost: Decimal) -> Decimal:
    """Points paid by cost: cost / AC_all x 100 (RULES.md 3 types 1, 2; seed 001 二(二))."""
    return cost / overall_average_cost * HUNDRED


def case_points(
    case: CaseSubmitted,
    hospital_id: str,
    grade: Grade,
    book: PolicyBook,
    approval: Approval | None = None,
    unreasonable_cost: Decimal | None = None,
) -> CasePoints:
    """A case's points before verdict deductions (RULES.md 3).

    Types, first that applies: approved special review / incentive (by cost less unreasonable
    cost, seed 001 二(二)); unstable or ungrouped group (by cost); high ratio r > H
    (BP x c + BP x (r - H)); low ratio r < L (min(BP x r, BP x c)); normal (BP x c).
    Bilateral and multi-site (seed 001 二(四)) apply to the base-point types 3-5.
    """
    on = case.discharge_date
    drg = book.drg_table(on)
    ac_all = drg.value.overall_average_cost
    if approval is not None:
        cost = max(case.total_cost - (unreasonable_cost or Decimal(0)), Decimal(0))
        kind = CaseType.SPECIAL_REVIEW if approval is Approval.SPECIAL_REVIEW else CaseType.INCENTIVE
        p = round_points(by_cost(cost, ac_all))
        return CasePoints(p, kind, lambda: f"({case.total_cost} - {unreasonable_cost or 0}) / {ac_all} x 100 = {p}")
    group = _group(drg.value.groups, case.drg_code, book)
    if group is None or not group.stable:
        p = round_points(by_cost(case.total_cost, ac_all))
        why = (
            "ungrouped (0000)"
            if case.drg_code == UNGROUPED
            else ("unstable group" if group is not None else f"DRG code {case.drg_code} not in drg_table {drg.version}")
        )
        return CasePoints(p, CaseType.UNSTABLE, lambda: f"{case.total_cost} / {ac_all} x 100 = {p}", notes=(why,))

    rules = book.case_rules(on).value
    c = coefficient_for(case, hospital_id, grade, book)
    bp = group.base_points
    r = case.total_cost / group.average_cost
    notes: list[str] = []
    bp_paid = bp
    if case.bilateral and rules.bilateral_factor is not None:
        bp_paid = rules.bilateral_factor * bp
        notes.append(f"bilateral: {rules.bilateral_factor} x BP {bp} = {bp_paid} (seed 001 二(四))")
    high = high_ratio_threshold(rules, bp)
    low = low_ratio_threshold(rules, grade)
    if r > high:
        kind, raw = CaseType.HIGH_RATIO, bp_paid * c.value + bp_paid * (r - high)
    elif r < low:
        kind, raw = CaseType.LOW_RATIO, min(bp_paid * r, bp_paid * c.value)
    else:
        kind, raw = CaseType.NORMAL, bp_paid * c.value
    multi_site: tuple[Decimal, DrgGroup] | None = None
    if case.secondary_drg_code and rules.multi_site_share is not None:
        secondary = _group(drg.value.groups, case.secondary_drg_code, book)
        if secondary is None:
            notes.append(f"secondary group {case.secondary_drg_code} not in drg_table: no multi-site points")
        else:
            raw += rules.multi_site_share * secondary.base_points
            multi_site = (rules.multi_site_share, secondary)
            notes.append("multi-site: share of the secondary group's base points, no coefficient (seed 001 二(四))")
    p = round_points(raw)
    return CasePoints(p, kind, lambda: _base_formula(kind, bp_paid, c.value, r, high, multi_site, p), c, r, tuple(notes))


def _base_formula(
    kind: CaseType, bp: Decimal, c: Decimal, r: Decimal, high: Decimal, multi_site: tuple[Decimal, DrgGroup] | None,
    p: Decimal,
) -> str:
    """The formula of a case paid by base points (RULES.md 3 types 3-5, seed 001 二(四)), as computed by `case_points`."""
    if kind is CaseType.HIGH_RATIO:
        formula = f"{bp} x {c} + {bp} x (r {_r(r)} - H {high})"
    elif kind is CaseType.LOW_RATIO:
        formula = f"min({bp} x r {_r(r)}, {bp} x {c})"
    else:
        formula = f"{bp} x {c}"
    if multi_site is not None:
        share, secondary = multi_site
        formula += f" + {share} x {secondary.base_points} ({secondary.drg_code})"
    return f"{formula} = {p}"


def _cite(version: InForce[Any], book: PolicyBook) -> dict[str, Any]:
    """`version.cite()`, built once per version and book (most cases cite the same table); a copy
    each time, so no two cases share a dict."""
    key = ("cite", id(version))
    cite = book._cache.get(key)
    if cite is None:
        cite = book._cache[key] = version.cite()
    return dict(cite)


def _group(groups: list[DrgGroup], code: str, book: PolicyBook) -> DrgGroup | None:
    # Index the table's groups once per table object; tables are immutable.
    index = book._cache.get(("groups", id(groups)))
    if index is None:
        index = {g.drg_code: g for g in groups}
        book._cache[("groups", id(groups))] = index
    return index.get(code)


def _r(r: Decimal) -> str:
    return str(r.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP))
