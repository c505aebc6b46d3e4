"""A case's points step by step, for auditors (EVENTS.md `explain`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

from ledger.cases import case_states, known, registry
from ledger.clearing import settle
from ledger.events import CaseSubmitted
from ledger.points import round_points


class UnknownCase(LookupError):
    """No submission of the case is known at that moment."""


def explain(events: Iterable[Any], case_id: str, known_at: datetime) -> dict[str, Any]:
    """Policy versions used, case type, coefficient and why, verdicts and penalty of one case."""
    events = list(events)
    state = case_states(e for e in known(events, known_at) if getattr(e.payload, "case_id", None) == case_id).get(case_id)
    if state is None:
        raise UnknownCase(f"case {case_id} is not known at {known_at.isoformat()}")
    case: CaseSubmitted = state.case
    out: dict[str, Any] = {
        "case_id": case_id,
        "known_at": known_at.isoformat(),
        "hospital_id": case.hospital_id,
        "revision": case.revision,
        "revisions_known": state.revisions,
        "event_id": state.current.event_id,
        "discharge_date": case.discharge_date.isoformat(),
        "drg_code": case.drg_code,
        "total_cost": str(case.total_cost),
        "personal_paid": str(case.personal_paid),
        "procedure_codes": case.procedure_codes,
        "withdrawn": state.withdrawn,
    }
    if state.withdrawn:
        out["withdrawal"] = {"event_id": state.withdrawal.event_id, "reason": state.withdrawal.payload.reason}
        out["points"] = "0"
        return out
    hospital = registry(known(events, known_at)).get(case.hospital_id)
    if hospital is None:
        raise UnknownCase(f"hospital {case.hospital_id} of case {case_id} is not registered")
    py = settle(events, hospital.pool, case.discharge_date.year, known_at)
    sc = py.cases[case_id]
    on = case.discharge_date
    versions: dict[str, Any] = {}
    for name in ("drg_table", "case_rules", "coefficients", "penalty_rules", "high_tech_catalogue"):
        v = getattr(py.book, name if name != "high_tech_catalogue" else "catalogue")
        try:
            found = v(on)
        except LookupError:
            found = None
        if found is not None:
            versions[name] = found.cite()
    out.update(
        {
            "pool": hospital.pool,
            "grade": py.hospitals[case.hospital_id].grade.value,
            "policy_versions": versions,
            "case_type": sc.priced.case_type.value,
            "formula": sc.priced.formula,
            "points_before_verdict": str(sc.priced.points),
            "notes": list(sc.priced.notes),
        }
    )
    if sc.priced.ratio is not None:
        out["ratio"] = str(round_points(sc.priced.ratio))
    if sc.priced.coefficient is not None:
        c = sc.priced.coefficient
        out["coefficient"] = {"value": str(c.value), "why": c.source, "from": c.cite}
    if sc.incentive_over_cap:
        cap = py.incentive_caps.get(case.hospital_id)
        out["notes"].append(f"incentive approval beyond the hospital's yearly cap of {cap}: paid as ordinary (seed 001 二(二))")
    if state.verdict is not None:
        v = state.verdict
        out["verdict"] = {"event_id": v.event_id, "recorded_at": v.recorded_at.isoformat(), **v.payload.model_dump(mode="json")}
        out["verdicts_known"] = state.verdicts
    if sc.penalty is not None:
        p = sc.penalty
        out["penalty"] = {
            "violating_points": str(p.violating_points),
            "multiplier": str(p.multiplier),
            "deducted_points": str(p.deducted),
            "clause": p.clause,
        }
    out["settled_points"] = str(sc.settled)
    out["deducted_points"] = str(sc.deducted)
    out["net_points"] = str(sc.settled - sc.deducted)
    return out
