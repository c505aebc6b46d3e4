"""The warm projection: one row per live case of a pool-year with its points as known now.

A year-end clearing (RULES.md 5) needs, per hospital, the sums of settled points, deducted
points and personal payments over the year's cases. Folding a city's 300,000 cases from
their events takes tens of seconds; summing rows that hold each case's settled figures is
one `GROUP BY hospital_id`. A balance (RULES.md 6) reads one row of each of two to-date
tables (a hospital's and the pool's sums from 1 January to each discharge day), written
with the case rows. `refresh` computes all of them from the events with the pure core
(`ledger.clearing.settle`), so they are rebuilt from the journal alone (through its
index); `warm_clearing` and `warm_balance` read sums with SQL and turn them into money
with the very functions the event path uses (`clearing_of`, `balance_of`).

What a row reflects is tracked per pool-year: the last journal position read, the
`known_at` of the refresh, and `valid_until`, the first moment an event already in the
journal but recorded later than `known_at` becomes known. The projection is stale when
that moment has passed, or when the journal has, after the position, an event that could
change a case row: a submission, withdrawal or verdict of one of its cases (or a new case
of the pool in the year), a policy version or coefficient change of the pool, or any
registration (a grade change moves coefficients; a hospital may change pool). Budgets,
prepayments and recorded clearings never change a case row: they are read from the events
at query time, as known now. A stale projection is refused (`StaleProjection`) unless the
caller asks for a refresh.

Case points depend on the other cases of the same hospital only (the incentive cap of seed
001 二(二) counts the hospital's cases), so `refresh` settles the year hospital group by
hospital group, in chunks of about `chunk_cases` cases: memory stays bounded at any scale
and the rows equal one settlement of the whole year.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    Dialect,
    Float,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    TypeDecorator,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    union,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.types import TypeEngine

from ledger.clearing import (
    ZERO,
    Balance,
    CaseSums,
    Clearing,
    ClearingError,
    PoolYear,
    add_prepaid,
    balance_of,
    clearing_of,
    gc_paused,
    settle,
)
from ledger.events import ENVELOPES
from projections.queries import NotFound
from projections.store import POOL_LEVEL, UtcDateTime, index_table

if TYPE_CHECKING:
    from projections.store import LedgerStore

CASE_EVENTS = ("CaseSubmitted", "CaseWithdrawn", "ReviewVerdictRecorded")
"""The case events `settle` reads (PenaltyImposed is recomputed from the verdict, RULES.md 4)."""
CASE_ROW_POOL_EVENTS = ("HospitalRegistered", "PolicyVersionPublished", "CoefficientChanged")
"""Pool events that change case points (RULES.md 2, 3); budgets and prepayments do not."""
CHUNK_CASES = 200_000
"""Cases settled at once by `refresh`: about 1 GiB of parsed events at most."""


class StaleProjection(ClearingError):
    """The projection does not reflect the journal as known now: refresh it first."""


# --------------------------------------------------------------------------- tables


class ExactDecimal(TypeDecorator[Decimal]):
    """An exact decimal that keeps its scale: `NUMERIC` on PostgreSQL (sum keeps the largest
    scale, as Decimal addition does), its string on SQLite, which has no exact decimal type
    and is summed with the `dsum` aggregate registered below."""

    impl = Numeric(asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        return dialect.type_descriptor(Numeric(asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        assert isinstance(value, Decimal), value
        return str(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return value if isinstance(value, Decimal) else Decimal(str(value))


metadata = MetaData()

case_points_table = Table(
    "case_points",
    metadata,
    Column("pool", String(40), primary_key=True),
    Column("year", Integer, primary_key=True),
    Column("case_id", String(200), primary_key=True),
    Column("hospital_id", String(40), nullable=False),
    Column("discharge_date", Date, nullable=False),
    Column("settled_points", ExactDecimal(), nullable=False, comment="case points after the verdict (RULES.md 3, 4)"),
    Column("deducted_points", ExactDecimal(), nullable=False, comment="k x V of a violation verdict (RULES.md 4)"),
    Column("personal_paid", ExactDecimal(), nullable=False),
)

tracking_table = Table(
    "case_points_tracking",
    metadata,
    Column("pool", String(40), primary_key=True),
    Column("year", Integer, primary_key=True),
    Column("position", BigInteger, nullable=False, comment="last journal notification id the rows reflect"),
    Column("known_at", UtcDateTime(), nullable=False, comment="the rows are the cases as known at this moment"),
    Column("valid_until", UtcDateTime(), comment="first recorded_at after known_at among the events read"),
    Column("refreshed_at", UtcDateTime(), nullable=False),
    Column("cases", Integer, nullable=False),
    Column("seconds", Float, nullable=False),
)

_COLUMNS = ("pool", "year", "case_id", "hospital_id", "discharge_date", "settled_points", "deducted_points", "personal_paid")


def _to_date_columns() -> list[Column[Any]]:
    return [
        Column("settled_to_date", ExactDecimal(), nullable=False),
        Column("deducted_to_date", ExactDecimal(), nullable=False),
        Column("personal_paid_to_date", ExactDecimal(), nullable=False),
        Column("cases_to_date", Integer, nullable=False),
    ]


hospital_days_table = Table(
    "case_points_hospital_days",
    metadata,
    Column("pool", String(40), primary_key=True),
    Column("year", Integer, primary_key=True),
    Column("hospital_id", String(40), primary_key=True),
    Column("discharge_date", Date, primary_key=True),
    *_to_date_columns(),
    comment="a hospital's sums over its case rows discharged 1 January..discharge_date, one row per day with cases",
)

pool_days_table = Table(
    "case_points_pool_days",
    metadata,
    Column("pool", String(40), primary_key=True),
    Column("year", Integer, primary_key=True),
    Column("discharge_date", Date, primary_key=True),
    *_to_date_columns(),
    comment="the pool's sums over its case rows discharged 1 January..discharge_date, one row per day with cases",
)


_created: set[str] = set()


def create_tables(engine: Engine) -> None:
    """Creates the projection's tables when missing (idempotent; checked once per database)."""
    key = str(engine.url)
    if key not in _created:
        metadata.create_all(engine)
        _created.add(key)


