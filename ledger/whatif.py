"""A what-if draft: operator events applied as if recorded at a moment, never recorded.

Before a bureau publishes a policy it asks what the draft would have done (征求意见, as
seed 001 was published for comment). A draft holds operator events only — policy versions,
coefficient changes, a budget, verdicts (EVENTS.md "Payloads") — validated like `ingest`
(projections/whatif.py), then stamped with `recorded_at = known_at`: RULES.md 2 picks,
among versions valid on a date, the one recorded last, so a draft version wins over every
version recorded before `known_at` (one recorded at exactly `known_at` ties, and the greater
`event_id` wins, as for recorded events). The stamped events are settled with the ledger's
own (`ledger.clearing.settle`): there is no second copy of any rule here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger.events import EventType, InvalidEvent

DRAFT_EVENT_TYPES = (EventType.POLICY_VERSION_PUBLISHED, EventType.COEFFICIENT_CHANGED, EventType.BUDGET_SET, EventType.REVIEW_VERDICT_RECORDED)
"""What a draft may hold: the operator's decisions, not facts about cases or money paid."""


def draft_refusal(event: Any, pool: str | None = None) -> InvalidEvent | None:
    """Why `event` cannot be part of a draft (of `pool`, when given), or None.

    Cases, withdrawals, registrations and prepayments are facts, not drafts; a pool-level
    event of another pool could change nothing in this what-if (RULES.md 1: pools never mix).
    """
    if event.event_type not in DRAFT_EVENT_TYPES:
        return InvalidEvent(
            "event_type",
            f"{event.event_type} cannot be drafted: a what-if draft holds {', '.join(DRAFT_EVENT_TYPES)}",
            event.event_id,
        )
    event_pool = getattr(event.payload, "pool", None)
    if pool is not None and event_pool is not None and event_pool != pool:
        return InvalidEvent("payload.pool", f"the draft is for pool {pool!r}, not {event_pool!r}", event.event_id)
    return None


def sha256_of(content: bytes) -> str:
    """The draft's digest: SHA-256 of its bytes exactly as given (the file, or an HTTP body)."""
    return hashlib.sha256(content).hexdigest()


@dataclass(frozen=True, slots=True)
class Draft:
    """A validated draft: its events stamped `recorded_at = known_at`, its name and digest."""

    name: str
    sha256: str
    known_at: datetime
    events: tuple[Any, ...]

    def __post_init__(self) -> None:
        assert all(e.recorded_at == self.known_at for e in self.events), "draft events are stamped with known_at"

    @property
    def event_ids(self) -> list[str]:
        return [e.event_id for e in self.events]

    def marker(self) -> dict[str, Any]:
        """How every what-if result says what it is (table title and `--json`)."""
        return {
            "draft": self.name,
            "sha256": self.sha256,
            "known_at": self.known_at.isoformat(),
            "event_ids": self.event_ids,
            "recorded": False,
        }


def with_draft(events: Sequence[Any], draft: Draft) -> list[Any]:
    """The ledger's events plus the draft's: what `settle` folds for the what-if."""
    return [*events, *draft.events]


@dataclass(frozen=True, slots=True)
class WhatIf:
    """A clearing, balance or explanation computed with a draft; it has no `completed()`:
    a what-if is never recorded as a `ClearingCompleted`."""

    draft: Draft
    result: Any  # Clearing, Balance, or an explain dict

    def as_json(self) -> dict[str, Any]:
        data = self.result if isinstance(self.result, dict) else self.result.as_json()
        return {"what_if": self.draft.marker(), **data}
