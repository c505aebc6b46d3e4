"""LedgerStore: the journal, its event index and the dead letters, in one database.

The journal (`ledger.journal`) is the record. The index is a projection of it, one row per
event, which answers the warm-path reads (`load`) in bulk; it remembers the last journal
position it applied and catches up on open and after every append, so a crash between the
journal write and the index write heals itself. Dead letters keep every refused line whole
(EVENTS.md "Bad input").

Not thread-safe: one store per thread (the CLI and the stream agents are sequential).
"""

from __future__ import annotations

import gc
import getpass
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias, TypeVar

from eventsourcing.persistence import DatabaseError as JournalDatabaseError
from eventsourcing.persistence import IntegrityError as JournalConflict
from pydantic import BaseModel
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    Date,
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
    any_,
    delete,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, create_engine, make_url
from sqlalchemy.types import TypeEngine

from ledger.clearing import gc_paused
from ledger.derivation import penalty_events
from ledger.events import (
    ENVELOPES,
    LEDGER_WRITTEN,
    MAX_LINE_BYTES,
    EventType,
    InvalidEvent,
    canonical_json,
    decode_stored,
    ingested,
    ingested_json,
    parse_event,
    stamped,
)
from ledger.impact import Seal, Seals, impact
from ledger.journal import Entry, Journal, LedgerEntry
from projections.chain import RECORDER_TOPICS, SQLITE_CACHE, SQLITE_MMAP, checked_envelopes, checked_read

T = TypeVar("T")

Envelope: TypeAlias = Any
"""One of the envelope models of `ledger.events.ENVELOPES` (pydantic, frozen)."""

Origin: TypeAlias = "str | Callable[[int], str]"
"""Where lines come from: a prefix joined to each line number (`file:a.jsonl` -> `file:a.jsonl:7`),
or a function of the line number giving its whole origin."""

DATABASE_URL_ENV = "DRG_LEDGER_DATABASE_URL"
DEFAULT_DATABASE_URL = "sqlite:///drg-ledger.db"

POOL_LEVEL = (
    EventType.HOSPITAL_REGISTERED,
    EventType.POLICY_VERSION_PUBLISHED,
    EventType.COEFFICIENT_CHANGED,
    EventType.BUDGET_SET,
    EventType.PREPAYMENT_MADE,
    EventType.CLEARING_COMPLETED,
)
"""Event types that belong to a pool as a whole (RULES.md 1, 2, 5)."""

CASE_LEVEL = (EventType.CASE_SUBMITTED, EventType.CASE_WITHDRAWN, EventType.REVIEW_VERDICT_RECORDED, EventType.PENALTY_IMPOSED)
"""Event types that name a case; verdicts may arrive first (EVENTS.md "Order of arrival")."""

NEEDS_REGISTERED_HOSPITAL = frozenset({EventType.CASE_SUBMITTED, EventType.CASE_WITHDRAWN})

_INDEX = "ledger_index"
_PENALTIES = "penalties"  # tracking row: journal position up to which penalties are derived
_PAGE = 5_000  # journal entries per index transaction when catching up
_ANALYZE_ROWS = 10_000  # index growth before the store refreshes PostgreSQL's statistics itself
_DERIVATION_CASES = 10_000  # verdicts' cases read and derived at a time (`derive_penalties`)

LATE_WINDOW_ENV = "DRG_LEDGER_LATE_WINDOW_DAYS"
DEFAULT_LATE_WINDOW = timedelta(days=7)
"""EVENTS.md "Transaction time": a `recorded_at` older than ingest time minus this is refused
unless loaded with `--backfill`."""
FUTURE_TOLERANCE = timedelta(minutes=5)
"""EVENTS.md "Transaction time": `recorded_at` more than 5 minutes after `ingested_at` is refused."""
STATEMENT_TIMEOUT_ENV = "DRG_LEDGER_STATEMENT_TIMEOUT_S"
DEFAULT_STATEMENT_TIMEOUT_S = 600
"""Every statement on PostgreSQL runs under this timeout; locks are waited for at most 30 s."""

FAULT_ENV = "DRG_LEDGER_FAULT_AT"
"""Fault injection for tests: the process exits (code 99, no clean-up, like a kill) at the
named step of an append: `dead-letters`, `before-journal`, `journal`, `projection` (the
case-points rows written, their transaction not committed), `index`, `derivation`."""
FAULT_STEPS = ("dead-letters", "before-journal", "journal", "projection", "index", "derivation")


def checkpoint(step: str) -> None:
    """A step of an append is done; under `$DRG_LEDGER_FAULT_AT=step` the process dies here."""
    if os.environ.get(FAULT_ENV) == step:
        os._exit(99)


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
    Column("ingested_at", UtcDateTime(), comment="the ledger's clock when it accepted the event"),
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
    Column("raw", LargeBinary, nullable=False, comment="as received; its first 1 MiB when longer"),
    Column("raw_length", BigInteger, nullable=False),
    Column("raw_sha256", String(64), nullable=False),
    # Once per (origin, raw bytes): a file ingested again or a Kafka record redelivered.
    Index("ux_dead_letters_origin_raw", "origin", "raw_sha256", unique=True),
)

consumed_offsets_table = Table(
    "consumed_offsets",
    metadata,
    Column("topic", String(249), primary_key=True),
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("offset", BigInteger, primary_key=True, autoincrement=False),
    Column("fate", String(12), nullable=False, comment="accepted | duplicate | dead-letter | blank"),
    comment="every consumed Kafka record the store has a fate for (projections/offsets.py); "
            "accepted rows are derived from the journal entries' origin, with the index rows",
)

