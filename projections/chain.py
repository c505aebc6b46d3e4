"""The journal's hash chain, written in the same transaction as each journal entry.

Per entry, in journal order (notification id = `position`), a row of `<events table>_chain`:
`position`, `event_id`, `content_hash` and `chain_hash`, where

- `content_hash` = sha256 of the stored record as the library wrote it: its topic, a newline,
  and its `state` bytes (the envelope as recorded, event_id, submitted hash, timestamp);
- `chain_hash`   = sha256 of the ASCII text `previous chain_hash + content_hash` (hex), the
  previous of the first entry being `GENESIS` (64 zeros).

So `position:chain_hash` of an entry (a *digest*) fixes every entry up to it: recomputing the
chain from the entries themselves and comparing with a digest kept outside the database
proves the prefix unchanged, even when the chain table was rewritten too.

The recorders (here for SQLite, `projections/chain_postgres.py` for PostgreSQL) are the
eventsourcing 9.5.6 ones with the chain rows added inside the library's own insert
transaction: on SQLite after the entries' inserts (the first insert takes the database's
write lock, so the previous hash read after it is the last committed one); on PostgreSQL the
insert itself is replaced by COPY, after the library's `LOCK TABLE ... IN EXCLUSIVE MODE`,
with the chain rows COPYed in the same transaction. The library's table format is kept, so
`Journal.read` reads as before. Both recorders also install triggers that refuse UPDATE and
DELETE (and TRUNCATE on PostgreSQL) on the journal and its chain. On PostgreSQL the table
lock is taken through a SECURITY DEFINER function of the owner, so the application role
needs no UPDATE privilege (PostgreSQL's LOCK TABLE EXCLUSIVE asks for one).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple
from uuid import UUID

from eventsourcing.persistence import Notification, StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteDatastore
from pydantic_core import from_json
from sqlalchemy import text
from sqlalchemy.engine import Engine

from ledger.journal import RECORDED_TOPIC, Journal, LedgerEntry, entry_int

GENESIS = "0" * 64
"""The chain hash before the first entry."""

CHAIN_SUFFIX = "_chain"
SQLITE_CACHE = "PRAGMA cache_size = -131072"
SQLITE_MMAP = "PRAGMA mmap_size = 4294967296"
"""Every SQLite connection of the store keeps 128 MiB of pages (default 2 MiB) and reads the
file through mmap: otherwise a city year's journal and index B-trees are read with ~6
`pread`s an event (a connection's cache is dropped whenever another connection writes)."""
REFUSED = "the journal is append-only (drg-ledger): its rows are never updated or deleted"

Entry = tuple[int, str, str, bytes]
"""A stored journal entry as the checks read it: position, originator id (32 hex digits),
topic, state bytes (`select_entries` of both recorders)."""


def content_hash(topic: str, state: bytes) -> str:
    """sha256 of a stored journal record: its topic, a newline, its state bytes (the journal
    entry's topic hashed once, its hash state copied: no copy of the state bytes)."""
    if topic == RECORDED_TOPIC:
        h = _RECORDED_PREFIX.copy()
    else:
        h = hashlib.sha256(topic.encode("utf-8") + b"\n")
    h.update(state)
    return h.hexdigest()


_RECORDED_PREFIX = hashlib.sha256(RECORDED_TOPIC.encode("utf-8") + b"\n")


def link(previous: str, content: str) -> str:
    """The chain hash of an entry: sha256 of `previous + content` (hex text, ASCII)."""
    return hashlib.sha256((previous + content).encode("ascii")).hexdigest()


def stored_event_id(state: bytes) -> str:
    """The envelope's event_id inside a stored `LedgerEntry.Recorded` state."""
    try:
        value = json.loads(bytes(state)).get("event_id")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


def chain_rows(
    previous: str, ids: Sequence[int], stored: Sequence[StoredEvent], event_ids: Sequence[str] | None = None
) -> list[tuple[int, str, str, str]]:
    """(position, event_id, content_hash, chain_hash) of freshly inserted entries, in order;
    `event_ids`, when the caller knows them (`Journal.append`), saves decoding each state."""
    assert len(ids) == len(stored), (len(ids), len(stored))
    if event_ids is None:
        event_ids = [stored_event_id(s.state) for s in stored]
    rows = []
    for nid, s, eid in zip(ids, stored, event_ids, strict=True):
        h = content_hash(s.topic, s.state)
        previous = link(previous, h)
        rows.append((int(nid), eid, h, previous))
    return rows


class ChainedSQLiteRecorder(SQLiteApplicationRecorder):
    """The library's SQLite application recorder, plus the chain and append-only triggers."""

    def __init__(self, datastore: SQLiteDatastore, events_table_name: str = "stored_events") -> None:
        self.chain_table_name = events_table_name + CHAIN_SUFFIX
        super().__init__(datastore, events_table_name)

    def construct_create_table_statements(self) -> list[str]:
        statements = super().construct_create_table_statements()
        chain = self.chain_table_name
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {chain} (position INTEGER PRIMARY KEY, event_id TEXT NOT NULL, "
            "content_hash TEXT NOT NULL, chain_hash TEXT NOT NULL)"
        )
        for table in (self.events_table_name, chain):
            for op in ("UPDATE", "DELETE"):
                statements.append(
                    f"CREATE TRIGGER IF NOT EXISTS {table}_refuse_{op.lower()} BEFORE {op} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END"
                )
        return statements

    def _insert_events(self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        if not stored_events:
            return []
        # The first insert takes the database's write lock; the rest go in one executemany
        # (the library inserts row by row to read each rowid). Under that lock each new rowid
        # is the previous one + 1, which the max(rowid) read afterwards confirms.
        c.execute(SQLITE_CACHE)
        c.execute(SQLITE_MMAP)
        first, *rest = stored_events
        ids = super()._insert_events(c, [first], **kwargs)
        assert ids is not None
        if rest:
            c.executemany(self.insert_events_statement, [
                (s.originator_id.hex if isinstance(s.originator_id, UUID) else s.originator_id,
                 s.originator_version, s.topic, s.state) for s in rest
            ])
            ids = list(range(ids[0], ids[0] + len(stored_events)))
            c.execute(self.select_max_notification_id_statement)
            last = c.fetchone()[0]
            assert last == ids[-1], (last, ids[-1])
        c.execute(f"SELECT chain_hash FROM {self.chain_table_name} ORDER BY position DESC LIMIT 1")
        row = c.fetchone()
        rows = chain_rows(row[0] if row else GENESIS, ids, stored_events, kwargs.get("event_ids"))
        c.executemany(f"INSERT INTO {self.chain_table_name} VALUES (?,?,?,?)", rows)
        return ids

    def select_entries(self, after: int, limit: int) -> list[Entry]:
        """Up to `limit` entries after position `after`, in order, as plain tuples (`Entry`)."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(SQLITE_CACHE)
            c.execute(SQLITE_MMAP)
            c.execute(f"SELECT rowid, originator_id, topic, state FROM {self.events_table_name} "
                      "WHERE rowid > ? ORDER BY rowid LIMIT ?", (after, limit))
            return [(r[0], r[1], r[2], r[3]) for r in c.fetchall()]

    def select_chain(self, first: int, last: int) -> tuple[str, list[ChainRow]]:
        """The chain hash before position `first` (GENESIS when none) and the chain rows of
        positions `first`..`last`, in order, read in one transaction (`read_chain`, `previous_link`)."""
        chain = self.chain_table_name
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT chain_hash FROM {chain} WHERE position < ? ORDER BY position DESC LIMIT 1", (first,))
            row = c.fetchone()
            c.execute(f"SELECT position, event_id, content_hash, chain_hash FROM {chain} "
                      "WHERE position >= ? AND position <= ? ORDER BY position", (first, last))
            rows = [ChainRow(p, e, h.strip(), ch.strip()) for p, e, h, ch in c.fetchall()]
        return (GENESIS if row is None else row[0].strip()), rows


RECORDER_TOPICS = {
    "eventsourcing.sqlite": f"{__name__}:ChainedSQLiteRecorder",
    "eventsourcing.postgres": "projections.chain_postgres:ChainedPostgresRecorder",
}
"""`APPLICATION_RECORDER_TOPIC` of the journal, by persistence module (the library imports
the module named when it opens the journal: a SQLite store never imports psycopg)."""


# --------------------------------------------------------------------------- reading, checked


class BrokenEntry(Exception):
    """A journal entry does not match the chain written with it: altered, deleted or inserted
    behind the ledger's back. Nothing derived may be built from it."""

    def __init__(self, position: int, event_id: str, what: str) -> None:
        self.position = position
        self.event_id = event_id
        self.what = what
        super().__init__(f"journal position {position} ({event_id or 'unknown event'}): {what}")


class ChainRow(NamedTuple):
    """An entry's row of the chain table (a tuple: a city year's replay builds 300,000)."""

    position: int
    event_id: str
    content_hash: str
    chain_hash: str


def chain_table_name(journal: Journal) -> str:
    name: str = journal.recorder.chain_table_name  # type: ignore[attr-defined]
    return name


def read_chain(engine: Engine, table: str, after: int, last: int | None = None) -> list[ChainRow]:
    """Chain rows with position in (after, last], in order; and the row at `after` first when
    it exists (the previous link)."""
    query = f"SELECT position, event_id, content_hash, chain_hash FROM {table} WHERE position >= :after"
    params: dict[str, int] = {"after": after}
    if last is not None:
        query += " AND position <= :last"
        params["last"] = last
    with engine.connect() as conn:
        rows = conn.execute(text(query + " ORDER BY position"), params).all()
    return [ChainRow(int(p), e, h.strip(), c.strip()) for p, e, h, c in rows]


def previous_link(engine: Engine, table: str, before: int) -> str:
    """The chain hash of the last entry before position `before` (GENESIS when none)."""
    with engine.connect() as conn:
        row = conn.execute(
            text(f"SELECT chain_hash FROM {table} WHERE position < :b ORDER BY position DESC LIMIT 1"), {"b": before}
        ).first()
    return GENESIS if row is None else str(row[0]).strip()


def digest_at(journal: Journal, engine: Engine, position: int) -> str:
    """`position:chain_hash` of the entry at `position`, or of the last entry before it."""
    table = chain_table_name(journal)
    with engine.connect() as conn:
        row = conn.execute(
            text(f"SELECT position, chain_hash FROM {table} WHERE position <= :p ORDER BY position DESC LIMIT 1"),
            {"p": position},
        ).first()
    return f"0:{GENESIS}" if row is None else f"{int(row[0])}:{str(row[1]).strip()}"


def checked_notifications(journal: Journal, engine: Engine, after: int, limit: int) -> list[tuple[Notification, ChainRow]]:
    """Up to `limit` stored entries after position `after`, each checked against the chain
    written with it before anything reads it (`chained`)."""
    notifications = journal.recorder.select_notifications(after + 1, limit)
    if not notifications:
        return []
    table = chain_table_name(journal)
    rows = read_chain(engine, table, after + 1, notifications[-1].id)
    previous = previous_link(engine, table, notifications[0].id)
    entries = [(n.id, n.originator_id, n.topic, n.state) for n in notifications]
    return list(zip(notifications, chained(entries, rows, previous), strict=True))


def checked_entries(journal: Journal, engine: Engine, after: int, limit: int, *, content: bool = True
                    ) -> list[tuple[Entry, ChainRow]]:
    """`checked_notifications` as plain tuples (`select_entries`): up to `limit` entries after
    position `after`, each with its chain row, checked (`chained`)."""
    entries: list[Entry] = journal.recorder.select_entries(after, limit)  # type: ignore[attr-defined]
    if not entries:
        return []
    # the rows from after + 1 (a deleted first entry leaves its row there), the link before the first entry
    previous, rows = journal.recorder.select_chain(after + 1, entries[-1][0])  # type: ignore[attr-defined]
    if rows and rows[0].position < entries[0][0]:
        previous = previous_link(engine, chain_table_name(journal), entries[0][0])
    return list(zip(entries, chained(entries, rows, previous, content=content), strict=True))


def chained(entries: Sequence[tuple[int, Any, str, bytes]], rows: Sequence[ChainRow], previous: str, *,
            content: bool = True) -> list[ChainRow]:
    """The chain row of each entry (position, originator id, topic, state; in position order),
    each entry checked against the chain written with it: its content hash, its link to the
    previous entry (the first's: `previous`), and no entry missing between them. `rows` are
    the chain rows from the first entry's position to the last's. Raises `BrokenEntry` at the
    first that does not match. `content=False` leaves the content hashes to the caller, who
    checks each (`check_content`) before decoding the entry (the cold replay's workers, in
    parallel). Linear: the chain rows are walked once, in position order."""
    out: list[ChainRow] = []
    i = 0
    for position, _, topic, state in entries:
        gone = i  # chain rows before this entry's own: their entries were deleted
        while i < len(rows) and rows[i].position < position:
            i += 1
        if i == len(rows) or rows[i].position != position:
            raise BrokenEntry(position, stored_event_id(state), "entry has no chain row: written behind the ledger's back")
        if gone < i:
            raise BrokenEntry(rows[gone].position, rows[gone].event_id,
                              "entry deleted: its chain row remains, the entry does not")
        row = rows[i]
        i += 1
        if content:
            check_content(position, topic, state, row.content_hash)
        if link(previous, row.content_hash) != row.chain_hash:
            raise BrokenEntry(position, stored_event_id(state), "chain hash does not follow from the previous entry's")
        previous = row.chain_hash
        out.append(row)
    return out


def check_content(position: int, topic: str, state: bytes, chained_hash: str) -> None:
    """The entry's content is the one hashed into the chain when it was recorded."""
    if content_hash(topic, state) != chained_hash:
        raise BrokenEntry(position, stored_event_id(state), "content differs from the hash chained when it was recorded")


def is_entry_of(originator_id: UUID | str, event_id: str) -> bool:
    """`originator_id == entry_id(event_id)` (a UUID, or its 32 hex digits), without building a
    UUID (a third of the cold replay's checks)."""
    value = originator_id.int if isinstance(originator_id, UUID) else int(originator_id, 16)
    return value == entry_int(event_id)


def _check_names(position: int, originator_id: UUID | str, chained_id: str, event_id: str) -> None:
    """The entry names the event its chain row names (`chained_id`), and is that event's entry."""
    if event_id != chained_id or not is_entry_of(originator_id, event_id):
        raise BrokenEntry(position, event_id, f"entry names event {event_id!r}, its chain row {chained_id!r}")


def checked_read(journal: Journal, engine: Engine, after: int, limit: int) -> list[tuple[int, LedgerEntry.Recorded]]:
    """`Journal.read`, each entry checked against the chain written with it before it is
    decoded (`checked_notifications`), and naming the event its chain row names."""
    out: list[tuple[int, LedgerEntry.Recorded]] = []
    for n, row in checked_notifications(journal, engine, after, limit):
        recorded = journal.mapper.to_domain_event(n)
        assert isinstance(recorded, LedgerEntry.Recorded)
        _check_names(n.id, n.originator_id, row.event_id, recorded.event_id)
        out.append((n.id, recorded))
    return out


def plain_records(journal: Journal) -> bool:
    """The journal stores its records as plain JSON (no cipher, no compressor), as ours does."""
    return journal.mapper.cipher is None and journal.mapper.compressor is None


def entry_record(position: int, originator_id: UUID | str, topic: str, state: bytes, chained_id: str,
                 decode: Callable[[bytes], Any] = from_json) -> Any:
    """A checked entry's stored record (`plain_records`), decoded once by `decode` (by default
    as plain JSON, pydantic's parser), not through the library's mapper, which decodes it
    into an object the replay throws away; it must be a journal entry naming the event its
    chain row names."""
    if topic != RECORDED_TOPIC:
        raise BrokenEntry(position, chained_id, f"entry is a {topic}, not a journal entry")
    record = decode(state)
    _check_names(position, originator_id, chained_id, record["event_id"])
    return record


def checked_envelopes(journal: Journal, engine: Engine, after: int, limit: int) -> list[tuple[int, str, str]]:
    """`checked_read` for the cold replay: (position, event_type, envelope JSON) of each
    checked entry (`checked_entries`, `entry_record`)."""
    if not plain_records(journal):  # not ours: the mapper knows how
        return [(nid, r.event_type, r.envelope) for nid, r in checked_read(journal, engine, after, limit)]
    out: list[tuple[int, str, str]] = []
    for entry, row in checked_entries(journal, engine, after, limit):
        record = entry_record(*entry, row.event_id)
        out.append((entry[0], record["event_type"], record["envelope"]))
    return out
