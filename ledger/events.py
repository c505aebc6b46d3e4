"""The event vocabulary of the ledger: envelope, payloads and policy component bodies.

This module is the glossary of EVENTS.md (v1). Every inbound line, Kafka message or HTTP
body is parsed with :func:`parse_event`; the JSON Schema files in ``schemas/`` are exported
from these models (``python -m schemas.export``).

Money and points are ``Decimal`` (STYLE.md 3). On the wire they may be strings or numbers
(EVENTS.md "Payloads"); dumps write strings; a Python ``float`` is refused.

EVENTS.md "Limits on input" live in the field types below (`Identifier`, `Code`, `Text`,
`CaseMoney`, `Amount`, `Day`, `Timestamp`, ...), so the exported schemas carry them, and
:func:`parse_event` is total: any input parses or raises :class:`InvalidEvent` naming the
field, never another exception.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Callable, Iterator, Literal, Union

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import SchemaValidator

# --------------------------------------------------------------------------- vocabulary


class Grade(StrEnum):
    """Hospital grade (RULES.md 1): 三级甲等 3A, 三级乙等 3B, 二级甲等 2A, 二级乙等 2B, 一级及以下 1."""

    G3A = "3A"
    G3B = "3B"
    G2A = "2A"
    G2B = "2B"
    G1 = "1"

    @property
    def level(self) -> str:
        """The level is the grade's first digit (RULES.md 1)."""
        return self[0]  # the value's first character (a StrEnum is its value), without the enum's `value` property


class Outcome(StrEnum):
    """Outcome of a review verdict (EVENTS.md, ReviewVerdictRecorded)."""

    UPHELD = "upheld"
    VIOLATION = "violation"
    SPECIAL_REVIEW_APPROVED = "special_review_approved"
    INCENTIVE_APPROVED = "incentive_approved"


class ViolationType(StrEnum):
    """Violation types of seed 003 第十七条/第十八条 (RULES.md 4)."""

    BED_BLOCKING = "bed_blocking"
    SPLIT_HOSPITALISATION = "split_hospitalisation"
    COST_SHIFTING = "cost_shifting"
    INSUFFICIENT_SERVICE = "insufficient_service"
    SHIRKING_SEVERE = "shirking_severe"
    UPCODING = "upcoding"
    FRAUD = "fraud"
    OTHER = "other"


class Component(StrEnum):
    """Policy components (RULES.md 2)."""

    DRG_TABLE = "drg_table"
    COEFFICIENTS = "coefficients"
    HIGH_TECH_CATALOGUE = "high_tech_catalogue"
    CASE_RULES = "case_rules"
    PENALTY_RULES = "penalty_rules"
    CLEARING_RULES = "clearing_rules"


# --------------------------------------------------------------------------- limits on input
#
# EVENTS.md "Limits on input". Each limit lives in a type below, so the pydantic models
# enforce it and the exported JSON Schemas carry it (pattern, minLength/maxLength,
# minimum/maximum, maxItems); what JSON Schema cannot say exactly (decimal places of a
# JSON number) is in the field's description and enforced by the model.

MAX_LINE_BYTES = 1_048_576
"""A line (Kafka message value, HTTP body) over 1 MiB is refused before it is decoded."""

MAX_DEPTH = 32
"""JSON nested deeper than this is refused before it is decoded (no recursion is spent on it)."""

ID_PATTERN = r"^[A-Za-z0-9._:/-]+$"
"""Identifiers: `event_id`, `case_id`, `hospital_id`, `pool` (no look-alikes: ASCII only)."""

CODE_PATTERN = r"^[A-Za-z0-9._:/+*-]+$"
"""Codes (DRG, procedure, diagnosis): identifiers plus ICD-10's dagger `+` and asterisk `*`."""

TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
"""Free text: anything but control characters (C0, DEL, C1; NUL included)."""

ID_MAX = 128
LEDGER_ID_MAX = 256
"""Ids the ledger writes embed an id (`penalty:<verdict event_id>`, `clearing:<pool>:<year>:<sha256>`)."""
TEXT_MAX = 512
CODES_MAX = 100
"""At most this many procedure or diagnosis codes per case (EVENTS.md), and related cases per verdict."""
ROWS_MAX = 10_000
"""Policy tables (DRG groups, catalogue rows, hospital coefficients) and clearing results."""

DATE_MIN = date(2000, 1, 1)
DATE_MAX = date(2099, 12, 31)
_DATE_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIMESTAMP_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ].+")
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?")

Identifier = Annotated[str, Field(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN)]
Code = Annotated[str, Field(min_length=1, max_length=ID_MAX, pattern=CODE_PATTERN)]
Text = Annotated[str, Field(min_length=1, max_length=TEXT_MAX, pattern=TEXT_PATTERN)]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class NonFinite:
    """What `NaN`, `Infinity` and `-Infinity` literals decode to: refused by every field."""

    def __init__(self, literal: str) -> None:
        self.literal = literal

    def __repr__(self) -> str:
        return self.literal


def _decimal_input(value: Any, info: ValidationInfo) -> Any:
    # A Python float has already lost the yuan it was meant to hold (0.1 + 0.2): refuse it
    # from Python. JSON numbers reach here as Decimal (parse_event: parse_float=Decimal);
    # the store reads its own canonical bodies back in JSON mode, where money is a string.
    if isinstance(value, bool):
        raise ValueError("is a boolean, not a number")
    if isinstance(value, NonFinite):
        raise ValueError(f"is not a finite number ({value.literal})")
    if isinstance(value, float) and info.mode == "python":
        raise ValueError("is a Python float, which cannot hold decimals exactly: pass a str or Decimal")
    if isinstance(value, str):
        text = value.strip()
        if not _DECIMAL_TEXT.fullmatch(text):
            try:
                Decimal(text)
            except ArithmeticError:
                return value  # not a number at all: pydantic says "Input should be a valid decimal"
            raise ValueError("is not a plain decimal number (digits with an optional '.', no exponent, no NaN)")
        return Decimal(text)
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError("is not a finite number")
    return value