hospital_pools_table = Table(
    "hospital_pools",
    metadata,
    Column("hospital_id", String(200), primary_key=True, comment="RULES.md 1: one pool per hospital, ever"),
    Column("pool", String(200), nullable=False),
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
    raw_length: int
    raw_sha256: str

    def as_json(self, *, raw: bool = False) -> dict[str, Any]:
        """JSON-ready; `raw` adds the bytes as text, undecodable bytes and controls escaped."""
        out: dict[str, Any] = {
            "id": self.id,
            "received_at": self.received_at.isoformat(),
            "origin": self.origin,
            "event_id": self.event_id,
            "field": self.field,
            "reason": self.reason,
            "raw_length": self.raw_length,
            "raw_sha256": self.raw_sha256,
        }
        if raw:
            out["raw"] = escaped(self.raw)
        return out


def escaped(raw: bytes) -> str:
    """Bytes as printable text: UTF-8 where valid, `\\xNN` for other bytes, controls escaped."""
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii") for ch in text)


@dataclass(frozen=True)
class Backfill:
    """An operator's load of history (EVENTS.md "Transaction time, seals and backfill")."""

    run_by: str
    file_sha256: str

    @classmethod
    def of_file(cls, path: str | os.PathLike[str], run_by: str | None = None) -> Backfill:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return cls(run_by or default_run_by(), digest.hexdigest())


def default_run_by() -> str:
    """Who runs a backfill when not told: `operator:<login>`."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in a container
        user = "unknown"
    return f"operator:{user}"


@dataclass
class _Entry:
    """An event on its way into the journal."""

    event: Envelope  # as recorded: recorded_at stamped
    body: str  # canonical_json(event)
    submitted_hash: str  # content_hash of the event as submitted: the idempotency key
    recorded_hash: str  # sha256 of body; equals submitted_hash unless recorded_at was stamped
    recorded: Entry
    line: int = 0
    raw: bytes = b""


@dataclass(frozen=True)
class Check:
    """One check of `doctor`: `status` is `ok`, `repaired` or `problem`."""

    name: str
    status: str
    detail: str

    def as_json(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status, "detail": self.detail}


class _IndexMoved(Exception):
    """Another writer advanced the index between our read and our write."""


# --------------------------------------------------------------------------- the store


class LedgerStore:
    """The one storage object: append (`ingest`, `append_system_events`) and read (`load`...)."""

    def __init__(self, database_url: str, *, late_window: timedelta | None = None, heal: bool = True) -> None:
        """Opens (creating tables when missing) the journal and index at `database_url`,
        catches the index up and completes derivations a crash interrupted.

        `late_window`: EVENTS.md's late-arrival window; default `$DRG_LEDGER_LATE_WINDOW_DAYS`
        days, else 7. `heal=False` opens without catching anything up (`verify` looks at the
        store as it is, and must open one whose journal was tampered with).
        """
        self.database_url = database_url
        if late_window is None:
            days = os.environ.get(LATE_WINDOW_ENV)
            late_window = timedelta(days=float(days)) if days else DEFAULT_LATE_WINDOW
        self.late_window = late_window
        self._seals: tuple[int, Seals] | None = None
        env = journal_env(database_url)
        self._engine = _engine(database_url)
        self._position = -1  # forces loading the hospital pools on the first sync
        self._analyzed = -1  # index rows when the planner's statistics were last taken
        self._pools: dict[str, str] = {}
        self._opened: Journal | None = None  # `_journal`
        self._journal_env = env
        self._journal_lock = threading.Lock()
        from projections.case_versions import Projector

        self._projector = Projector()
        try:
            # Our tables first: on a new SQLite file this also switches it to WAL, which the
            # journal's own connections would otherwise race to do.
            if _store_ready(self._engine):
                # Nothing is missing (PostgreSQL, one look): no schema lock, nothing created,
                # and the journal is opened when first used (`_journal`): a store whose index
                # has applied the whole journal answers reads without connecting it.
                self._journal_env = {**env, "CREATE_TABLE": "false"}
            else:
                with _schema_lock(self._engine):
                    _creating(self._create_tables)
                    with self._engine.connect() as conn:
                        ready = _journal_ready(conn)
                    if ready:
                        # Migrated (projections/roles.py): the application role may not CREATE,
                        # and nothing is missing; the owner's `drg-ledger migrate` creates.
                        env = {**env, "CREATE_TABLE": "false"}
                    self._opened = _creating(lambda: Journal(env=env))
            if heal:
                self.sync_index()
                self.catch_up_projection()
                self.complete_derivations()
        except BaseException:
            self.close()
            raise

    def _create_tables(self) -> None:
        metadata.create_all(self._engine)
        with self._engine.begin() as conn:
            t = tracking_table
            for name in _tracking_rows():
                if conn.execute(select(t.c.name).where(t.c.name == name)).first() is None:
                    conn.execute(insert(t).values(name=name, notification_id=0))

    @classmethod
    def open(cls, database_url: str | None = None, *, heal: bool = True) -> LedgerStore:
        """Opens the store at `database_url`, else `$DRG_LEDGER_DATABASE_URL`, else
        `sqlite:///drg-ledger.db` in the working directory (EVENTS.md "Commands")."""
        url = database_url or os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL
        return cls(url, heal=heal)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine on the store's database, for projections with their own tables."""
        return self._engine

    @property
    def journal(self) -> Journal:
        """The journal itself (the record every table here is rebuilt from)."""
        return self._journal

    @property
    def _journal(self) -> Journal:
        """The journal, opened on first use when `__init__` did not need it."""
        if self._opened is None:
            with self._journal_lock:
                if self._opened is None:
                    env = self._journal_env
                    self._opened = _creating(lambda: Journal(env=env))
        return self._opened

    def close(self) -> None:
        if getattr(self, "_opened", None) is not None:
            self._opened.close()
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
        origin: Origin,
        first_line: int = 1,
        now: datetime | None = None,
        batch_size: int = 1000,
        on_progress: Callable[[int], None] | None = None,
        backfill: Backfill | bool = False,
        parsed_into: dict[int, Envelope] | None = None,
    ) -> IngestReport:
        """Appends inbound lines: accepted, duplicate or rejected and dead-lettered, each whole.

        EVENTS.md "Envelope" (idempotent `event_id`; `recorded_at` stamped with `now` when
        absent, `ingested_at` always, while the hash is of the event as submitted),
        "Payloads" (ledger-written types refused from outside), "Order of arrival" (a case of
        a hospital never registered, in the store or earlier in `raws`, is refused),
        "Transaction time, seals and backfill" (future and late `recorded_at`, seals),
        "Limits on input" and "Bad input": any failure caused by one line is that line's
        refusal, and the other lines of its batch land.
        `origin` prefixes each dead letter's origin, joined to the line number with `:`
        unless it ends with `:` or `/` (`file:a.jsonl` -> `file:a.jsonl:7`,
        `kafka:cases/0/` -> `kafka:cases/0/1234`), or is a function of the line number giving
        each line's whole origin (the Kafka intake: the records of several partitions in one
        call). Blank lines are skipped, not refused.
        `on_progress` receives the number of lines consumed after each batch. `backfill`
        (operator files only, never Kafka or HTTP) admits `recorded_at` older than the
        late-arrival window and journals a `HistoryBackfilled` with every transaction of the
        load; `True` hashes `raws` itself (pass a `Backfill` for a file read lazily).
        `parsed_into` receives every line that parsed, by line number, as its event (refused
        later or not): the Kafka intake's recompute keys, without a second parse.
        """
        assert batch_size > 0
        assert not (backfill and callable(origin)), "a backfill is an operator's file"
        stamp = _utc(now) if now is not None else datetime.now(UTC)
        if backfill is True:
            raws = [r.encode("utf-8", "surrogatepass") if isinstance(r, str) else bytes(r) for r in raws]
            backfill = Backfill(run_by=default_run_by(), file_sha256=hashlib.sha256(b"\n".join(raws)).hexdigest())
        load = backfill or None
        report = IngestReport()
        parsed: list[tuple[int, bytes, Envelope]] = []
        refused: list[tuple[int, bytes, InvalidEvent]] = []
        consumed = 0
        # The collector's passes over a batch's parsed events cost as much as parsing them;
        # nothing here makes a cycle worth waiting for, so it runs once per batch instead.
        with gc_paused():
            for consumed, raw in enumerate(raws, start=1):
                line = first_line + consumed - 1
                data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
                if not data.strip():
                    continue
                ev = _read_line(data)
                if isinstance(ev, InvalidEvent):
                    refused.append((line, data, ev))
                else:
                    parsed.append((line, data, ev))
                    if parsed_into is not None:
                        parsed_into[line] = ev
                if len(parsed) + len(refused) >= batch_size:
                    self._ingest_batch(parsed, refused, origin, stamp, report, load)
                    parsed, refused = [], []
                    gc.collect(1)
                    if on_progress is not None:
                        on_progress(consumed)
            if parsed or refused:
                self._ingest_batch(parsed, refused, origin, stamp, report, load)
                if on_progress is not None:
                    on_progress(consumed)
        report.rejected.sort(key=lambda r: r.line)
        return report

    def _ingest_batch(
        self,
        parsed: list[tuple[int, bytes, Envelope]],
        refused: list[tuple[int, bytes, InvalidEvent]],
        origin: Origin,
        stamp: datetime,
        report: IngestReport,
        backfill: Backfill | None,
    ) -> None:
        accepted, duplicate_lines = self._screen_batch(parsed, refused, stamp, report, backfill, origin)
        accepted, moved = self._claim_pools(accepted)
        refused.extend(moved)
        # Dead letters first: a crash after them and before the journal write loses nothing.
        self._dead_letter(refused, origin, stamp, report)
        checkpoint("dead-letters")
        companion = None if backfill is None else (lambda chunk: _backfill_entry(backfill, chunk, origin, stamp))
        done, conflicts = self._append(accepted, companion)
        # Conflicts: a concurrent writer journalled the same event_id after our lookup.
        late: list[tuple[int, bytes, InvalidEvent]] = []
        if conflicts:
            stored = self._stored_hashes(e.event.event_id for e in conflicts)
            for e in conflicts:
                eid = e.event.event_id
                if eid in stored and self._same_as_stored(eid, e.submitted_hash, stored[eid]):
                    report.duplicates += 1
                    duplicate_lines.append(e.line)
                else:
                    late.append((e.line, e.raw, _other_content(eid)))
            self._dead_letter(late, origin, stamp, report)
        self.record_consumed([_origin(origin, line) for line in duplicate_lines], "duplicate")
        report.accepted += sum(1 for _, e in done if e.event.event_type != EventType.HISTORY_BACKFILLED)
        if done:
            self.complete_derivations({nid: e.event for nid, e in done})
            checkpoint("derivation")

    def _screen_batch(
        self,
        parsed: list[tuple[int, bytes, Envelope]],
        refused: list[tuple[int, bytes, InvalidEvent]],
        stamp: datetime,
        report: IngestReport,
        backfill: Backfill | None,
        origin: Origin | None = None,
    ) -> tuple[list[_Entry], list[int]]:
        """The acceptance rules of `ingest` for one batch, writing nothing: the entries to
        journal (each carrying its `origin` line, when given) and the lines found duplicate.

        Refusals are added to `refused`, duplicates counted in `report` (EVENTS.md "Envelope",
        "Order of arrival", "Transaction time, seals and backfill", "Limits on input"; RULES.md
        1: pools never mix, which `_claim_pools` then enforces in the database).
        """
        self.sync_index()  # the duplicate lookup and the hospital check read the index
        stored = self._stored_hashes(ev.event_id for _, _, ev in parsed)
        registered = dict(self._pools)
        seals = self.seals()
        case_years = self._case_years(parsed, seals)
        seen: dict[str, _Entry] = {}
        accepted: list[_Entry] = []
        duplicate_lines: list[int] = []
        for line, raw, ev in parsed:
            try:
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
                        duplicate_lines.append(line)
                    else:
                        refused.append((line, raw, _other_content(ev.event_id)))
                    continue
                problem = self._refusal(ev, stamp, backfill, registered, seals, case_years)
                if problem is not None:
                    refused.append((line, raw, problem))
                    continue
                entry = _entry(ev, body, h, stamp, line=line, raw=raw,
                               origin=None if origin is None else _origin(origin, line))
                if not _plain(entry.body):
                    _storable(_index_row(0, entry.event, entry.body, entry.submitted_hash, dict(registered)))
            except InvalidEvent as exc:
                refused.append((line, raw, InvalidEvent(exc.field, exc.reason, ev.event_id)))
                continue
            except Exception as exc:  # noqa: BLE001 - one line's failure is that line's refusal
                refused.append((line, raw, _unrecordable(ev, exc)))
                continue
            seen[ev.event_id] = entry
            accepted.append(entry)
            if ev.event_type == EventType.HOSPITAL_REGISTERED:
                registered[ev.payload.hospital_id] = ev.payload.pool
        return accepted, duplicate_lines

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

        The same parse and acceptance rules as `ingest` (the window, seals and limits
        included), in one batch; returns the events it would append, with their line
        numbers, and the report (`accepted`, `duplicates`, `rejected`). `recorded_at`
        replaces every event's own (a what-if draft is applied as if recorded at that
        moment: projections/whatif.py); `backfill` as for `ingest`.
        """
        stamp = _utc(now) if now is not None else datetime.now(UTC)
        if recorded_at is not None:
            _utc(recorded_at)  # refuses a naive moment; the events keep the zone they are given
        lines = [r.encode("utf-8", "surrogatepass") if isinstance(r, str) else bytes(r) for r in raws]
        load = Backfill(default_run_by(), hashlib.sha256(b"\n".join(lines)).hexdigest()) if backfill else None
        report = IngestReport()
        parsed: list[tuple[int, bytes, Envelope]] = []
        refused: list[tuple[int, bytes, InvalidEvent]] = []
        for line, data in enumerate(lines, start=first_line):
            if not data.strip():
                continue
            ev = _read_line(data)
            if isinstance(ev, InvalidEvent):
                refused.append((line, data, ev))
                continue
            if recorded_at is not None:
                ev = ev.model_copy(update={"recorded_at": recorded_at})
            parsed.append((line, data, ev))
        accepted, _ = self._screen_batch(parsed, refused, stamp, report, load)
        report.accepted = len(accepted)
        report.rejected.extend(Rejection(line, exc.event_id, exc.field, exc.reason) for line, _, exc in refused)
        report.rejected.sort(key=lambda r: r.line)
        return [(e.line, e.event) for e in accepted], report

    def _refusal(
        self,
        ev: Envelope,
        stamp: datetime,
        backfill: Backfill | None,
        registered: dict[str, str],
        seals: Seals,
        case_years: dict[str, tuple[str | None, set[int]]],
    ) -> InvalidEvent | None:
        """Why the store refuses `ev` (the rules that need the store or the clock), or None."""
        recorded_at = ev.recorded_at
        if recorded_at is not None:
            if recorded_at > stamp + FUTURE_TOLERANCE:
                return InvalidEvent(
                    "recorded_at",
                    f"{recorded_at.isoformat()} is in the future: more than 5 minutes after the ledger's "
                    f"clock ({stamp.isoformat()})",
                    ev.event_id,
                )
            if backfill is None and recorded_at < stamp - self.late_window:
                return InvalidEvent(
                    "recorded_at",
                    f"{recorded_at.isoformat()} is older than the late-arrival window ({_days(self.late_window)}); "
                    "history is loaded by an operator with `drg-ledger ingest --backfill`",
                    ev.event_id,
                )
        if ev.event_type in NEEDS_REGISTERED_HOSPITAL and ev.payload.hospital_id not in registered:
            return _unknown_hospital(ev)
        if ev.event_type == EventType.HOSPITAL_REGISTERED and registered.get(ev.payload.hospital_id, ev.payload.pool) != ev.payload.pool:
            return _pool_move(ev, registered[ev.payload.hospital_id])
        if seals.seals:
            at = recorded_at or stamp
            case_id = getattr(ev.payload, "case_id", None)
            pool, years = case_years.get(case_id, (None, set())) if case_id is not None else (None, set())
            hospital = getattr(ev.payload, "hospital_id", None)
            if pool is None and hospital is not None:
                pool = registered.get(hospital)
            seal = seals.broken_by(at, impact(ev, years, pool))
            if seal is not None:
                return InvalidEvent(
                    "recorded_at",
                    f"{at.isoformat()} falls inside the seal of {seal.pool} {seal.year}: clearing "
                    f"{seal.clearing_event_id} was recorded as known at {seal.known_at.isoformat()}; "
                    "a correction is recorded now and shows in the next clearing",
                    ev.event_id,
                )
        return None

    def _case_years(
        self, parsed: list[tuple[int, bytes, Envelope]], seals: Seals
    ) -> dict[str, tuple[str | None, set[int]]]:
        """case_id -> (pool, discharge years of its known revisions), for the case events of
        `parsed` that could break a seal (recorded at or before the latest seal)."""
        latest = seals.latest
        if latest is None:
            return {}
        named = {
            ev.payload.case_id: ev
            for _, _, ev in parsed
            if ev.event_type in CASE_LEVEL and (ev.recorded_at is None or ev.recorded_at <= latest)
        }
        out: dict[str, tuple[str | None, set[int]]] = {}
        t = index_table
        ids = sorted(named)
        with self._engine.connect() as conn:
            if ids:
                rows = conn.execute(
                    select(t.c.case_id, t.c.pool, t.c.year).where(
                        t.c.event_type == EventType.CASE_SUBMITTED, among(conn, t.c.case_id, ids)
                    )
                )
                for case_id, pool, year in rows:
                    known_pool, years = out.setdefault(case_id, (pool, set()))
                    years.add(year)
        for _, _, ev in parsed:  # revisions in the same batch count too
            if ev.event_type == EventType.CASE_SUBMITTED and ev.payload.case_id in named:
                pool, years = out.setdefault(ev.payload.case_id, (self._pools.get(ev.payload.hospital_id), set()))
                years.add(ev.payload.discharge_date.year)
        return out

    def seals(self) -> Seals:
        """Every recorded clearing, as a seal of its pool-year up to its known_at."""
        t = index_table
        if self._seals is not None and self._seals[0] == self._position:
            return self._seals[1]
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(t.c.event_id, t.c.body).where(t.c.event_type == EventType.CLEARING_COMPLETED).order_by(t.c.seq)
            ).all()
        found = []
        for event_id, body in rows:
            p = decode_stored(EventType.CLEARING_COMPLETED, body).payload
            found.append(Seal(p.pool, p.year, p.known_at, event_id))
        seals = Seals(found)
        self._seals = (self._position, seals)
        return seals

    def _claim_pools(self, accepted: list[_Entry]) -> tuple[list[_Entry], list[tuple[int, bytes, InvalidEvent]]]:
        """RULES.md 1, pools never mix, enforced by the database: each registration first
        claims its hospital id for its pool in `hospital_pools` (primary key hospital_id).
        Of two concurrent ingests registering one hospital in two pools, one claim wins; the
        other registration is refused. A claim outlives a crash before the journal write:
        it reserves the id for the pool it named, which is the rule anyway."""
        claims = {e.event.payload.hospital_id: e.event.payload.pool for e in accepted
                  if e.event.event_type == EventType.HOSPITAL_REGISTERED}
        if not claims:
            return accepted, []
        t = hospital_pools_table
        with self._engine.begin() as conn:
            stmt = _insert_ignoring(conn, t, ["hospital_id"])
            conn.execute(stmt, [{"hospital_id": h, "pool": p} for h, p in claims.items()])
            owners = dict(conn.execute(select(t.c.hospital_id, t.c.pool).where(t.c.hospital_id.in_(list(claims)))).all())
        kept: list[_Entry] = []
        moved: list[tuple[int, bytes, InvalidEvent]] = []
        for e in accepted:
            p = e.event.payload
            if e.event.event_type == EventType.HOSPITAL_REGISTERED and owners.get(p.hospital_id) != p.pool:
                moved.append((e.line, e.raw, _pool_move(e.event, owners[p.hospital_id])))
            else:
                kept.append(e)
        return kept, moved

    def complete_derivations(self, known: dict[int, Envelope] | None = None) -> int:
        """Derives what the journal implies but no one appended yet: `PenaltyImposed`.

        Tracked by journal position (`ledger_index_tracking` row `penalties`): the verdicts
        on the cases the entries after that position can change (`impacted`: a policy
        version every case of the pool-years it touches, a registration its hospital's;
        arrival order is free, EVENTS.md) are looked at. Runs after every append and
        whenever the store opens, so a crash
        between the journal write and the derivation heals on the next run. `known`: entries
        this store just appended, by journal position, so they need not be read back. Returns
        how many penalties were new.
        """
        known = known or {}
        new = 0
        for _ in range(3):  # the penalties appended move the head; the next round skips them
            self.sync_index()
            with self._engine.connect() as conn:
                done = self._tracked(conn, _PENALTIES)
                head = self._tracked(conn)
                if done >= head:
                    return new
                t = index_table
                if all(seq in known for seq in range(done + 1, head + 1)):  # the batch just appended
                    positions = [(seq, known[seq].event_type) for seq in range(done + 1, head + 1)]
                else:
                    positions = conn.execute(
                        select(t.c.seq, t.c.event_type).where(t.c.seq > done, t.c.seq <= head)).all()
                # A penalty unblocks no other: `penalty_events` reads submissions, verdicts,
                # registrations and policies only, so penalties are never looked at here.
                unread = [seq for seq, et in positions if seq not in known and et != EventType.PENALTY_IMPOSED]
                rows = []
                if unread:
                    rows = conn.execute(select(t.c.event_type, t.c.body).where(among(conn, t.c.seq, unread))).all()
            events = [known[seq] for seq, et in positions if seq in known and et != EventType.PENALTY_IMPOSED]
            events += [decode_stored(et, b) for et, b in rows]
            appended = self.derive_penalties(self.verdict_cases_impacted(events)) if events else 0
            new += appended
            with self._engine.begin() as conn:
                conn.execute(
                    update(tracking_table)
                    .where(tracking_table.c.name == _PENALTIES, tracking_table.c.notification_id == done)
                    .values(notification_id=head)
                )
            if not appended:
                return new
        return new

    def impacted(self, events: Iterable[Envelope]) -> set[tuple[str, int, str, str]]:
        """(pool, year, hospital, case) of every indexed case whose points `events` can
        change: the one impact rule (`ledger.impact`) asked of the index, so it sees the
        cases stored by earlier batches. Events that move money only are left out."""
        t = index_table
        found: set[tuple[str, int, str, str]] = set()
        with self._engine.connect() as conn:
            for where in _impact_conditions(conn, events):
                rows = conn.execute(select(t.c.pool, t.c.year, t.c.hospital_id, t.c.case_id).where(where).distinct())
                found.update((pool, year, hospital, case) for pool, year, hospital, case in rows)
        return found

    def verdict_cases_impacted(self, events: Iterable[Envelope]) -> set[str]:
        """The cases of `impacted(events)` with a verdict, and the cases the case events of
        `events` name: the only cases a penalty can be derived for (RULES.md 4). Found by
        the database: a policy version reaches every case of its pool-years, and reading
        them all (10M at province scale) only to keep the few with a verdict held GBs."""
        named: set[str] = set()
        wider: list[Envelope] = []
        for e in events:
            case_id = impact(e).case_id
            if case_id is not None:
                named.add(case_id)
            else:
                wider.append(e)
        if not wider:
            return named
        t = index_table
        with self._engine.connect() as conn:
            for where in _impact_conditions(conn, wider):
                cases = select(t.c.case_id).where(where)
                named.update(conn.execute(select(t.c.case_id).where(
                    t.c.event_type == EventType.REVIEW_VERDICT_RECORDED, t.c.case_id.in_(cases)).distinct()).scalars())
        return named

    def derive_penalties(self, case_ids: Iterable[str] | None = None) -> int:
        """Appends the `PenaltyImposed` due for violation verdicts (RULES.md 4; ledger/derivation.py).

        Looks at the verdicts on `case_ids` (every verdict when None; `complete_derivations`
        passes the cases the new entries can change, `ledger.impact`); idempotent: ids
        already recorded are skipped. The verdicts' cases are read and derived
        `_DERIVATION_CASES` at a time (each verdict needs only its case, its hospital's
        registration and its pool's policy), so memory does not grow with them. Returns how
        many penalties were new.
        """
        t = index_table
        verdicts = select(t.c.case_id).where(t.c.event_type == EventType.REVIEW_VERDICT_RECORDED)
        if case_ids is not None:
            ordered = sorted(set(case_ids))
            if not ordered:
                return 0
            with self._engine.connect() as conn:
                found = set(conn.execute(verdicts.where(among(conn, t.c.case_id, ordered)).distinct()).scalars())
        else:
            with self._engine.connect() as conn:
                found = set(conn.execute(verdicts.distinct()).scalars())
        cases = sorted(found)
        new = 0
        for i in range(0, len(cases), _DERIVATION_CASES):
            new += self.append_system_events(penalty_events(self._derivation_events(cases[i : i + _DERIVATION_CASES])))
        return new

    def _derivation_events(self, case_ids: list[str]) -> list[Envelope]:
        """What `penalty_events` reads for `case_ids`, in recording order: their submissions
        and verdicts, and their pools' registrations and policy events; the same events as
        `load(case_ids=..., event_types=...)`, in two lookups each planners serve from one
        index (load's OR over both made SQLite scan the table, 0.2 s a batch at city scale;
        the case rows are kept by type here, or SQLite scans the event-type index)."""
        t = index_table
        columns = (t.c.seq, t.c.event_type, t.c.body, t.c.pool)
        wanted = (EventType.CASE_SUBMITTED, EventType.REVIEW_VERDICT_RECORDED)
        with self._engine.connect() as conn:
            rows = [r for r in conn.execute(select(*columns).where(among(conn, t.c.case_id, case_ids))) if r[1] in wanted]
            pools = sorted({pool for _, et, _, pool in rows if et == EventType.CASE_SUBMITTED and pool is not None})
            if pools:
                rows += conn.execute(select(*columns).where(
                    t.c.event_type.in_((EventType.HOSPITAL_REGISTERED, EventType.POLICY_VERSION_PUBLISHED, EventType.COEFFICIENT_CHANGED)),
                    among(conn, t.c.pool, pools),
                )).all()
        return [decode_stored(et, body) for _, et, body, _ in sorted(rows, key=lambda r: r[0])]

    def append_system_events(self, events: Sequence[Envelope], *, now: datetime | None = None) -> int:
        """Appends ledger-written events (source `system`); an id already recorded is skipped.

        Returns how many were new. Stamps `recorded_at` with `now` when absent, and
        `ingested_at` always.
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

    def _append(
        self, entries: list[_Entry], companion: Callable[[list[_Entry]], _Entry] | None = None
    ) -> tuple[list[tuple[int, _Entry]], list[_Entry]]:
        """Journals `entries` in one transaction, one by one when an id was taken meanwhile;
        returns (done, conflicting). `companion(entries)` adds one entry to the transaction
        (`HistoryBackfilled`). `done` pairs each entry with its journal position. Their index
        rows are written before this returns.

        One transaction of any size: the PostgreSQL recorder writes with COPY, not the
        library's pipelined insert, in which psycopg 3.3.9 hung for good once one insert
        carried more than ~3-4.5 MB (tests/integration/test_hardening.py keeps a 4.5 MB batch
        in one transaction; the class of psycopg/psycopg#685).
        """
        if not entries:
            return [], []
        done: list[tuple[int, _Entry]] = []
        conflicts: list[_Entry] = []
        checkpoint("before-journal")
        chunk = entries if companion is None else [*entries, companion(entries)]
        try:
            ids = self._journal.append([e.recorded for e in chunk])
            done.extend(zip(ids, chunk, strict=True))
        except JournalConflict:
            for e in chunk:
                try:
                    (nid,) = self._journal.append([e.recorded])
                except JournalConflict:
                    conflicts.append(e)
                else:
                    done.append((nid, e))
        checkpoint("journal")
        self._sync(done)
        checkpoint("index")
        return done, conflicts

    def _dead_letter(
        self, refused: list[tuple[int, bytes, InvalidEvent]], origin: Origin, stamp: datetime, report: IngestReport
    ) -> None:
        """Keeps each refused line once per (origin, sha256 of its raw bytes): a file ingested
        again, or a Kafka record redelivered, is reported again but stored once. A line over
        1 MiB keeps its first 1 MiB, its length and its sha256 (EVENTS.md "Limits on input")."""
        if not refused:
            return
        rows = {}
        for line, raw, exc in refused:
            where = _origin(origin, line)
            digest = hashlib.sha256(raw).hexdigest()
            rows[(where, digest)] = {
                "received_at": stamp,
                "origin": where,
                "event_id": _printable(exc.event_id),
                "field": exc.field,
                "reason": _printable(exc.reason),
                "raw": raw[:MAX_LINE_BYTES],
                "raw_length": len(raw),
                "raw_sha256": digest,
            }
        with self._engine.begin() as conn:
            conn.execute(_insert_ignoring(conn, dead_letters_table, ["origin", "raw_sha256"]), list(rows.values()))
            _consume(conn, [where for where, _ in rows], "dead-letter")
        report.rejected.extend(Rejection(line, exc.event_id, exc.field, exc.reason) for line, _, exc in refused)

    def record_consumed(self, origins: Iterable[str], fate: str) -> None:
        """Records the fate of consumed Kafka records that leave no journal entry or dead
        letter (`duplicate`, `blank`); other origins are ignored, a fate already known kept.
        Losing it in a crash is harmless: redelivery finds the same fate again."""
        origins = list(origins)
        if origins:
            with self._engine.begin() as conn:
                _consume(conn, origins, fate)

    def dead_letter(self, refused: Sequence[tuple[str, int, bytes, InvalidEvent]], *, now: datetime | None = None) -> None:
        """Keeps messages refused before they reach `ingest` (a bad signature, streams/signing.py):
        (origin prefix, line or offset, raw bytes, why), once per (origin, sha256) like any refusal."""
        stamp = _utc(now) if now is not None else datetime.now(UTC)
        by_origin: dict[str, list[tuple[int, bytes, InvalidEvent]]] = {}
        for origin, line, raw, exc in refused:
            by_origin.setdefault(origin, []).append((line, raw, exc))
        for origin, items in by_origin.items():
            self._dead_letter(items, origin, stamp, IngestReport())

    def stored_event_ids(self, event_ids: Iterable[str]) -> set[str]:
        """Those of `event_ids` the ledger holds (`drg-ledger publish --resume`)."""
        self.sync_index()
        return set(self._stored_hashes(event_ids))

    def _stored_hashes(self, event_ids: Iterable[str]) -> dict[str, str]:
        """event_id -> submitted content hash, for those already indexed (chunked IN lookups)."""
        ids = list(dict.fromkeys(event_ids))
        found: dict[str, str] = {}
        t = index_table
        if not ids:
            return found
        with self._engine.connect() as conn:
            for eid, h in conn.execute(select(t.c.event_id, t.c.content_hash).where(among(conn, t.c.event_id, ids))):
                found[eid] = h
        return found

    def _same_as_stored(self, event_id: str, submitted_hash: str, stored_hash: str) -> bool:
        """Same content: as first submitted, or as recorded (the sender now sends the
        `recorded_at` the ledger stamped; `ingested_at` is the ledger's, never the sender's)."""
        if submitted_hash == stored_hash:
            return True
        with self._engine.connect() as conn:
            row = conn.execute(
                select(index_table.c.event_type, index_table.c.body).where(index_table.c.event_id == event_id)
            ).one()
        recorded = decode_stored(row[0], row[1]).model_copy(update={"ingested_at": None})
        return submitted_hash == _canonical(recorded)[1]

    # ----------------------------------------------------------------------- the index

    def sync_index(self) -> int:
        """Applies the journal entries the index has not seen yet; returns how many."""
        if self._opened is None and self._index_current():
            return 0
        return self._sync([])

    def _index_current(self) -> bool:
        """Whether the index has applied the journal's last entry, asked of the tables (on
        PostgreSQL, whose journal table is `journal_events` as in `_journal_ready`) instead of
        opening the journal to read nothing after the index position. Like `_sync`, it takes
        the index position and, when that moved, the hospitals' pools that `ingest` checks."""
        if self._engine.dialect.name != "postgresql":
            return False
        with self._engine.connect() as conn:
            position = self._tracked(conn)
            if position != self._position:
                self._pools = self.registered_pools(conn)
                self._position = position
            head = conn.execute(text("SELECT coalesce(max(notification_id), 0) FROM journal_events")).scalar_one()
        return int(head) <= position

    def catch_up_projection(self) -> int:
        """Brings the case-points projection up to the index (after a crash, or on a store
        that predates it); returns how many index rows it applied."""
        from projections.case_versions import catch_up

        return catch_up(self, self._projector)

    def checked_read(self, after: int, limit: int) -> list[tuple[int, LedgerEntry.Recorded]]:
        """`Journal.read`, every entry checked against the hash chain first (raises `BrokenEntry`)."""
        return checked_read(self._journal, self._engine, after, limit)

    def check_chain(self) -> int:
        """Walks the whole journal against its hash chain; raises `BrokenEntry` at the first
        entry that does not match; returns how many entries were checked."""
        after, n = 0, 0
        while True:
            page = self.checked_read(after, _PAGE)
            n += len(page)
            if len(page) < _PAGE:
                return n
            after = page[-1][0]

    def rebuild_index(self) -> int:
        """Empties the index and rebuilds it from the journal alone; returns its rows.

        The whole journal is checked against its hash chain first: a broken entry raises
        `BrokenEntry` and the index is left as it was; nothing altered is ever copied. The
        case-points projection is rebuilt with it."""
        from projections import case_versions

        self.check_chain()
        with self._engine.begin() as conn:
            case_versions.clear_rows(conn)
            conn.execute(delete(index_table))
            conn.execute(delete(consumed_offsets_table).where(consumed_offsets_table.c.fate == "accepted"))
            conn.execute(update(tracking_table).where(tracking_table.c.name == _INDEX).values(notification_id=0))
        self._position = -1
        return self._sync([])

    def rebuild(self) -> dict[str, int]:
        """Rebuilds everything derived from the journal alone: the index, the pool claims,
        and the penalties (every verdict looked at again). Returns what it did."""
        events = self.rebuild_index()
        claims = self._claim_registered()
        with self._engine.begin() as conn:
            conn.execute(update(tracking_table).where(tracking_table.c.name == _PENALTIES).values(notification_id=0))
        penalties = self.complete_derivations()
        return {"events": events, "pool_claims": claims, "penalties": penalties}

    def _claim_registered(self) -> int:
        """Claims every journalled registration's hospital for its pool (missing claims only)."""
        pools = self.hospitals()
        if not pools:
            return 0
        t = hospital_pools_table
        with self._engine.begin() as conn:
            before = conn.execute(select(func.count()).select_from(t)).scalar_one()
            conn.execute(_insert_ignoring(conn, t, ["hospital_id"]),
                         [{"hospital_id": h, "pool": p.pool} for h, p in pools.items()])
            return int(conn.execute(select(func.count()).select_from(t)).scalar_one() - before)

    def doctor(self, *, repair: bool = True) -> list[Check]:
        """Checks the store and, with `repair`, mends what can be derived again.

        The index has applied the whole journal; every entry has its index row; penalties
        are derived up to the index position and none is missing; every registration's
        hospital is claimed for its pool and no claim contradicts one; the database
        constraints the ledger relies on exist.
        """
        checks: list[Check] = []
        head, position = self._journal.head(), self.position
        if position == head:
            checks.append(Check("index caught up", "ok", f"at journal position {head:,}"))
        elif repair:
            n = self.sync_index()
            checks.append(Check("index caught up", "repaired", f"applied {n:,} journal entries ({position:,} -> {head:,})"))
        else:
            checks.append(Check("index caught up", "problem", f"index at {position:,}, journal at {head:,}"))
        with self._engine.connect() as conn:
            rows = conn.execute(select(func.count()).select_from(index_table)).scalar_one()
            done = self._tracked(conn, _PENALTIES)
        entries = self._journal.count()
        if rows == entries:
            checks.append(Check("index rows", "ok", f"{rows:,} rows for {entries:,} journal entries"))
        elif repair:
            n = self.rebuild_index()
            checks.append(Check("index rows", "repaired", f"{rows:,} rows for {entries:,} entries: rebuilt, {n:,} rows"))
        else:
            checks.append(Check("index rows", "problem", f"{rows:,} rows for {entries:,} journal entries"))
        if repair:
            lagging = done < self.position
            tracked = self.complete_derivations()
            missing = self.derive_penalties()
            if tracked or missing or lagging:
                checks.append(Check("penalties derived", "repaired",
                                    f"derivation was at position {done:,}; {tracked + missing:,} missing penalties appended"))
            else:
                checks.append(Check("penalties derived", "ok", f"up to journal position {done:,}"))
        else:
            status = "ok" if done >= self.position else "problem"
            checks.append(Check("penalties derived", status, f"derivation at {done:,}, index at {self.position:,}"))
        registered = {h: p.pool for h, p in self.hospitals().items()}
        with self._engine.connect() as conn:
            claims = dict(conn.execute(select(hospital_pools_table.c.hospital_id, hospital_pools_table.c.pool)).all())
        contradicted = sorted(h for h, pool in registered.items() if h in claims and claims[h] != pool)
        unclaimed = sorted(h for h in registered if h not in claims)
        if contradicted:
            checks.append(Check("pools never mix", "problem", f"claims contradict registrations: {', '.join(contradicted[:10])}"))
        elif unclaimed and repair:
            n = self._claim_registered()
            checks.append(Check("pools never mix", "repaired", f"{n} registered hospitals claimed for their pools"))
        elif unclaimed:
            checks.append(Check("pools never mix", "problem", f"{len(unclaimed)} registered hospitals unclaimed"))
        else:
            checks.append(Check("pools never mix", "ok", f"{len(registered)} hospitals, each claimed by its pool"))
        checks.append(self._projection_check(repair))
        checks.append(self._constraints_check(repair))
        return checks

    def _projection_check(self, repair: bool) -> Check:
        """The case-points projection at the index position (it moves in the index's transaction)."""
        from projections import case_versions

        with self._engine.connect() as conn:
            at = case_versions.position(conn)
        position = self.position
        if at == position:
            return Check("case-points projection caught up", "ok", f"at journal position {at:,}")
        if not repair:
            return Check("case-points projection caught up", "problem", f"projection at {at:,}, index at {position:,}")
        n = self.catch_up_projection()
        return Check("case-points projection caught up", "repaired", f"applied {n:,} index rows ({at:,} -> {position:,})")

    def _constraints_check(self, repair: bool) -> Check:
        from sqlalchemy import inspect

        def missing() -> list[str]:
            insp = inspect(self._engine)
            uniques = {ix["name"] for ix in insp.get_indexes(dead_letters_table.name) if ix.get("unique")}
            absent = [] if "ux_dead_letters_origin_raw" in uniques else ["ux_dead_letters_origin_raw"]
            if not insp.get_pk_constraint(hospital_pools_table.name).get("constrained_columns"):
                absent.append("hospital_pools primary key")
            index_unique = {tuple(c["column_names"]) for c in insp.get_unique_constraints(index_table.name)}
            index_unique |= {tuple(ix["column_names"]) for ix in insp.get_indexes(index_table.name) if ix.get("unique")}
            if ("event_id",) not in index_unique:
                absent.append("ledger_index unique event_id")
            return absent

        absent = missing()
        if not absent:
            return Check("constraints present", "ok", "unique dead letters, one pool per hospital, unique event ids")
        if repair and absent == ["ux_dead_letters_origin_raw"]:
            for ix in dead_letters_table.indexes:
                ix.create(self._engine, checkfirst=True)
            return Check("constraints present", "repaired", "created ux_dead_letters_origin_raw")
        return Check("constraints present", "problem", f"missing: {', '.join(absent)}")

    def _sync(self, fresh: list[tuple[int, _Entry]]) -> int:
        """Catches the index up with the journal, one transaction per page.

        `fresh` are entries this store just journalled, with their notification ids: when
        they follow the index position directly their rows are built without reading them
        back. The tracking row moves in the same transaction as the rows, guarded by its
        old value, so concurrent catch-ups never apply an entry twice; the case-points
        projection (projections/case_versions.py) moves in that transaction too. With
        `fresh`, the position last seen is tried first (the guard catches a stale one) and the
        catch-up ends once they are applied: the next `sync_index` reads what others appended since.
        """
        from projections import case_versions
        applied = 0
        cached = bool(fresh) and self._position >= 0
        while True:
            if cached:
                position, cached = self._position, False
            else:
                with self._engine.connect() as conn:
                    position = self._tracked(conn)
                    if position != self._position:
                        self._pools = self.registered_pools(conn)
                        self._position = position
            fresh = [(nid, e) for nid, e in fresh if nid > position]
            own = bool(fresh) and fresh[0][0] == position + 1 and fresh[-1][0] == position + len(fresh)
            if own:
                batch = [(nid, e.event, e.body, e.submitted_hash, e.recorded.origin) for nid, e in fresh]
                fresh = []
            else:
                # Each entry is checked against its chain row before it is copied: an entry
                # altered behind the ledger's back raises BrokenEntry instead (projections/chain.py).
                batch = [
                    (nid, decode_stored(r.event_type, r.envelope), r.envelope, r.content_hash, r.origin)
                    for nid, r in self.checked_read(position, _PAGE)
                ]
                if not batch:
                    return applied
            pools = dict(self._pools)
            rows = [_index_row(nid, ev, body, h, pools) for nid, ev, body, h, _ in batch]
            try:
                with self._engine.begin() as conn:
                    moved = conn.execute(
                        update(tracking_table)
                        .where(tracking_table.c.name == _INDEX, tracking_table.c.notification_id == position)
                        .values(notification_id=rows[-1]["seq"])
                    ).rowcount
                    if moved != 1:
                        raise _IndexMoved
                    _write_index(conn, rows)
                    # The fate of each consumed record, with its entry's index row.
                    _consume(conn, [o for *_, o in batch if o], "accepted")
                    # The case-points projection moves with the index, when it was at its position.
                    if case_versions.move(conn, position, rows[-1]["seq"]):
                        self._projector.apply(conn, [(nid, ev) for nid, ev, *_ in batch], pools, after=position)
                    checkpoint("projection")
            except _IndexMoved:
                self._position = -1
                continue
            self._position = rows[-1]["seq"]
            self._pools = pools
            applied += len(rows)
            self._keep_statistics()
            if own:
                return applied

    def _keep_statistics(self) -> None:
        """On PostgreSQL, ANALYZEs the index and the case-points projection once the index has
        doubled (and grown by at least `_ANALYZE_ROWS`) since this store last saw its
        statistics. A bulk load outruns autovacuum: with the statistics of a table a hundredth
        of its size, the derivation's lookup of a batch's cases scanned every CaseSubmitted row
        (0.2 s a batch at city scale instead of 8 ms); with none on the projection, a clearing
        of 734k rows went through the pool-year index (3.3 s instead of 0.53 s). Only the owner
        may ANALYZE; the application role gets a warning."""
        from projections import case_versions

        if self._engine.dialect.name != "postgresql":
            return
        if self._analyzed < 0:
            self._analyzed = self._position  # as the store was opened: autovacuum's to keep
        if self._position < max(2 * self._analyzed, self._analyzed + _ANALYZE_ROWS):
            return
        with self._engine.connect() as conn:
            conn.execute(text(f"ANALYZE {_INDEX}, {case_versions.NAME}"))
            conn.commit()
        self._analyzed = self._position

    @staticmethod
    def _tracked(conn: Connection, name: str = _INDEX) -> int:
        t = tracking_table
        return int(conn.execute(select(t.c.notification_id).where(t.c.name == name)).scalar_one())

    @property
    def position(self) -> int:
        """The journal position the index has applied (what a read of the index rests on)."""
        with self._engine.connect() as conn:
            return self._tracked(conn)

    @staticmethod
    def registered_pools(conn: Connection) -> dict[str, str]:
        t = index_table
        rows = conn.execute(
            select(t.c.hospital_id, t.c.pool).where(t.c.event_type == EventType.HOSPITAL_REGISTERED).order_by(t.c.seq)
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
        cases = select(t.c.case_id).where(t.c.event_type == EventType.CASE_SUBMITTED)
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
                select(t.c.pool).where(t.c.event_type == EventType.HOSPITAL_REGISTERED, t.c.hospital_id == hospital_id)
            )
        elif ids is not None:
            pools = t.c.pool.in_(select(t.c.pool).where(t.c.event_type == EventType.CASE_SUBMITTED, t.c.case_id.in_(ids)))
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
            return [decode_stored(event_type, body) for event_type, body in conn.execute(query)]

    def replay(self, known_at: datetime | None = None, until: int | None = None) -> Iterator[Envelope]:
        """Every event from the journal's notification log, in recording order (cold path:
        no index). `known_at` keeps those recorded at or before it; `until` stops after that
        journal position."""
        cut = _utc(known_at) if known_at is not None else None
        for _, event_type, envelope in self.replay_envelopes(until):
            ev = decode_stored(event_type, envelope)
            if cut is None or ev.recorded_at <= cut:
                yield ev

    def replay_envelopes(self, until: int | None = None) -> Iterator[tuple[int, str, str]]:
        """(position, event_type, envelope JSON) of every journal entry up to position `until`,
        in recording order, each checked against the hash chain first: the cold path trusts
        no unchecked entry either (projections/chain.py `checked_envelopes`)."""
        after = 0
        while True:
            page = checked_envelopes(self._journal, self._engine, after, _PAGE)
            for entry in page:
                if until is not None and entry[0] > until:
                    return
                yield entry
            if len(page) < _PAGE:
                return
            after = page[-1][0]

    def event(self, event_id: str) -> Envelope | None:
        """The recorded event `event_id`, if any."""
        t = index_table
        with self._engine.connect() as conn:
            row = conn.execute(select(t.c.event_type, t.c.body).where(t.c.event_id == event_id)).first()
        return None if row is None else decode_stored(row[0], row[1])

    def hospitals(self) -> dict[str, Any]:
        """hospital_id -> its HospitalRegistered payload (the last recorded wins)."""
        t = index_table
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(t.c.event_type, t.c.body).where(t.c.event_type == EventType.HOSPITAL_REGISTERED).order_by(t.c.seq)
            )
            payloads = [decode_stored(et, body).payload for et, body in rows]
        return {p.hospital_id: p for p in payloads}

    def dead_letters(
        self, limit: int = 100, *, since: datetime | None = None, reason: str | None = None
    ) -> list[DeadLetter]:
        """The latest refused lines, newest first; `since` keeps those received at or after
        it, `reason` those whose field or reason contains the text."""
        t = dead_letters_table
        query = select(t).order_by(t.c.id.desc()).limit(limit)
        if since is not None:
            query = query.where(t.c.received_at >= _utc(since))
        if reason:
            query = query.where(or_(t.c.reason.contains(reason, autoescape=True),
                                    t.c.field.contains(reason, autoescape=True)))
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings()
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
                "SQLITE_LOCK_TIMEOUT": "30", "APPLICATION_RECORDER_TOPIC": RECORDER_TOPICS["eventsourcing.sqlite"]}
    if not url.database:
        raise ValueError(f"database URL names no database: {database_url!r}")
    query = {k: (v if isinstance(v, str) else " ".join(v)) for k, v in url.query.items()}
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        # The hash chain and append-only triggers ride on the library's insert (projections/chain.py).
        "APPLICATION_RECORDER_TOPIC": RECORDER_TOPICS["eventsourcing.postgres"],
        "POSTGRES_DBNAME": url.database,
        "POSTGRES_HOST": url.host or query.get("host", "127.0.0.1"),
        "POSTGRES_PORT": str(url.port or query.get("port", 5432)),
        "POSTGRES_USER": url.username or query.get("user", os.environ.get("PGUSER", "postgres")),
        "POSTGRES_PASSWORD": url.password or "",
        # Journal writes are sequential within one ledger process.
        "POSTGRES_POOL_SIZE": "1",
        "POSTGRES_MAX_OVERFLOW": "2",
        # Nothing hangs (issue: hardening): connecting, waiting for the journal's table lock,
        # and a transaction left idle are all bounded.
        "POSTGRES_CONNECT_TIMEOUT": "10",
        "POSTGRES_LOCK_TIMEOUT": "30",
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "60",
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
            cur.execute(SQLITE_CACHE)
            cur.execute(SQLITE_MMAP)
            cur.close()

        return engine
    engine = create_engine(url.set(drivername="postgresql+psycopg"), pool_size=2, max_overflow=2,
                           connect_args={"connect_timeout": 10})
    timeout_s = int(os.environ.get(STATEMENT_TIMEOUT_ENV) or DEFAULT_STATEMENT_TIMEOUT_S)

    @event.listens_for(engine, "connect")
    def _timeouts(dbapi_conn: Any, _record: Any) -> None:
        # Every statement and every lock wait is bounded: no call of the store hangs for good.
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET statement_timeout = {timeout_s * 1000}")
            cur.execute("SET lock_timeout = 30000")
            cur.execute("SET idle_in_transaction_session_timeout = 60000")
        dbapi_conn.commit()

    return engine


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


