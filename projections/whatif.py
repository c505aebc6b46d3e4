"""What-if queries: a draft validated against the store, then cleared, balanced or explained.

`load_draft` screens the draft's lines with the store's own acceptance rules
(`LedgerStore.screen`: the parse, idempotency and pool rules of `ingest`, as a backfill,
since a what-if is usually asked of a past year) plus the draft rule of
`ledger.whatif.draft_refusal`, all lines stamped `recorded_at = known_at`. One refused line
refuses the draft (`DraftRejected`, with every line and field): nothing is applied. Nothing
is ever written, not even a dead letter: the draft is not input to the ledger.

`what_if_clearing`, `what_if_balance` and `what_if_explain` hand the draft's events to the
ordinary queries (`projections.queries`), which settle them with the store's events in the
pure core. Pure inputs and outputs, no printing: the CLI and a service call the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from ledger.events import canonical_json
from ledger.whatif import Draft, WhatIf, draft_refusal, sha256_of
from projections.queries import clear_pool, explain_case, hospital_balance
from projections.store import IngestReport, Rejection

if TYPE_CHECKING:
    from projections.store import LedgerStore


class DraftRejected(ValueError):
    """A draft with refused lines: none of it is applied (`report.rejected` names line and field)."""

    def __init__(self, name: str, report: IngestReport) -> None:
        self.name = name
        self.report = report
        first = report.rejected[0]
        more = f" (and {len(report.rejected) - 1} more)" if len(report.rejected) > 1 else ""
        super().__init__(f"draft {name}: line {first.line}: {first.message}{more}; nothing applied")

    def as_json(self) -> dict[str, Any]:
        return {"draft": self.name, "applied": False, **self.report.to_json()}


def load_draft(
    store: LedgerStore, content: bytes, known_at: datetime, *, name: str = "draft", pool: str | None = None
) -> Draft:
    """The draft in `content` (JSON Lines), validated like `ingest` and stamped at `known_at`.

    Raises `DraftRejected` when any line is refused. Duplicates of recorded events (same id,
    same content) change nothing, as in `ingest`, and are not part of the draft.
    """
    lines = content.splitlines()
    accepted, report = store.screen(lines, recorded_at=known_at, backfill=True)
    events = []
    for line, event in accepted:
        refusal = draft_refusal(event, pool)
        if refusal is None:
            # Screening stamps `ingested_at` as ingest would; a draft event is never ingested.
            events.append(event.model_copy(update={"ingested_at": None}) if hasattr(event, "ingested_at") else event)
        else:
            report.rejected.append(Rejection(line, refusal.event_id, refusal.field, refusal.reason))
    if report.rejected:
        report.rejected.sort(key=lambda r: r.line)
        report.accepted = len(events)
        raise DraftRejected(name, report)
    return Draft(name=name, sha256=sha256_of(content), known_at=known_at, events=tuple(events))


def draft_from_events(
    store: LedgerStore, events: Iterable[Any], known_at: datetime, *, name: str = "draft", pool: str | None = None
) -> Draft:
    """A draft from envelopes built in memory (a service body, a derived policy), through the
    same screening as a file: their canonical JSON lines are the draft's content."""
    content = "".join(canonical_json(e) + "\n" for e in events).encode("utf-8")
    return load_draft(store, content, known_at, name=name, pool=pool)


def what_if_clearing(store: LedgerStore, pool: str, year: int, draft: Draft, *, cold: bool = False) -> WhatIf:
    """The year-end clearing (RULES.md 5) as known at the draft's `known_at`, with the draft."""
    return WhatIf(draft, clear_pool(store, pool, year, draft.known_at, cold=cold, extra_events=draft.events))


def what_if_balance(store: LedgerStore, hospital_id: str, as_of: date, draft: Draft) -> WhatIf:
    """A hospital's balance (RULES.md 6) as known at the draft's `known_at`, with the draft."""
    return WhatIf(draft, hospital_balance(store, hospital_id, as_of, draft.known_at, extra_events=draft.events))


def what_if_explain(store: LedgerStore, case_id: str, draft: Draft) -> WhatIf:
    """A case's points step by step (EVENTS.md `explain`) with the draft."""
    return WhatIf(draft, explain_case(store, case_id, draft.known_at, extra_events=draft.events))
