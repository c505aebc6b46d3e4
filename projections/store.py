"""LedgerStore: the journal, its event index and the dead letters, in one database.

The journal (`ledger.journal`) is the record. The index is a projection of it, one row per
event, which answers the warm-path reads (`load`) in bulk; it remembers the last journal
position it applied and catches up on open and after every append, so a crash between the
journal write and the index write heals itself. Dead letters keep every refused line whole
(EVENTS.md "Bad input").

Not thread-safe: one store per thread (the CLI and the stream agents are sequential).
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias, TypeVar

from eventsourcing.persistence import DatabaseError as JournalDatabaseError
from eventsourcing.persistence import IntegrityError as JournalConflict
from pydantic import BaseModel
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    and_,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, create_engine, make_url
from sqlalchemy.types import TypeEngine

from ledger.events import (
    ENVELOPES,
    LEDGER_WRITTEN,
    InvalidEvent,
    canonical_json,
    parse_event,
    stamped,
)
from ledger.derivation import penalty_events
from ledger.journal import Journal, LedgerEntry

T = TypeVar("T")

Envelope: TypeAlias = Any
"""One of the envelope models of `ledger.events.ENVELOPES` (pydantic, frozen)."""

DATABASE_URL_ENV = "DRG_LEDGER_DATABASE_URL"
DEFAULT_DATABASE_URL = "sqlite:///drg-ledger.db"

POOL_LEVEL = (
    "HospitalRegistered",
    "PolicyVersionPublished",
    "CoefficientChanged",
    "BudgetSet",
    "PrepaymentMade",
    "ClearingCompleted",
)
"""Event types that belong to a pool as a whole (RULES.md 1, 2, 5)."""

CASE_LEVEL = ("CaseSubmitted", "CaseWithdrawn", "ReviewVerdictRecorded", "PenaltyImposed")
"""Event types that name a case; verdicts may arrive first (EVENTS.md "Order of arrival")."""

NEEDS_REGISTERED_HOSPITAL = frozenset({"CaseSubmitted", "CaseWithdrawn"})
_UNBLOCKS_PENALTIES = frozenset({"PolicyVersionPublished", "CoefficientChanged", "HospitalRegistered"})

_INDEX = "ledger_index"
_PAGE = 5_000  # journal entries per index transaction when catching up
_IN_CHUNK = 900  # values per IN (...) lookup; below every driver's parameter limit


# --------------------------------------------------------------------------- tables


class UtcDateTime(TypeDecorator[datetime]):
    """A tz-aware instant stored in UTC: `timestamptz` on PostgreSQL, fixed-width ISO text
    (`YYYY-MM-DDTHH:MM:SS.ffffffZ`, sorts as it compares) on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(27))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"a naive datetime cannot be stored as an instant: {value!r}")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return datetime.fromisoformat(value).astimezone(UTC)
        assert isinstance(value, datetime)
        return value.astimezone(UTC)


_Serial = BigInteger().with_variant(Integer(), "sqlite")  # INTEGER PRIMARY KEY is SQLite's rowid

metadata = MetaData()

index_table = Table(
    _INDEX,
    metadata,
    Column("seq", _Serial, primary_key=True, autoincrement=False, comment="journal notification id"),
    Column("event_id", String(200), nullable=False, unique=True),
    Column("event_type", String(40), nullable=False),
    Column("recorded_at", UtcDateTime(), nullable=False),
    Column("source", Text, nullable=False),
    Column("pool", String(40)),
    Column("hospital_id", String(40)),
    Column("case_id", String(40)),
    Column("year", Integer),
    Column("content_hash", String(64), nullable=False, comment="sha256 of the event as submitted"),
    Column("body", Text, nullable=False, comment="canonical JSON of the event as recorded"),
    Index(f"ix_{_INDEX}_pool_year", "pool", "year"),
    Index(f"ix_{_INDEX}_case_id", "case_id"),
    Index(f"ix_{_INDEX}_hospital_id", "hospital_id"),
    Index(f"ix_{_INDEX}_event_type", "event_type"),
)

tracking_table = Table(
    f"{_INDEX}_tracking",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("notification_id", BigInteger, nullable=False),
)