def _journal_ready(conn: Connection) -> bool:
    """On PostgreSQL: the journal, its chain, the lock function and the triggers exist."""
    if conn.dialect.name != "postgresql":
        return False
    return bool(conn.execute(text(
        "SELECT to_regclass('journal_events_chain') IS NOT NULL AND to_regprocedure('journal_events_lock()') "
        "IS NOT NULL AND (SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass('journal_events') "
        "AND NOT tgisinternal) = 3"
    )).scalar_one())


def _tracking_rows() -> tuple[str, ...]:
    """The rows of `tracking_table`: the index, the penalties derived, the case-points projection."""
    from projections import case_versions  # its table is on `metadata` too

    return (_INDEX, _PENALTIES, case_versions.NAME)


def _store_ready(engine: Engine) -> bool:
    """On PostgreSQL, whether opening has nothing to create: every table of `metadata`, the
    tracking rows and the journal (`_journal_ready`) exist. Two queries on one connection
    instead of the schema lock, `create_all`'s look-ups and the tracking rows one by one."""
    if engine.dialect.name != "postgresql":
        return False
    rows = _tracking_rows()  # imports the projection, whose table is on `metadata`
    names = sorted(metadata.tables)
    with engine.connect() as conn:
        present = conn.execute(text(
            "SELECT count(*) FROM unnest(CAST(:names AS text[])) AS t(name) WHERE to_regclass(quote_ident(t.name)) "
            "IS NOT NULL"), {"names": names}).scalar_one()
        if present != len(names) or not _journal_ready(conn):
            return False
        t = tracking_table
        return conn.execute(select(func.count()).select_from(t).where(t.c.name.in_(rows))).scalar_one() == len(rows)


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


