"""A small pool with round numbers, so every rule test can be worked by hand.

AC_all = 10,000. Groups: A1 (BP 100, AC 10,000), B1 (BP 200, AC 20,000), C1 (BP 400,
AC 40,000), U1 (unstable, BP 50). Grades 3A 1.00, 3B 0.92, 2A 0.85, 2B 0.80, 1 0.75; H2 has
its own 1.05. Thresholds: H = 3 / 2 / 1.5 by BP <= 100 / <= 300 / above; L = 0.4, level 1
0.3. Bilateral 1.5, multi-site 0.5, incentive caps 6‰ / 4‰ (seed 001 values).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from itertools import count
from typing import Any

from ledger.events import parse_event

POOL = "p"
T0 = "2020-01-01T00:00:00+08:00"
_ids = count(1)


def ev(event_type: str, payload: dict[str, Any], *, recorded_at: str = T0, source: str = "operator:test", event_id: str | None = None) -> Any:
    """A parsed envelope."""
    return parse_event(
        {
            "event_id": event_id or f"{event_type}-{next(_ids)}",
            "event_type": event_type,
            "recorded_at": recorded_at,
            "source": source,
            "payload": payload,
        }
    )


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


def hospital(hid: str, grade: str, pool: str = POOL, **kw: Any) -> Any:
    return ev("HospitalRegistered", {"hospital_id": hid, "name": f"医院{hid}", "pool": pool, "grade": grade}, **kw)


def policy(component: str, body: dict[str, Any], *, version: str = "1", effective_from: str = "2020-01-01",
           effective_to: str | None = None, pool: str = POOL, **kw: Any) -> Any:
    return ev(
        "PolicyVersionPublished",
        {"pool": pool, "component": component, "version": version, "effective_from": effective_from,
         "effective_to": effective_to, "body": body},
        **kw,
    )


DRG_TABLE = {
    "overall_average_cost": "10000",
    "groups": [
        {"drg_code": "A1", "base_points": "100", "average_cost": "10000", "stable": True},
        {"drg_code": "B1", "base_points": "200", "average_cost": "20000", "stable": True},
        {"drg_code": "C1", "base_points": "400", "average_cost": "40000", "stable": True},
        {"drg_code": "U1", "base_points": "50", "average_cost": "5000", "stable": False},
    ],
}
COEFFICIENTS = {"grades": {"3A": "1.00", "3B": "0.92", "2A": "0.85", "2B": "0.80", "1": "0.75"}, "hospitals": {"H2": "1.05"}}
CASE_RULES = {
    "high_ratio": [{"max_base_points": "100", "threshold": "3"}, {"max_base_points": "300", "threshold": "2"},
                   {"max_base_points": None, "threshold": "1.5"}],
    "low_ratio": {"default": "0.4", "by_level": {"1": "0.3"}},
    "bilateral_factor": "1.5",
    "multi_site_share": "0.5",
    "incentive_cap_per_mille": {"3": "6", "2": "4", "1": "4"},
}
PENALTY_RULES = {"multipliers": {"bed_blocking": "1", "split_hospitalisation": "2", "cost_shifting": "3",
                                 "insufficient_service": "3", "shirking_severe": "3", "upcoding": "4",
                                 "fraud": "5", "other": "2"}}
CATALOGUE = {"rows": [
    {"seq": 1, "drg_code": "B1", "procedure_codes": ["04.0200x005"], "combined_with_codes": [], "coef_3a": "1.6", "coef_3b": "1.47"},
    {"seq": 37, "drg_code": "A1", "procedure_codes": ["6.9501"], "combined_with_codes": [], "coef_3a": "1.6", "coef_3b": "1.47"},
    {"seq": 48, "drg_code": "C1", "procedure_codes": ["74.0x00", "74.1x00"], "combined_with_codes": ["54.5904"],
     "coef_3a": "1.3", "coef_3b": "1.3"},
]}
CATALOGUE_RECORDED = "2021-05-11T00:00:00+08:00"


def base_policies(*, inside: bool = True, catalogue: bool = True) -> list[Any]:
    out = [
        policy("drg_table", DRG_TABLE),
        policy("coefficients", COEFFICIENTS),
        policy("case_rules", CASE_RULES),
        policy("penalty_rules", PENALTY_RULES),
        policy("clearing_rules", {"personal_paid_in_point_value": inside}),
    ]
    if catalogue:
        out.append(policy("high_tech_catalogue", CATALOGUE, effective_to="2022-05-10", recorded_at=CATALOGUE_RECORDED))
    return out


def hospitals() -> list[Any]:
    return [hospital("H1", "3A"), hospital("H2", "2A"), hospital("H3", "3B"), hospital("H4", "2B"), hospital("H5", "1")]


def case(case_id: str, hid: str, drg: str, cost: str, *, revision: int = 1, discharge: str = "2020-06-15",
         procedures: list[str] | None = None, personal: str = "0", recorded_at: str = "2020-06-20T10:00:00+08:00",
         **extra: Any) -> Any:
    admitted = (date.fromisoformat(discharge) - timedelta(days=5)).isoformat()
    payload = {"case_id": case_id, "hospital_id": hid, "revision": revision, "admission_date": admitted,
               "discharge_date": discharge, "drg_code": drg, "total_cost": cost, "personal_paid": personal,
               "procedure_codes": procedures or [], **extra}
    return ev("CaseSubmitted", payload, recorded_at=recorded_at, source=f"his:{hid}",
              event_id=f"his-{case_id}-r{revision}-{next(_ids)}")


def verdict(case_id: str, outcome: str, *, recorded_at: str = "2020-09-01T10:00:00+08:00", **fields: Any) -> Any:
    return ev("ReviewVerdictRecorded", {"case_id": case_id, "outcome": outcome, "reviewer": "专家组", **fields},
              recorded_at=recorded_at, source="operator:review")


def budget(amount: str, year: int = 2020, **kw: Any) -> Any:
    return ev("BudgetSet", {"pool": POOL, "year": year, "amount": amount}, **kw)


def prepayment(hid: str, amount: str, paid_on: str = "2020-03-31", **kw: Any) -> Any:
    return ev("PrepaymentMade", {"pool": POOL, "hospital_id": hid, "paid_on": paid_on, "amount": amount}, **kw)


def coefficient_change(coefficient: str, *, recorded_at: str = T0, effective_from: str = "2020-01-01",
                       effective_to: str | None = "2020-12-31", **scope: Any) -> Any:
    return ev("CoefficientChanged", {"pool": POOL, "coefficient": coefficient, "effective_from": effective_from,
                                      "effective_to": effective_to, "reason": "年度申报", **scope}, recorded_at=recorded_at)
