"""The state of cases as known at a moment: latest revision, withdrawal, effective verdict.

EVENTS.md "Order of arrival": `recorded_at`, not arrival, decides what was known when; a
verdict, withdrawal or revision that arrives before its case takes effect once the case is
known. Every choice here depends only on the set of events, never on their order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from ledger.events import (
    EventType,
    CaseSubmitted,
    CaseWithdrawn,
    HospitalRegistered,
    ReviewVerdictRecorded,
)


CASE_EVENTS = frozenset({EventType.CASE_SUBMITTED, EventType.CASE_WITHDRAWN, EventType.REVIEW_VERDICT_RECORDED})
"""The events a case's state is folded from (`case_states`); a PenaltyImposed is recomputed
from its verdict (RULES.md 4)."""
CASE_PAYLOADS = (CaseSubmitted, CaseWithdrawn, ReviewVerdictRecorded)
"""The payloads of `CASE_EVENTS`, for `isinstance`."""


def _later(a: Any, b: Any | None) -> bool:
    """True when event a was recorded after b (ties broken by event_id, so order never matters)."""
    return b is None or (a.recorded_at, a.event_id) > (b.recorded_at, b.event_id)


@dataclass(slots=True)
class CaseState:
    """One case as known: its current revision, whether withdrawn, its effective verdict."""

    case_id: str
    current: Any  # the CaseSubmitted envelope in force
    revisions: int = 1
    withdrawal: Any | None = None  # the CaseWithdrawn envelope, if it withdraws `current`
    verdict: Any | None = None  # the ReviewVerdictRecorded envelope in force
    verdicts: int = 0

    @property
    def case(self) -> CaseSubmitted:
        payload: CaseSubmitted = self.current.payload
        return payload

    @property
    def withdrawn(self) -> bool:
        return self.withdrawal is not None


def known(events: Iterable[Any], known_at: datetime) -> list[Any]:
    """The events the ledger had recorded at `known_at` (RULES.md 2, transaction time).

    An event delivered twice counts once (EVENTS.md: `event_id` is the idempotency key).
    """
    unique: dict[str, Any] = {}
    for e in events:
        if e.recorded_at <= known_at:
            unique.setdefault(e.event_id, e)
    return list(unique.values())


def registry(events: Iterable[Any]) -> dict[str, HospitalRegistered]:
    """Each hospital's latest registration (a re-registration changes its name or grade)."""
    latest: dict[str, Any] = {}
    for e in events:
        if isinstance(e.payload, HospitalRegistered):
            hid = e.payload.hospital_id
            if _later(e, latest.get(hid)):
                latest[hid] = e
    return {hid: e.payload for hid, e in latest.items()}


def case_states(events: Iterable[Any]) -> dict[str, CaseState]:
    """Fold case events into case states.

    Revisions: the highest revision number wins (EVENTS.md: "a higher one replaces"); the same
    number twice, the later recorded. Withdrawal: a CaseWithdrawn recorded at or after the
    current revision withdraws it; a revision recorded after the withdrawal resubmits the case.
    A withdrawal naming another hospital than the case's is ignored.
    Verdicts: the one recorded last is in force (RULES.md 4: a later verdict supersedes).
    """
    submissions: dict[str, list[Any]] = {}
    withdrawals: dict[str, list[Any]] = {}
    verdicts: dict[str, list[Any]] = {}
    for e in events:
        p = e.payload
        if isinstance(p, CaseSubmitted):
            submissions.setdefault(p.case_id, []).append(e)
        elif isinstance(p, CaseWithdrawn):
            withdrawals.setdefault(p.case_id, []).append(e)
        elif isinstance(p, ReviewVerdictRecorded):
            verdicts.setdefault(p.case_id, []).append(e)
    states: dict[str, CaseState] = {}
    for case_id, subs in submissions.items():
        current = subs[0] if len(subs) == 1 else max(subs, key=lambda s: (s.payload.revision, s.recorded_at, s.event_id))
        state = CaseState(case_id, current, revisions=len(subs))
        for w in withdrawals.get(case_id, ()):
            same_hospital = w.payload.hospital_id == current.payload.hospital_id
            if same_hospital and w.recorded_at >= current.recorded_at and _later(w, state.withdrawal):
                state.withdrawal = w
        for v in verdicts.get(case_id, ()):
            state.verdicts += 1
            if _later(v, state.verdict):
                state.verdict = v
        states[case_id] = state
    return states