def _places_at_most(places: int) -> Callable[[Decimal], Decimal]:
    """A check that a Decimal has at most `places` decimal places, trailing zeros not counted.

    Done here rather than by pydantic's `decimal_places` (the same rule, several times slower);
    never `normalize()`, which rounds to the context's 28 digits. The value passes on, or an
    equal one whose text has no exponent: a JSON number `1e2` is `Decimal('1E+2')` and
    `0.0000000` is `Decimal('0E-7')`, which canonical JSON would store as `"1E+2"` and
    `"0E-7"`, decimal strings this check refuses, so the stored body would not read back.
    """
    unit = Decimal(1).scaleb(-places)

    def check(value: Decimal) -> Decimal:
        _, digits, exponent = value.as_tuple()
        assert isinstance(exponent, int)  # finite: checked before
        if exponent < -places:
            zeros = 0
            for d in reversed(digits):
                if d or zeros >= -exponent - places:
                    break
                zeros += 1
            if exponent + zeros < -places:
                raise ValueError(f"Decimal input should have no more than {places} decimal places")
            if exponent < -6 and not any(digits):  # a zero (any other value within places is written plainly)
                return value.quantize(unit)
        elif exponent > 0:  # within the field's bounds: fewer than 28 digits, exact
            return value.quantize(_ONE)
        return value

    return check


_ONE = Decimal(1)


def _num(x: Decimal) -> int | float:
    return int(x) if x == x.to_integral_value() else float(x)


def _decimal(
    lo: str, hi: str, places: int, what: str, *, lo_open: bool = False
) -> Any:
    """A Decimal in [lo, hi] (or (lo, hi]) with at most `places` decimal places, and its JSON Schema.

    The string form's pattern carries the places and bounds the digits; minimum/maximum carry the
    range of the number form (a JSON number's places are enforced by the model only: JSON
    Schema's multipleOf is unreliable with binary floats).
    """
    low, high = Decimal(lo), Decimal(hi)
    # Bounds are powers of ten (or zero, or minus the upper bound), so the string pattern can
    # state them exactly: up to k integer digits, or 10^k itself with a zero fraction.
    k = len(hi) - 1
    assert hi == "1" + "0" * k and low in (0, -high), (lo, hi)
    sign = "-?" if low < 0 else ""
    nonzero = r"(?!0*(\.0+)?$)" if lo_open else ""
    fraction = rf"(\.[0-9]{{1,{places}}}0*)?"
    pattern = rf"^{sign}{nonzero}0*([0-9]{{1,{k}}}{fraction}|{hi}(\.0+)?)$"
    bound = "exclusiveMinimum" if lo_open else "minimum"
    interval = f"{'(' if lo_open else '['}{lo}, {hi}]"
    description = (
        f"{what}: a decimal in {interval}, at most {places} decimal places; "
        "a decimal string (recommended) or a JSON number; NaN and Infinity are refused."
    )
    schema = {
        "anyOf": [
            {"type": "number", bound: _num(low), "maximum": _num(high)},
            {"type": "string", "pattern": pattern},
        ],
        "description": description,
    }
    limits: dict[str, Any] = {"gt" if lo_open else "ge": low, "le": high}
    return Annotated[
        Decimal, BeforeValidator(_decimal_input, json_schema_input_type=Any), Field(**limits),
        AfterValidator(_places_at_most(places)),
        WithJsonSchema(schema),
    ]


def _whole_input(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("is a boolean, not an integer")
    if isinstance(value, NonFinite):
        raise ValueError(f"is not a finite number ({value.literal})")
    return value


def _whole(lo: int, hi: int) -> Any:
    """An integer in [lo, hi]; a boolean is not one."""
    return Annotated[
        int, BeforeValidator(_whole_input), Field(ge=lo, le=hi),
        WithJsonSchema({"type": "integer", "minimum": lo, "maximum": hi}),
    ]


def _date_input(value: Any) -> Any:
    if isinstance(value, str):
        if not _DATE_TEXT.fullmatch(value.strip()):
            raise ValueError("is not an ISO date YYYY-MM-DD")
    elif not isinstance(value, date) or isinstance(value, datetime):
        raise ValueError("is not an ISO date YYYY-MM-DD")
    return value


def _in_range(value: date) -> date:
    if not DATE_MIN <= value <= DATE_MAX:
        raise ValueError(f"is outside {DATE_MIN} .. {DATE_MAX}")
    return value


def _timestamp_input(value: Any) -> Any:
    if isinstance(value, str):
        if not _TIMESTAMP_TEXT.fullmatch(value.strip()):
            raise ValueError("is not an ISO 8601 timestamp YYYY-MM-DDThh:mm:ss+hh:mm")
        # Check the year as written before any arithmetic on it: year 1 or 9999 with an
        # offset overflows datetime when converted to UTC (the store does so).
        year = int(value.strip()[:4])
        if not DATE_MIN.year <= year <= DATE_MAX.year:
            raise ValueError(f"is outside {DATE_MIN} .. {DATE_MAX}")
    elif not isinstance(value, datetime):
        raise ValueError("is not an ISO 8601 timestamp YYYY-MM-DDThh:mm:ss+hh:mm")
    return value


def _timestamp_in_range(value: datetime) -> datetime:
    # The timestamp's own calendar date, as written in its zone (EVENTS.md "Limits on input").
    _in_range(value.date())
    return value


Day = Annotated[
    date, BeforeValidator(_date_input, json_schema_input_type=str), AfterValidator(_in_range),
    WithJsonSchema({"type": "string", "format": "date", "pattern": r"^20[0-9]{2}-[0-9]{2}-[0-9]{2}$",
                    "description": f"ISO date YYYY-MM-DD in {DATE_MIN} .. {DATE_MAX}."}),
]
Timestamp = Annotated[
    AwareDatetime, BeforeValidator(_timestamp_input, json_schema_input_type=str), AfterValidator(_timestamp_in_range),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": r"^20[0-9]{2}-[0-9]{2}-[0-9]{2}[Tt ]",
                    "description": f"ISO 8601 timestamp with its zone; its date as written in {DATE_MIN} .. "
                                   f"{DATE_MAX}."}),
]
Year = _whole(DATE_MIN.year, DATE_MAX.year)