class _DecimalSum:
    """SQLite aggregate `dsum(text)`: the exact Decimal sum, as text (NULLs skipped, NULL when none)."""

    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: str | None) -> None:
        if value is not None:
            self.total = (ZERO if self.total is None else self.total) + Decimal(value)

    def finalize(self) -> str | None:
        return None if self.total is None else str(self.total)


def _sum(conn: Connection, column: Any) -> Any:
    """sum() of an exact decimal column: NUMERIC sum on PostgreSQL, `dsum` on SQLite."""
    if conn.dialect.name == "sqlite":
        # Registered per call: cheap, and pooled connections opened elsewhere get it too.
        conn.connection.driver_connection.create_aggregate("dsum", 1, _DecimalSum)  # type: ignore[union-attr]
        return func.dsum(column, type_=ExactDecimal())
    return func.sum(column, type_=ExactDecimal())


# --------------------------------------------------------------------------- freshness


@dataclass(frozen=True)
class Tracking:
    """What the projection of a pool-year reflects."""

    pool: str
    year: int
    position: int
    known_at: datetime
    valid_until: datetime | None
    refreshed_at: datetime
    cases: int
    seconds: float


@dataclass(frozen=True)
class Freshness:
    """Whether the projection of a pool-year can answer for `now`, and if not, why."""

    fresh: bool
    reason: str
    tracking: Tracking | None


def tracking(store: LedgerStore, pool: str, year: int) -> Tracking | None:
    create_tables(store.engine)
    t = tracking_table
    with store.engine.connect() as conn:
        row = conn.execute(select(t).where(t.c.pool == pool, t.c.year == year)).mappings().first()
    return None if row is None else Tracking(**row)