dead_letters_table = Table(
    "dead_letters",
    metadata,
    Column("id", _Serial, primary_key=True, autoincrement=True),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("origin", Text, nullable=False),
    Column("event_id", Text),
    Column("field", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("raw", LargeBinary, nullable=False),
    # A redelivered refusal (Kafka at-least-once) is recognised by its origin.
    Index("ix_dead_letters_origin", "origin"),
)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Rejection:
    """A refused line: `field` names where, `reason` says why (EVENTS.md "Bad input")."""

    line: int
    event_id: str | None
    field: str
    reason: str

    @property
    def message(self) -> str:
        """The reason naming its field, e.g. `payload.total_cost: Input should be a valid decimal`."""
        return f"{self.field}: {self.reason}" if self.field else self.reason


@dataclass
class IngestReport:
    """What one `ingest` did (EVENTS.md, `drg-ledger ingest`)."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing was rejected (the CLI exits 0 only then)."""
        return not self.rejected

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready report: `{"accepted", "duplicates", "rejected": [{"line", "event_id", "reason"}]}`."""
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [{"line": r.line, "event_id": r.event_id, "reason": r.message} for r in self.rejected],
        }


@dataclass(frozen=True)
class DeadLetter:
    """A refused line kept whole: the raw bytes as received, why, and where from."""

    id: int
    received_at: datetime
    origin: str
    event_id: str | None
    field: str
    reason: str
    raw: bytes


@dataclass
class _Entry:
    """An event on its way into the journal."""

    event: Envelope  # as recorded: recorded_at stamped
    body: str  # canonical_json(event)
    submitted_hash: str  # content_hash of the event as submitted: the idempotency key
    recorded_hash: str  # sha256 of body; equals submitted_hash unless recorded_at was stamped
    recorded: LedgerEntry.Recorded
    line: int = 0
    raw: bytes = b""


class _IndexMoved(Exception):
    """Another writer advanced the index between our read and our write."""


# --------------------------------------------------------------------------- the store


class LedgerStore:
    """The one storage object: append (`ingest`, `append_system_events`) and read (`load`...)."""

    def __init__(self, database_url: str) -> None:
        """Opens (creating tables when missing) the journal and index at `database_url`."""
        self.database_url = database_url
        env = journal_env(database_url)
        self._engine = _engine(database_url)
        self._position = -1  # forces loading the hospital pools on the first sync
        self._pools: dict[str, str] = {}
        try:
            # Our tables first: on a new SQLite file this also switches it to WAL, which the
            # journal's own connections would otherwise race to do.
            with _schema_lock(self._engine):
                _creating(self._create_tables)
                self._journal = _creating(lambda: Journal(env=env))
            self.sync_index()
        except BaseException:
            self.close()
            raise

    def _create_tables(self) -> None:
        metadata.create_all(self._engine)
        with self._engine.begin() as conn:
            t = tracking_table
            if conn.execute(select(t.c.name).where(t.c.name == _INDEX)).first() is None:
                conn.execute(insert(t).values(name=_INDEX, notification_id=0))

    @classmethod
    def open(cls, database_url: str | None = None) -> LedgerStore:
        """Opens the store at `database_url`, else `$DRG_LEDGER_DATABASE_URL`, else
        `sqlite:///drg-ledger.db` in the working directory (EVENTS.md "Commands")."""
        url = database_url or os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL
        return cls(url)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine on the store's database, for projections with their own tables."""
        return self._engine

    @property
    def journal(self) -> Journal:
        """The journal itself (the record every table here is rebuilt from)."""
        return self._journal

    def close(self) -> None:
        if hasattr(self, "_journal"):
            self._journal.close()
        self._engine.dispose()

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------- appending

    def ingest(
        self,
        raws: Iterable[bytes | str],
        *,
        origin: str,
        first_line: int = 1,
        now: datetime | None = None,
        batch_size: int = 1000,
        on_progress: Callable[[int], None] | None = None,
        backfill: bool = False,
    ) -> IngestReport:
        """Appends inbound lines: accepted, duplicate or rejected and dead-lettered, each whole.

        EVENTS.md "Envelope" (idempotent `event_id`; `recorded_at` stamped with `now` when
        absent, while the hash is of the event as submitted), "Payloads" (ledger-written
        types refused from outside), "Order of arrival" (a case of a hospital never
        registered, in the store or earlier in `raws`, is refused) and "Bad input".
        `origin` prefixes each dead letter's origin, joined to the line number with `:`
        unless it ends with `:` or `/` (`file:a.jsonl` -> `file:a.jsonl:7`,
        `kafka:cases/0/` -> `kafka:cases/0/1234`). Blank lines are skipped, not refused.
        `on_progress` receives the number of lines consumed after each batch. `backfill`
        (operator files only, never Kafka or HTTP) admits `recorded_at` older than the
        late-arrival window (EVENTS.md "Transaction time, seals and backfill").
        """
        assert batch_size > 0
        stamp = _utc(now) if now is not None else datetime.now(UTC)
        report = IngestReport()
        parsed: list[tuple[int, bytes, Envelope]] = []
        refused: list[tuple[int, bytes, InvalidEvent]] = []
        consumed = 0
        for consumed, raw in enumerate(raws, start=1):
            line = first_line + consumed - 1
            data = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
            if not data.strip():
                continue
            try:
                ev = _parse_inbound(data)
            except InvalidEvent as exc:
                refused.append((line, data, exc))
            else:
                parsed.append((line, data, ev))
            if len(parsed) + len(refused) >= batch_size:
                self._ingest_batch(parsed, refused, origin, stamp, report)
                parsed, refused = [], []
                if on_progress is not None:
                    on_progress(consumed)
        if parsed or refused:
            self._ingest_batch(parsed, refused, origin, stamp, report)
            if on_progress is not None:
                on_progress(consumed)
        report.rejected.sort(key=lambda r: r.line)
        return report

    def _ingest_batch(
        self,
        parsed: list[tuple[int, bytes, Envelope]],
        refused: list[tuple[int, bytes, InvalidEvent]],
        origin: str,
        stamp: datetime,
        report: IngestReport,
    ) -> None:
        accepted = self._screen_batch(parsed, refused, stamp, report)
        # Dead letters first: a crash after them and before the journal write loses nothing.
        self._dead_letter(refused, origin, stamp, report)
        done, conflicts = self._append(accepted)
        # Conflicts: a concurrent writer journalled the same event_id after our lookup.
        late: list[tuple[int, bytes, InvalidEvent]] = []
        if conflicts:
            stored = self._stored_hashes(e.event.event_id for e in conflicts)
            for e in conflicts:
                eid = e.event.event_id
                if eid in stored and self._same_as_stored(eid, e.submitted_hash, stored[eid]):
                    report.duplicates += 1
                else:
                    late.append((e.line, e.raw, _other_content(eid)))
            self._dead_letter(late, origin, stamp, report)
        report.accepted += len(done)
        if done:
            self.after_append([e.event for e in done])

    def _screen_batch(
        self,
        parsed: list[tuple[int, bytes, Envelope]],
        refused: list[tuple[int, bytes, InvalidEvent]],
        stamp: datetime,
        report: IngestReport,
    ) -> list[_Entry]:
        """The acceptance rules of `ingest` for one batch, writing nothing: the entries to journal.

        Refusals are added to `refused`, duplicates counted in `report` (EVENTS.md "Envelope",
        "Order of arrival"; RULES.md 1: pools never mix).
        """
        self.sync_index()  # the duplicate lookup and the hospital check read the index
        stored = self._stored_hashes(ev.event_id for _, _, ev in parsed)
        registered = dict(self._pools)
        seen: dict[str, _Entry] = {}
        accepted: list[_Entry] = []
        for line, raw, ev in parsed:
            body, h = _canonical(ev)
            earlier = seen.get(ev.event_id)
            if earlier is not None or ev.event_id in stored:
                same = (
                    h in (earlier.submitted_hash, earlier.recorded_hash)
                    if earlier is not None
                    else self._same_as_stored(ev.event_id, h, stored[ev.event_id])
                )
                if same:
                    report.duplicates += 1
                else:
                    refused.append((line, raw, _other_content(ev.event_id)))
                continue
            if ev.event_type in NEEDS_REGISTERED_HOSPITAL and ev.payload.hospital_id not in registered:
                refused.append((line, raw, _unknown_hospital(ev)))
                continue
            if ev.event_type == "HospitalRegistered" and registered.get(ev.payload.hospital_id, ev.payload.pool) != ev.payload.pool:
                refused.append((line, raw, _pool_move(ev, registered[ev.payload.hospital_id])))
                continue
            entry = _entry(ev, body, h, stamp, line=line, raw=raw)
            seen[ev.event_id] = entry
            accepted.append(entry)
            if ev.event_type == "HospitalRegistered":
                registered[ev.payload.hospital_id] = ev.payload.pool
        return accepted

    def screen(
        self,
        raws: Iterable[bytes | str],
        *,
        first_line: int = 1,
        now: datetime | None = None,
        recorded_at: datetime | None = None,
        backfill: bool = False,
    ) -> tuple[list[tuple[int, Envelope]], IngestReport]:
        """What `ingest` would do with `raws`, journalling and dead-lettering nothing.

        The same parse and acceptance rules as `ingest`, in one batch; returns the events it
        would append, with their line numbers, and the report (`accepted`, `duplicates`,
        `rejected`). `recorded_at` replaces every event's own (a what-if draft is applied as
        if recorded at that moment: projections/whatif.py).
        """
        stamp = _utc(now) if now is not None else datetime.now(UTC)
        report = IngestReport()
        parsed: list[tuple[int, bytes, Envelope]] = []
        refused: list[tuple[int, bytes, InvalidEvent]] = []
        for line, raw in enumerate(raws, start=first_line):
            data = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
            if not data.strip():
                continue
            try:
                ev = _parse_inbound(data)
            except InvalidEvent as exc:
                refused.append((line, data, exc))
                continue
            if recorded_at is not None:
                ev = ev.model_copy(update={"recorded_at": recorded_at})
            parsed.append((line, data, ev))
        accepted = self._screen_batch(parsed, refused, stamp, report)
        report.accepted = len(accepted)
        report.rejected.extend(Rejection(line, exc.event_id, exc.field, exc.reason) for line, _, exc in refused)
        report.rejected.sort(key=lambda r: r.line)
        return [(e.line, e.event) for e in accepted], report

    def after_append(self, new_events: list[Envelope]) -> None:
        """Called after each ingested batch with the events it added: derives penalties.

        A verdict's penalty needs its case's policy and hospital; when a policy version,
        coefficient change or registration arrives after verdicts (arrival order is free,
        EVENTS.md), every verdict is looked at again (idempotent).
        """
        late_policy = any(e.event_type in _UNBLOCKS_PENALTIES for e in new_events)
        self.derive_penalties(None if late_policy else new_events)

    def derive_penalties(self, new_events: Iterable[Envelope] | None = None) -> int:
        """Appends the `PenaltyImposed` due for violation verdicts (RULES.md 4; ledger/derivation.py).

        Looks at the cases `new_events` name (every case when None, the catch-up after a
        crash between a journal write and this step); idempotent: ids already recorded are
        skipped. Returns how many penalties were new.
        """
        t = index_table
        verdicts = select(t.c.case_id).where(t.c.event_type == "ReviewVerdictRecorded")
        if new_events is not None:
            named = {e.payload.case_id for e in new_events if e.event_type in ("CaseSubmitted", "ReviewVerdictRecorded")}
            if not named:
                return 0
            case_ids: set[str] = set()
            with self._engine.connect() as conn:
                ordered = sorted(named)
                for i in range(0, len(ordered), _IN_CHUNK):
                    chunk = ordered[i : i + _IN_CHUNK]
                    case_ids.update(conn.execute(verdicts.where(t.c.case_id.in_(chunk)).distinct()).scalars())
        else:
            with self._engine.connect() as conn:
                case_ids = set(conn.execute(verdicts.distinct()).scalars())
        if not case_ids:
            return 0
        needed = ("CaseSubmitted", "ReviewVerdictRecorded", "HospitalRegistered", "PolicyVersionPublished",
                  "CoefficientChanged")
        return self.append_system_events(penalty_events(self.load(case_ids=case_ids, event_types=needed)))

    def append_system_events(self, events: Sequence[Envelope], *, now: datetime | None = None) -> int:
        """Appends ledger-written events (source `system`); an id already recorded is skipped.

        Returns how many were new. Stamps `recorded_at` with `now` when absent.
        """
        stamp = _utc(now) if now is not None else datetime.now(UTC)
        evs = [ev if isinstance(ev, BaseModel) else parse_event(ev) for ev in events]
        for ev in evs:
            if ev.source != "system":
                raise InvalidEvent("source", f"ledger-written events come from system, not {ev.source}", ev.event_id)
        self.sync_index()
        stored = self._stored_hashes(ev.event_id for ev in evs)
        fresh: dict[str, _Entry] = {}
        for ev in evs:
            if ev.event_id not in stored and ev.event_id not in fresh:
                fresh[ev.event_id] = _entry(ev, *_canonical(ev), stamp)
        done, _ = self._append(list(fresh.values()))
        return len(done)

    def _append(self, entries: list[_Entry]) -> tuple[list[_Entry], list[_Entry]]:
        """Journals `entries` in one transaction, else one by one; returns (done, conflicting).

        The index catches up before this returns.
        """
        if not entries:
            return [], []
        done: list[tuple[int, _Entry]] = []
        conflicts: list[_Entry] = []
        try:
            ids = self._journal.append([e.recorded for e in entries])
            done = list(zip(ids, entries, strict=True))
        except JournalConflict:
            for e in entries:
                try:
                    (nid,) = self._journal.append([e.recorded])
                except JournalConflict:
                    conflicts.append(e)
                else:
                    done.append((nid, e))
        self._sync(done)
        return [e for _, e in done], conflicts

    def _dead_letter(
        self, refused: list[tuple[int, bytes, InvalidEvent]], origin: str, stamp: datetime, report: IngestReport
    ) -> None:
        if not refused:
            return
        rows = [
            {
                "received_at": stamp,
                "origin": _origin(origin, line),
                "event_id": exc.event_id,
                "field": exc.field,
                "reason": exc.reason,
                "raw": raw,
            }
            for line, raw, exc in refused
        ]
        with self._engine.begin() as conn:
            conn.execute(insert(dead_letters_table), rows)
        report.rejected.extend(Rejection(line, exc.event_id, exc.field, exc.reason) for line, _, exc in refused)

    def _stored_hashes(self, event_ids: Iterable[str]) -> dict[str, str]:
        """event_id -> submitted content hash, for those already indexed (chunked IN lookups)."""
        ids = list(dict.fromkeys(event_ids))
        found: dict[str, str] = {}
        t = index_table
        with self._engine.connect() as conn:
            for i in range(0, len(ids), _IN_CHUNK):
                chunk = ids[i : i + _IN_CHUNK]
                for eid, h in conn.execute(select(t.c.event_id, t.c.content_hash).where(t.c.event_id.in_(chunk))):
                    found[eid] = h
        return found

    def _same_as_stored(self, event_id: str, submitted_hash: str, stored_hash: str) -> bool:
        """Same content: as first submitted, or as recorded (the sender now sends the
        `recorded_at` the ledger stamped)."""
        if submitted_hash == stored_hash:
            return True
        with self._engine.connect() as conn:
            body = conn.execute(select(index_table.c.body).where(index_table.c.event_id == event_id)).scalar_one()
        return submitted_hash == _sha256(body)

    # ----------------------------------------------------------------------- the index

    def sync_index(self) -> int:
        """Applies the journal entries the index has not seen yet; returns how many."""
        return self._sync([])

    def rebuild_index(self) -> int:
        """Empties the index and rebuilds it from the journal alone; returns its rows."""
        with self._engine.begin() as conn:
            conn.execute(delete(index_table))
            conn.execute(update(tracking_table).where(tracking_table.c.name == _INDEX).values(notification_id=0))
        self._position = -1
        return self._sync([])

    def _sync(self, fresh: list[tuple[int, _Entry]]) -> int:
        """Catches the index up with the journal, one transaction per page.

        `fresh` are entries this store just journalled, with their notification ids: when
        they follow the index position directly their rows are built without reading them
        back. The tracking row moves in the same transaction as the rows, guarded by its
        old value, so concurrent catch-ups never apply an entry twice.
        """
        applied = 0
        while True:
            with self._engine.connect() as conn:
                position = self._tracked(conn)
                if position != self._position:
                    self._pools = self._registered_pools(conn)
                    self._position = position
            fresh = [(nid, e) for nid, e in fresh if nid > position]
            if fresh and fresh[0][0] == position + 1 and fresh[-1][0] == position + len(fresh):
                batch = [(nid, e.event, e.body, e.submitted_hash) for nid, e in fresh]
                fresh = []
            else:
                batch = [
                    (nid, _parse_stored(r.event_type, r.envelope), r.envelope, r.content_hash)
                    for nid, r in self._journal.read(position, _PAGE)
                ]
                if not batch:
                    return applied
            pools = dict(self._pools)
            rows = [_index_row(nid, ev, body, h, pools) for nid, ev, body, h in batch]
            try:
                with self._engine.begin() as conn:
                    moved = conn.execute(
                        update(tracking_table)
                        .where(tracking_table.c.name == _INDEX, tracking_table.c.notification_id == position)
                        .values(notification_id=rows[-1]["seq"])
                    ).rowcount
                    if moved != 1:
                        raise _IndexMoved
                    conn.execute(insert(index_table), rows)
            except _IndexMoved:
                self._position = -1
                continue
            self._position = rows[-1]["seq"]
            self._pools = pools
            applied += len(rows)

    @staticmethod
    def _tracked(conn: Connection) -> int:
        t = tracking_table
        return int(conn.execute(select(t.c.notification_id).where(t.c.name == _INDEX)).scalar_one())

    @staticmethod
    def _registered_pools(conn: Connection) -> dict[str, str]:
        t = index_table
        rows = conn.execute(
            select(t.c.hospital_id, t.c.pool).where(t.c.event_type == "HospitalRegistered").order_by(t.c.seq)
        )
        return {hospital_id: pool for hospital_id, pool in rows}

    # ----------------------------------------------------------------------- reading

    def load(
        self,
        *,
        pool: str | None = None,
        year: int | None = None,
        hospital_id: str | None = None,
        case_ids: Iterable[str] | None = None,
        known_at: datetime | None = None,
        event_types: Iterable[str] | None = None,
    ) -> list[Envelope]:
        """The events needed to clear `pool` for `year` (a superset), in recording order.

        Pool-level events of the pool (all years); every revision and withdrawal of each
        case with any revision discharged in `year`; every verdict and penalty naming those
        cases, joined on case_id because verdicts may come first (EVENTS.md "Order of
        arrival"). `hospital_id` narrows the cases to that hospital's (pool events: its
        pool's); `case_ids` to those cases (pool events: their pools'). `known_at` keeps
        events recorded at or before it (RULES.md 2); `event_types` keeps only those types.
        No filter: every event.
        """
        t = index_table
        ids = list(dict.fromkeys(case_ids)) if case_ids is not None else None
        narrowed = pool is not None or year is not None or hospital_id is not None
        cases = select(t.c.case_id).where(t.c.event_type == "CaseSubmitted")
        if pool is not None:
            cases = cases.where(t.c.pool == pool)
        if year is not None:
            cases = cases.where(t.c.year == year)
        if hospital_id is not None:
            cases = cases.where(t.c.hospital_id == hospital_id)
        if ids is not None:
            cases = cases.where(t.c.case_id.in_(ids))

        if pool is not None:
            pools: Any = t.c.pool == pool
        elif hospital_id is not None:
            pools = t.c.pool.in_(
                select(t.c.pool).where(t.c.event_type == "HospitalRegistered", t.c.hospital_id == hospital_id)
            )
        elif ids is not None:
            pools = t.c.pool.in_(select(t.c.pool).where(t.c.event_type == "CaseSubmitted", t.c.case_id.in_(ids)))
        else:
            pools = true()
        case_events = t.c.case_id.in_(cases) if narrowed or ids is None else t.c.case_id.in_(ids)

        query = select(t.c.event_type, t.c.body).order_by(t.c.seq)
        if narrowed or ids is not None:
            query = query.where(
                or_(
                    and_(t.c.event_type.in_(POOL_LEVEL), pools),
                    and_(t.c.event_type.in_(CASE_LEVEL), case_events),
                )
            )
        if known_at is not None:
            query = query.where(t.c.recorded_at <= _utc(known_at))
        if event_types is not None:
            query = query.where(t.c.event_type.in_(list(event_types)))
        with self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # The case-id semi-join of a city year (~300k ids) needs more than the default
                # 4 MB to hash; below that PostgreSQL rescans the list per row (benchmarks/README.md).
                conn.execute(text("SET LOCAL work_mem = '64MB'"))
            return [_parse_stored(event_type, body) for event_type, body in conn.execute(query)]

    def replay(self, known_at: datetime | None = None) -> Iterator[Envelope]:
        """Every event from the journal's notification log, in recording order (cold path:
        no index). `known_at` keeps those recorded at or before it."""
        cut = _utc(known_at) if known_at is not None else None
        for _, recorded in self._journal.replay():
            ev = _parse_stored(recorded.event_type, recorded.envelope)
            if cut is None or ev.recorded_at <= cut:
                yield ev

    def event(self, event_id: str) -> Envelope | None:
        """The recorded event `event_id`, if any."""
        t = index_table
        with self._engine.connect() as conn:
            row = conn.execute(select(t.c.event_type, t.c.body).where(t.c.event_id == event_id)).first()
        return None if row is None else _parse_stored(row[0], row[1])

    def hospitals(self) -> dict[str, Any]:
        """hospital_id -> its HospitalRegistered payload (the last recorded wins)."""
        t = index_table
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(t.c.event_type, t.c.body).where(t.c.event_type == "HospitalRegistered").order_by(t.c.seq)
            )
            payloads = [_parse_stored(et, body).payload for et, body in rows]
        return {p.hospital_id: p for p in payloads}

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The latest refused lines, newest first."""
        t = dead_letters_table
        with self._engine.connect() as conn:
            rows = conn.execute(select(t).order_by(t.c.id.desc()).limit(limit)).mappings()
            return [DeadLetter(**{**row, "raw": bytes(row["raw"])}) for row in rows]

    def counts(self) -> dict[str, int]:
        """`events` and `dead_letters` totals, plus the number of events of each type."""
        t = index_table
        with self._engine.connect() as conn:
            by_type = {et: n for et, n in conn.execute(select(t.c.event_type, func.count()).group_by(t.c.event_type))}
            letters = conn.execute(select(func.count()).select_from(dead_letters_table)).scalar_one()
        return {"events": sum(by_type.values()), "dead_letters": int(letters), **dict(sorted(by_type.items()))}


# --------------------------------------------------------------------------- helpers


_SEARCH_PATH = re.compile(r"-c\s*search_path\s*=\s*([^\s,]+)")


def _url(database_url: str) -> URL:
    url = make_url(database_url)
    if url.get_backend_name() not in ("sqlite", "postgresql", "postgres"):
        raise ValueError(f"unsupported database URL {database_url!r}: use sqlite:///FILE or postgresql://...")
    return url


def sqlite_path(database_url: str) -> str:
    """The absolute file of a `sqlite:///FILE` URL; in-memory databases are refused."""
    path = _url(database_url).database or ""
    if path in ("", ":memory:") or "mode=memory" in database_url:
        raise ValueError("an in-memory SQLite database cannot be shared by the journal and the index; use a file")
    return os.path.abspath(path)


def journal_env(database_url: str) -> dict[str, str]:
    """The eventsourcing environment of the journal at `database_url`.

    `sqlite:///relative.db`, `sqlite:////absolute.db` -> `eventsourcing.sqlite`;
    `postgresql://`, `postgresql+psycopg://`, `postgres://` -> `eventsourcing.postgres`. The
    libpq query option `options=-csearch_path%3DS` puts the journal in schema S, where the
    index tables go too (they follow the search path).
    """
    url = _url(database_url)
    if url.get_backend_name() == "sqlite":
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": sqlite_path(database_url),
                "SQLITE_LOCK_TIMEOUT": "30"}
    if not url.database:
        raise ValueError(f"database URL names no database: {database_url!r}")
    query = {k: (v if isinstance(v, str) else " ".join(v)) for k, v in url.query.items()}
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": url.database,
        "POSTGRES_HOST": url.host or query.get("host", "127.0.0.1"),
        "POSTGRES_PORT": str(url.port or query.get("port", 5432)),
        "POSTGRES_USER": url.username or query.get("user", os.environ.get("PGUSER", "postgres")),
        "POSTGRES_PASSWORD": url.password or "",
        # Journal writes are sequential within one ledger process.
        "POSTGRES_POOL_SIZE": "1",
        "POSTGRES_MAX_OVERFLOW": "2",
    }
    schema = _SEARCH_PATH.search(query.get("options", ""))
    if schema:
        env["POSTGRES_SCHEMA"] = schema.group(1)
    return env


def _engine(database_url: str) -> Engine:
    """A SQLAlchemy engine on the same database as the journal."""
    url = _url(database_url)
    if url.get_backend_name() == "sqlite":
        engine = create_engine(f"sqlite:///{sqlite_path(database_url)}", connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _record: Any) -> None:
            # WAL: readers never block the writer (the journal uses WAL too).
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        return engine
    return create_engine(url.set(drivername="postgresql+psycopg"), pool_size=2, max_overflow=2)


@contextmanager
def _schema_lock(engine: Engine) -> Iterator[None]:
    """On PostgreSQL, one process at a time creates tables: CREATE TABLE IF NOT EXISTS races
    on the catalogue's unique indexes when several workers start together."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(hashtext('drg-ledger schema'))"))
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(hashtext('drg-ledger schema'))"))
            conn.commit()