def _origin(origin: Origin, line: int) -> str:
    if callable(origin):
        return origin(line)
    return f"{origin}{line}" if origin.endswith((":", "/")) else f"{origin}:{line}"


def _canonical(ev: Envelope) -> tuple[str, str]:
    """The event's canonical JSON and its content hash, computed once (`content_hash` is the
    SHA-256 of `canonical_json`; a test pins that)."""
    body = canonical_json(ev)
    return body, _sha256(body)


def _entry(
    ev: Envelope, body: str, submitted_hash: str, stamp: datetime, *, line: int = 0, raw: bytes = b"",
    origin: str | None = None,
) -> _Entry:
    """The entry for an event as submitted (`body`, `submitted_hash`): recorded with
    `recorded_at` stamped when absent and `ingested_at` always (EVENTS.md "Envelope")."""
    recorded_hash = submitted_hash
    if ev.recorded_at is None:
        recorded_hash = _canonical(stamped(ev, stamp))[1]  # what a sender resending it would send
    body = ingested_json(ev, body, stamp)
    ev = ingested(ev, stamp)
    recorded = Entry(ev.event_id, ev.event_type, body, submitted_hash, origin)
    return _Entry(ev, body, submitted_hash, recorded_hash, recorded, line, raw)


def _storable(row: dict[str, Any]) -> None:
    """Refuses, before anything is written, what a database would choke on after the journal
    committed: text with NUL (PostgreSQL) or a lone surrogate (not UTF-8)."""
    for name, value in row.items():
        if isinstance(value, str):
            if "\x00" in value:
                raise InvalidEvent(name, "holds a NUL character")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidEvent(name, "is not valid Unicode (a lone surrogate)") from None