def freshness(store: LedgerStore, pool: str, year: int, now: datetime | None = None) -> Freshness:
    """Is the projection of `pool`/`year` the cases as known at `now` (default: now)?

    Stale when never refreshed, when an event recorded after the refresh's `known_at` is
    known by `now`, or when the journal has, after the tracked position, an event that can
    change a case row (module docstring). Newer events that cannot change a case row move
    the tracked position forward, so the next check starts after them.
    """
    now = now or datetime.now(UTC)
    tr = tracking(store, pool, year)
    if tr is None:
        return Freshness(False, f"no case_points projection of {pool} {year}: run refresh-projections", None)
    if now < tr.known_at:
        return Freshness(False, f"the projection is as known at {tr.known_at.isoformat()}, after {now.isoformat()}", tr)
    if tr.valid_until is not None and tr.valid_until <= now:
        return Freshness(False, f"events recorded at {tr.valid_until.isoformat()} are known now", tr)
    store.sync_index()
    i, cp = index_table, case_points_table
    with store.engine.begin() as conn:
        head = conn.execute(select(func.max(i.c.seq))).scalar_one() or 0
        if head <= tr.position:
            return Freshness(True, "up to date", tr)
        ours = select(cp.c.case_id).where(cp.c.pool == pool, cp.c.year == year)
        relevant = (
            select(i.c.seq, i.c.event_id)
            .where(i.c.seq > tr.position, i.c.seq <= head)
            .where(
                or_(
                    i.c.event_type == "HospitalRegistered",
                    and_(i.c.event_type.in_(("PolicyVersionPublished", "CoefficientChanged")), i.c.pool == pool),
                    and_(i.c.event_type == "CaseSubmitted", i.c.pool == pool, i.c.year == year),
                    and_(i.c.event_type.in_(CASE_EVENTS), i.c.case_id.in_(ours)),
                )
            )
            .order_by(i.c.seq)
            .limit(1)
        )
        hit = conn.execute(relevant).first()
        if hit is not None:
            return Freshness(False, f"journal entry {hit.seq} ({hit.event_id}) is newer than the projection", tr)
        t = tracking_table
        conn.execute(
            update(t).where(t.c.pool == pool, t.c.year == year, t.c.position == tr.position).values(position=head)
        )
    return Freshness(True, f"up to date (entries {tr.position + 1}..{head} concern other pools or years)", tr)


def require_fresh(store: LedgerStore, pool: str, year: int, *, refresh_if_stale: bool = False) -> Freshness:
    """Refuses a stale projection (StaleProjection), or refreshes it when asked."""
    state = freshness(store, pool, year)
    if state.fresh:
        return state
    if not refresh_if_stale:
        raise StaleProjection(
            f"case_points of {pool} {year} is stale: {state.reason}; "
            f"run `drg-ledger refresh-projections --pool {pool} --year {year}`"
        )
    refresh(store, pool, year)
    return freshness(store, pool, year)


# --------------------------------------------------------------------------- refresh


@dataclass(frozen=True)
class RefreshReport:
    """What one `refresh` did."""

    pool: str
    year: int
    cases: int
    events: int
    chunks: int
    position: int
    known_at: datetime
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "year": self.year,
            "cases": self.cases,
            "events": self.events,
            "chunks": self.chunks,
            "position": self.position,
            "known_at": self.known_at.isoformat(),
            "seconds": round(self.seconds, 3),
        }


def _parse(event_type: str, body: str) -> Any:
    return ENVELOPES[event_type].model_validate_json(body)


