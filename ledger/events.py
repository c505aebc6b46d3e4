"""The event vocabulary of the ledger: envelope, payloads and policy component bodies.

This module is the glossary of EVENTS.md (v1). Every inbound line, Kafka message or HTTP
body is parsed with :func:`parse_event`; the JSON Schema files in ``schemas/`` are exported
from these models (``python -m schemas.export``).

Money and points are ``Decimal`` (STYLE.md 3). On the wire they may be strings or numbers
(EVENTS.md "Payloads"); dumps write strings.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

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
        return self.value[0]


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


NonNegative = Annotated[Decimal, Field(ge=0)]
Positive = Annotated[Decimal, Field(gt=0)]
Text = Annotated[str, Field(min_length=1, max_length=200)]
Code = Annotated[str, Field(min_length=1, max_length=40)]


class _Model(BaseModel):
    """Frozen, closed: an unknown field is an error that names it."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


# --------------------------------------------------------------------------- policy bodies


class DrgGroup(_Model):
    """One DRG group: base points BP, average cost AC (yuan), stable flag (RULES.md 2, 3)."""

    drg_code: Code
    base_points: NonNegative
    average_cost: Positive
    stable: bool = True


class DrgTableBody(_Model):
    """`drg_table`: the groups and the pool's overall average cost AC_all (RULES.md 2)."""

    overall_average_cost: Positive
    groups: list[DrgGroup]

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

    grades: dict[Grade, Positive]
    hospitals: dict[str, Positive] = Field(default_factory=dict)


class CatalogueRow(_Model):
    """A high-tech catalogue row (seed 000 附件; RULES.md 3 step 2).

    `combined_with_codes` non-empty means the row requires a combination: one code of each
    list (seed 000 rows 48 and 51 print two sets joined by `+`).
    """

    seq: int | None = None
    technology: str | None = None
    drg_code: Code
    procedure_codes: list[Code] = Field(min_length=1)
    combined_with_codes: list[Code] = Field(default_factory=list)
    coef_3a: Positive
    coef_3b: Positive


class HighTechCatalogueBody(_Model):
    """`high_tech_catalogue`: rows procedure codes x DRG code -> coefficient for 3A and 3B."""

    source: str | None = None
    rows: list[CatalogueRow]


class HighRatioStep(_Model):
    """High-ratio threshold H for groups with BP up to `max_base_points` (null: no upper bound)."""

    max_base_points: NonNegative | None
    threshold: Positive


class LowRatioRule(_Model):
    """Low-ratio threshold L, with overrides by hospital level (seed 001 三: level 1 -> 0.3)."""

    default: Positive
    by_level: dict[Literal["1", "2", "3"], Positive] = Field(default_factory=dict)


class CaseRulesBody(_Model):
    """`case_rules` (RULES.md 3): ratio thresholds, bilateral factor, multi-site share, incentive caps.

    A null factor, share or cap means the rule is not in force (EVENTS.md).
    """

    high_ratio: list[HighRatioStep] = Field(min_length=1)
    low_ratio: LowRatioRule
    bilateral_factor: Positive | None = None
    multi_site_share: Positive | None = None
    incentive_cap_per_mille: dict[Literal["1", "2", "3"], NonNegative] | None = None

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

    multipliers: dict[ViolationType, NonNegative]

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

    hospital_id: Code
    name: Text
    pool: Code
    grade: Grade


class PolicyVersionPublished(_Model):
    """A version of one policy component, valid over [effective_from, effective_to] (RULES.md 2)."""

    pool: Code
    component: Component
    version: Text
    effective_from: date
    effective_to: date | None = None
    body: PolicyBody
    note: str | None = None

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
            except ValueError:
                return data
            data = dict(data)
            data["body"] = COMPONENT_BODIES[component].model_validate(data["body"])
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

    pool: Code
    hospital_id: Code | None = None
    drg_code: Code | None = None
    grade: Grade | None = None
    coefficient: Positive
    effective_from: date
    effective_to: date | None = None
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

    pool: Code
    year: int = Field(ge=2000, le=2100)
    amount: Positive


class CaseSubmitted(_Model):
    """An inpatient case as the HIS grouped it; a higher revision replaces a lower one."""

    case_id: Code
    hospital_id: Code
    revision: int = Field(ge=1)
    admission_date: date
    discharge_date: date
    drg_code: Code
    total_cost: NonNegative
    personal_paid: NonNegative = Decimal("0")
    procedure_codes: list[Code]
    diagnosis_codes: list[Code] = Field(default_factory=list)
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

    case_id: Code
    hospital_id: Code
    reason: Text


class ReviewVerdictRecorded(_Model):
    """A reviewer's verdict on a case (seed 003 第十八条; seed 001 二(二); RULES.md 3, 4)."""

    case_id: Code
    outcome: Outcome
    violation_type: ViolationType | None = None
    violating_points: NonNegative | None = None
    multiplier: NonNegative | None = None
    unreasonable_cost: NonNegative | None = None
    related_case_ids: list[Code] = Field(default_factory=list)
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

    case_id: Code
    hospital_id: Code | None = None
    verdict_event_id: str | None = None
    violation_type: ViolationType
    violating_points: NonNegative
    multiplier: NonNegative
    deducted_points: NonNegative
    clause: Text


