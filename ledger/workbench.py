"""The policy workbench: next year's DRG table, hospital coefficients and catalogue uplifts (RULES.md 7).

Two pure steps. `read_year(events, pool, year, known_at, window_end)` reads one pool-year's
events the way `settle` does (`ledger/cases.py`: known at `known_at`, latest revision,
withdrawals; the pool's registry; the policy book) into compact `WindowCase`s, so a caller
can drop each year's events before reading the next. `derive(years, ...)` turns the window
into draft component versions with every figure's inputs. `draft_events` wraps the draft
in `PolicyVersionPublished` envelopes that `ingest` accepts as they are.

Every choice the seeds leave open ([assumed] in RULES.md 7) is a field of `DeriveParameters`.
Where RULES.md 7 and the seeds' words differ the seeds win (README "Readings"): a gap of
exactly +10,000 yuan is in the +0.1 tier (seed 000 三(三)1(1) 正10000元以下: 以下 includes
the number itself), and a group that meets the large-numbers threshold is stable whatever
its CV (seed 001 一(二) 符合大数定理界值要求或者...), a threshold the seed does not print.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext
from enum import StrEnum
from typing import Any, Iterable, Mapping, Sequence

from ledger.cases import case_states, known, registry
from ledger.catalogue import Catalogue
from ledger.clearing import ClearingError, clearing, settle
from ledger.events import (
    ENVELOPES,
    CatalogueRow,
    ClearingCompleted,
    CoefficientsBody,
    Component,
    DrgGroup,
    DrgTableBody,
    EventType,
    Grade,
    HighTechCatalogueBody,
    HospitalRegistered,
    PolicyVersionPublished,
)
from ledger.points import UNGROUPED, coefficient_without_catalogue
from ledger.policy import InForce, PolicyBook
from ledger.workbench_parameters import SOURCES, DeriveParameters, MiddleTier, WorkbenchError

BASE_POINTS = Decimal("0.01")
"""Base points to 2 places, ROUND_HALF_UP (RULES.md 7)."""
COEFFICIENT = Decimal("0.0001")
"""Coefficients to 4 places, ROUND_HALF_UP (RULES.md 7)."""
MONEY = Decimal("0.01")
"""Money (mean costs, payments, d) to 2 places, ROUND_HALF_UP (RULES.md preamble)."""
SHOWN = Decimal("0.000001")
"""Ratios and CV as reported (6 places); decisions use the exact figures."""
ZERO = Decimal(0)
HUNDRED = Decimal(100)
EXACT = Context(prec=60)
"""Sums of squares of a city's costs times their weights stay exact at 60 digits."""
TERTIARY = (Grade.G3A, Grade.G3B)


def _q(x: Decimal, places: Decimal) -> Decimal:
    return x.quantize(places, rounding=ROUND_HALF_UP)


# --------------------------------------------------------------------------- reading a year


@dataclass(frozen=True, slots=True)
class WindowCase:
    """One case of the window as RULES.md 7 reads it: latest revision known, not withdrawn, grouped."""

    case_id: str
    hospital_id: str
    grade: Grade
    year: int
    drg_code: str
    total_cost: Decimal
    rows: tuple[int, ...] = ()
    """Positions of the end-of-window catalogue rows the case matches (RULES.md 3 step 2)."""
    base_points: Decimal | None = None
    """BP of the case's group in the drg_table in force at its discharge (catalogue cases only)."""
    c0: Decimal | None = None
    """The case's coefficient without the catalogue, RULES.md 3 steps 3-5 (catalogue cases only)."""


@dataclass(frozen=True, slots=True)
class PointValue:
    """A year's point value for the catalogue's DRG payment, and where it came from (RULES.md 7)."""

    value: Decimal
    source: str  # EventType.CLEARING_COMPLETED or "clearing as known"
    event_id: str | None = None
    recorded_at: datetime | None = None


@dataclass(slots=True)
class YearCases:
    """What one pool-year contributes to the window (RULES.md 7), without its events."""

    year: int
    cases: list[WindowCase]
    read: int
    withdrawn: int
    ungrouped: int
    revised: int
    hospitals: dict[str, HospitalRegistered]
    book: PolicyBook
    point_value: PointValue | None