def _chunks(conn: Connection, pool: str, year: int, chunk_cases: int) -> dict[str, int]:
    """Partition hospital -> chunk number, chunks of contiguous hospitals with about `chunk_cases` cases.

    A case's partition hospital is the least hospital among its submissions in the year; a
    case submitted by several hospitals (a revision moved it) keeps those hospitals in one
    chunk, so every hospital's cases are settled together (the incentive cap counts them).
    Every order here is the database's (its collation), as is the order of `_case_events`.
    """
    i = index_table
    subs = (
        select(i.c.case_id, func.min(i.c.hospital_id).label("lo"), func.max(i.c.hospital_id).label("hi"))
        .where(i.c.event_type == "CaseSubmitted", i.c.pool == pool, i.c.year == year)
        .group_by(i.c.case_id)
        .cte("subs")
    )
    # One pass over the year's submissions (at province scale the index is tens of GiB):
    # cases per (least, greatest) hospital, and each such hospital's rank in the database's order.
    spans = select(subs.c.lo, subs.c.hi, func.count().label("n")).group_by(subs.c.lo, subs.c.hi).cte("spans")
    ends = union(select(spans.c.lo.label("h")), select(spans.c.hi.label("h"))).cte("ends")
    rank = select(ends.c.h, func.row_number().over(order_by=ends.c.h).label("k")).cte("rank")
    lo_rank, hi_rank = rank.alias("lo_rank"), rank.alias("hi_rank")
    rows = conn.execute(
        select(spans.c.lo, spans.c.n, lo_rank.c.k, hi_rank.c.k)
        .join_from(spans, lo_rank, lo_rank.c.h == spans.c.lo)
        .join(hi_rank, hi_rank.c.h == spans.c.hi)
    ).all()
    counts: dict[int, int] = {}  # rank of a partition hospital -> its cases
    names: dict[int, str] = {}
    blocked: set[int] = set()  # no cut right after these ranks: a case spans them
    for lo, n, k_lo, k_hi in rows:
        counts[k_lo] = counts.get(k_lo, 0) + n
        names[k_lo] = lo
        blocked.update(range(k_lo, k_hi))
    chunk_of: dict[str, int] = {}
    chunk, n = 0, 0
    for k in sorted(names):
        chunk_of[names[k]] = chunk
        n += counts[k]
        if n >= chunk_cases and k not in blocked:
            chunk, n = chunk + 1, 0
    return chunk_of


def _case_events(conn: Connection, pool: str, year: int) -> Iterator[tuple[str, str, str]]:
    """(partition hospital, event_type, body) of every case event of the year's cases, by partition.

    As `LedgerStore.load`: every revision, withdrawal and verdict of each case with any
    revision discharged in `year`, joined on case_id (verdicts may come first). One sorted
    stream (a server-side cursor on PostgreSQL): the index is read once whatever the scale.
    """
    i = index_table
    cases = (
        select(i.c.case_id, func.min(i.c.hospital_id).label("lo"))
        .where(i.c.event_type == "CaseSubmitted", i.c.pool == pool, i.c.year == year)
        .group_by(i.c.case_id)
        .subquery()
    )
    q = (
        select(cases.c.lo, i.c.event_type, i.c.body)
        .join_from(i, cases, i.c.case_id == cases.c.case_id)
        .where(i.c.event_type.in_(CASE_EVENTS))
        .order_by(cases.c.lo)
    )
    if conn.dialect.name == "postgresql":
        # Before the index is analysed (right after a bulk ingest) the planner expects one
        # row and picks a nested loop per case: quadratic. A bulk read is a hash join.
        conn.exec_driver_sql("SET LOCAL enable_nestloop = off")
        conn.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1.0")
        # The year's case ids are hashed and its events sorted by hospital: give both room.
        conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
    result = conn.execution_options(stream_results=True, yield_per=5_000).execute(q)
    for row in result:
        yield row[0], row[1], row[2]


def _by_chunk(rows: Iterator[tuple[str, str, str]], chunk_of: dict[str, int]) -> Iterator[list[tuple[str, str]]]:
    """Groups the stream, sorted by partition hospital, into one list of (event_type, body) per chunk."""
    current, chunk = None, []
    for lo, event_type, body in rows:
        k = chunk_of[lo]
        if k != current:
            if chunk:
                yield chunk
            current, chunk = k, []
        chunk.append((event_type, body))
    if chunk:
        yield chunk


