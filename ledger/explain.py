"""A case's points step by step, for auditors (EVENTS.md `explain`).

`explain(events, case_id, known_at)` settles the case's pool-year and describes the case;
`describe(py, case_id)` describes a case of a pool-year already settled, so a diff of two
clearings (ledger/diff.py) words each changed case exactly as `explain` does.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterable

from ledger.cases import CaseState, case_states, known, registry
from ledger.clearing import settle
from ledger.events import CaseSubmitted
from ledger.points import CaseType, round_points

if TYPE_CHECKING:
    from ledger.clearing import PoolYear


class UnknownCase(LookupError):
    """No submission of the case is known at that moment."""


COEFFICIENT_CLAUSES = {
    "coefficient_change:hospital+drg": "RULES.md 3 coefficient step 1 (CoefficientChanged for hospital and DRG code)",
    "high_tech_catalogue": "seed 000 三(三); RULES.md 3 coefficient step 2 (high-tech catalogue row matched)",
    "coefficient_change:drg+grade": "RULES.md 3 coefficient step 3 (CoefficientChanged for the DRG code and grade)",
    "coefficient_change:hospital": "seed 000 四; RULES.md 3 coefficient step 4 (CoefficientChanged for the hospital)",
    "coefficients": "RULES.md 3 coefficient step 5 (the coefficients component)",
}
"""Which clause gives a coefficient, by its source (`ledger.points.coefficient_for`)."""

CASE_TYPE_CLAUSES = {
    CaseType.SPECIAL_REVIEW: "seed 001 二(二); RULES.md 3 case type 1 (special review approved: paid by cost)",
    CaseType.INCENTIVE: "seed 001 二(二); RULES.md 3 case type 1 (incentive approved within the cap: paid by cost)",
    CaseType.UNSTABLE: "RULES.md 3 case type 2 (unstable or ungrouped: paid by cost)",
    CaseType.HIGH_RATIO: "RULES.md 3 case type 3 (high ratio r > H)",
    CaseType.LOW_RATIO: "seed 001 三; RULES.md 3 case type 4 (low ratio r < L)",
    CaseType.NORMAL: "RULES.md 3 case type 5 (normal: BP x c)",
}


def coefficient_clause(source: str) -> str:
    """The clause behind a coefficient source such as `high_tech_catalogue:3A` or `coefficients:grade 2A`."""
    return COEFFICIENT_CLAUSES.get(source) or COEFFICIENT_CLAUSES[source.split(":", 1)[0]]


def explain(events: Iterable[Any], case_id: str, known_at: datetime) -> dict[str, Any]:
    """Policy versions used, case type, coefficient and why, verdicts and penalty of one case."""
    events = list(events)
    state = case_states(e for e in known(events, known_at) if getattr(e.payload, "case_id", None) == case_id).get(case_id)
    if state is None:
        raise UnknownCase(f"case {case_id} is not known at {known_at.isoformat()}")
    if state.withdrawn:
        return _withdrawn(state, known_at)
    hospital = registry(known(events, known_at)).get(state.case.hospital_id)
    if hospital is None:
        raise UnknownCase(f"hospital {state.case.hospital_id} of case {case_id} is not registered")
    py = settle(events, hospital.pool, state.case.discharge_date.year, known_at)
    return describe(py, case_id)


def _header(state: CaseState, known_at: datetime) -> dict[str, Any]:
    case: CaseSubmitted = state.case
    return {
        "case_id": state.case_id,
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


def _withdrawn(state: CaseState, known_at: datetime) -> dict[str, Any]:
    out = _header(state, known_at)
    out["withdrawal"] = {"event_id": state.withdrawal.event_id, "reason": state.withdrawal.payload.reason}
    out["points"] = "0"
    return out


def describe(py: PoolYear, case_id: str) -> dict[str, Any]:
    """`explain` of a case of the settled pool-year `py` (withdrawn cases included)."""
    if case_id in py.withdrawn:
        return _withdrawn(py.withdrawn[case_id], py.known_at)
    sc = py.cases.get(case_id)
    if sc is None:
        raise UnknownCase(f"case {case_id} is not a case of {py.pool} {py.year} known at {py.known_at.isoformat()}")
    state = sc.state
    case = state.case
    out = _header(state, py.known_at)
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
            "pool": py.pool,
            "grade": py.hospitals[case.hospital_id].grade.value,
            "policy_versions": versions,
            "case_type": sc.priced.case_type.value,
            "case_type_clause": CASE_TYPE_CLAUSES[sc.priced.case_type],
            "formula": sc.priced.formula,
            "points_before_verdict": str(sc.priced.points),
            "notes": list(sc.priced.notes),
        }
    )
    if sc.priced.ratio is not None:
        out["ratio"] = str(round_points(sc.priced.ratio))
    if sc.priced.coefficient is not None:
        c = sc.priced.coefficient
        out["coefficient"] = {"value": str(c.value), "why": c.source, "from": c.cite,
                              "clause": coefficient_clause(c.source)}
    if sc.incentive_over_cap:
        cap = py.incentive_caps.get(case.hospital_id)
        out["notes"].append(
            f"incentive approval beyond the hospital's yearly cap of {cap}: paid as ordinary (seed 001 二(二))" if cap is not None
            else "incentive approval paid as ordinary: no incentive cap is in force for the hospital's grade (seed 001 二(二))")
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
