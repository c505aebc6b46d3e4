"""The policy workbench's choices (RULES.md 7): `DeriveParameters` with their defaults and
`SOURCES` citing each, apart from `ledger/workbench.py` so that the CLI's options read them
without importing the derivation (and the whole core) at start-up."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from decimal import Decimal
from enum import StrEnum
from typing import Any


class WorkbenchError(ValueError):
    """The window cannot be derived from: no case, a catalogue year that cannot be priced, a bad parameter."""


class MiddleTier(StrEnum):
    """Where a gap of 0..-5,500 yuan falls in the seed's 0.15-0.5 range (seed 000 三(三)1(1))."""

    LINEAR = "linear"
    """[assumed, RULES.md 7] 0.15 + 0.35 x (-d) / 5,500."""
    LOWEST = "lowest"
    """Always the range's lower end (0.15)."""
    HIGHEST = "highest"
    """Always the range's upper end (0.5)."""


@dataclass(frozen=True, slots=True)
class DeriveParameters:
    """The derivation's choices, with the RULES.md 7 defaults; `SOURCES` cites each one."""

    year_weights: tuple[tuple[int, Decimal], ...] = ()
    level_share: Decimal = Decimal("0.8")
    cost_share: Decimal = Decimal("0.2")
    new_hospital_share: Decimal = Decimal("0.8")
    stable_min_cases: int = 5
    stable_max_cv: Decimal = Decimal("1")
    large_sample_cases: int | None = None
    positive_gap_max: Decimal = Decimal("10000")
    small_uplift: Decimal = Decimal("0.1")
    shortfall_floor: Decimal = Decimal("-5500")
    middle_uplift_min: Decimal = Decimal("0.15")
    middle_uplift_max: Decimal = Decimal("0.5")
    middle_tier: MiddleTier = MiddleTier.LINEAR
    raised_to: Decimal = Decimal("1.6")
    coefficient_cap: Decimal | None = Decimal("1.6")
    grade_3b_discount: Decimal = Decimal("0.08")
    min_tertiary_share: Decimal = Decimal("0.70")

    def __post_init__(self) -> None:
        for year, weight in self.year_weights:
            if weight <= 0:
                raise WorkbenchError(f"year_weights: the weight of {year} must be above 0, not {weight}")
        if len({y for y, _ in self.year_weights}) != len(self.year_weights):
            raise WorkbenchError("year_weights: a year is weighted twice")
        for name in ("level_share", "cost_share", "new_hospital_share", "stable_max_cv", "small_uplift",
                     "middle_uplift_min", "middle_uplift_max", "raised_to", "grade_3b_discount", "min_tertiary_share"):
            if getattr(self, name) < 0:
                raise WorkbenchError(f"{name}: must not be negative, not {getattr(self, name)}")
        if self.stable_min_cases < 0:
            raise WorkbenchError(f"stable_min_cases: must not be negative, not {self.stable_min_cases}")
        if self.large_sample_cases is not None and self.large_sample_cases < 1:
            raise WorkbenchError(f"large_sample_cases: must be at least 1, not {self.large_sample_cases}")
        if not self.shortfall_floor < 0 <= self.positive_gap_max:
            raise WorkbenchError(
                f"shortfall_floor: the tiers need shortfall_floor < 0 <= positive_gap_max, "
                f"not {self.shortfall_floor} and {self.positive_gap_max}"
            )
        if self.middle_uplift_min > self.middle_uplift_max:
            raise WorkbenchError(
                f"middle_uplift_min: {self.middle_uplift_min} is above middle_uplift_max {self.middle_uplift_max}"
            )
        if self.coefficient_cap is not None and self.coefficient_cap <= 0:
            raise WorkbenchError(f"coefficient_cap: must be above 0, not {self.coefficient_cap}")

    def weight(self, year: int) -> Decimal:
        """A case's weight by its discharge year (1 unless `year_weights` says otherwise)."""
        for y, w in self.year_weights:
            if y == year:
                return w
        return Decimal(1)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "year_weights":
                value = {str(y): str(w) for y, w in value}
            elif value is not None and not isinstance(value, int):
                value = str(value)
            out[f.name] = value
        return out

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_json(), sort_keys=True).encode()).hexdigest()[:12]


SOURCES: dict[str, str] = {
    "year_weights": "[assumed] seed 001 一(一) 近三年 names the window, not weights: every case counts once",
    "level_share": "seed 001 二(一) 级别系数×80%",
    "cost_share": "seed 001 二(一) 成本系数×20%",
    "new_hospital_share": "seed 001 二(一) 新增医疗机构按同一级别级别系数的80%",
    "stable_min_cases": "seed 001 一(二) 病例数>5例",
    "stable_max_cv": "seed 001 一(二) CV≤1",
    "large_sample_cases": "seed 001 一(二) 符合大数定理界值要求 (threshold not printed: off)",
    "positive_gap_max": "seed 000 三(三)1(1) 正10000元以下 (inclusive)",
    "small_uplift": "seed 000 三(三)1(1) 调增0.1",
    "shortfall_floor": "seed 000 三(三)1(1) 负5500元及以上 (inclusive)",
    "middle_uplift_min": "seed 000 三(三)1(1) 调增0.15-0.5",
    "middle_uplift_max": "seed 000 三(三)1(1) 调增0.15-0.5",
    "middle_tier": "[assumed] RULES.md 7: linear in the gap",
    "raised_to": "seed 000 三(三)1(1) 调增至1.6",
    "coefficient_cap": "[assumed] RULES.md 7: never above 1.6",
    "grade_3b_discount": "seed 000 三(三)2 三级乙等无病例入组的...下浮0.08",
    "min_tertiary_share": "seed 000 三(二) 三级医疗机构开展占比在70%以上 (reported, not applied)",
}
"""Where each parameter's default comes from; [assumed] where the seeds leave the choice."""
