"""Running point totals per (pool, year, hospital), always read from the case-points projection.

A hospital's totals are the projection's sums (projections/case_versions.py), never a number
patched by hand: when an event arrives, every (pool, year, hospital) it can change
(`recompute_keys`, the one impact rule) is read again from the store, so a redelivered event
gives the same figures and nothing is counted twice.

Figures (RULES.md 5): `cases` (live cases discharged in the year), `settled_points`,
`deducted_points`, `net_points = settled - deducted`, `personal_paid`. None of them
depends on the budget, prepayments or clearings, so those events recompute nothing.

The figures of each hospital are mirrored into the SQL table `running_totals` next to the
store, with the store position (journal notification id) they reflect, so the CLI reads
them without the stream worker. `reconcile` compares the projection at several moments, and
that table now, with a cold replay of the journal: a check that sees outside what it checks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ledger.clearing import ClearingError, PoolYear, settle
from ledger.events import EventType
from ledger.policy import PolicyMissing
from projections.store import UtcDateTime, index_table, tracking_table

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from projections.store import LedgerStore

ZERO = Decimal(0)
FIGURES = ("cases", "settled_points", "deducted_points", "net_points", "personal_paid")
"""Events that name a case: they change the totals of the case's hospital, every year it was filed under."""


class Key(NamedTuple):
    """Whose totals: a hospital of a pool, for the cases discharged in a year (RULES.md 5)."""

    pool: str
    year: int
    hospital_id: str

    def text(self) -> str:
        return f"{self.pool}/{self.year}/{self.hospital_id}"


