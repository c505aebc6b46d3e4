"""`drg-ledger publish --resume`: send only the lines of a file whose events never arrived.

After a broker outage (Tansu keeps topics in memory: a restart empties them) a publisher
cannot know which of its messages the worker stored. It asks the store: every line whose
`event_id` is already recorded is skipped (kept as a blank line, so line numbers stay), the
rest are published again. Lines without a readable event_id are sent again too: the ledger
refuses them again, once per origin. Idempotence (`event_id`) makes a resend harmless; this
only saves sending what is known to be there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from projections.store import LedgerStore


def _event_id(line: bytes) -> str | None:
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    value = obj.get("event_id") if isinstance(obj, dict) else None
    return value if isinstance(value, str) else None


def stored_of(path: Path, store: LedgerStore) -> set[str]:
    """The event ids of `path` that the store already holds."""
    with path.open("rb") as fh:
        ids = {eid for line in fh if (eid := _event_id(line.rstrip(b"\r\n"))) is not None}
    return store.stored_event_ids(ids)


def missing_lines(path: Path, stored: set[str]) -> Iterator[bytes]:
    """The file's lines, those whose event is stored replaced by blank lines (not sent)."""
    with path.open("rb") as fh:
        for line in fh:
            data = line.rstrip(b"\r\n")
            yield b"" if _event_id(data) in stored else data