def refresh(store: LedgerStore, pool: str, year: int, *, chunk_cases: int = CHUNK_CASES) -> RefreshReport:
    """Recomputes the case rows of `pool`/`year` from the events, as known now.

    Reads the pool's events and the year's case events from the index (itself rebuilt from
    the journal alone), settles them with `ledger.clearing.settle` hospital group by
    hospital group, and swaps the rows and the tracking row in one transaction (COPY on
    PostgreSQL).
    """
    assert chunk_cases > 0
    started = time.perf_counter()
    known_at = datetime.now(UTC)
    create_tables(store.engine)
    store.sync_index()
    i = index_table
    with store.engine.connect() as conn:
        position = conn.execute(select(func.max(i.c.seq))).scalar_one() or 0
        pool_events = [
            _parse(et, body)
            for et, body in conn.execute(
                select(i.c.event_type, i.c.body).where(i.c.event_type.in_(CASE_ROW_POOL_EVENTS), i.c.pool == pool)
            )
        ]
        chunk_of = _chunks(conn, pool, year, chunk_cases)
    later = [e.recorded_at for e in pool_events if e.recorded_at > known_at]
    cases = events = 0
    with store.engine.connect() as reader, store.engine.begin() as writer:
        cp, t = case_points_table, tracking_table
        for table in (cp, hospital_days_table, pool_days_table):
            writer.execute(delete(table).where(table.c.pool == pool, table.c.year == year))
        pool_days: dict[date, CaseSums] = {}
        chunks = 0
        for raw in _by_chunk(_case_events(reader, pool, year), chunk_of) if chunk_of else ():
            chunks += 1
            with gc_paused():
                chunk = [_parse(et, body) for et, body in raw]
                raw.clear()  # the generator holds the list until the next chunk: free the bodies now
                events += len(chunk)
                later.extend(e.recorded_at for e in chunk if e.recorded_at > known_at)
                py = settle(pool_events + chunk, pool, year, known_at)
                del chunk
                rows = _rows(py)
                del py
                days = _hospital_days(rows, pool_days)
            cases += len(rows)
            _write(writer, case_points_table, rows)
            del rows
            _write(writer, hospital_days_table, days)
        _write(writer, pool_days_table, _cumulative(pool, year, None, pool_days))
        seconds = time.perf_counter() - started
        writer.execute(delete(t).where(t.c.pool == pool, t.c.year == year))
        writer.execute(
            insert(t).values(
                pool=pool,
                year=year,
                position=position,
                known_at=known_at,
                valid_until=min(later) if later else None,
                refreshed_at=datetime.now(UTC),
                cases=cases,
                seconds=seconds,
            )
        )
    if store.engine.dialect.name == "postgresql":
        # Fresh statistics for the warm queries' plans (autovacuum would take a minute).
        with store.engine.begin() as conn:
            for table in (case_points_table, hospital_days_table, pool_days_table):
                conn.exec_driver_sql(f"ANALYZE {table.name}")
    return RefreshReport(pool, year, cases, events, chunks, position, known_at, time.perf_counter() - started)


def _rows(py: PoolYear) -> list[tuple[Any, ...]]:
    return [
        (py.pool, py.year, cid, c.hospital_id, c.discharge_date, c.settled, c.deducted, c.state.case.personal_paid)
        for cid, c in py.cases.items()
    ]


def _hospital_days(rows: list[tuple[Any, ...]], pool_days: dict[date, CaseSums]) -> list[tuple[Any, ...]]:
    """The to-date rows of the hospitals of one chunk (each hospital's cases are all in it);
    adds the chunk's cases to the pool's sums per day."""
    per_day: dict[tuple[str, date], CaseSums] = {}
    for _, _, _, hid, day, settled, deducted, personal in rows:
        for s in (per_day.setdefault((hid, day), CaseSums()), pool_days.setdefault(day, CaseSums())):
            s.settled += settled
            s.deducted += deducted
            s.personal_paid += personal
            s.cases += 1
    pool, year = (rows[0][0], rows[0][1]) if rows else ("", 0)
    by_hospital: dict[str, dict[date, CaseSums]] = {}
    for (hid, day), s in per_day.items():
        by_hospital.setdefault(hid, {})[day] = s
    out: list[tuple[Any, ...]] = []
    for hid in sorted(by_hospital):
        out.extend(_cumulative(pool, year, hid, by_hospital[hid]))
    return out