CaseMoney = _decimal("0", "100000000", 2, "Yuan of one case")
Amount = _decimal("0", "1000000000000", 2, "Yuan of a budget or prepayment", lo_open=True)
AverageCost = _decimal("0", "100000000", 4, "Average cost in yuan", lo_open=True)
Points = _decimal("0", "100000", 4, "Points (RULES.md 3 rounds case points to 4 places)")
Coefficient = _decimal("0", "100", 6, "Coefficient", lo_open=True)
Ratio = _decimal("0", "1000", 6, "Ratio or factor", lo_open=True)
Multiplier = _decimal("0", "100", 4, "Penalty multiplier k (RULES.md 4)")
PerMille = _decimal("0", "1000", 4, "Per mille")
DeductedPoints = _decimal("0", "10000000", 4, "Deducted points, k x violating points (RULES.md 4)")
PointValue = _decimal("0", "1000000", 6, "Yuan per point (RULES.md 5 rounds it to 6 places)")
TotalPoints = _decimal("0", "1000000000000000", 4, "Points summed over a pool")
SignedTotalPoints = _decimal("-1000000000000000", "1000000000000000", 4, "Points summed over a pool")
TotalMoney = _decimal("0", "1000000000000000", 2, "Yuan summed over a pool")
SignedTotalMoney = _decimal("-1000000000000000", "1000000000000000", 2, "Yuan summed over a pool")


class _Model(BaseModel):
    """Frozen, closed: an unknown field is an error that names it."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True, defer_build=True)


# --------------------------------------------------------------------------- policy bodies


class DrgGroup(_Model):
    """One DRG group: base points BP, average cost AC (yuan), stable flag (RULES.md 2, 3)."""

    drg_code: Code
    base_points: Points
    average_cost: AverageCost
    stable: bool = True


class DrgTableBody(_Model):
    """`drg_table`: the groups and the pool's overall average cost AC_all (RULES.md 2)."""

    overall_average_cost: AverageCost
    groups: list[DrgGroup] = Field(max_length=ROWS_MAX)

    @field_validator("groups")
    @classmethod
    def _unique_codes(cls, groups: list[DrgGroup]) -> list[DrgGroup]:
        seen: set[str] = set()
        for g in groups:
            if g.drg_code in seen:
                raise ValueError(f"drg_code {g.drg_code!r} appears twice")
            seen.add(g.drg_code)
        return groups


class CoefficientsBody(_Model):
    """`coefficients`: per grade, and per hospital where it has its own (RULES.md 3 step 5)."""

    grades: dict[Grade, Coefficient]
    hospitals: dict[Identifier, Coefficient] = Field(default_factory=dict, max_length=ROWS_MAX)


class CatalogueRow(_Model):
    """A high-tech catalogue row (seed 000 附件; RULES.md 3 step 2).

    `combined_with_codes` non-empty means the row requires a combination: one code of each
    list (seed 000 rows 48 and 51 print two sets joined by `+`).
    """

    seq: _whole(1, ROWS_MAX) | None = None  # type: ignore[valid-type]
    technology: Text | None = None
    drg_code: Code
    procedure_codes: list[Code] = Field(min_length=1, max_length=CODES_MAX)
    combined_with_codes: list[Code] = Field(default_factory=list, max_length=CODES_MAX)
    coef_3a: Coefficient
    coef_3b: Coefficient


class HighTechCatalogueBody(_Model):
    """`high_tech_catalogue`: rows procedure codes x DRG code -> coefficient for 3A and 3B."""

    source: Text | None = None
    rows: list[CatalogueRow] = Field(max_length=ROWS_MAX)


class HighRatioStep(_Model):
    """High-ratio threshold H for groups with BP up to `max_base_points` (null: no upper bound)."""

    max_base_points: Points | None
    threshold: Ratio


class LowRatioRule(_Model):
    """Low-ratio threshold L, with overrides by hospital level (seed 001 三: level 1 -> 0.3)."""

    default: Ratio
    by_level: dict[Literal["1", "2", "3"], Ratio] = Field(default_factory=dict)


class CaseRulesBody(_Model):
    """`case_rules` (RULES.md 3): ratio thresholds, bilateral factor, multi-site share, incentive caps.

    A null factor, share or cap means the rule is not in force (EVENTS.md).
    """

    high_ratio: list[HighRatioStep] = Field(min_length=1, max_length=CODES_MAX)
    low_ratio: LowRatioRule
    bilateral_factor: Ratio | None = None
    multi_site_share: Ratio | None = None
    incentive_cap_per_mille: dict[Literal["1", "2", "3"], PerMille] | None = None

    @field_validator("high_ratio")
    @classmethod
    def _open_last_step(cls, steps: list[HighRatioStep]) -> list[HighRatioStep]:
        if steps[-1].max_base_points is not None:
            raise ValueError("the last high_ratio step must have max_base_points null")
        bounds = [s.max_base_points for s in steps[:-1]]
        if any(b is None for b in bounds) or bounds != sorted(bounds):  # type: ignore[type-var]
            raise ValueError("high_ratio steps must ascend by max_base_points, only the last open")
        return steps