@dataclass(frozen=True, slots=True)
class HospitalTotals:
    """One hospital's figures for a pool-year, exact decimals (STYLE.md 3)."""

    cases: int = 0
    settled_points: Decimal = ZERO
    deducted_points: Decimal = ZERO
    net_points: Decimal = ZERO
    personal_paid: Decimal = ZERO

    def as_json(self) -> dict[str, Any]:
        return {"cases": self.cases, **{f: str(getattr(self, f)) for f in FIGURES[1:]}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HospitalTotals:
        return cls(int(data["cases"]), *(Decimal(str(data[f])) for f in FIGURES[1:]))

    def differences(self, other: HospitalTotals) -> dict[str, tuple[str, str]]:
        """Figures that differ, as (self, other); decimals compare by value (1.50 == 1.5)."""
        return {
            f: (str(getattr(self, f)), str(getattr(other, f)))
            for f in FIGURES
            if getattr(self, f) != getattr(other, f)
        }


def totals_by_hospital(py: PoolYear) -> dict[str, HospitalTotals]:
    """Every registered hospital of the pool-year, with its figures (zero when it has no case).

    RULES.md 5: settled = case points after verdicts, deducted = k x V, net = settled - deducted,
    personal paid = the cases' personal payments. Withdrawn cases count nowhere.
    """
    sums: dict[str, list[Any]] = {h: [0, ZERO, ZERO, ZERO] for h in py.hospitals}
    for c in py.cases.values():
        s = sums[c.hospital_id]
        s[0] += 1
        s[1] += c.settled
        s[2] += c.deducted
        s[3] += c.state.case.personal_paid
    return {h: HospitalTotals(n, st, de, st - de, pp) for h, (n, st, de, pp) in sums.items()}


def totals_of(sums: Any) -> HospitalTotals:
    """A hospital's totals from its case sums (`ledger.clearing.CaseSums`)."""
    return HospitalTotals(sums.cases, sums.settled, sums.deducted, sums.settled - sums.deducted, sums.personal_paid)


def projected_totals(store: LedgerStore, pool: str, year: int, known_at: datetime,
                     hospital_id: str | None = None) -> dict[str, HospitalTotals]:
    """Each hospital's totals as known at `known_at`, from the projection (one aggregate).
    Raises `ClearingError` when a case of theirs cannot be settled as known then."""
    from projections import case_versions

    with store.engine.connect() as conn:
        found = case_versions.sums(conn, pool, year, known_at, hospital_id=hospital_id)
    return {h: totals_of(s) for h, s in found.hospitals.items()}


# --------------------------------------------------------------------------- which totals an event changes


def recompute_keys(store: LedgerStore, events: Iterable[Any]) -> set[Key]:
    """The (pool, year, hospital) totals that `events` (parsed envelopes) can change: the
    store's one impact rule (`LedgerStore.impacted`, `ledger/impact.py`) — a case event its
    case's hospital in every year a revision was discharged in; a registration its hospital;
    a policy version or coefficient change the hospitals of its pool in the years its valid
    interval touches; a budget or prepayment nothing (no total depends on money).
    """
    return {Key(pool, year, hospital) for pool, year, hospital, _ in store.impacted(events)}


# --------------------------------------------------------------------------- the SQL mirror

metadata = MetaData()

running_totals_table = Table(
    "running_totals",
    metadata,
    Column("pool", String(40), primary_key=True),
    Column("year", Integer, primary_key=True),
    Column("hospital_id", String(40), primary_key=True),
    Column("cases", Integer, nullable=False),
    # Decimal strings: exact on every backend (SQLite has no exact NUMERIC).
    Column("settled_points", Text, nullable=False),
    Column("deducted_points", Text, nullable=False),
    Column("net_points", Text, nullable=False),
    Column("personal_paid", Text, nullable=False),
    Column("position", BigInteger, nullable=False, comment="store notification id these totals reflect, at least"),
    Column("known_at", UtcDateTime(), nullable=False, comment="policy and events as known at this moment"),
    Column("computed_at", UtcDateTime(), nullable=False),
    Column("error", Text, comment="why the totals could not be computed (e.g. a policy gap); figures are then the last good ones"),
)


@dataclass(frozen=True, slots=True)
class TotalsRow:
    """A hospital's totals as the worker last computed them."""

    key: Key
    totals: HospitalTotals
    position: int
    known_at: datetime
    computed_at: datetime
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "pool": self.key.pool,
            "year": self.key.year,
            "hospital_id": self.key.hospital_id,
            **self.totals.as_json(),
            "position": self.position,
            "known_at": self.known_at.isoformat(),
            "computed_at": self.computed_at.isoformat(),
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TotalsRow:
        return cls(
            Key(data["pool"], int(data["year"]), data["hospital_id"]),
            HospitalTotals.from_json(data),
            int(data["position"]),
            datetime.fromisoformat(data["known_at"]),
            datetime.fromisoformat(data["computed_at"]),
            data.get("error"),
        )


def store_engine(store: LedgerStore) -> Engine:
    """The SQLAlchemy engine of the store's database (the totals live next to the index)."""
    return store.engine


def create_tables(engine: Engine) -> None:
    metadata.create_all(engine)


def store_position(conn: Connection) -> int:
    """The journal notification id the store's index has applied up to."""
    t = tracking_table
    value = conn.execute(select(t.c.notification_id).where(t.c.name == index_table.name)).scalar_one_or_none()
    return int(value or 0)


def upsert(engine: Engine, rows: Sequence[TotalsRow]) -> None:
    """Writes rows; a row never replaces one that reflects a later store position.

    The guard keeps the table monotonic when two workers briefly own a partition during a
    rebalance, or a redelivered recompute request is processed after a newer one.
    """
    if not rows:
        return
    values = []
    for r in rows:
        values.append(
            {
                "pool": r.key.pool,
                "year": r.key.year,
                "hospital_id": r.key.hospital_id,
                **{f: (r.totals.cases if f == "cases" else str(getattr(r.totals, f))) for f in FIGURES},
                "position": r.position,
                "known_at": r.known_at,
                "computed_at": r.computed_at,
                "error": r.error,
            }
        )
    t = running_totals_table
    dialect = engine.dialect.name
    stmt: Any = pg_insert(t) if dialect == "postgresql" else sqlite_insert(t)
    updated = {c.name: stmt.excluded[c.name] for c in t.columns if not c.primary_key}
    stmt = stmt.on_conflict_do_update(
        index_elements=[t.c.pool, t.c.year, t.c.hospital_id],
        set_=updated,
        where=t.c.position <= stmt.excluded.position,
    )
    with engine.begin() as conn:
        conn.execute(stmt, values)


def read_rows(engine: Engine, pool: str | None = None, year: int | None = None, hospital_id: str | None = None) -> list[TotalsRow]:
    """The mirrored totals, ordered by pool, year, hospital."""
    t = running_totals_table
    q = select(t).order_by(t.c.pool, t.c.year, t.c.hospital_id)
    if pool is not None:
        q = q.where(t.c.pool == pool)
    if year is not None:
        q = q.where(t.c.year == year)
    if hospital_id is not None:
        q = q.where(t.c.hospital_id == hospital_id)
    with engine.connect() as conn:
        out = []
        for r in conn.execute(q).mappings():
            totals = HospitalTotals(r["cases"], *(Decimal(r[f]) for f in FIGURES[1:]))
            out.append(
                TotalsRow(Key(r["pool"], r["year"], r["hospital_id"]), totals, r["position"], r["known_at"],
                          r["computed_at"], r["error"])
            )
        return out


# --------------------------------------------------------------------------- recomputation


def recompute(store: LedgerStore, key: Key, known_at: datetime | None = None, last: TotalsRow | None = None) -> TotalsRow:
    """A hospital's totals read from the projection, as known at `known_at` (default now).

    The position is read first, so the row reflects at least that position. A policy gap
    or an uncomputable case keeps `last`'s figures and records the error: the totals are
    never patched, and a later policy event recomputes them (`recompute_keys`).
    """
    return recompute_many(store, [key], known_at, {key: last} if last is not None else {})[0]


def recompute_many(store: LedgerStore, keys: Sequence[Key], known_at: datetime | None = None,
                   last: dict[Key, TotalsRow] | None = None) -> list[TotalsRow]:
    """`recompute` of each of `keys`, in order, after one position read: one aggregate per
    pool-year (`case_versions.hospital_sums`; a worker's batch asks for every hospital it
    touched). A hospital with a case that cannot be settled keeps its last figures and the
    error; the others of its pool-year are computed as usual."""
    from projections import case_versions

    known_at = known_at or datetime.now(UTC)
    last = last or {}
    position = case_versions.fresh(store)
    out = []
    found: dict[Key, Any] = {}
    with store.engine.connect() as conn:
        for (pool, year), hospitals in _by_pool_year(keys).items():
            for h, s in case_versions.hospital_sums(conn, pool, year, known_at, hospitals).items():
                found[Key(pool, year, h)] = s
    stamp = datetime.now(UTC)
    out = []
    for key in keys:
        sums = found.get(key)
        if isinstance(sums, ClearingError):
            prev = last.get(key)
            out.append(TotalsRow(key, prev.totals if prev else HospitalTotals(), position, known_at, stamp, str(sums)))
        else:
            out.append(TotalsRow(key, totals_of(sums) if sums is not None else HospitalTotals(), position, known_at, stamp))
    return out


def _by_pool_year(keys: Iterable[Key]) -> dict[tuple[str, int], list[str]]:
    out: dict[tuple[str, int], list[str]] = {}
    for k in keys:
        out.setdefault((k.pool, k.year), []).append(k.hospital_id)
    return out


def keys_for(store: LedgerStore, events: Iterable[Any]) -> set[Key]:
    """`recompute_keys` (kept as the stream intake's name)."""
    return recompute_keys(store, events)


# --------------------------------------------------------------------------- convergence

LAG_BOUND_ENV = "DRG_LEDGER_TOTALS_LAG_BOUND_S"
DEFAULT_LAG_BOUND = timedelta(seconds=120)
"""`reconcile` reports a hospital's totals row as lagging when it differs from the store's
figures and an event after its position was accepted longer ago than this (streams/README.md
"Totals always converge": the worker's check runs every 10 s)."""


@dataclass(frozen=True, slots=True)
class Lag:
    """A hospital's totals row that is not what the store says now."""

    key: Key
    position: int | None  # the store position the row reflects; None: no row yet
    latest: int  # the store position the projection was read at
    missed_since: datetime | None  # when the store accepted the first event after the row's position

    def as_json(self) -> dict[str, Any]:
        return {"pool": self.key.pool, "year": self.key.year, "hospital_id": self.key.hospital_id,
                "position": self.position, "latest": self.latest,
                "missed_since": None if self.missed_since is None else self.missed_since.isoformat()}


def lagging(store: LedgerStore, pool: str | None = None, year: int | None = None,
            hospitals: set[str] | None = None) -> list[Lag]:
    """Every (pool, year, hospital) whose totals row differs from the projection as known now
    (figures or error; a hospital with live cases and no row): the same sums `recompute`
    writes, so no second rule says which event changes which row.

    `missed_since`: when the store accepted the first event after the row's position, the
    earliest the row can have gone stale (None without a row). One aggregate per pool-year.
    """
    from projections import case_versions

    head = case_versions.fresh(store)
    now = datetime.now(UTC)
    rows = {r.key: r for r in read_rows(store.engine, pool, year)}
    t = case_versions.table
    with store.engine.connect() as conn:
        q = select(t.c.pool, t.c.year).where(case_versions.live_at(now)).distinct()
        if pool is not None:
            q = q.where(t.c.pool == pool)
        if year is not None:
            q = q.where(t.c.year == year)
        pool_years = {(p, int(y)) for p, y in conn.execute(q)} | {(k.pool, k.year) for k in rows}
        out = []
        seen: dict[int, datetime | None] = {}
        for p, y in sorted(pool_years):
            found = case_versions.hospital_sums(conn, p, y, now)
            keys = {Key(p, y, h) for h in found} | {k for k in rows if (k.pool, k.year) == (p, y)}
            for key in sorted(keys):
                if hospitals is not None and key.hospital_id not in hospitals:
                    continue
                row = rows.get(key)
                sums = found.get(key.hospital_id)
                error = str(sums) if isinstance(sums, ClearingError) else None
                if row is not None and row.error == error and (error is not None or row.totals == (
                        totals_of(sums) if sums is not None else HospitalTotals())):
                    continue
                since = None if row is None else _accepted_after(conn, row.position, seen)
                out.append(Lag(key, None if row is None else row.position, head, since))
    return out


def _accepted_after(conn: Any, position: int, seen: dict[int, datetime | None]) -> datetime | None:
    """When the store accepted its first event after `position` (None: none since), asked once
    per position: a worker's batch stamps every row it writes with the same one."""
    if position not in seen:
        since = conn.execute(select(func.min(index_table.c.ingested_at)).where(index_table.c.seq > position)).scalar()
        seen[position] = datetime.fromisoformat(since.replace("Z", "+00:00")) if isinstance(since, str) else since
    return seen[position]


def lag_bound() -> timedelta:
    value = os.environ.get(LAG_BOUND_ENV)
    return timedelta(seconds=float(value)) if value else DEFAULT_LAG_BOUND


# --------------------------------------------------------------------------- reconciliation


@dataclass(frozen=True, slots=True)
class Difference:
    """A hospital whose running totals differ from the replay."""

    hospital_id: str
    figures: dict[str, tuple[str, str]]  # figure -> (running, replay)
    position: int | None  # the store position the running totals reflect; None: no row
    error: str | None

    def as_json(self, head: int) -> dict[str, Any]:
        return {
            "hospital_id": self.hospital_id,
            "figures": {f: {"running": a, "replay": b} for f, (a, b) in self.figures.items()},
            "position": self.position,
            "behind_store": None if self.position is None else head - self.position,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class MomentCheck:
    """The projection against the cold replay at one `known_at`: the hospitals that differ,
    or the error one of them gave where the other did not (or another one)."""

    known_at: datetime
    hospitals: int
    differences: list[Difference]
    projection_error: str | None = None
    replay_error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.differences and self.projection_error == self.replay_error

    def as_json(self, head: int) -> dict[str, Any]:
        return {"known_at": self.known_at.isoformat(), "hospitals": self.hospitals, "ok": self.ok,
                "differences": [d.as_json(head) for d in self.differences],
                "projection_error": self.projection_error, "replay_error": self.replay_error}


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The projection at each moment, and the running totals now, against a cold replay of
    the journal (`LedgerStore.replay` -> `settle`)."""

    pool: str
    year: int
    known_at: datetime
    store_position: int
    hospitals: int
    differences: list[Difference]  # running totals now against the replay now
    lagging: list[Lag] = field(default_factory=list)  # beyond the bound (`lag_bound`)
    bound: timedelta = DEFAULT_LAG_BOUND
    moments: list[MomentCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences and not self.lagging and all(m.ok for m in self.moments)

    def as_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "year": self.year,
            "known_at": self.known_at.isoformat(),
            "store_position": self.store_position,
            "hospitals": self.hospitals,
            "differences": [d.as_json(self.store_position) for d in self.differences],
            "lagging": [lag.as_json() for lag in self.lagging],
            "lag_bound_s": self.bound.total_seconds(),
            "projection": [m.as_json(self.store_position) for m in self.moments],
            "ok": self.ok,
        }


def policy_moments(events: Iterable[Any], pool: str, year: int) -> list[datetime]:
    """The `recorded_at` of every policy version and coefficient change of the pool whose
    validity touches `year` (`ledger.impact`): where a back-dated rule moves the figures."""
    from ledger.impact import impact

    return sorted({e.recorded_at for e in events
                   if e.event_type in (EventType.POLICY_VERSION_PUBLISHED, EventType.COEFFICIENT_CHANGED) and impact(e).touches(pool, year)})


def _compare(a: dict[str, HospitalTotals], b: dict[str, HospitalTotals], position: Any = None) -> list[Difference]:
    out = []
    for hid in sorted(set(a) | set(b)):
        figures = a.get(hid, HospitalTotals()).differences(b.get(hid, HospitalTotals()))
        if figures:
            out.append(Difference(hid, figures, position, None))
    return out


def reconcile(store: LedgerStore, pool: str, year: int, known_at: datetime | None = None,
              bound: timedelta | None = None, moments: Sequence[datetime] | None = None,
              running: bool = True) -> Reconciliation:
    """Compares, against a cold replay of the journal, the projection of `pool`/`year` at
    each of `moments` (default: `known_at` or now, and every policy moment of the pool-year)
    and (with `running`, when a stream worker keeps any for the pool-year) the mirrored
    running totals as known at `known_at`.

    A hospital without a row must replay to zero; a row in error differs even if its last
    figures happen to match; a row that misses an event the store accepted more than `bound`
    ago (default `lag_bound()`) lags, even if its figures happen to match. Raises
    `PolicyMissing`/`ClearingError` when the replay itself cannot be computed now.
    """
    from projections import case_versions

    bound = bound if bound is not None else lag_bound()
    engine = store_engine(store)
    case_versions.fresh(store)
    with engine.connect() as conn:
        head = store_position(conn)
    known_at = known_at or datetime.now(UTC)
    journal = list(store.replay(until=head))  # the journal itself, every entry's hash checked
    checks = []
    for at in sorted({known_at, *(moments if moments is not None else policy_moments(journal, pool, year))}):
        replay_error = projection_error = None
        cold: dict[str, HospitalTotals] = {}
        projected: dict[str, HospitalTotals] = {}
        try:
            cold = totals_by_hospital(settle(journal, pool, year, at))
        except (PolicyMissing, ClearingError) as exc:
            replay_error = str(exc)
        try:
            projected = projected_totals(store, pool, year, at)
        except (PolicyMissing, ClearingError) as exc:
            projection_error = str(exc)
        checks.append(MomentCheck(at, len(set(cold) | set(projected)), _compare(projected, cold), projection_error,
                                  replay_error))
    rows = {r.key.hospital_id: r for r in read_rows(engine, pool, year)} if running and _has_table(engine) else {}
    if not rows:  # no stream worker keeps totals of this pool-year: nothing to compare them with
        return Reconciliation(pool, year, known_at, head, checks[-1].hospitals if checks else 0, [], [], bound, checks)
    replay = totals_by_hospital(settle(journal, pool, year, known_at))
    diffs = []
    for hid in sorted(set(replay) | set(rows)):
        row = rows.get(hid)
        running = row.totals if row is not None else HospitalTotals()
        figures = running.differences(replay.get(hid, HospitalTotals()))
        error = row.error if row is not None else None
        if figures or error:
            diffs.append(Difference(hid, figures, row.position if row else None, error))
    cutoff = datetime.now(UTC) - bound
    late = [lag for lag in lagging(store, pool, year)
            if lag.missed_since is None or lag.missed_since < cutoff]
    return Reconciliation(pool, year, known_at, head, len(set(replay) | set(rows)), diffs, late, bound, checks)


def _has_table(engine: Engine) -> bool:
    from sqlalchemy import inspect

    return running_totals_table.name in inspect(engine).get_table_names()