def read_year(events: Iterable[Any], pool: str, year: int, known_at: datetime, window_end: date) -> YearCases:
    """One pool-year's cases for the window, as `settle` resolves them (RULES.md 7).

    Cases of the pool's registered hospitals discharged in `year`, known at `known_at`, not
    withdrawn, with their latest revision's `total_cost` (verdicts do not change a case's
    cost); ungrouped cases (0000) are left out and counted. Catalogue matching uses the
    catalogue in force on `window_end`; a matching case also gets its group's base points and
    `c0`, and the year its point value: the latest ClearingCompleted known, else the
    year's clearing as known at `known_at` (RULES.md 5).
    """
    events = list(events)
    seen = known(events, known_at)
    hospitals = {h: r for h, r in registry(seen).items() if r.pool == pool}
    book = PolicyBook.from_events(pool, seen, known_at)
    in_force = book.catalogue(window_end)
    catalogue: Catalogue | None = in_force.value if in_force is not None else None
    cases: list[WindowCase] = []
    indexes: dict[int, dict[str, DrgGroup]] = {}
    read = withdrawn = ungrouped = revised = 0
    for cid, state in case_states(seen).items():
        case = state.case
        hospital = hospitals.get(case.hospital_id)
        if hospital is None or case.discharge_date.year != year:
            continue
        read += 1
        if state.withdrawal is not None:
            withdrawn += 1
            continue
        if case.drg_code == UNGROUPED:
            ungrouped += 1
            continue
        if state.revisions > 1:
            revised += 1
        rows = catalogue.rows_matched(case.drg_code, case.procedure_codes, hospital.grade) if catalogue else ()
        if not rows:
            cases.append(WindowCase(cid, case.hospital_id, hospital.grade, year, case.drg_code, case.total_cost))
            continue
        group = _groups_of(book.drg_table(case.discharge_date).value, indexes).get(case.drg_code)
        c0 = coefficient_without_catalogue(case, case.hospital_id, hospital.grade, book).value
        cases.append(WindowCase(cid, case.hospital_id, hospital.grade, year, case.drg_code, case.total_cost,
                                rows, group.base_points if group is not None else None, c0))
    pv = _point_value(events, seen, pool, year, known_at) if any(c.rows for c in cases) else None
    return YearCases(year, cases, read, withdrawn, ungrouped, revised, hospitals, book, pv)


def _groups_of(table: DrgTableBody, indexes: dict[int, dict[str, DrgGroup]]) -> dict[str, DrgGroup]:
    """The table's groups by code, built once per table (a year has one or two tables)."""
    index = indexes.get(id(table))
    if index is None:
        index = indexes[id(table)] = {g.drg_code: g for g in table.groups}
    return index


def _point_value(events: list[Any], seen: list[Any], pool: str, year: int, known_at: datetime) -> PointValue:
    """RULES.md 7: the year's latest recorded clearing, else its clearing as known at `known_at`."""
    recorded = [e for e in seen if isinstance(e.payload, ClearingCompleted) and e.payload.pool == pool
                and e.payload.year == year]
    if recorded:
        last = max(recorded, key=lambda e: (e.recorded_at, e.event_id))
        return PointValue(last.payload.point_value, EventType.CLEARING_COMPLETED, last.event_id, last.recorded_at)
    try:
        result = clearing(settle(events, pool, year, known_at))
    except ClearingError as exc:
        raise WorkbenchError(
            f"year {year}: its catalogue cases cannot be priced: no ClearingCompleted recorded and {exc}"
        ) from None
    return PointValue(result.point_value, "clearing as known")


# --------------------------------------------------------------------------- derived figures


@dataclass(frozen=True, slots=True)
class GroupFigure:
    """A DRG group's figures (RULES.md 7 "Groups"; seed 001 一(二))."""

    drg_code: str
    cases: int
    weight: Decimal
    cost_sum: Decimal
    mean_cost: Decimal | None  # 2 places; None when every case cost 0 (not listed)
    cv: Decimal | None  # population CV, 6 places as shown
    base_points: Decimal | None
    stable: bool
    stable_why: str
    before: DrgGroup | None


@dataclass(frozen=True, slots=True)
class RatioFigure:
    """`ratio(S) = sum(cost) / sum(AC_g of each case's group)` with its sums (RULES.md 7)."""

    cases: int
    cost_sum: Decimal
    expected_sum: Decimal
    ratio: Decimal | None  # exact; None when nothing is expected

    def as_json(self) -> dict[str, Any]:
        return {"cases": self.cases, "cost_sum": str(_q(self.cost_sum, MONEY)),
                "expected_sum": str(_q(self.expected_sum, MONEY)),
                "ratio": None if self.ratio is None else str(_q(self.ratio, SHOWN))}