def _plain(body: str) -> bool:
    """The recorded body holds no NUL and no lone surrogate, so neither does any text column
    of its index row (each is a string of the body; its pool, when looked up, was checked
    with its registration): `_storable` of the row can be skipped. JSON escapes NUL as
    `\\u0000`; a body that holds that text (even as an escaped backslash) is checked in full."""
    if "\\u0000" in body:
        return False
    if body.isascii():
        return True
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _backfill_entry(backfill: Backfill, entries: list[_Entry], origin: str, stamp: datetime) -> _Entry:
    """The `HistoryBackfilled` journalled with a transaction of a backfill (EVENTS.md
    "Transaction time, seals and backfill"); its id is derived from what it covers."""
    moments = [e.event.recorded_at for e in entries]
    covered = hashlib.sha256("\n".join(e.event.event_id for e in entries).encode()).hexdigest()[:32]
    ev = ENVELOPES[EventType.HISTORY_BACKFILLED](
        event_id=f"backfill:{backfill.file_sha256[:16]}:{covered}",
        event_type=EventType.HISTORY_BACKFILLED,
        recorded_at=stamp,
        source="system",
        payload={
            "run_by": backfill.run_by,
            "file_sha256": backfill.file_sha256,
            "events": len(entries),
            "recorded_from": min(moments),
            "recorded_to": max(moments),
            "origin": origin,
        },
    )
    return _entry(ev, *_canonical(ev), stamp)


