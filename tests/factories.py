"""Hand-written event envelopes as plain dicts, the way they travel on the wire (EVENTS.md).

Each factory returns one envelope dict with sensible defaults; every field can be overridden
by keyword. `recorded_at=None` leaves `recorded_at` out, as an HIS may (the ledger stamps it).
Ids are derived from the content (`his-H001-C1-r1`), so building the same event twice gives
the same `event_id`. Turn envelopes into inbound lines with `lines(...)`, or into parsed
models with `ledger.events.parse_event`.

    store.ingest(lines(hospital("H001"), case("C1", hospital_id="H001")), backfill=True, origin="test")
"""

from __future__ import annotations

import json
from typing import Any

POOL = "panzhihua"
OPERATOR = "operator:panzhihua-mib"
T0 = "2020-01-01T08:00:00+08:00"
"""Default transaction time of operator events: before any case."""

_DRG_TABLE = {
    "overall_average_cost": "9500.00",
    "groups": [
        {"drg_code": "BJ11", "base_points": "225.50", "average_cost": "21422.50", "stable": True},
        {"drg_code": "GB21", "base_points": "100", "average_cost": "9500.00", "stable": True},
    ],
}
DEFAULT_BODIES: dict[str, dict[str, Any]] = {
    "drg_table": _DRG_TABLE,
    "coefficients": {"grades": {"3A": "1.00", "3B": "0.92", "2A": "0.85", "2B": "0.80", "1": "0.75"}, "hospitals": {}},
    "high_tech_catalogue": {
        "rows": [{"drg_code": "BJ11", "procedure_codes": ["04.0200x005"], "combined_with_codes": [],
                  "coef_3a": "1.6", "coef_3b": "1.47"}]
    },
    "case_rules": {
        "high_ratio": [{"max_base_points": "100", "threshold": "3"}, {"max_base_points": "300", "threshold": "2"},
                       {"max_base_points": None, "threshold": "1.5"}],
        "low_ratio": {"default": "0.4", "by_level": {"1": "0.3"}},
        "bilateral_factor": "1.5", "multi_site_share": "0.5",
        "incentive_cap_per_mille": {"3": "6", "2": "4", "1": "4"},
    },
    "penalty_rules": {"multipliers": {"bed_blocking": "1", "split_hospitalisation": "2", "cost_shifting": "3",
                                      "insufficient_service": "3", "shirking_severe": "3", "upcoding": "4",
                                      "fraud": "5", "other": "2"}},
    "clearing_rules": {"personal_paid_in_point_value": True},
}
"""A valid body per policy component (EVENTS.md "Policy component bodies")."""


def envelope(
    event_type: str,
    payload: dict[str, Any],
    *,
    event_id: str,
    source: str = OPERATOR,
    recorded_at: str | None = T0,
    **extra: Any,
) -> dict[str, Any]:
    """An envelope of any type (EVENTS.md "Envelope"); `extra` adds or overrides envelope fields."""
    env: dict[str, Any] = {"event_id": event_id, "event_type": event_type, "schema_version": 1,
                           "source": source, "payload": payload}
    if recorded_at is not None:
        env["recorded_at"] = recorded_at
    env.update(extra)
    return env


def hospital(
    hospital_id: str = "H001", *, pool: str = POOL, grade: str = "3A", name: str | None = None,
    event_id: str | None = None, recorded_at: str | None = T0, source: str = OPERATOR,
) -> dict[str, Any]:
    """HospitalRegistered: `hospital_id` joins `pool` with `grade`."""
    return envelope(
        "HospitalRegistered",
        {"hospital_id": hospital_id, "name": name or f"Hospital {hospital_id}", "pool": pool, "grade": grade},
        event_id=event_id or f"reg-{pool}-{hospital_id}", recorded_at=recorded_at, source=source,
    )


def case(
    case_id: str = "C1", *, hospital_id: str = "H001", revision: int = 1, discharge_date: str = "2020-03-01",
    admission_date: str | None = None, drg_code: str = "BJ11", total_cost: str | int = "21422.50",
    personal_paid: str | None = None, procedure_codes: list[str] | None = None, event_id: str | None = None,
    recorded_at: str | None = "default", source: str | None = None, **payload: Any,
) -> dict[str, Any]:
    """CaseSubmitted from the hospital's HIS; `payload` adds optional fields (bilateral, ...).

    `recorded_at` defaults to the evening of the discharge date; None leaves it out.
    """
    body: dict[str, Any] = {
        "case_id": case_id, "hospital_id": hospital_id, "revision": revision,
        "admission_date": admission_date or discharge_date, "discharge_date": discharge_date,
        "drg_code": drg_code, "total_cost": total_cost, "procedure_codes": procedure_codes or [],
    }
    if personal_paid is not None:
        body["personal_paid"] = personal_paid
    body.update(payload)
    return envelope(
        "CaseSubmitted", body,
        event_id=event_id or f"his-{hospital_id}-{case_id}-r{revision}",
        recorded_at=f"{discharge_date}T18:00:00+08:00" if recorded_at == "default" else recorded_at,
        source=source or f"his:{hospital_id}",
    )


