"""Response shapes of the HTTP API, for the OpenAPI document (the JSON the CLI's `--json` prints).

Decimals are strings (README "Readings" 8); instants are ISO 8601 with their zone.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Decimal_ = str  # a decimal written as a string, e.g. "12345.60"


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Core(BaseModel):
    """A figure the core computes (`as_json`): more members may come (e.g. the basis it was read from)."""

    model_config = ConfigDict(extra="allow")


class BasisOut(_Out):
    """What an answer rests on: journal position read, events read, latest ingested_at among them."""

    journal_position: int
    events_read: int
    latest_ingested_at: str | None


class HospitalLineOut(_Core):
    hospital_id: str
    settled_points: Decimal_
    deducted_points: Decimal_
    net_points: Decimal_
    personal_paid: Decimal_
    fund_due: Decimal_
    prepaid: Decimal_
    clearing_amount: Decimal_


class ClearingOut(_Core):
    """RULES.md 5, as `drg-ledger clear --json` prints it, plus whether it was recorded."""

    pool: str
    year: int
    known_at: str
    point_value: Decimal_
    total_points: Decimal_
    budget: Decimal_
    hospitals: list[HospitalLineOut]
    basis: BasisOut | None = None
    recorded: bool = False
    recorded_event_id: str | None = Field(None, description="the ClearingCompleted's id (POST: derived from content)")
    recorded_now: bool | None = Field(None, description="POST: false when the same clearing was recorded before")


class BalanceOut(_Core):
    """RULES.md 6, as `drg-ledger balance --json` prints it."""

    hospital_id: str
    pool: str
    as_of: str
    known_at: str
    point_value: Decimal_
    point_value_kind: Literal["final", "provisional"]
    settled_points: Decimal_
    deducted_points: Decimal_
    net_points: Decimal_
    personal_paid: Decimal_
    fund_due: Decimal_
    prepaid: Decimal_
    clearing_amount: Decimal_
    basis: BasisOut | None = None


class MonthEndOut(_Out):
    as_of: str
    balance: BalanceOut | None
    error: str | None = Field(description="why this month end cannot be computed (no budget, no points yet...)")


class BalanceSeriesOut(_Out):
    hospital_id: str
    pool: str
    year: int
    known_at: str
    months: list[MonthEndOut]


class ExplanationOut(BaseModel):
    """`drg-ledger explain --json`: the case's points step by step (more members than these)."""

    model_config = ConfigDict(extra="allow")

    case_id: str
    known_at: str
    hospital_id: str
    revision: int
    withdrawn: bool


class CaseRowOut(_Out):
    case_id: str
    discharge_date: str
    drg_code: str
    case_type: str
    coefficient: Decimal_ | None
    coefficient_why: str | None
    points_before_verdict: Decimal_
    settled_points: Decimal_
    deducted_points: Decimal_
    net_points: Decimal_


class CasesOut(_Out):
    hospital_id: str
    pool: str
    year: int
    known_at: str
    total: int
    withdrawn: int
    offset: int
    limit: int
    cases: list[CaseRowOut]


class TotalsRowOut(_Out):
    """A row of `drg-ledger totals --json`: running totals as the stream worker last computed them."""

    pool: str
    year: int
    hospital_id: str
    cases: int
    settled_points: Decimal_
    deducted_points: Decimal_
    net_points: Decimal_
    personal_paid: Decimal_
    position: int
    known_at: str
    computed_at: str
    error: str | None


class DeadLetterOut(_Out):
    id: int
    received_at: str
    origin: str
    event_id: str | None
    field: str
    reason: str
    raw: str = Field(description="the bytes kept, as text: UTF-8 where valid, \\xNN and escaped controls elsewhere")
    raw_base64: str = Field(description="the bytes kept, exactly, base64 (a line over 1 MiB keeps its first 1 MiB)")
    raw_length: int = Field(description="the length of the line as received")
    raw_sha256: str


class PolicyVersionOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    component: str
    version: str
    event_id: str
    recorded_at: str
    effective_from: str
    effective_to: str | None
    body: dict[str, Any] | None = None


class CoefficientChangeOut(_Out):
    scope: Literal["hospital_drg", "drg_grade", "hospital"]
    key: list[str]
    coefficient: Decimal_
    reason: str
    event_id: str
    recorded_at: str
    effective_from: str
    effective_to: str | None


class PoliciesOut(_Out):
    pool: str
    on: str
    known_at: str
    versions: list[PolicyVersionOut]
    missing: list[str] = Field(description="components with no version in force on that date")
    coefficient_changes: list[CoefficientChangeOut]


class MomentOut(_Out):
    at: str = Field(description="recorded_at of the events: ask with known_at >= this to see them")
    events: list[dict[str, Any]]


class MomentsOut(_Out):
    pool: str
    year: int
    moments: list[MomentOut]


class HospitalOut(_Out):
    hospital_id: str
    name: str
    grade: str
    pool: str


class PoolOut(_Out):
    pool: str
    hospitals: int
    years: list[int]


class EventFate(_Out):
    index: int = Field(description="position in the request: 0 for a single envelope")
    event_id: str | None
    fate: Literal["accepted", "duplicate", "rejected"]
    field: str | None = None
    reason: str | None = None


class IngestOut(_Out):
    """What POST /events did with each event (`drg-ledger ingest --json`, per event)."""

    accepted: int
    duplicates: int
    rejected: int
    events: list[EventFate]


class HealthOut(_Out):
    status: Literal["ok"]
    database: str
    position: int = Field(description="journal notification id the index has applied")


class WhoAmIOut(_Out):
    name: str
    role: str
    hospital_id: str | None