@dataclass(frozen=True, slots=True)
class LevelFigure:
    """A level's ratio (级别系数, seed 001 二(一)) and its lowest hospital coefficient."""

    level: str
    ratio: RatioFigure
    hospitals_with_history: tuple[str, ...]
    lowest_coefficient: Decimal | None


class HospitalKind(StrEnum):
    HISTORY = "history"
    """Cases in the window: level ratio x 0.8 + cost ratio x 0.2."""
    NEW = "new"
    """No case in the window: max(0.8 x level ratio, the level's lowest)."""
    NO_LEVEL_HISTORY = "no_level_history"
    """No case at its whole level: no coefficient derived (its grade's value applies)."""


@dataclass(frozen=True, slots=True)
class HospitalFigure:
    """A hospital's coefficient and its inputs (seed 001 二(一))."""

    hospital_id: str
    grade: Grade
    kind: HospitalKind
    own: RatioFigure
    level_ratio: Decimal | None
    coefficient: Decimal | None
    formula: str
    before: Decimal | None


class Tier(StrEnum):
    """Which step of seed 000 三(三)1(1) a catalogue row and grade fell on (`describe` says it with
    the parameters' figures)."""

    RAISED_TO = "raised_to"
    MIDDLE = "middle"
    SMALL = "small"
    NONE = "none"
    FROM_3A = "from_3a"
    NO_CASE = "no_case"

    def describe(self, params: DeriveParameters) -> str:
        p = params
        return {
            Tier.RAISED_TO: f"d <= {p.shortfall_floor}: raised to {p.raised_to} (负5500元及以上)",
            Tier.MIDDLE: f"{p.shortfall_floor} < d <= 0: +{p.middle_uplift_min}..{p.middle_uplift_max} "
                         f"{p.middle_tier.value} (0-负5499元)",
            Tier.SMALL: f"0 < d <= {p.positive_gap_max}: +{p.small_uplift} (正10000元以下)",
            Tier.NONE: f"d > {p.positive_gap_max}: no uplift",
            Tier.FROM_3A: f"no 3B case: 3A - {p.grade_3b_discount} (三级乙等无病例入组)",
            Tier.NO_CASE: "no case: unchanged",
        }[self]


@dataclass(frozen=True, slots=True)
class CatalogueFigure:
    """One catalogue row and grade (seed 000 三(三)): the gap d, its tier, the coefficient."""

    position: int
    seq: int | None
    technology: str | None
    drg_code: str
    grade: Grade
    cases: int
    priced: int
    mean_payment: Decimal | None
    mean_cost: Decimal | None
    d: Decimal | None
    tier: Tier
    c0_grade: Decimal | None
    before: Decimal
    after: Decimal
    formula: str
    tertiary_share: Decimal | None


@dataclass(slots=True)
class Derivation:
    """The draft policy of RULES.md 7 and every figure's inputs."""

    pool: str
    years: tuple[int, ...]
    for_year: int
    known_at: datetime
    parameters: DeriveParameters
    read: dict[int, dict[str, int]]
    point_values: dict[int, PointValue | None]
    total_cases: int
    total_cost: Decimal
    total_weight: Decimal
    overall_average_cost: Decimal
    groups: list[GroupFigure]
    dropped_groups: list[str]
    levels: list[LevelFigure]
    hospitals: list[HospitalFigure]
    levels_without_history: dict[str, list[str]]
    catalogue_rows: list[CatalogueFigure]
    catalogue_version: InForce[Catalogue] | None
    coefficients_version: InForce[CoefficientsBody]
    drg_table_version: InForce[DrgTableBody] | None
    bodies: dict[Component, Any] = field(default_factory=dict)

    @property
    def window(self) -> str:
        ys = sorted(self.years)
        if len(ys) == 1:
            return str(ys[0])
        return f"{ys[0]}-{ys[-1]}" if ys == list(range(ys[0], ys[-1] + 1)) else ",".join(map(str, ys))

    def as_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "years": list(self.years),
            "for_year": self.for_year,
            "known_at": self.known_at.isoformat(),
            "parameters": self.parameters.as_json(),
            "parameter_sources": SOURCES,
            "read": {str(y): r for y, r in self.read.items()},
            "point_values": {str(y): None if pv is None else {
                "point_value": str(pv.value), "source": pv.source, "event_id": pv.event_id,
                "recorded_at": pv.recorded_at.isoformat() if pv.recorded_at else None}
                for y, pv in self.point_values.items()},
            "overall_average_cost": str(self.overall_average_cost),
            "overall": {"cases": self.total_cases, "cost_sum": str(_q(self.total_cost, MONEY)),
                        "weight": str(self.total_weight)},
            "groups": [_json(g) for g in self.groups],
            "dropped_groups": self.dropped_groups,
            "levels": [{"level": lv.level, **lv.ratio.as_json(),
                        "hospitals_with_history": list(lv.hospitals_with_history),
                        "lowest_coefficient": _s(lv.lowest_coefficient)} for lv in self.levels],
            "hospitals": [{"hospital_id": h.hospital_id, "grade": h.grade.value, "kind": h.kind.value,
                           "cost_ratio": h.own.as_json(), "level_ratio": _s(h.level_ratio, SHOWN),
                           "coefficient": _s(h.coefficient), "formula": h.formula, "before": _s(h.before)}
                          for h in self.hospitals],
            "levels_without_history": self.levels_without_history,
            "catalogue": [_json(c) | {"tier_text": c.tier.describe(self.parameters),
                                      "tertiary_share_below_min": c.tertiary_share is not None
                                      and c.tertiary_share < self.parameters.min_tertiary_share}
                          for c in self.catalogue_rows],
            "catalogue_version": self.catalogue_version.cite() if self.catalogue_version else None,
            "coefficients_version": self.coefficients_version.cite(),
            "drg_table_version": self.drg_table_version.cite() if self.drg_table_version else None,
        }