class PenaltyRulesBody(_Model):
    """`penalty_rules`: multiplier k per violation type; fraud's and other's are maxima (RULES.md 4)."""

    multipliers: dict[ViolationType, Multiplier]

    @field_validator("multipliers")
    @classmethod
    def _all_types(cls, m: dict[ViolationType, Decimal]) -> dict[ViolationType, Decimal]:
        missing = [v.value for v in ViolationType if v not in m]
        if missing:
            raise ValueError(f"multipliers missing for {', '.join(missing)}")
        return m


class ClearingRulesBody(_Model):
    """`clearing_rules`: whether personal payments are inside the point value (seed 004; RULES.md 5)."""

    personal_paid_in_point_value: bool


COMPONENT_BODIES: dict[Component, type[_Model]] = {
    Component.DRG_TABLE: DrgTableBody,
    Component.COEFFICIENTS: CoefficientsBody,
    Component.HIGH_TECH_CATALOGUE: HighTechCatalogueBody,
    Component.CASE_RULES: CaseRulesBody,
    Component.PENALTY_RULES: PenaltyRulesBody,
    Component.CLEARING_RULES: ClearingRulesBody,
}

PolicyBody = Union[
    DrgTableBody, CoefficientsBody, HighTechCatalogueBody, CaseRulesBody, PenaltyRulesBody, ClearingRulesBody
]

# --------------------------------------------------------------------------- payloads


def _check_interval(effective_from: date, effective_to: date | None) -> None:
    if effective_to is not None and effective_to < effective_from:
        raise ValueError("effective_to: is before effective_from")


class HospitalRegistered(_Model):
    """A hospital joined a pool with a grade (RULES.md 1)."""

    hospital_id: Identifier
    name: Text
    pool: Identifier
    grade: Grade


class PolicyVersionPublished(_Model):
    """A version of one policy component, valid over [effective_from, effective_to] (RULES.md 2)."""

    pool: Identifier
    component: Component
    version: Text
    effective_from: Day
    effective_to: Day | None = None
    body: PolicyBody
    note: Text | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="before")
    @classmethod
    def _typed_body(cls, data: Any) -> Any:
        # The component names the body's shape; validate it as that shape so an error
        # names the body's own field, not six union branches.
        if isinstance(data, dict) and isinstance(data.get("body"), dict):
            try:
                component = Component(data.get("component"))
            except (ValueError, TypeError):
                return data
            data = dict(data)
            try:
                data["body"] = COMPONENT_BODIES[component].model_validate(data["body"])
            except ValidationError as exc:
                # Errors of the body are located under `body` (payload.body.groups[0]...).
                errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
                raise ValidationError.from_exception_data(exc.title, errors) from None  # type: ignore[arg-type]
        return data

    @model_validator(mode="after")
    def _consistent(self) -> PolicyVersionPublished:
        _check_interval(self.effective_from, self.effective_to)
        if not isinstance(self.body, COMPONENT_BODIES[self.component]):
            raise ValueError(f"body: is not a {self.component.value} body")
        return self


class CoefficientChanged(_Model):
    """A coefficient declared for a hospital, a hospital and DRG code, or a DRG code and grade.

    RULES.md 3 (steps 1, 3, 4); seed 000 四: declared each January, used for last year's clearing.
    """

    pool: Identifier
    hospital_id: Identifier | None = None
    drg_code: Code | None = None
    grade: Grade | None = None
    coefficient: Coefficient
    effective_from: Day
    effective_to: Day | None = None
    reason: Text

    @model_validator(mode="after")
    def _scope(self) -> CoefficientChanged:
        _check_interval(self.effective_from, self.effective_to)
        scope = (self.hospital_id is not None, self.drg_code is not None, self.grade is not None)
        if scope not in {(True, False, False), (True, True, False), (False, True, True)}:
            raise ValueError(
                "hospital_id: give hospital_id, hospital_id + drg_code, or drg_code + grade (RULES.md 3)"
            )
        return self


class BudgetSet(_Model):
    """The pool's fund budget B for a year (RULES.md 5; seed 004 基金总额预算)."""

    pool: Identifier
    year: Year
    amount: Amount


class CaseSubmitted(_Model):
    """An inpatient case as the HIS grouped it; a higher revision replaces a lower one."""

    case_id: Identifier
    hospital_id: Identifier
    revision: _whole(1, 10_000)  # type: ignore[valid-type]
    admission_date: Day
    discharge_date: Day
    drg_code: Code
    total_cost: CaseMoney
    personal_paid: CaseMoney = Decimal("0")
    procedure_codes: list[Code] = Field(max_length=CODES_MAX)
    diagnosis_codes: list[Code] = Field(default_factory=list, max_length=CODES_MAX)
    bilateral: bool = False
    secondary_drg_code: Code | None = None

    @model_validator(mode="after")
    def _dates(self) -> CaseSubmitted:
        if self.discharge_date < self.admission_date:
            raise ValueError("discharge_date: is before admission_date")
        if self.personal_paid > self.total_cost:
            raise ValueError("personal_paid: exceeds total_cost")
        return self


class CaseWithdrawn(_Model):
    """The hospital withdrew a case: it earns nothing unless resubmitted later."""

    case_id: Identifier
    hospital_id: Identifier
    reason: Text