def _creating(create: Callable[[], T]) -> T:
    """Runs `create`, again when another process creating the same tables raced it."""
    for attempt in range(1, 6):
        try:
            return create()
        except (JournalDatabaseError, sa_exc.DatabaseError, sqlite3.OperationalError):
            if attempt == 5:
                raise
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"timestamps carry a zone (EVENTS.md \"Envelope\"): {moment!r}")
    return moment.astimezone(UTC)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _origin(origin: str, line: int) -> str:
    return f"{origin}{line}" if origin.endswith((":", "/")) else f"{origin}:{line}"


def _canonical(ev: Envelope) -> tuple[str, str]:
    """The event's canonical JSON and its content hash, computed once (`content_hash` is the
    SHA-256 of `canonical_json`; a test pins that)."""
    body = canonical_json(ev)
    return body, _sha256(body)


def _entry(
    ev: Envelope, body: str, submitted_hash: str, stamp: datetime, *, line: int = 0, raw: bytes = b""
) -> _Entry:
    """The entry for an event as submitted (`body`, `submitted_hash`), `recorded_at` stamped when absent."""
    recorded_hash = submitted_hash
    if ev.recorded_at is None:
        ev = stamped(ev, stamp)
        body = canonical_json(ev)
        recorded_hash = _sha256(body)
    recorded = LedgerEntry.recorded(
        event_id=ev.event_id, event_type=ev.event_type, envelope=body, content_hash=submitted_hash
    )
    return _Entry(ev, body, submitted_hash, recorded_hash, recorded, line, raw)


