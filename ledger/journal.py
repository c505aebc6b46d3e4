"""The journal: every accepted envelope, once, in the order it arrived (EVENTS.md "Envelope").

Each envelope is one `LedgerEntry` aggregate whose id is `uuid5(NAMESPACE, event_id)` and
whose only event is `LedgerEntry.Recorded` (version 1). The event store's unique
(originator_id, originator_version) then makes `event_id` the idempotency key at database
level: a second write of the same id raises the store's `IntegrityError`
(`eventsourcing.persistence.IntegrityError`), whoever races whom.

Persistence is chosen at runtime from the environment (`journal_env`): the library's own
`eventsourcing.sqlite` / `eventsourcing.postgres` modules, which measured 1.6-2.3x faster than
`eventsourcing_sqlalchemy` (KAFKA-AND-STORES.md) and do not pin `sqlalchemy<2.1`.

The journal is the record; every table next to it is a projection rebuilt from its
notification log (`Journal.read`), which gives the events in recording order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from uuid import UUID, uuid5

from eventsourcing.application import AggregateNotFoundError, Application, Environment, EnvType
from eventsourcing.domain import Aggregate, event

NAMESPACE = UUID("5d0c2f7e-6a53-4f0a-9a51-2d1c8e4b7a10")
"""Namespace of entry ids. Never change it: ids already journalled are derived from it."""


def entry_id(event_id: str) -> UUID:
    """The aggregate id of the entry holding envelope `event_id`."""
    return uuid5(NAMESPACE, event_id)


class LedgerEntry(Aggregate):
    """One accepted envelope, as canonical JSON, with its idempotency hash.

    `content_hash` is the hash of the event as submitted (EVENTS.md "Envelope": same id and
    same content is a duplicate); `envelope` is the event as recorded, `recorded_at` stamped.
    """

    class Recorded(Aggregate.Created):
        """The ledger accepted an envelope."""

        event_id: str
        event_type: str
        envelope: str
        content_hash: str

    @event(Recorded)
    def __init__(self, event_id: str, event_type: str, envelope: str, content_hash: str) -> None:
        self.event_id = event_id
        self.event_type = event_type
        self.envelope = envelope
        self.content_hash = content_hash

    @staticmethod
    def create_id(event_id: str, **_: Any) -> UUID:
        return entry_id(event_id)

    @classmethod
    def recorded(cls, *, event_id: str, event_type: str, envelope: str, content_hash: str) -> LedgerEntry.Recorded:
        """The creation event of a new entry, ready for `Journal.append`."""
        entry = cls(event_id=event_id, event_type=event_type, envelope=envelope, content_hash=content_hash)
        (created,) = entry.collect_events()
        assert isinstance(created, cls.Recorded)
        return created


class Journal(Application[UUID]):
    """The append-only journal of envelopes on the eventsourcing library."""

    name = "Journal"

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        # An explicit env (from a database URL) replaces os.environ, so a stray
        # POSTGRES_SCHEMA or PERSISTENCE_MODULE cannot split the journal from the index.
        if env is None:
            return super().construct_env(name, env)
        return Environment(name, {**type(self).env, **env})

    def append(self, events: Sequence[LedgerEntry.Recorded]) -> list[int]:
        """Records `events` in one transaction; returns their notification ids, in order.

        Raises `eventsourcing.persistence.IntegrityError` and records nothing when any
        `event_id` is already journalled.
        """
        if not events:
            return []
        recordings = self.save(*events)
        return [r.notification.id for r in recordings]

    def read(self, after: int = 0, limit: int = 10_000) -> list[tuple[int, LedgerEntry.Recorded]]:
        """Up to `limit` entries with notification id > `after`, in recording order."""
        notifications = self.recorder.select_notifications(after + 1, limit)
        out: list[tuple[int, LedgerEntry.Recorded]] = []
        for n in notifications:
            recorded = self.mapper.to_domain_event(n)
            assert isinstance(recorded, LedgerEntry.Recorded)
            out.append((n.id, recorded))
        return out

    def replay(self, after: int = 0, page: int = 10_000) -> Iterator[tuple[int, LedgerEntry.Recorded]]:
        """Every entry after notification id `after`, in recording order, read page by page."""
        while True:
            chunk = self.read(after, page)
            yield from chunk
            if len(chunk) < page:
                return
            after = chunk[-1][0]

    def head(self) -> int:
        """The last notification id recorded (0 when the journal is empty)."""
        return self.recorder.max_notification_id() or 0

    def entry(self, event_id: str) -> LedgerEntry | None:
        """The entry holding envelope `event_id`, if journalled."""
        try:
            found = self.repository.get(entry_id(event_id))
        except AggregateNotFoundError:
            return None
        assert isinstance(found, LedgerEntry)
        return found


# --------------------------------------------------------------------------- configuration

_SEARCH_PATH = re.compile(r"-c\s*search_path\s*=\s*([^\s,]+)")


def journal_env(database_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The eventsourcing environment for a database URL.

    `sqlite:///relative.db`, `sqlite:////absolute.db` -> eventsourcing.sqlite (file only);
    `postgresql://`, `postgresql+psycopg://`, `postgres://` -> eventsourcing.postgres. A
    libpq `options=-csearch_path=S` query parameter selects schema S (the index tables
    follow the same search path).
    """
    parts = urlsplit(database_url)
    scheme = parts.scheme.lower()
    env: dict[str, str]
    if scheme == "sqlite":
        path = sqlite_path(database_url)
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path, "SQLITE_LOCK_TIMEOUT": "30"}
    elif scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        query = parse_qs(parts.query)
        host = parts.hostname or (query.get("host") or ["127.0.0.1"])[0]
        dbname = unquote(parts.path.lstrip("/")) or (query.get("dbname") or [""])[0]
        if not dbname:
            raise ValueError(f"database URL names no database: {database_url!r}")
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": host,
            "POSTGRES_PORT": str(parts.port or 5432),
            "POSTGRES_USER": unquote(parts.username or "") or (query.get("user") or [os.environ.get("PGUSER", "postgres")])[0],
            "POSTGRES_PASSWORD": unquote(parts.password or ""),
            # Writes are sequential within one ledger process; two connections suffice.
            "POSTGRES_POOL_SIZE": "1",
            "POSTGRES_MAX_OVERFLOW": "2",
        }
        schema = _SEARCH_PATH.search(" ".join(query.get("options", [])))
        if schema:
            env["POSTGRES_SCHEMA"] = schema.group(1)
    else:
        raise ValueError(f"unsupported database URL {database_url!r}: use sqlite:///FILE or postgresql://...")
    env.update(extra or {})
    return env


def sqlite_path(database_url: str) -> str:
    """The absolute file path of a `sqlite:///FILE` URL (in-memory databases are refused)."""
    path = unquote(urlsplit(database_url).path)
    path = path[1:] if path.startswith("/") else path
    if not path or path == ":memory:" or "mode=memory" in database_url:
        raise ValueError(
            "an in-memory SQLite database cannot be shared by the journal and the index; use a file"
        )
    return os.path.abspath(path)