def _s(x: Decimal | None, places: Decimal | None = None) -> str | None:
    if x is None:
        return None
    return str(_q(x, places) if places is not None else x)


def _json(obj: Any) -> dict[str, Any]:
    """A figure as JSON: decimals as strings (README "Readings" 8), enums by value, models dumped."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, Decimal):
            v = str(v)
        elif isinstance(v, StrEnum):
            v = v.value
        elif hasattr(v, "model_dump"):
            v = v.model_dump(mode="json")
        out[f.name] = v
    return out


@dataclass(slots=True)
class _Sums:
    n: int = 0
    w: Decimal = ZERO
    s1: Decimal = ZERO
    s2: Decimal = ZERO


def derive(
    years: Sequence[YearCases], pool: str, known_at: datetime, for_year: int,
    parameters: DeriveParameters | None = None,
) -> Derivation:
    """Draft `drg_table`, `coefficients` and `high_tech_catalogue` from the window (RULES.md 7).

    Groups: AC_g, population CV, BP_g = AC_g / AC_all x 100 [assumed], stable when n > 5 and
    CV <= 1 (seed 001 一(二)). Coefficients: level ratio x 0.8 + cost ratio x 0.2, new
    hospitals max(0.8 x level ratio, the level's lowest) (seed 001 二(一)). Catalogue: the gap
    d between mean DRG payment and mean cost, by tier, on the grade's original coefficient
    (seed 000 三(三)).
    """
    params = parameters or DeriveParameters()
    if not years:
        raise WorkbenchError("years: the window names no year")
    window = tuple(sorted(y.year for y in years))
    last = max(years, key=lambda y: y.year)
    end = date(last.year, 12, 31)
    book, hospitals = last.book, last.hospitals
    with localcontext(EXACT):
        groups, overall, ac_all_exact = _groups(years, params, book, end)
        means = {g.drg_code: g.cost_sum / g.weight for g in groups if g.cost_sum > 0}
        coefficients_version = book.coefficients(end)
        levels, figures, orphans = _hospitals(years, hospitals, means, params, coefficients_version.value)
        catalogue_version = book.catalogue(end)
        rows = _catalogue(years, catalogue_version, coefficients_version.value, params) if catalogue_version else []
    known_pv = {y.year: y.point_value for y in years}
    before_table = book.version(Component.DRG_TABLE, end)
    listed = {g.drg_code for g in groups}
    dropped = sorted(g.drg_code for g in before_table.value.groups if g.drg_code not in listed) if before_table else []
    d = Derivation(
        pool, window, for_year, known_at, params,
        {y.year: {"read": y.read, "withdrawn": y.withdrawn, "ungrouped": y.ungrouped, "revised": y.revised,
                  "used": len(y.cases)} for y in sorted(years, key=lambda y: y.year)},
        known_pv, overall.n, overall.s1, overall.w, _q(ac_all_exact, MONEY), groups, dropped, levels, figures, orphans,
        rows,
        catalogue_version, coefficients_version, before_table,
    )
    d.bodies = _bodies(d)
    return d


def _groups(
    years: Sequence[YearCases], params: DeriveParameters, book: PolicyBook, end: date
) -> tuple[list[GroupFigure], _Sums, Decimal]:
    sums: dict[str, _Sums] = {}
    total = _Sums()
    for y in years:
        w = params.weight(y.year)
        for c in y.cases:
            s = sums.get(c.drg_code)
            if s is None:
                s = sums[c.drg_code] = _Sums()
            wx = w * c.total_cost
            s.n += 1
            s.w += w
            s.s1 += wx
            s.s2 += wx * c.total_cost
            total.n += 1
            total.w += w
            total.s1 += wx
    if total.n == 0:
        raise WorkbenchError("the window has no grouped, unwithdrawn case: nothing to derive from")
    if total.s1 <= 0:
        raise WorkbenchError("every case of the window cost 0: AC_all is 0, no base points can be derived")
    ac_all = total.s1 / total.w
    before_table = book.version(Component.DRG_TABLE, end)
    before = {g.drg_code: g for g in before_table.value.groups} if before_table else {}
    out: list[GroupFigure] = []
    for code in sorted(sums):
        s = sums[code]
        stable, why, cv = _stability(s, params)
        mean = s.s1 / s.w if s.s1 > 0 else None
        if mean is not None and _q(mean, MONEY) <= 0:
            mean = None  # under half a fen: no average_cost can be published, like a group of 0-cost cases
        bp = _q(mean / ac_all * HUNDRED, BASE_POINTS) if mean is not None else None
        out.append(GroupFigure(code, s.n, s.w, s.s1, _q(mean, MONEY) if mean is not None else None,
                               cv, bp, stable, why, before.get(code)))
    return out, total, ac_all


def _stability(s: _Sums, params: DeriveParameters) -> tuple[bool, str, Decimal | None]:
    """Stable when n > 5 and CV <= 1 (seed 001 一(二)), or n meets the large-numbers threshold.

    CV = sqrt(var) / mean with the population variance; with W = sum w, S1 = sum w x and
    S2 = sum w x^2 that is sqrt(S2 W - S1^2) / S1, and CV <= k is decided exactly as
    S2 W - S1^2 <= k^2 S1^2, with no square root.
    """
    spread = max(s.s2 * s.w - s.s1 * s.s1, ZERO)  # >= 0 (Cauchy-Schwarz); exact at 60 digits
    cv = None if s.s1 <= 0 else _q(spread.sqrt() / s.s1, SHOWN)
    cv_ok = s.s1 > 0 and spread <= params.stable_max_cv * params.stable_max_cv * s.s1 * s.s1
    if params.large_sample_cases is not None and s.n >= params.large_sample_cases:
        return True, f"n {s.n} >= large-numbers threshold {params.large_sample_cases}", cv
    if s.n <= params.stable_min_cases:
        return False, f"n {s.n} <= {params.stable_min_cases}", cv
    if not cv_ok:
        return False, f"CV > {params.stable_max_cv}" if s.s1 > 0 else "mean cost 0", cv
    return True, f"n {s.n} > {params.stable_min_cases} and CV <= {params.stable_max_cv}", cv


def _ratio(cases: int, cost: Decimal, expected: Decimal) -> RatioFigure:
    return RatioFigure(cases, cost, expected, cost / expected if expected > 0 else None)


def _hospitals(
    years: Sequence[YearCases], hospitals: Mapping[str, HospitalRegistered], means: Mapping[str, Decimal],
    params: DeriveParameters, before: CoefficientsBody,
) -> tuple[list[LevelFigure], list[HospitalFigure], dict[str, list[str]]]:
    """seed 001 二(一): 级别系数 and 成本系数 as ratio(S); c = level x 0.8 + cost x 0.2; new hospitals."""
    own: dict[str, list[Any]] = {}
    for y in years:
        w = params.weight(y.year)
        for c in y.cases:
            acc = own.setdefault(c.hospital_id, [0, ZERO, ZERO])
            acc[0] += 1
            acc[1] += w * c.total_cost
            acc[2] += w * means.get(c.drg_code, ZERO)
    ratios = {h: _ratio(n, cost, exp) for h, (n, cost, exp) in own.items()}
    levels: dict[str, list[str]] = {}
    for hid, reg in hospitals.items():
        levels.setdefault(reg.grade.level, []).append(hid)
    level_ratio: dict[str, RatioFigure] = {}
    for level, members in levels.items():
        with_cases = [ratios[h] for h in members if h in ratios and ratios[h].ratio is not None]
        level_ratio[level] = _ratio(sum(r.cases for r in with_cases), sum((r.cost_sum for r in with_cases), ZERO),
                                    sum((r.expected_sum for r in with_cases), ZERO))
    figures: dict[str, HospitalFigure] = {}
    for hid in sorted(hospitals):
        r = ratios.get(hid)
        grade = hospitals[hid].grade
        lr = level_ratio[grade.level].ratio
        if r is None or r.ratio is None or lr is None:
            continue
        c = _q(lr * params.level_share + r.ratio * params.cost_share, COEFFICIENT)
        formula = (f"{_q(lr, SHOWN)} x {params.level_share} + {_q(r.ratio, SHOWN)} x {params.cost_share} = {c}")
        figures[hid] = HospitalFigure(hid, grade, HospitalKind.HISTORY, r, lr, c, formula, _before(before, hid, grade))
    out_levels: list[LevelFigure] = []
    lowest: dict[str, Decimal] = {}
    for level in sorted(levels, reverse=True):
        members = sorted(h for h in levels[level] if h in figures)
        low = min((figures[h].coefficient for h in members), default=None)  # type: ignore[type-var]
        if low is not None:
            lowest[level] = low
        out_levels.append(LevelFigure(level, level_ratio[level], tuple(members), low))
    orphans: dict[str, list[str]] = {}
    for hid in sorted(hospitals):
        if hid in figures:
            continue
        grade = hospitals[hid].grade
        r = ratios.get(hid) or RatioFigure(0, ZERO, ZERO, None)
        lr = level_ratio[grade.level].ratio
        if lr is None or grade.level not in lowest:
            orphans.setdefault(grade.level, []).append(hid)
            figures[hid] = HospitalFigure(hid, grade, HospitalKind.NO_LEVEL_HISTORY, r, None, None,
                                          f"level {grade.level} has no case in the window: no coefficient derived "
                                          f"(its grade's value applies)", _before(before, hid, grade))
            continue
        share = lr * params.new_hospital_share
        c = _q(max(share, lowest[grade.level]), COEFFICIENT)
        branch = "share of the level ratio" if share >= lowest[grade.level] else "the level's lowest"
        formula = (f"max({params.new_hospital_share} x {_q(lr, SHOWN)} = {_q(share, SHOWN)}, "
                   f"lowest of level {grade.level} {lowest[grade.level]}) = {c} ({branch})")
        figures[hid] = HospitalFigure(hid, grade, HospitalKind.NEW, r, lr, c, formula, _before(before, hid, grade))
    return out_levels, [figures[h] for h in sorted(figures)], orphans


def _before(body: CoefficientsBody, hospital_id: str, grade: Grade) -> Decimal | None:
    return body.hospitals.get(hospital_id, body.grades.get(grade))


def tier_of(d: Decimal, params: DeriveParameters) -> Tier:
    """The step of seed 000 三(三)1(1) for a gap d (yuan, 2 places).

    d <= -5,500 (负5500元及以上): raised to 1.6; -5,500 < d <= 0 (0-负5499): +0.15..0.5;
    0 < d <= 10,000 (正10000元以下, the number itself included): +0.1; above: no uplift.
    """
    if d <= params.shortfall_floor:
        return Tier.RAISED_TO
    if d <= 0:
        return Tier.MIDDLE
    if d <= params.positive_gap_max:
        return Tier.SMALL
    return Tier.NONE


def uplifted(c0: Decimal, d: Decimal, params: DeriveParameters) -> tuple[Decimal, Tier, str]:
    """The row's coefficient for a grade from its original coefficient c0 and gap d (seed 000 三(三)).

    On the original coefficient (在原调整系数基础上调增); never above the cap [assumed].
    """
    tier = tier_of(d, params)
    if tier is Tier.RAISED_TO:
        raw, formula = params.raised_to, f"raised to {params.raised_to}"
    elif tier is Tier.MIDDLE:
        if params.middle_tier is MiddleTier.LINEAR:
            span = params.middle_uplift_max - params.middle_uplift_min
            up = params.middle_uplift_min + span * (-d) / (-params.shortfall_floor)
            how = f"{params.middle_uplift_min} + {span} x {-d} / {-params.shortfall_floor}"
        elif params.middle_tier is MiddleTier.LOWEST:
            up, how = params.middle_uplift_min, f"{params.middle_uplift_min}"
        else:
            up, how = params.middle_uplift_max, f"{params.middle_uplift_max}"
        raw, formula = c0 + up, f"{c0} + {how}"
    elif tier is Tier.SMALL:
        raw, formula = c0 + params.small_uplift, f"{c0} + {params.small_uplift}"
    else:
        raw, formula = c0, f"{c0}"
    if params.coefficient_cap is not None and raw > params.coefficient_cap:
        raw, formula = params.coefficient_cap, f"{formula}, capped at {params.coefficient_cap}"
    after = _q(raw, COEFFICIENT)
    return after, tier, f"{formula} = {after}"


def _catalogue(
    years: Sequence[YearCases], version: InForce[Catalogue], coefficients: CoefficientsBody, params: DeriveParameters
) -> list[CatalogueFigure]:
    """Each row x grade of the catalogue in force at the window's end (seed 000 三(三), RULES.md 7)."""
    rows = version.value.body.rows
    pv = {y.year: y.point_value for y in years}
    matched: dict[tuple[int, Grade], list[tuple[WindowCase, Decimal]]] = {}
    by_group: dict[str, list[int]] = {}
    for y in years:
        w = params.weight(y.year)
        for c in y.cases:
            counts = by_group.setdefault(c.drg_code, [0, 0])
            counts[0] += 1
            counts[1] += c.grade.level == "3"
            for position in c.rows:
                matched.setdefault((position, c.grade), []).append((c, w))
    out: list[CatalogueFigure] = []
    for position, row in enumerate(rows):
        counts = by_group.get(row.drg_code.strip().upper()) or by_group.get(row.drg_code)
        share = Decimal(counts[1]) / Decimal(counts[0]) if counts else None
        results: dict[Grade, CatalogueFigure] = {}
        for grade in TERTIARY:
            results[grade] = _row_grade(position, row, grade, matched.get((position, grade), []), pv, coefficients,
                                        params, share)
        a, b = results[Grade.G3A], results[Grade.G3B]
        if b.priced == 0 and a.priced > 0:
            after = _q(a.after - params.grade_3b_discount, COEFFICIENT)
            b = _replace(b, tier=Tier.FROM_3A, after=after,
                         formula=f"3A {a.after} - {params.grade_3b_discount} = {after} (seed 000 三(三)2)")
        out.extend([a, b])
    return out


def _replace(fig: CatalogueFigure, **changes: Any) -> CatalogueFigure:
    values = {f.name: getattr(fig, f.name) for f in fields(fig)}
    values.update(changes)
    return CatalogueFigure(**values)


def _row_grade(
    position: int, row: CatalogueRow, grade: Grade, cases: list[tuple[WindowCase, Decimal]],
    pv: Mapping[int, PointValue | None], coefficients: CoefficientsBody, params: DeriveParameters,
    share: Decimal | None,
) -> CatalogueFigure:
    before = row.coef_3a if grade is Grade.G3A else row.coef_3b
    c0_grade = coefficients.grades.get(grade)
    common = dict(position=position, seq=row.seq, technology=row.technology, drg_code=row.drg_code, grade=grade,
                  c0_grade=c0_grade, before=before, tertiary_share=None if share is None else _q(share, SHOWN))
    priced = [(c, w) for c, w in cases if c.base_points is not None and c.c0 is not None and pv.get(c.year)]
    if not priced:
        why = "no matching case" if not cases else "no matching case in a group of the drg_table in force"
        return CatalogueFigure(cases=len(cases), priced=0, mean_payment=None, mean_cost=None, d=None,
                               tier=Tier.NO_CASE, after=before, formula=f"{why}: keeps {before}", **common)
    if c0_grade is None:
        raise WorkbenchError(f"coefficients: the version in force at the window's end has no value for grade "
                             f"{grade.value}, the base of catalogue row {row.seq or position + 1}'s uplift")
    weight = sum((w for _, w in priced), ZERO)
    # `priced` keeps only cases with base points, c0 and a point value
    payment = sum((w * c.base_points * c.c0 * pv[c.year].value  # type: ignore[operator,union-attr]
                   for c, w in priced), ZERO)
    cost = sum((w * c.total_cost for c, w in priced), ZERO)
    mean_payment, mean_cost = payment / weight, cost / weight
    d = _q(mean_payment - mean_cost, MONEY)
    after, tier, formula = uplifted(c0_grade, d, params)
    return CatalogueFigure(cases=len(cases), priced=len(priced), mean_payment=_q(mean_payment, MONEY),
                           mean_cost=_q(mean_cost, MONEY), d=d, tier=tier, after=after, formula=formula, **common)


# --------------------------------------------------------------------------- the draft


def _bodies(d: Derivation) -> dict[Component, Any]:
    for h in d.hospitals:
        if h.coefficient is not None and h.coefficient <= 0:
            raise WorkbenchError(f"coefficients: {h.hospital_id}'s coefficient rounds to {h.coefficient} "
                                 f"({h.formula}): a coefficient must be above 0 to be published")
    groups = [DrgGroup(drg_code=g.drg_code, base_points=g.base_points, average_cost=g.mean_cost, stable=g.stable)
              for g in d.groups if g.mean_cost is not None and g.base_points is not None]
    out: dict[Component, Any] = {
        Component.DRG_TABLE: DrgTableBody(overall_average_cost=d.overall_average_cost, groups=groups),
        Component.COEFFICIENTS: CoefficientsBody(
            grades=dict(d.coefficients_version.value.grades),
            hospitals={h.hospital_id: h.coefficient for h in d.hospitals if h.coefficient is not None},
        ),
    }
    if d.catalogue_version is not None:
        current = d.catalogue_version.value.body
        after = {(c.position, c.grade): c.after for c in d.catalogue_rows}
        rows = [row.model_copy(update={"coef_3a": after[(i, Grade.G3A)], "coef_3b": after[(i, Grade.G3B)]})
                for i, row in enumerate(current.rows)]
        out[Component.HIGH_TECH_CATALOGUE] = HighTechCatalogueBody(source=current.source, rows=rows)
    return out


def _note(d: Derivation, component: Component) -> str:
    base = (f"derived by the policy workbench (RULES.md 7) from {d.pool} cases discharged {d.window}, "
            f"as known at {d.known_at.isoformat()}; parameters {d.parameters.digest()}")
    if component is Component.DRG_TABLE:
        extra = "; [assumed] BP = AC_g / AC_all x 100; stable: n > 5 and CV <= 1 (seed 001 一(二))"
    elif component is Component.COEFFICIENTS:
        extra = "; seed 001 二(一): level x 0.8 + cost x 0.2, new at 0.8 x level, not below the level's lowest"
        for level, hospitals in sorted(d.levels_without_history.items()):
            named = ""
            for n, hid in enumerate(hospitals):
                if len(base) + len(extra) + len(named) > 440:
                    named += f" and {len(hospitals) - n} more"
                    break
                named += (", " if named else "") + hid
            extra += f"; level {level} has no history, no coefficient derived for {named} (grade's value applies)"
    else:
        extra = ("; seed 000 三(三) tiers on the grade's coefficient, 3B without case = 3A - 0.08; "
                 "[assumed] middle tier " + d.parameters.middle_tier.value + ", cap "
                 + str(d.parameters.coefficient_cap))
    return (base + extra)[:512]


def draft_events(d: Derivation, source: str = "operator:workbench", recorded_at: datetime | None = None) -> list[Any]:
    """`PolicyVersionPublished` envelopes of the draft, effective for `for_year` (RULES.md 7).

    Ids are derived from the content, so deriving again from the same history gives the
    same events (an ingest counts them as duplicates). Without `recorded_at` the envelopes
    leave it out and the ledger stamps the moment they are ingested (EVENTS.md "Envelope").
    """
    out = []
    for component, body in d.bodies.items():
        payload = PolicyVersionPublished(
            pool=d.pool, component=component, version=f"{d.for_year}-derived-{d.window}",
            effective_from=date(d.for_year, 1, 1), effective_to=date(d.for_year, 12, 31), body=body,
            note=_note(d, component),
        )
        digest = hashlib.sha256(json.dumps(payload.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
                                .encode()).hexdigest()[:12]
        out.append(ENVELOPES[EventType.POLICY_VERSION_PUBLISHED](
            event_id=f"workbench:{d.pool}:{d.for_year}:{component.value}:{digest}",
            event_type=EventType.POLICY_VERSION_PUBLISHED, recorded_at=recorded_at, source=source, payload=payload,
        ))
    return out


def draft_lines(events: Sequence[Any]) -> list[str]:
    """The draft as JSON Lines, as a sender writes them: an envelope field the ledger stamps
    (`recorded_at` when not given, `ingested_at` always) is left out, never sent as null."""
    lines = []
    for e in events:
        data = {k: v for k, v in e.model_dump(mode="json").items() if v is not None}
        lines.append(json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":")))
    return lines