class PrepaymentMade(_Model):
    """Money prepaid to a hospital on a date (seed 004 预付与清算)."""

    pool: Code
    hospital_id: Code
    paid_on: date
    amount: Decimal


class ClearingResult(_Model):
    """One hospital's line of a clearing (RULES.md 5)."""

    hospital_id: Code
    settled_points: Decimal
    deducted_points: Decimal
    net_points: Decimal
    personal_paid: Decimal
    fund_due: Decimal
    prepaid: Decimal
    clearing_amount: Decimal


class HistoryBackfilled(_Model):
    """An operator loaded back-stamped history (EVENTS.md "Transaction time, seals and backfill").

    Written by the ledger in the same journal transaction as the events it covers, one per
    transaction of the load, so an interrupted load is recorded exactly as far as it got.
    """

    run_by: Text
    file_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    events: int = Field(ge=1)
    recorded_from: AwareDatetime
    recorded_to: AwareDatetime
    origin: str | None = None


class ClearingCompleted(_Model):
    """A year-end clearing run, recorded (RULES.md 5, 6). Written by the ledger."""

    pool: Code
    year: int
    known_at: AwareDatetime
    point_value: Decimal
    total_points: Decimal | None = None
    budget: Decimal | None = None
    results: list[ClearingResult]
    log_digest: str | None = Field(default=None, pattern=r"^[0-9]{1,19}:[0-9a-f]{64}$")
    """`position:chain_hash` of the journal prefix the clearing read (README "Trust")."""


# --------------------------------------------------------------------------- envelope

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

SOURCE_PATTERN = r"^(his:[A-Za-z0-9_.\-]+|operator:[^\s:][^\s]*|system)$"


class _Envelope(_Model):
    """The envelope every event travels in (EVENTS.md "Envelope")."""

    event_id: Annotated[str, Field(min_length=1, max_length=200)]
    schema_version: Literal[1] = 1
    recorded_at: AwareDatetime | None = None
    ingested_at: AwareDatetime | None = None
    """Written by the ledger on every accepted event, its own clock (EVENTS.md "Envelope")."""
    source: Annotated[str, Field(pattern=SOURCE_PATTERN)]

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
    cls = type(
        f"{name}Event",
        (_Envelope,),
        {
            "__annotations__": {"event_type": Literal[name], "payload": payload},  # type: ignore[valid-type]
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

EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(LedgerEvent)

# --------------------------------------------------------------------------- parsing

MAX_LINE_BYTES = 1 << 20
"""EVENTS.md "Limits on input": a line over 1 MiB is refused."""


class InvalidEvent(ValueError):
    """An event was refused; `field` names where, `reason` says why (EVENTS.md "Bad input")."""

    def __init__(self, field: str, reason: str, event_id: str | None = None) -> None:
        self.field = field
        self.reason = reason
        self.event_id = event_id
        super().__init__(f"{field}: {reason}" if field else reason)


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    # Drop the union tag pydantic puts first ("CaseSubmitted", "payload", ...).
    if parts and parts[0] in ENVELOPES:
        parts = parts[1:]
    parts = [p for p in parts if not p.endswith("Body") and not p.startswith("function-")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


def parse_event(raw: bytes | str | dict[str, Any]) -> Any:
    """Parse one envelope, raising :class:`InvalidEvent` naming the field at fault."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEvent("", f"not UTF-8 text: {exc}") from None
    if isinstance(raw, str):
        try:
            data = json.loads(raw, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            raise InvalidEvent("", f"malformed JSON: {exc.msg} at column {exc.colno}") from None
    else:
        data = raw
    if not isinstance(data, dict):
        raise InvalidEvent("", "an event must be a JSON object")
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    event_type = data.get("event_type")
    if event_type not in ENVELOPES:
        field = "event_type"
        reason = "missing" if event_type is None else f"unknown event_type {event_type!r}"
        raise InvalidEvent(field, reason, event_id)
    try:
        return ENVELOPES[event_type].model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = _loc(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        # Cross-field validators say "field: reason"; append that field to the location.
        named = re.match(r"^([a-z_][a-z0-9_./]*): (.*)$", msg, re.S)
        if named:
            field = f"{field}.{named.group(1)}" if field else named.group(1)
            msg = named.group(2)
        raise InvalidEvent(field, msg, event_id) from None


def canonical_json(event: Any) -> str:
    """The event's content as canonical JSON: what `event_id` idempotency compares.

    `ingested_at` appears once the ledger stamped it; an event as sent has none."""
    data = event.model_dump(mode="json")
    if data.get("ingested_at", 0) is None:
        del data["ingested_at"]
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def content_hash(event: Any) -> str:
    """SHA-256 of the canonical content (EVENTS.md: same id + same content = duplicate)."""
    return hashlib.sha256(canonical_json(event).encode("utf-8")).hexdigest()


def stamped(event: Any, now: datetime) -> Any:
    """The event with `recorded_at` stamped when the sender left it out (EVENTS.md "Envelope")."""
    if event.recorded_at is not None:
        return event
    return event.model_copy(update={"recorded_at": now})


def ingested(event: Any, now: datetime) -> Any:
    """The event as the ledger records it: `recorded_at` stamped when absent, `ingested_at`
    always `now` (EVENTS.md "Envelope": the ledger's own clock, never the sender's)."""
    return event.model_copy(update={"recorded_at": event.recorded_at or now, "ingested_at": now})