class ReviewVerdictRecorded(_Model):
    """A reviewer's verdict on a case (seed 003 第十八条; seed 001 二(二); RULES.md 3, 4)."""

    case_id: Identifier
    outcome: Outcome
    violation_type: ViolationType | None = None
    violating_points: Points | None = None
    multiplier: Multiplier | None = None
    unreasonable_cost: CaseMoney | None = None
    related_case_ids: list[Identifier] = Field(default_factory=list, max_length=CODES_MAX)
    reviewer: Text

    @model_validator(mode="after")
    def _fields_fit_outcome(self) -> ReviewVerdictRecorded:
        if self.outcome is Outcome.VIOLATION:
            if self.violation_type is None:
                raise ValueError("violation_type: is required when outcome is violation")
            needs_v = self.violation_type not in (ViolationType.BED_BLOCKING, ViolationType.FRAUD)
            if needs_v and self.violating_points is None:
                raise ValueError(f"violating_points: is required for {self.violation_type.value}")
        else:
            for name in ("violation_type", "violating_points", "multiplier"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: is only allowed when outcome is violation")
        if self.unreasonable_cost is not None and self.outcome not in (
            Outcome.SPECIAL_REVIEW_APPROVED,
            Outcome.INCENTIVE_APPROVED,
        ):
            raise ValueError("unreasonable_cost: is only allowed for approved special review or incentive")
        return self


class PenaltyImposed(_Model):
    """Points deducted from a hospital for a violation verdict (seed 003 第十八条; RULES.md 4).

    Written by the ledger from a verdict, never accepted from outside.
    """

    case_id: Identifier
    hospital_id: Identifier | None = None
    verdict_event_id: Identifier | None = None
    violation_type: ViolationType
    violating_points: Points
    multiplier: Multiplier
    deducted_points: DeductedPoints
    clause: Text


class PrepaymentMade(_Model):
    """Money prepaid to a hospital on a date (seed 004 预付与清算)."""

    pool: Identifier
    hospital_id: Identifier
    paid_on: Day
    amount: Amount


class ClearingResult(_Model):
    """One hospital's line of a clearing (RULES.md 5)."""

    hospital_id: Identifier
    settled_points: TotalPoints
    deducted_points: TotalPoints
    net_points: SignedTotalPoints
    personal_paid: TotalMoney
    fund_due: SignedTotalMoney
    prepaid: TotalMoney
    clearing_amount: SignedTotalMoney


class ClearingCompleted(_Model):
    """A year-end clearing run, recorded (RULES.md 5, 6). Written by the ledger."""

    pool: Identifier
    year: Year
    known_at: Timestamp
    point_value: PointValue
    total_points: TotalPoints | None = None
    budget: Amount | None = None
    results: list[ClearingResult] = Field(max_length=ROWS_MAX)
    log_digest: str | None = Field(default=None, pattern=r"^[0-9]{1,19}:[0-9a-f]{64}$")
    """`position:chain_hash` of the journal prefix the clearing read (README "Trust")."""


class HistoryBackfilled(_Model):
    """An operator loaded back-stamped history (EVENTS.md "Transaction time, seals and backfill").

    Written by the ledger (source `system`) in the same journal transaction as the events it
    covers, one per transaction of the load, so an interrupted load is recorded exactly as far
    as it got: who ran it, the file's sha256, how many events, the earliest and latest
    `recorded_at` among them, and the ingest's origin.
    """

    run_by: Text
    file_sha256: Sha256Hex
    events: _whole(1, 1_000_000_000)  # type: ignore[valid-type]
    recorded_from: Timestamp
    recorded_to: Timestamp
    origin: Annotated[str, Field(max_length=8192)] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> HistoryBackfilled:
        if self.recorded_to < self.recorded_from:
            raise ValueError("recorded_to: is before recorded_from")
        return self


# --------------------------------------------------------------------------- envelope

class EventType(StrEnum):
    """The event types of EVENTS.md; a member equals its name as a string (the wire format)."""

    HOSPITAL_REGISTERED = "HospitalRegistered"
    POLICY_VERSION_PUBLISHED = "PolicyVersionPublished"
    COEFFICIENT_CHANGED = "CoefficientChanged"
    BUDGET_SET = "BudgetSet"
    CASE_SUBMITTED = "CaseSubmitted"
    CASE_WITHDRAWN = "CaseWithdrawn"
    REVIEW_VERDICT_RECORDED = "ReviewVerdictRecorded"
    PENALTY_IMPOSED = "PenaltyImposed"
    PREPAYMENT_MADE = "PrepaymentMade"
    CLEARING_COMPLETED = "ClearingCompleted"
    HISTORY_BACKFILLED = "HistoryBackfilled"



OPERATOR_ONLY = frozenset(
    {
        "PolicyVersionPublished",
        "CoefficientChanged",
        "BudgetSet",
        "ReviewVerdictRecorded",
        "PenaltyImposed",
        "PrepaymentMade",
        "HospitalRegistered",
    }
)
"""Event types refused from a `his:` source (EVENTS.md "Payloads").

HospitalRegistered is added: a hospital cannot enrol itself in a pool (README, "Readings")."""

LEDGER_WRITTEN = frozenset({"PenaltyImposed", "ClearingCompleted", "HistoryBackfilled"})
"""Event types only the ledger writes (EVENTS.md: "written by the ledger")."""

SOURCE_PATTERN = (
    r"^(his:[A-Za-z0-9._:/-]{1,128}|operator:[^\s:\x00-\x1f\x7f-\x9f][^\s\x00-\x1f\x7f-\x9f]{0,127}|system)$"
)
"""`his:<hospital_id>`, `operator:<name>` (1-128 printable characters, no spaces) or `system`."""

EventId = Annotated[str, Field(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN)]
LedgerEventId = Annotated[str, Field(min_length=1, max_length=LEDGER_ID_MAX, pattern=ID_PATTERN)]
"""Ledger-written ids embed another id (`penalty:<verdict event_id>`, `clearing:<pool>:<year>:<sha256>`),
so they may be longer. They are never taken from a sender (LEDGER_WRITTEN types are refused from outside)."""


class _Envelope(_Model):
    """The envelope every event travels in (EVENTS.md "Envelope")."""

    event_id: EventId
    schema_version: Literal[1] = 1
    recorded_at: Timestamp | None = None
    ingested_at: Timestamp | None = Field(
        default=None,
        description="Written by the ledger on every accepted event (its own clock); refused from a sender.",
    )
    source: Annotated[str, Field(pattern=SOURCE_PATTERN, max_length=137)]

    @model_validator(mode="after")
    def _source_may_say_it(self) -> _Envelope:
        event_type: str = getattr(self, "event_type")
        payload = getattr(self, "payload")
        if self.source.startswith("his:"):
            if event_type in OPERATOR_ONLY:
                raise ValueError(f"source: {event_type} is operator-only, refused from {self.source}")
            his_hospital = self.source[4:]
            if getattr(payload, "hospital_id", his_hospital) != his_hospital:
                raise ValueError(
                    f"source: {self.source} may only speak for hospital {his_hospital}, "
                    f"not payload.hospital_id {payload.hospital_id}"
                )
        return self

    @property
    def hospital_id(self) -> str | None:
        return getattr(getattr(self, "payload"), "hospital_id", None)


def _envelope(name: str, payload: type[_Model]) -> type[_Envelope]:
    annotations: dict[str, Any] = {"event_type": Literal[name], "payload": payload}  # type: ignore[valid-type]
    if name in LEDGER_WRITTEN:
        annotations = {"event_id": LedgerEventId, **annotations}
    cls = type(
        f"{name}Event",
        (_Envelope,),
        {
            "__annotations__": annotations,
            "__doc__": f"Envelope carrying a {name} payload.",
            "__module__": __name__,
        },
    )
    return cls


PAYLOADS: dict[str, type[_Model]] = {
    "HospitalRegistered": HospitalRegistered,
    "PolicyVersionPublished": PolicyVersionPublished,
    "CoefficientChanged": CoefficientChanged,
    "BudgetSet": BudgetSet,
    "CaseSubmitted": CaseSubmitted,
    "CaseWithdrawn": CaseWithdrawn,
    "ReviewVerdictRecorded": ReviewVerdictRecorded,
    "PenaltyImposed": PenaltyImposed,
    "PrepaymentMade": PrepaymentMade,
    "ClearingCompleted": ClearingCompleted,
    "HistoryBackfilled": HistoryBackfilled,
}
ENVELOPES: dict[str, type[_Envelope]] = {name: _envelope(name, p) for name, p in PAYLOADS.items()}
for _cls in ENVELOPES.values():
    globals()[_cls.__name__] = _cls

LedgerEvent = Annotated[Union[tuple(ENVELOPES.values())], Field(discriminator="event_type")]  # type: ignore[valid-type]
"""Any event of the contract, told apart by `event_type`."""

EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(LedgerEvent, config=ConfigDict(defer_build=True))

# --------------------------------------------------------------------------- parsing


class InvalidEvent(ValueError):
    """An event was refused; `field` names where, `reason` says why (EVENTS.md "Bad input").

    `field` is `""` for the line as a whole (too long, not UTF-8, not JSON, too deep),
    else a dotted path (`payload.total_cost`, `payload.procedure_codes[3]`).
    """

    def __init__(self, field: str, reason: str, event_id: str | None = None) -> None:
        # Field, reason and id go into reports and dead-letter columns: keep them printable
        # and short whatever the line held (a NUL or a lone surrogate in an unknown key).
        self.field = _printable(field, 200)
        self.reason = _printable(reason, 1000)
        self.event_id = (
            event_id
            if isinstance(event_id, str) and len(event_id) <= LEDGER_ID_MAX and re.fullmatch(CODE_PATTERN, event_id)
            else None
        )
        super().__init__(f"{self.field}: {self.reason}" if self.field else self.reason)


def _printable(text: str, limit: int) -> str:
    """`text` with anything unprintable (controls, lone surrogates) escaped, cut to `limit` characters."""
    if not text.isprintable() or len(text) > limit:
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[: limit + 1])
        if len(text) > limit:
            text = text[: limit - 3] + "..."
    return text


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    # Drop the union tag pydantic puts first ("CaseSubmitted", "payload", ...).
    if parts and parts[0] in ENVELOPES:
        parts = parts[1:]
    parts = [p for p in parts if not p.endswith("Body") and not p.startswith("function-") and p != "[key]"]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