def kafka_origin(origin: str) -> tuple[str, int, int] | None:
    """`kafka:<topic>/<partition>/<offset>` -> (topic, partition, offset); None for other origins."""
    if not origin.startswith("kafka:"):
        return None
    topic, _, rest = origin[6:].rpartition("/")
    topic, _, partition = topic.rpartition("/")
    if not topic or not partition.isdigit() or not rest.isdigit():
        return None
    return topic, int(partition), int(rest)


def _consume(conn: Connection, origins: Iterable[str], fate: str) -> None:
    """`consumed_offsets` rows for the Kafka origins among `origins` (a fate already recorded stays)."""
    rows = {}
    for o in origins:
        where = kafka_origin(o)
        if where is not None:
            rows[where] = {"topic": where[0], "partition": where[1], "offset": where[2], "fate": fate}
    if rows:
        conn.execute(_insert_ignoring(conn, consumed_offsets_table, ["topic", "partition", "offset"]), list(rows.values()))


def among(conn: Connection | Engine, column: Any, values: Sequence[Any]) -> Any:
    """`column IN values` as one bound parameter, however many values: `= ANY(array)` on
    PostgreSQL, `IN (SELECT value FROM json_each(...))` on SQLite. One statement text for
    every length (an IN list is a new statement to plan per length and per 900 values).
    On PostgreSQL an array of text or of integers is sent as its text form (`_pg_array`),
    one value psycopg need not dump element by element in Python (2% of a city ingest);
    the statement and its plan are the same."""
    if conn.dialect.name == "postgresql":
        written = _pg_array(values)
        if written is not None:
            return column == any_(literal(written, _ArrayAsText(column.type)))
        return column == any_(literal(list(values), ARRAY(column.type)))
    listed = func.json_each(literal(json.dumps(list(values)))).table_valued("value")
    return column.in_(select(listed.c.value))