def _cumulative(pool: str, year: int, hospital_id: str | None, days: dict[date, CaseSums]) -> list[tuple[Any, ...]]:
    """Sums from 1 January to each day: exact, as `case_sums` adds them (from ZERO, RULES.md 6)."""
    out: list[tuple[Any, ...]] = []
    run = CaseSums()
    for day in sorted(days):
        s = days[day]
        run = CaseSums(run.settled + s.settled, run.deducted + s.deducted, run.personal_paid + s.personal_paid,
                       ZERO, run.cases + s.cases)
        key = (pool, year, day) if hospital_id is None else (pool, year, hospital_id, day)
        out.append((*key, run.settled, run.deducted, run.personal_paid, run.cases))
    return out


def _write(conn: Connection, table: Table, rows: list[tuple[Any, ...]]) -> None:
    """Inserts rows (tuples in the table's column order): COPY on PostgreSQL, a multi-row insert elsewhere."""
    if not rows:
        return
    columns = [c.name for c in table.columns]
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:  # type: ignore[union-attr]
            with cur.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        return
    conn.execute(insert(table), [dict(zip(columns, row)) for row in rows])


# --------------------------------------------------------------------------- queries


@dataclass
class _PoolEvents:
    """The pool events of one pool read so far from one database, and the last index position read."""

    events: list[Any]
    position: int
    settled: dict[int, tuple[PoolYear, datetime, datetime | None]]  # year -> (py, known_at, next recorded_at)


_pool_events: dict[tuple[str, str], _PoolEvents] = {}


def _pool_year(store: LedgerStore, pool: str, year: int, known_at: datetime) -> PoolYear:
    """The pool's hospitals, policy, budget, prepayments and clearings as known at `known_at`,
    settled without cases (the rows stand for them).

    The pool events are kept between calls and only those indexed since are read (the index
    is append-only); the settled PoolYear is reused while no pool event was added and none
    recorded in (its known_at, known_at] — then `settle` would give the same figures (its
    `book.known_at` stays the earlier moment; nothing reads it after the book is built).
    Not thread-safe, like the store.
    """
    i = index_table
    key = (str(store.engine.url), pool)
    cached = _pool_events.get(key)
    if cached is None:
        cached = _pool_events[key] = _PoolEvents([], 0, {})
    with store.engine.connect() as conn:
        head = conn.execute(select(func.max(i.c.seq))).scalar_one() or 0
        if head < cached.position:  # the database was recreated under the same URL: start over
            cached = _pool_events[key] = _PoolEvents([], 0, {})
        # `pool || ''`: on SQLite an unanalysed index would pick the (pool, year) index and scan
        # every case of the pool; this way it takes the event_type index (a few thousand rows).
        query = (
            select(i.c.seq, i.c.event_type, i.c.body)
            .where(i.c.seq > cached.position, i.c.event_type.in_(POOL_LEVEL), i.c.pool.concat("") == pool)
            .order_by(i.c.seq)
        )
        new = conn.execute(query).all()
    if new:
        cached.events.extend(_parse(et, body) for _, et, body in new)
        cached.position = new[-1][0]
        cached.settled.clear()
    hit = cached.settled.get(year)
    if hit is not None:
        py, at, next_recorded = hit
        if at <= known_at and (next_recorded is None or known_at < next_recorded):
            return replace(py, known_at=known_at)
    py = settle(cached.events, pool, year, known_at)
    later = [e.recorded_at for e in cached.events if e.recorded_at > known_at]
    cached.settled[year] = (py, known_at, min(later) if later else None)
    return py


