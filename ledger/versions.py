"""A case's settled figures over recorded time: what the ledger held for it, and from when.

Bitemporal (the XTDB model, issue 11): valid time is the discharge date, transaction time is
`recorded_at`. As known at T a case's figures depend on its own events recorded by T, on its
pool's policy versions, coefficient changes and its hospital's registration recorded by T
(RULES.md 2), and — for an incentive approval — on whether it is beyond its hospital's cap at
T (seed 001 二(二)), which depends on the hospital's other cases and which the caller gives.

`case_timeline` lists the moments from `start` at which the figures change, each with the
figures held from then on (None: not a live case of a pool then); `PoolHistory` resolves a
pool's policy book and registry at any moment. Both are folds of `ledger.cases`,
`ledger.policy` and `ledger.clearing.settle_case`: the rules are said once, there.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from ledger.cases import CaseState, case_states, known, registry
from ledger.catalogue import Catalogue
from ledger.clearing import ZERO, approved_entry, settle_case
from ledger.events import Component, EventType, HospitalRegistered, Outcome
from ledger.impact import Impact, impact
from ledger.policy import PolicyBook

POOL_HISTORY_TYPES = (EventType.HOSPITAL_REGISTERED, EventType.POLICY_VERSION_PUBLISHED, EventType.COEFFICIENT_CHANGED)
"""The pool events that can change a case's points (RULES.md 1-3); budgets, prepayments and
clearings move money only, at query time."""


@dataclass(frozen=True, slots=True)
class CaseFigures:
    """A live case's settled figures as the ledger held them (RULES.md 3, 4).

    `deducted` None: no penalty (a clearing's deducted sum is then the exact zero it adds).
    `approved`: the incentive approval in force, (verdict recorded_at, event_id), which orders
    approvals against the cap; `over_cap` the cap's answer used (None: the cap could not be
    computed, `error` says why). `error`: the case cannot be settled as known then
    (`PolicyMissing`): a clearing over it fails with this message, as the cold replay does.
    """

    pool: str
    year: int
    hospital_id: str
    drg_code: str
    discharge_date: date
    settled: Decimal
    deducted: Decimal | None
    personal_paid: Decimal
    approved: tuple[datetime, str] | None = None
    over_cap: bool | None = False
    error: str | None = None


class PoolHistory:
    """One pool's registrations, policy versions and coefficient changes, resolved at any moment."""

    def __init__(self, pool: str, events: Iterable[Any]) -> None:
        self.pool = pool
        self.events = sorted((e for e in events if e.event_type in POOL_HISTORY_TYPES), key=lambda e: e.recorded_at)
        self.moments: list[datetime] = sorted({e.recorded_at for e in self.events})
        # The same moments as microseconds since the epoch: `at` and `after` bisect these
        # (comparing two datetimes of pydantic's zones asks both for their offsets).
        self._instants = [_instant(m) for m in self.moments]
        self.at_moment: dict[datetime, list[tuple[Any, Impact]]] = {}
        for e in self.events:
            self.at_moment.setdefault(e.recorded_at, []).append((e, impact(e)))
        self._resolved: dict[int, tuple[PolicyBook, dict[str, HospitalRegistered]]] = {}
        self.catalogues = [Catalogue(e.payload.body) for e in self.events if _is_catalogue(e)]
        # The history never changes once built (the projector builds a new one when a pool
        # event is added), so its answers per DRG group and per case kind are kept.
        self._may_change: dict[str, bool] = {}
        self._touches: dict[tuple[datetime, str, int, str, str], bool] = {}
        self._last: tuple[datetime, int] | None = None  # the moment last bisected, and where

    def _index(self, moment: datetime) -> int:
        """How many of `moments` are at or before `moment`; the last answer is kept, since a
        recompute asks it of one moment (its start) for every case it reaches."""
        last = self._last
        if last is not None and last[0] is moment:
            return last[1]
        i = bisect_right(self._instants, _instant(moment))
        self._last = (moment, i)
        return i

    def catalogue_may_change(self, drg_code: str) -> bool:
        """Whether any catalogue version of the pool can match a case of `drg_code`: only then
        can a catalogue publication change its coefficient (RULES.md 3 step 2, seed 000 三(三))."""
        found = self._may_change.get(drg_code)
        if found is None:
            found = self._may_change[drg_code] = any(c.may_match(drg_code) for c in self.catalogues)
        return found

    def reaches(self, event: Any, effect: Impact, pool: str, year: int, hospital_id: str, drg_code: str) -> bool:
        """Whether `event` can change a case of `hospital_id` / `drg_code` discharged in `year`."""
        if not effect.touches_case(pool, year, hospital_id, drg_code):
            return False
        return not _is_catalogue(event) or self.catalogue_may_change(drg_code)

    def at(self, moment: datetime) -> tuple[PolicyBook, dict[str, HospitalRegistered]]:
        """The policy book and the pool's registered hospitals as known at `moment`."""
        i = self._index(moment)
        found = self._resolved.get(i)
        if found is None:
            cut = self.moments[i - 1] if i else None
            seen = known(self.events, cut) if cut is not None else []
            hospitals = {h: r for h, r in registry(seen).items() if r.pool == self.pool}
            found = (PolicyBook.from_events(self.pool, seen, cut or datetime.min), hospitals)
            self._resolved[i] = found
        return found

    def after(self, moment: datetime) -> list[datetime]:
        """The moments after `moment` at which something of the pool became known."""
        return self.moments[self._index(moment):]

    def touches(self, moment: datetime, figures: CaseFigures | None) -> bool:
        """Whether an event of the pool recorded at `moment` can change a case now held as
        `figures` (`ledger.impact`, narrowed to its hospital and DRG group); a case not live
        (None) only by a registration, which may be its hospital's first."""
        found = self.at_moment.get(moment, ())
        if figures is None:
            return any(e.event_type == EventType.HOSPITAL_REGISTERED for e, _ in found)
        key = (moment, figures.pool, figures.year, figures.hospital_id, figures.drg_code)
        answer = self._touches.get(key)
        if answer is None:
            answer = self._touches[key] = any(
                self.reaches(e, effect, figures.pool, figures.year, figures.hospital_id, figures.drg_code)
                for e, effect in found)
        return answer


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _instant(moment: datetime) -> int:
    """An aware moment as whole microseconds since the epoch: orders as the moments do."""
    return (moment - _EPOCH) // _MICROSECOND