def withdrawal(
    case_id: str = "C1", *, hospital_id: str = "H001", reason: str = "entered in error",
    event_id: str | None = None, recorded_at: str | None = "2020-06-01T09:00:00+08:00", source: str | None = None,
) -> dict[str, Any]:
    """CaseWithdrawn by the hospital's HIS."""
    return envelope(
        "CaseWithdrawn", {"case_id": case_id, "hospital_id": hospital_id, "reason": reason},
        event_id=event_id or f"his-{hospital_id}-{case_id}-withdrawn", recorded_at=recorded_at,
        source=source or f"his:{hospital_id}",
    )


def verdict(
    case_id: str = "C1", *, outcome: str = "upheld", reviewer: str = "reviewer-1", event_id: str | None = None,
    recorded_at: str | None = "2020-09-01T10:00:00+08:00", source: str = OPERATOR, **fields: Any,
) -> dict[str, Any]:
    """ReviewVerdictRecorded; `fields` adds violation_type, violating_points, multiplier, ..."""
    return envelope(
        "ReviewVerdictRecorded", {"case_id": case_id, "outcome": outcome, "reviewer": reviewer, **fields},
        event_id=event_id or f"verdict-{case_id}-{outcome}", recorded_at=recorded_at, source=source,
    )


def policy(
    component: str = "drg_table", body: dict[str, Any] | None = None, *, pool: str = POOL, version: str = "2020",
    effective_from: str = "2020-01-01", effective_to: str | None = None, event_id: str | None = None,
    recorded_at: str | None = T0, source: str = OPERATOR,
) -> dict[str, Any]:
    """PolicyVersionPublished of one component; the body defaults to `DEFAULT_BODIES[component]`."""
    payload: dict[str, Any] = {"pool": pool, "component": component, "version": version,
                               "effective_from": effective_from,
                               "body": body if body is not None else DEFAULT_BODIES[component]}
    if effective_to is not None:
        payload["effective_to"] = effective_to
    return envelope(
        "PolicyVersionPublished", payload,
        event_id=event_id or f"policy-{pool}-{component}-{version}", recorded_at=recorded_at, source=source,
    )


def budget(
    amount: str = "1000000.00", *, pool: str = POOL, year: int = 2020, event_id: str | None = None,
    recorded_at: str | None = T0, source: str = OPERATOR,
) -> dict[str, Any]:
    """BudgetSet: the pool's fund budget for `year`."""
    return envelope("BudgetSet", {"pool": pool, "year": year, "amount": amount},
                    event_id=event_id or f"budget-{pool}-{year}", recorded_at=recorded_at, source=source)


def prepayment(
    amount: str = "10000.00", *, hospital_id: str = "H001", pool: str = POOL, paid_on: str = "2020-03-31",
    event_id: str | None = None, recorded_at: str | None = "2020-03-31T12:00:00+08:00", source: str = OPERATOR,
) -> dict[str, Any]:
    """PrepaymentMade to a hospital on a date."""
    return envelope(
        "PrepaymentMade", {"pool": pool, "hospital_id": hospital_id, "paid_on": paid_on, "amount": amount},
        event_id=event_id or f"prepay-{hospital_id}-{paid_on}", recorded_at=recorded_at, source=source,
    )


def penalty(
    case_id: str = "C1", *, violation_type: str = "upcoding", violating_points: str = "10",
    multiplier: str = "4", deducted_points: str = "40", clause: str = "seed 003 第十八条",
    event_id: str | None = None, recorded_at: str | None = "2020-09-01T10:00:00+08:00", source: str = "system",
    **fields: Any,
) -> dict[str, Any]:
    """PenaltyImposed, as the ledger writes it (refused when it comes from outside)."""
    return envelope(
        "PenaltyImposed",
        {"case_id": case_id, "violation_type": violation_type, "violating_points": violating_points,
         "multiplier": multiplier, "deducted_points": deducted_points, "clause": clause, **fields},
        event_id=event_id or f"penalty-{case_id}", recorded_at=recorded_at, source=source,
    )


def lines(*envelopes: dict[str, Any]) -> list[bytes]:
    """Envelopes as inbound JSON lines (bytes, no newline), ready for `LedgerStore.ingest`."""
    return [json.dumps(e, ensure_ascii=False).encode("utf-8") for e in envelopes]