def _path(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _shown(value: Any, limit: int = 60) -> str:
    """A value for a reason: repr (control characters escaped), cut to `limit` characters."""
    text = repr(value) if not isinstance(value, (list, dict)) else type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Duplicated(dict):  # type: ignore[type-arg]
    """A decoded JSON object that held `key` twice (refused once decoding is done)."""

    key: str


_DECODING = threading.local()
"""Per thread: whether the line being decoded held a duplicate key (set by `_object`)."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook`: a dict, marked (and the line flagged) when a key came twice."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    dup = _Duplicated(obj)
    dup.key = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
    _DECODING.duplicate = True
    return dup


def _integer(text: str) -> int | Decimal:
    # Python refuses to convert more than 4300 digits (CVE-2020-10735); such a number is
    # kept as a Decimal so the field it sits in refuses it by its own bounds, naming it.
    try:
        return int(text)
    except ValueError:
        return Decimal(text)


_DECODER = json.JSONDecoder(
    parse_float=Decimal, parse_int=_integer, parse_constant=NonFinite, object_pairs_hook=_object
)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def _too_deep(data: bytes) -> bool:
    """Whether arrays/objects nest deeper than MAX_DEPTH, measured without recursion."""
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return False
    depth = 0
    for b in _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS):
        if b in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > MAX_DEPTH:
                return True
        else:
            depth -= 1
    return False


def _walk(data: Any) -> Iterator[tuple[list[str | int], Any]]:
    """(path, value) of every value and object key, depth first, without recursion."""
    stack: list[tuple[list[str | int], Any]] = [([], data)]
    while stack:
        path, value = stack.pop()
        yield path, value
        if isinstance(value, dict):
            for k, v in reversed(list(value.items())):
                yield path + [k], k
                stack.append((path + [k], v))
        elif isinstance(value, list):
            stack.extend((path + [i], v) for i, v in reversed(list(enumerate(value))))


def decode_line(raw: bytes | str) -> Any:
    """The JSON value of one inbound line, or :class:`InvalidEvent` for the line as a whole.

    EVENTS.md "Limits on input": refused before decoding when over MAX_LINE_BYTES or nested
    deeper than MAX_DEPTH; refused when not UTF-8, not JSON, holding a duplicate key or a
    lone surrogate (`"\\ud800"`) anywhere. Numbers with a fraction or exponent decode to
    Decimal; `NaN`/`Infinity` to :class:`NonFinite` (refused by the field that holds them);
    an integer of more than 4300 digits to Decimal (refused by its field's bounds).
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if len(data) > MAX_LINE_BYTES:
        raise InvalidEvent("", f"line is {len(data):,} bytes, over the limit of {MAX_LINE_BYTES:,} (1 MiB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent("", f"not UTF-8 text: invalid byte {data[exc.start]:#04x} at offset {exc.start}") from None
    if _too_deep(data):
        raise InvalidEvent("", f"JSON nested deeper than {MAX_DEPTH}")
    _DECODING.duplicate = False
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidEvent("", f"malformed JSON: {exc.msg} at column {exc.colno}") from None
    if _ESCAPED_SURROGATE.search(data):
        for path, v in _walk(value):
            if isinstance(v, str):
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    raise InvalidEvent(_path(path), "is not valid Unicode (a lone surrogate)") from None
    if _DECODING.duplicate:
        for path, v in _walk(value):
            if isinstance(v, _Duplicated):
                raise InvalidEvent(_path([*path, v.key]), "duplicate key")
    return value


def _event_id_of(data: dict[str, Any]) -> str | None:
    # Only an id that is one can be carried into a report or a dead letter's column.
    event_id = data.get("event_id")
    if isinstance(event_id, str) and len(event_id) <= LEDGER_ID_MAX and re.fullmatch(ID_PATTERN, event_id):
        return event_id
    return None


def parse_event(raw: bytes | str | dict[str, Any]) -> Any:
    """Parse one envelope from a sender, raising :class:`InvalidEvent` naming the field at fault.

    Total: any input either parses or raises InvalidEvent, never another exception
    (EVENTS.md "Limits on input": an input line can only ever be refused). `ingested_at`
    is refused: only the ledger writes it (the store reads its own bodies back with
    `decode_stored`, which keeps it).
    """
    event_id: str | None = None
    try:
        data = decode_line(raw) if isinstance(raw, (bytes, bytearray, memoryview, str)) else raw
        if not isinstance(data, dict):
            raise InvalidEvent("", "an event must be a JSON object")
        event_id = _event_id_of(data)
        event_type = data.get("event_type")
        if event_type is None:
            raise InvalidEvent("event_type", "missing", event_id)
        if not isinstance(event_type, str):
            raise InvalidEvent("event_type", f"must be a string, not {_shown(event_type)}", event_id)
        if event_type not in ENVELOPES:
            raise InvalidEvent("event_type", f"unknown event_type {_shown(event_type)}", event_id)
        if "ingested_at" in data:
            raise InvalidEvent("ingested_at", "is written by the ledger, never taken from the sender", event_id)
        return ENVELOPES[event_type].model_validate(data)
    except InvalidEvent:
        raise
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False, include_context=False)[0]
        field = _loc(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["loc"] and err["loc"][-1] == "[key]":
            msg = f"the key {msg[0].lower()}{msg[1:]}"
        # Cross-field validators say "field: reason"; append that field to the location.
        named = re.match(r"^([a-z_][a-z0-9_./]*): (.*)$", msg, re.S)
        if named:
            field = f"{field}.{named.group(1)}" if field else named.group(1)
            msg = named.group(2)
        raise InvalidEvent(field, msg, event_id) from None
    except (RecursionError, MemoryError, ArithmeticError, TypeError, ValueError, UnicodeError) as exc:
        # Nothing should get here (the limits above come first); if it does, the line is
        # still only refused, never a crash of the batch it came in.
        raise InvalidEvent("", f"could not be parsed ({type(exc).__name__})", event_id) from None


def _unchecked(schema: Any, models: set[type]) -> Any:
    """`schema` without its Python validators; collects the model classes it names."""
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("function-before", "function-after"):
            inner = _unchecked(schema["schema"], models)
            if "ref" in schema and "ref" not in inner:
                inner = {**inner, "ref": schema["ref"]}  # a definition-ref may name the wrapper
            return inner
        assert kind not in ("function-wrap", "function-plain"), schema  # those may change the value
        if kind == "model":
            models.add(schema["cls"])
        return {k: _unchecked(v, models) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_unchecked(v, models) for v in schema]
    return schema


_BUILDING = threading.Lock()


def unchecked_validator(schema: Any) -> SchemaValidator:
    """A validator of a core schema without its Python validators (`BeforeValidator`,
    `AfterValidator`, field and model validators): pydantic's own parsing of the types and
    their constraints only. Sound for bytes this module validated in full and wrote as
    canonical JSON: those validators only check their input and pass it on (a decimal's
    parses the text as pydantic's decimal does; `PolicyVersionPublished._typed_body` only
    picks the body's type, which the body union picks alike: each body has a required field
    no other has, and an unknown field is an error), so the decoded event is the same, in
    about half the time.

    pydantic-core builds a model whose class is already built with that class's own (full)
    validator, not the schema given ("prebuilt"): the classes are marked unbuilt while this
    one is made (one build at a time), so it is made from the stripped schema alone."""
    models: set[type] = set()
    stripped = _unchecked(schema, models)
    with _BUILDING:
        built = [m for m in models if m.__dict__.get("__pydantic_complete__")]
        try:
            for m in built:
                m.__pydantic_complete__ = False  # type: ignore[attr-defined]
            return SchemaValidator(stripped)
        finally:
            for m in built:
                m.__pydantic_complete__ = True  # type: ignore[attr-defined]


_STORED: dict[str, Callable[[str | bytes], Any]] = {}


def decode_stored(event_type: str, body: str | bytes) -> Any:
    """An envelope the ledger stored (its canonical JSON, `canonical_json`), decoded without
    the Python validators intake already ran on it (`unchecked_validator`): equal to
    ``ENVELOPES[event_type].model_validate_json(body)`` for every body the ledger writes
    (a property test pins it). For trusted bytes only: the store's reads and the replays of
    chain-checked entries. An inbound line is parsed with `parse_event`; `verify` re-reads
    the journal with the full validation, so a stored body the validators would refuse is
    reported there."""
    decode = _STORED.get(event_type)
    if decode is None:
        model = ENVELOPES[event_type]
        model.model_rebuild()  # defer_build: built on first use
        decode = _STORED[event_type] = unchecked_validator(model.__pydantic_core_schema__).validate_json
    return decode(body)


def canonical_json(event: Any) -> str:
    """The event's content as canonical JSON: what `event_id` idempotency compares.

    `ingested_at` is left out while unset, so an event's canonical form (and hash) as sent
    is the same before and after this field existed.
    """
    unset = "ingested_at" in type(event).model_fields and event.ingested_at is None
    exclude = {"ingested_at"} if unset else None
    return canonical_text(event.model_dump(mode="json", exclude=exclude))


def canonical_text(data: Any) -> str:
    """`json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))`, the
    canonical form, written by orjson (a third of the time) where it gives the same text:
    what it cannot write (a lone surrogate, an integer past 64 bits, a key that is not a
    plain `str`) the standard library writes. Holds for what `model_dump(mode="json")`
    gives, which has no floats (money is Decimal, dumped as text); a property test pins it."""
    try:
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode("utf-8")
    except orjson.JSONEncodeError:
        return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def content_hash(event: Any) -> str:
    """SHA-256 of the canonical content as sent (EVENTS.md: same id + same content = duplicate).

    The ledger's own `ingested_at` stamp is not content: it is left out of the hash.
    """
    if getattr(event, "ingested_at", None) is not None:
        event = event.model_copy(update={"ingested_at": None})
    return hashlib.sha256(canonical_json(event).encode("utf-8")).hexdigest()


def stamped(event: Any, recorded_at: datetime, ingested_at: datetime | None = None) -> Any:
    """The event as the ledger records it: `recorded_at` set when the sender left it out,
    `ingested_at` set (always, when given) to the ledger's clock (EVENTS.md "Envelope").

    Both times must carry a zone; they come from the ledger's clock, not from a sender.
    """
    assert recorded_at.tzinfo is not None and (ingested_at is None or ingested_at.tzinfo is not None)
    update: dict[str, Any] = {}
    if event.recorded_at is None:
        update["recorded_at"] = recorded_at
    if ingested_at is not None:
        update["ingested_at"] = ingested_at
    return event.model_copy(update=update) if update else event


def ingested(event: Any, now: datetime) -> Any:
    """The event as the ledger records it: `recorded_at` stamped when absent, `ingested_at`
    always `now` (EVENTS.md "Envelope": the ledger's own clock, never the sender's)."""
    update: dict[str, Any] = {"ingested_at": now}
    if event.recorded_at is None:
        update["recorded_at"] = now
    return event.model_copy(update=update)


_TIMESTAMP: TypeAdapter[datetime] = TypeAdapter(Timestamp)


def ingested_json(event: Any, body: str, now: datetime) -> str:
    """`canonical_json(ingested(event, now))`, made from `body`, the event's own canonical
    JSON, without dumping the event again.

    With `recorded_at` given, the two differ only by the `"ingested_at"` member, which sorts
    right before `"payload"`: only `event_id` and `event_type` (strings, whose quotes JSON
    escapes) come before it, so the first `,"payload":` of `body` is the member itself.
    Otherwise (or when `event` already carries `ingested_at`) the event is dumped again.
    """
    if event.recorded_at is None or event.ingested_at is not None:
        return canonical_json(ingested(event, now))
    at = body.index(',"payload":')
    return f'{body[:at]},"ingested_at":{_timestamp_json(now, now.utcoffset())}{body[at:]}'


@functools.lru_cache(maxsize=16)
def _timestamp_json(moment: datetime, offset: timedelta | None) -> str:
    """A timestamp as canonical JSON writes it, by instant and offset (equal instants in other
    zones are equal datetimes): one ingest stamps all its events alike."""
    return json.dumps(_TIMESTAMP.dump_python(moment, mode="json"))
