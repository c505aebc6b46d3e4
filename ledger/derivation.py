"""`PenaltyImposed` events the ledger derives from violation verdicts (RULES.md 4).

Each violation verdict yields one penalty, id `penalty:<verdict event_id>`, source `system`,
computed with what the ledger knew when both the verdict and its case were known: at the
verdict's `recorded_at`, or at the case's first `recorded_at` when the verdict came first
(EVENTS.md "Order of arrival": it takes effect once the case is known). The penalty is the
audit record of that moment; clearing and balances recompute penalties from the verdict as
known at their own `known_at` (README, "Readings"), so a later revision or back-dated policy
is reflected there without rewriting history here.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import datetime
from typing import Any, Iterable

from ledger.cases import known, registry
from ledger.events import (
    ENVELOPES,
    CaseSubmitted,
    CoefficientChanged,
    EventType,
    HospitalRegistered,
    Outcome,
    PenaltyImposed,
    PolicyVersionPublished,
    ReviewVerdictRecorded,
)
from ledger.penalties import deduction
from ledger.points import case_points
from ledger.policy import PolicyBook, PolicyMissing


def penalty_event_id(verdict_event_id: str) -> str:
    return f"penalty:{verdict_event_id}"


def penalty_events(events: Iterable[Any]) -> list[Any]:
    """The PenaltyImposed envelopes due for the violation verdicts among `events`.

    `events` must hold each verdict's case submissions, the hospital's registration and the
    pool's policy events. Verdicts whose case is unknown, or whose policy has a gap, yield
    nothing yet (they will when the missing events arrive).
    """
    submissions: dict[str, list[Any]] = {}
    verdicts: list[Any] = []
    registrations: dict[str, list[Any]] = {}  # by hospital: a verdict folds only its case's hospital's
    policies: dict[str, list[Any]] = {}
    for e in events:
        p = e.payload
        if isinstance(p, CaseSubmitted):
            submissions.setdefault(p.case_id, []).append(e)
        elif isinstance(p, ReviewVerdictRecorded) and p.outcome is Outcome.VIOLATION:
            verdicts.append(e)
        elif isinstance(p, HospitalRegistered):
            registrations.setdefault(p.hospital_id, []).append(e)
        elif isinstance(p, (PolicyVersionPublished, CoefficientChanged)):
            policies.setdefault(p.pool, []).append(e)
    for versions in policies.values():
        versions.sort(key=lambda e: e.recorded_at)
    # One policy book per pool and number of policy events known: verdicts are many, the
    # moments at which the policy changed are few.
    books: dict[tuple[str, int], PolicyBook] = {}
    out = []
    for v in verdicts:
        verdict = v.payload
        subs = submissions.get(verdict.case_id)
        if not subs:
            continue
        at: datetime = max(v.recorded_at, min(s.recorded_at for s in subs))
        current = max(
            (s for s in subs if s.recorded_at <= at), key=lambda s: (s.payload.revision, s.recorded_at, s.event_id)
        )
        case: CaseSubmitted = current.payload
        hospital = registry(known(registrations.get(case.hospital_id, []), at)).get(case.hospital_id)
        if hospital is None:
            continue
        versions = policies.get(hospital.pool, [])
        n = bisect_right(versions, at, key=lambda e: e.recorded_at)
        book = books.get((hospital.pool, n))
        if book is None:
            book = books[(hospital.pool, n)] = PolicyBook.from_events(hospital.pool, versions[:n], at)
        try:
            priced = case_points(case, hospital.hospital_id, hospital.grade, book)
            penalty = deduction(priced.points, verdict, book.penalty_rules(case.discharge_date).value)
        except PolicyMissing:
            continue
        payload = PenaltyImposed(
            case_id=case.case_id,
            hospital_id=case.hospital_id,
            verdict_event_id=v.event_id,
            violation_type=verdict.violation_type,  # type: ignore[arg-type]
            violating_points=penalty.violating_points,
            multiplier=penalty.multiplier,
            deducted_points=penalty.deducted,
            clause=penalty.clause,
        )
        out.append(
            ENVELOPES[EventType.PENALTY_IMPOSED](
                event_id=penalty_event_id(v.event_id),
                event_type=EventType.PENALTY_IMPOSED,
                recorded_at=at,
                source="system",
                payload=payload,
            )
        )
    return out
