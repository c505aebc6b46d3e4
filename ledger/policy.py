"""Bitemporal policy: which component version and coefficient change apply to a case.

RULES.md 2: the version of the pool's component whose valid interval contains the case's
discharge date, among versions recorded at or before `known_at`, the one recorded last.
`CoefficientChanged` resolves the same way (RULES.md 3, "In force").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Generic, Iterable, TypeVar

from ledger.catalogue import Catalogue
from ledger.events import (
    CaseRulesBody,
    ClearingRulesBody,
    CoefficientChanged,
    CoefficientsBody,
    Component,
    DrgTableBody,
    Grade,
    HighTechCatalogueBody,
    PenaltyRulesBody,
    PolicyVersionPublished,
)

T = TypeVar("T")


class PolicyMissing(LookupError):
    """No version of a component is in force for a date: the pool's policy has a gap."""

    def __init__(self, pool: str, component: Component, on: date) -> None:
        self.pool, self.component, self.on = pool, component, on
        super().__init__(f"no {component.value} policy of pool {pool} in force on {on.isoformat()}")


@dataclass(frozen=True, slots=True)
class InForce(Generic[T]):
    """A versioned value with its valid interval and when the ledger learned it."""

    value: T
    effective_from: date
    effective_to: date | None
    recorded_at: datetime
    event_id: str
    version: str

    def covers(self, on: date) -> bool:
        return self.effective_from <= on and (self.effective_to is None or on <= self.effective_to)

    def cite(self) -> dict[str, Any]:
        """How explain shows the version used."""
        return {
            "version": self.version,
            "event_id": self.event_id,
            "recorded_at": self.recorded_at.isoformat(),
            "effective_from": self.effective_from.isoformat(),
            "effective_to": self.effective_to.isoformat() if self.effective_to else None,
        }


def latest_covering(versions: Iterable[InForce[T]], on: date) -> InForce[T] | None:
    """Among versions valid on `on`, the one recorded last (ties: the greater event_id)."""
    best: InForce[T] | None = None
    for v in versions:
        if v.covers(on) and (best is None or (v.recorded_at, v.event_id) > (best.recorded_at, best.event_id)):
            best = v
    return best


@dataclass(slots=True)
class PolicyBook:
    """One pool's policy components and coefficient changes, as known at `known_at`.

    Build it from the pool's events with :meth:`from_events`; it filters by `recorded_at`.
    Resolutions are cached per (component, date), since a year has few distinct dates.
    """

    pool: str
    known_at: datetime
    components: dict[Component, list[InForce[Any]]] = field(default_factory=dict)
    by_hospital_drg: dict[tuple[str, str], list[InForce[Decimal]]] = field(default_factory=dict)
    by_drg_grade: dict[tuple[str, Grade], list[InForce[Decimal]]] = field(default_factory=dict)
    by_hospital: dict[str, list[InForce[Decimal]]] = field(default_factory=dict)
    _cache: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    @classmethod
    def from_events(cls, pool: str, events: Iterable[Any], known_at: datetime) -> PolicyBook:
        book = cls(pool, known_at)
        for e in events:
            if e.recorded_at > known_at:
                continue
            p = e.payload
            if isinstance(p, PolicyVersionPublished) and p.pool == pool:
                body: Any = Catalogue(p.body) if isinstance(p.body, HighTechCatalogueBody) else p.body
                book.components.setdefault(p.component, []).append(
                    InForce(body, p.effective_from, p.effective_to, e.recorded_at, e.event_id, p.version)
                )
            elif isinstance(p, CoefficientChanged) and p.pool == pool:
                v = InForce(p.coefficient, p.effective_from, p.effective_to, e.recorded_at, e.event_id, p.reason)
                if p.hospital_id is not None and p.drg_code is not None:
                    book.by_hospital_drg.setdefault((p.hospital_id, p.drg_code), []).append(v)
                elif p.drg_code is not None and p.grade is not None:
                    book.by_drg_grade.setdefault((p.drg_code, p.grade), []).append(v)
                elif p.hospital_id is not None:
                    book.by_hospital.setdefault(p.hospital_id, []).append(v)
        return book

    def version(self, component: Component, on: date) -> InForce[Any] | None:
        """The component version in force on `on` (RULES.md 2), or None."""
        key = (component, on)
        try:
            return self._cache[key]  # type: ignore[no-any-return]
        except KeyError:
            found = self._cache[key] = latest_covering(self.components.get(component, ()), on)
            return found

    def require(self, component: Component, on: date) -> InForce[Any]:
        found = self.version(component, on)
        if found is None:
            raise PolicyMissing(self.pool, component, on)
        return found

    def drg_table(self, on: date) -> InForce[DrgTableBody]:
        return self.require(Component.DRG_TABLE, on)

    def coefficients(self, on: date) -> InForce[CoefficientsBody]:
        return self.require(Component.COEFFICIENTS, on)

    def case_rules(self, on: date) -> InForce[CaseRulesBody]:
        return self.require(Component.CASE_RULES, on)

    def penalty_rules(self, on: date) -> InForce[PenaltyRulesBody]:
        return self.require(Component.PENALTY_RULES, on)

    def clearing_rules(self, on: date) -> InForce[ClearingRulesBody]:
        return self.require(Component.CLEARING_RULES, on)

    def catalogue(self, on: date) -> InForce[Catalogue] | None:
        """The high-tech catalogue in force, if any (seed 000: none before 2020-01-01)."""
        return self.version(Component.HIGH_TECH_CATALOGUE, on)

    def coefficient_change(self, scope: str, key: Any, on: date) -> InForce[Decimal] | None:
        """The CoefficientChanged in force for a scope (`hospital_drg`, `drg_grade`, `hospital`)."""
        # Called three times per case: pick the table without building a dict each time.
        if scope == "hospital_drg":
            table = self.by_hospital_drg
        elif scope == "drg_grade":
            table = self.by_drg_grade
        elif scope == "hospital":
            table = self.by_hospital
        else:
            raise KeyError(scope)
        versions = table.get(key)
        return latest_covering(versions, on) if versions else None