class _ArrayAsText(TypeDecorator[Any]):
    """SQLAlchemy's ARRAY (the same `::type[]` in the statement) for a value given as its text:
    psycopg sends a `str` untyped, and PostgreSQL reads it as the array the cast names."""

    impl = ARRAY
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None


def _pg_array(values: Sequence[Any]) -> str | None:
    """PostgreSQL's text form of an array of `values` (`{"a","b\\"c"}`, `{1,2}`), or None
    unless they are all `str` or all `int`. Every text value is quoted, so none reads as NULL;
    a backslash or a double quote in one is escaped by a backslash (PostgreSQL "Arrays": Array
    Value Input)."""
    if all(type(v) is str for v in values):
        joined = "".join(values)
        if "\\" in joined or '"' in joined:
            values = [v.replace("\\", "\\\\").replace('"', '\\"') for v in values]
        return '{"' + '","'.join(values) + '"}' if values else "{}"
    if all(type(v) is int for v in values):
        return "{" + ",".join(map(str, values)) + "}"
    return None


def _impact_conditions(conn: Connection, events: Iterable[Envelope]) -> list[Any]:
    """The index's CaseSubmitted rows (of a known pool) whose case `events` can change
    (`ledger.impact`): a case event its case, a policy version or coefficient change the
    pool-years it touches, narrowed to its hospital; as a few WHERE clauses, 50 events each."""
    t = index_table
    conditions: list[Any] = []
    case_ids: set[str] = set()
    for e in events:
        effect = impact(e)
        if effect.case_id is not None:  # its years are the index's to say
            case_ids.add(effect.case_id)
            continue
        if effect.changes_nothing or not effect.points:
            continue
        c: list[Any] = [t.c.pool == effect.pool]
        if effect.years is not None:
            c.append(t.c.year.between(min(effect.years), max(effect.years)))  # intervals are contiguous
        if effect.hospital_id is not None:
            c.append(t.c.hospital_id == effect.hospital_id)
        conditions.append(and_(*c))
    ids = sorted(case_ids)
    if ids:
        conditions.append(among(conn, t.c.case_id, ids))
    return [and_(t.c.event_type == EventType.CASE_SUBMITTED, t.c.pool.is_not(None), or_(*conditions[i : i + 50]))
            for i in range(0, len(conditions), 50)]