def _is_catalogue(event: Any) -> bool:
    return event.event_type == EventType.POLICY_VERSION_PUBLISHED and event.payload.component is Component.HIGH_TECH_CATALOGUE


OverCap = Callable[[datetime], "bool | str"]
"""Whether an incentive-approved case is beyond its hospital's cap at a moment (seed 001 二(二)),
or the message of why that cannot be said."""


def not_over_cap(_: datetime) -> bool:
    return False


def figures_at(
    case_events: list[Any], pool: PoolHistory, moment: datetime, over_cap: OverCap = not_over_cap
) -> CaseFigures | None:
    """The case's figures as known at `moment`, or None when it is not then a live case of
    the pool (not yet submitted, withdrawn, or its hospital not yet registered)."""
    return _Pricer(pool, over_cap).figures(_state_at(case_events, moment), moment)


def _state_at(case_events: list[Any], moment: datetime) -> CaseState | None:
    """The case's state as known at `moment` (`ledger.cases`), None before its submission."""
    states = case_states(known(case_events, moment))
    if not states:
        return None
    (state,) = states.values()
    return state


class _Pricer:
    """Prices one case's states at moments of a pool's history, settling again only when
    something `settle_case` reads changed since the last moment: the state, the policy
    book, the hospital's registration or the cap's answer (all immutable once made)."""

    __slots__ = ("pool", "over_cap", "_inputs", "_figures")

    def __init__(self, pool: PoolHistory, over_cap: OverCap) -> None:
        self.pool, self.over_cap = pool, over_cap
        self._inputs: tuple[Any, ...] = ()
        self._figures: CaseFigures | None = None

    def figures(self, state: CaseState | None, moment: datetime) -> CaseFigures | None:
        if state is None or state.withdrawn:
            return None
        book, hospitals = self.pool.at(moment)
        case = state.case
        hospital = hospitals.get(case.hospital_id)
        if hospital is None:
            return None
        approved = _approval(state)
        beyond: bool | str = self.over_cap(moment) if approved is not None else False
        inputs = self._inputs
        if inputs and inputs[0] is state and inputs[1] is book and inputs[2] is hospital and inputs[3] == beyond:
            return self._figures
        found = self._priced(state, book, hospital, approved, beyond)
        self._inputs, self._figures = (state, book, hospital, beyond), found
        return found

    def _priced(
        self, state: CaseState, book: PolicyBook, hospital: HospitalRegistered, approved: tuple[datetime, str] | None,
        beyond: bool | str,
    ) -> CaseFigures:
        case = state.case
        pool, year, hid, drg, discharge, personal = (
            self.pool.pool, case.discharge_date.year, case.hospital_id, case.drg_code, case.discharge_date,
            case.personal_paid)
        if isinstance(beyond, str):
            return CaseFigures(pool, year, hid, drg, discharge, ZERO, None, personal, approved, None, beyond)
        try:
            sc = settle_case(state, hospital, book, beyond)
        except LookupError as exc:  # PolicyMissing: the clearing fails as the replay's does
            return CaseFigures(pool, year, hid, drg, discharge, ZERO, None, personal, approved, beyond, str(exc))
        deducted = sc.deducted if sc.penalty is not None else None
        return CaseFigures(pool, year, hid, drg, discharge, sc.settled, deducted, personal, approved, beyond)


def _approval(state: CaseState) -> tuple[datetime, str] | None:
    v = state.verdict
    if v is None or v.payload.outcome is not Outcome.INCENTIVE_APPROVED:
        return None
    at, event_id, *_ = approved_entry(state)
    return at, event_id


def case_timeline(
    case_events: list[Any],
    pool: PoolHistory,
    start: datetime,
    over_cap: OverCap = not_over_cap,
    flips: Iterable[datetime] = (),
) -> list[tuple[datetime, CaseFigures | None]]:
    """The case's figures from `start` on: `[(moment, figures)]`, the first at `start`, then
    one at each later moment they change. `flips`: moments at which `over_cap` may change.

    Moments looked at: `start`, each later recording of one of the case's events, of a pool
    event whose impact reaches the case as then held, and `flips`; only those can change it.
    The case's state is folded again only at its own events' moments: in between, the events
    known of it are the same.
    """
    own = {e.recorded_at for e in case_events if e.recorded_at > start}
    flip_set = {m for m in flips if m > start}
    after = pool.after(start)
    candidates = sorted(own | flip_set | set(after)) if own or flip_set else after
    pricer = _Pricer(pool, over_cap)
    state = _state_at(case_events, start)
    current = pricer.figures(state, start)
    out: list[tuple[datetime, CaseFigures | None]] = [(start, current)]
    for m in candidates:
        mine = m in own
        if not mine and m not in flip_set and not pool.touches(m, current):
            continue
        if mine:
            state = _state_at(case_events, m)
        new = pricer.figures(state, m)
        if new != current:
            out.append((m, new))
            current = new
    return out