def _parse_inbound(data: bytes) -> Envelope:
    """One inbound line parsed; ledger-written types are refused from outside (EVENTS.md "Payloads")."""
    ev = parse_event(data)
    if ev.event_type in LEDGER_WRITTEN:
        raise InvalidEvent(
            "event_type", f"{ev.event_type} is written by the ledger, refused from {ev.source}", ev.event_id
        )
    return ev


def _parse_stored(event_type: str, body: str) -> Envelope:
    return ENVELOPES[event_type].model_validate_json(body)


def _index_row(seq: int, ev: Envelope, body: str, submitted_hash: str, pools: dict[str, str]) -> dict[str, Any]:
    """The index row of a journalled event; `pools` (hospital -> pool) follows registrations.

    A case event's pool is its hospital's (RULES.md 1); `year` is the discharge year of a
    case, the year of a budget or clearing, the payment year of a prepayment.
    """
    p = ev.payload
    hospital_id = getattr(p, "hospital_id", None)
    pool = getattr(p, "pool", None)
    if pool is None and hospital_id is not None:
        pool = pools.get(hospital_id)
    if ev.event_type == "HospitalRegistered":
        pools[hospital_id] = pool
    year: int | None = None
    if ev.event_type == "CaseSubmitted":
        year = p.discharge_date.year
    elif ev.event_type in ("BudgetSet", "ClearingCompleted"):
        year = p.year
    elif ev.event_type == "PrepaymentMade":
        year = p.paid_on.year
    return {
        "seq": seq,
        "event_id": ev.event_id,
        "event_type": ev.event_type,
        "recorded_at": ev.recorded_at,
        "source": ev.source,
        "pool": pool,
        "hospital_id": hospital_id,
        "case_id": getattr(p, "case_id", None),
        "year": year,
        "content_hash": submitted_hash,
        "body": body,
    }


def _other_content(event_id: str) -> InvalidEvent:
    return InvalidEvent("event_id", f"event_id {event_id!r} already recorded with other content", event_id)


def _pool_move(ev: Envelope, pool: str) -> InvalidEvent:
    """RULES.md 1: pools never mix; a hospital id belongs to the pool it first registered in."""
    return InvalidEvent(
        "payload.pool",
        f"hospital {ev.payload.hospital_id!r} is registered in pool {pool!r}; pools never mix",
        ev.event_id,
    )


def _unknown_hospital(ev: Envelope) -> InvalidEvent:
    return InvalidEvent(
        "payload.hospital_id",
        f"unknown hospital {ev.payload.hospital_id!r}: never registered",
        ev.event_id,
    )