def _insert_ignoring(conn: Connection, table: Table, keys: list[str]) -> Any:
    """INSERT that skips rows whose `keys` already exist (ON CONFLICT DO NOTHING)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=keys)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing(index_elements=keys)


def _printable(text: str | None) -> str | None:
    """Text safe for every database (no NUL, no lone surrogate), for reasons and ids of refusals."""
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _days(window: timedelta) -> str:
    days = window.total_seconds() / 86400
    return f"{days:g} days"


def _unparseable(exc: Exception) -> InvalidEvent:
    """A parser failure that is not an `InvalidEvent` is still only the line's refusal."""
    return InvalidEvent("", f"cannot be parsed: {type(exc).__name__}: {str(exc)[:200]}")


def _unrecordable(ev: Envelope, exc: Exception) -> InvalidEvent:
    """An accepted-looking event the store cannot record is refused, never half-applied."""
    return InvalidEvent("", f"cannot be recorded: {type(exc).__name__}: {str(exc)[:200]}", ev.event_id)


def _read_line(data: bytes) -> Envelope | InvalidEvent:
    """One inbound line as its event, or why it is refused (`ingest` and `screen`): a line
    can only ever be refused, whatever the parser raises (EVENTS.md "Bad input")."""
    try:
        return _parse_inbound(data)
    except InvalidEvent as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - a line can only ever be refused (EVENTS.md)
        return _unparseable(exc)


def _parse_inbound(data: bytes) -> Envelope:
    """One inbound line parsed; ledger-written types are refused from outside (EVENTS.md "Payloads")."""
    ev = parse_event(data)
    _storable({"event_id": ev.event_id})  # the duplicate lookup queries by it
    if ev.event_type in LEDGER_WRITTEN:
        raise InvalidEvent(
            "event_type", f"{ev.event_type} is written by the ledger, refused from {ev.source}", ev.event_id
        )
    return ev


def _index_row(seq: int, ev: Envelope, body: str, submitted_hash: str, pools: dict[str, str]) -> dict[str, Any]:
    """The index row of a journalled event; `pools` (hospital -> pool) follows registrations.

    A case event's pool is its hospital's (RULES.md 1); `year` is the discharge year of a
    case, the year of a budget or clearing, the payment year of a prepayment.
    """
    p = ev.payload
    fields = type(p).model_fields  # not getattr(p, name, None): a pydantic miss raises, ~3 us
    hospital_id = p.hospital_id if "hospital_id" in fields else None
    pool = p.pool if "pool" in fields else None
    if pool is None and hospital_id is not None:
        pool = pools.get(hospital_id)
    if ev.event_type == EventType.HOSPITAL_REGISTERED:
        pools[hospital_id] = pool
    year: int | None = None
    if ev.event_type == EventType.CASE_SUBMITTED:
        year = p.discharge_date.year
    elif ev.event_type in (EventType.BUDGET_SET, EventType.CLEARING_COMPLETED):
        year = p.year
    elif ev.event_type == EventType.PREPAYMENT_MADE:
        year = p.paid_on.year
    return {
        "seq": seq,
        "event_id": ev.event_id,
        "event_type": ev.event_type,
        "recorded_at": ev.recorded_at,
        "ingested_at": getattr(ev, "ingested_at", None),
        "source": ev.source,
        "pool": pool,
        "hospital_id": hospital_id,
        "case_id": p.case_id if "case_id" in fields else None,
        "year": year,
        "content_hash": submitted_hash,
        "body": body,
    }


def _pg_type(column: Column[Any]) -> str:
    """The PostgreSQL type a binary COPY writes a column's Python values as."""
    kind = column.type
    if isinstance(kind, UtcDateTime):
        return "timestamptz"
    if isinstance(kind, (BigInteger, Integer)):
        return "int8" if isinstance(kind, BigInteger) or column.name == "seq" else "int4"
    if isinstance(kind, Boolean):
        return "bool"
    if isinstance(kind, Date):
        return "date"
    return "text"


def bulk_insert(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Inserts rows of `table` in bulk, in `conn`'s transaction: a binary COPY on PostgreSQL,
    one executemany of plain tuples on SQLite (instants as `UtcDateTime` stores them, dates
    as ISO text). The values are picked by one `itemgetter` a row; on SQLite only the instant
    and date columns are then converted, each distinct instant once."""
    if not rows:
        return
    columns = list(table.columns)
    names = [c.name for c in columns]
    values = map(itemgetter(*names), rows) if len(names) > 1 else ((row[names[0]],) for row in rows)
    dbapi = conn.connection.driver_connection
    if conn.dialect.name == "postgresql":
        quoted = ", ".join(f'"{c}"' for c in names)
        with dbapi.cursor() as cur, cur.copy(f"COPY {table.name} ({quoted}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([_pg_type(c) for c in columns])
            for value in values:
                copy.write_row(value)
        return
    instant = UtcDateTime().process_bind_param
    dialect = conn.dialect
    timed = [i for i, c in enumerate(columns) if isinstance(c.type, UtcDateTime)]
    dated = [i for i, c in enumerate(columns) if isinstance(c.type, Date)]
    texts: dict[datetime, str] = {}  # equal instants store the same UTC text, whatever their zone

    def stored(value: tuple[Any, ...]) -> tuple[Any, ...] | list[Any]:
        out = list(value)
        for i in timed:
            v = out[i]
            if v is not None:
                text = texts.get(v)
                if text is None:
                    text = texts[v] = instant(v, dialect)
                out[i] = text
        for i in dated:
            if out[i] is not None:
                out[i] = out[i].isoformat()
        return out

    cur = dbapi.cursor()
    try:
        cur.executemany(
            f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            [stored(v) for v in values] if timed or dated else list(values),
        )
    finally:
        cur.close()


def _write_index(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Inserts index rows in bulk (`bulk_insert`)."""
    bulk_insert(conn, index_table, rows)


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