def warm_clearing(store: LedgerStore, pool: str, year: int, *, refresh_if_stale: bool = False) -> Clearing:
    """Year-end clearing (RULES.md 5) as known now, from the projection's sums per hospital.

    The same result as `clearing(settle(events, ...))` (a test proves it): the per-hospital
    sums come from one GROUP BY and go through `ledger.clearing.clearing_of`.
    """
    require_fresh(store, pool, year, refresh_if_stale=refresh_if_stale)
    known_at = datetime.now(UTC)
    py = _pool_year(store, pool, year, known_at)
    if py.budget is None:
        raise ClearingError(f"no BudgetSet for pool {pool} year {year} recorded by {known_at.isoformat()}")
    inside = py.book.clearing_rules(date(year, 12, 31)).value.personal_paid_in_point_value
    sums = {h: CaseSums() for h in py.hospitals}
    cp = case_points_table
    with store.engine.connect() as conn:
        query = (
            select(
                cp.c.hospital_id,
                func.count(),
                _sum(conn, cp.c.settled_points),
                _sum(conn, cp.c.deducted_points),
                _sum(conn, cp.c.personal_paid),
            )
            .where(cp.c.pool == pool, cp.c.year == year)
            .group_by(cp.c.hospital_id)
        )
        for hid, n, settled, deducted, personal in conn.execute(query):
            if hid not in sums:
                raise StaleProjection(f"case_points of {pool} {year} names hospital {hid}, not registered in the pool")
            sums[hid] = CaseSums(ZERO + settled, ZERO + deducted, ZERO + personal, ZERO, n)
    add_prepaid(py, sums)
    return clearing_of(pool, year, known_at, py.budget.payload.amount, inside, sums)


def warm_balance(store: LedgerStore, hospital_id: str, as_of: date, *, refresh_if_stale: bool = False) -> Balance:
    """A hospital's balance at `as_of` (RULES.md 6) as known now, from the projection's sums.

    The hospital's sums over its cases discharged by `as_of`, and (for a provisional point
    value) the pool's, are one row each of the to-date tables that `refresh` writes with the
    case rows; the rest is `ledger.clearing.balance_of`.
    """
    i = index_table
    with store.engine.connect() as conn:
        pool = conn.execute(
            select(i.c.pool)
            .where(i.c.event_type == "HospitalRegistered", i.c.hospital_id == hospital_id)
            .order_by(i.c.seq.desc())
            .limit(1)
        ).scalar()
    if pool is None:
        raise NotFound(f"hospital {hospital_id} is not registered")
    year = as_of.year
    require_fresh(store, pool, year, refresh_if_stale=refresh_if_stale)
    known_at = datetime.now(UTC)
    py = _pool_year(store, pool, year, known_at)
    hd, pd = hospital_days_table, pool_days_table
    with store.engine.connect() as conn:
        own_row = conn.execute(
            select(hd.c.settled_to_date, hd.c.deducted_to_date, hd.c.personal_paid_to_date, hd.c.cases_to_date)
            .where(hd.c.pool == pool, hd.c.year == year, hd.c.hospital_id == hospital_id, hd.c.discharge_date <= as_of)
            .order_by(hd.c.discharge_date.desc())
            .limit(1)
        ).first()
        pool_row = conn.execute(
            select(pd.c.settled_to_date, pd.c.deducted_to_date, pd.c.personal_paid_to_date, pd.c.cases_to_date)
            .where(pd.c.pool == pool, pd.c.year == year, pd.c.discharge_date <= as_of)
            .order_by(pd.c.discharge_date.desc())
            .limit(1)
        ).first()
    own = CaseSums(own_row[0], own_row[1], own_row[2], ZERO, own_row[3]) if own_row else CaseSums()
    window = CaseSums(pool_row[0], pool_row[1], pool_row[2], ZERO, pool_row[3]) if pool_row else CaseSums()
    return balance_of(py, hospital_id, as_of, own, [window])
