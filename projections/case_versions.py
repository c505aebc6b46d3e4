"""The case-points projection: every version of every case's settled figures, bitemporal.

One row per version of a case (`ledger.versions`): its figures and the recorded-time interval
`[known_from, known_until)` in which the ledger held them (valid time is the discharge date).
A clearing, balance or running total as known at T is one aggregate over the rows live at T,
turned into money by `ledger.clearing.clearing_from_sums` / `balance_from_sums`.

The store maintains it inside the transaction that writes the index rows (`apply`, called by
`LedgerStore._sync`), tracked by journal position (tracking row `case_versions`), so it is
never behind the index; a store opened with the projection behind (a new table, an older
store) catches it up from the index (`catch_up`), and `rebuild` builds it again from there.

An event recorded at R can change only what `ledger.impact` names: its case (an event of a
case), or the cases of the pool-years its validity touches, narrowed to the hospital or DRG
group it names (a policy version, a coefficient change, a registration). Each such case's
versions from R on are recomputed from its events and the pool's history; versions before R
stay, since nothing recorded before R changed. The incentive cap (seed 001 二(二)) makes an
approved case depend on its hospital's other cases: after the cases, the approved cases of
every hospital-year touched are checked against the cap at each moment from R on (the count
of live cases is read from the rows themselves, kept in memory by the projector between its
own batches: `CapRows`) and recomputed where their cap answer moved.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right, insort
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    bindparam,
    Boolean,
    Column,
    Date,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    case,
    cast,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection

from ledger.cases import CASE_EVENTS
from ledger.clearing import CaseSums, ClearingError, cap_dates, incentive_cap, incentive_over_cap
from ledger.events import EventType, decode_stored
from ledger.impact import impact
from ledger.policy import PolicyMissing
from ledger.versions import POOL_HISTORY_TYPES, CaseFigures, PoolHistory, case_timeline
from projections.store import UtcDateTime, among, bulk_insert, index_table, metadata, tracking_table

if TYPE_CHECKING:
    from projections.store import LedgerStore

NAME = "case_versions"
"""The table, and its tracking row (the journal position it has applied)."""
POINTS_SCALE, MONEY_SCALE = 4, 2
"""Points are held to 4 places (RULES.md preamble), money to 2 (EVENTS.md limits): stored as
exact integers of those units, so sums are exact and fast on both databases."""
_PAGE = 20_000
_CHUNK = 20_000
"""Cases recomputed at a time within one batch."""
_HOSPITALS = 50
"""Hospital-years whose rows `CapRows` reads in one statement."""

table = Table(
    NAME,
    metadata,
    Column("case_id", String(200), primary_key=True),
    Column("known_from", UtcDateTime(), primary_key=True),
    Column("known_until", UtcDateTime(), comment="None: still held"),
    Column("pool", String(200), nullable=False),
    Column("year", Integer, nullable=False),
    Column("hospital_id", String(200), nullable=False),
    Column("drg_code", String(200), nullable=False),
    Column("discharge_date", Date, nullable=False),
    Column("settled", BigInteger, nullable=False, comment="points x 10^4"),
    Column("deducted", BigInteger, comment="points x 10^4; None: no penalty"),
    Column("personal_paid", BigInteger, nullable=False, comment="yuan x 10^2"),
    Column("approved_at", UtcDateTime(), comment="incentive approval in force: its verdict's recorded_at"),
    Column("approved_id", String(200)),
    Column("over_cap", Boolean),
    Column("error", Text, comment="why the case cannot be settled as known then"),
    Index(f"ix_{NAME}_pool_year_hospital", "pool", "year", "hospital_id"),
)


def _units(x: Decimal, scale: int) -> int:
    n = x.scaleb(scale)
    i = int(n)
    assert i == n, x
    return i


def _decimal(n: int, scale: int) -> Decimal:
    return Decimal(n).scaleb(-scale)


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class Row:
    case_id: str
    known_from: datetime
    known_until: datetime | None
    figures: CaseFigures

    def values(self) -> dict[str, Any]:
        f = self.figures
        approved = f.approved
        return {
            "case_id": self.case_id, "known_from": self.known_from, "known_until": self.known_until,
            "pool": f.pool, "year": f.year, "hospital_id": f.hospital_id, "drg_code": f.drg_code,
            "discharge_date": f.discharge_date, "settled": _units(f.settled, POINTS_SCALE),
            "deducted": None if f.deducted is None else _units(f.deducted, POINTS_SCALE),
            "personal_paid": _units(f.personal_paid, MONEY_SCALE),
            "approved_at": approved[0] if approved else None, "approved_id": approved[1] if approved else None,
            "over_cap": f.over_cap, "error": f.error,
        }

    @classmethod
    def of(cls, r: Any) -> Row:
        """The row of a `select(table)` result (its columns in the table's order, unpacked
        by position: by name was most of reading a case's rows)."""
        (case_id, known_from, known_until, pool, year, hospital_id, drg_code, discharge_date, settled, deducted,
         personal_paid, approved_at, approved_id, over_cap, error) = r
        figures = CaseFigures(
            pool, year, hospital_id, drg_code, discharge_date, _decimal(settled, POINTS_SCALE),
            None if deducted is None else _decimal(deducted, POINTS_SCALE), _decimal(personal_paid, MONEY_SCALE),
            (approved_at, approved_id) if approved_at is not None else None, over_cap, error,
        )
        return cls(case_id, known_from, known_until, figures)


def rows_from(
    case_id: str, start: datetime, held: list[Row], timeline: list[tuple[datetime, CaseFigures | None]]
) -> list[Row]:
    """The case's rows from `start` on: `held` are its rows still held at or after `start`
    and the one held just before it, which is cut at `start`, or extended when nothing changed."""
    out: list[Row] = []
    before = [r for r in held if r.known_from < start] if held else held
    segments = [(m, timeline[i + 1][0] if i + 1 < len(timeline) else None, f) for i, (m, f) in enumerate(timeline)]
    if before:
        (prev,) = before
        if segments and segments[0][2] == prev.figures:
            segments[0] = (prev.known_from, segments[0][1], prev.figures)
        else:
            out.append(Row(case_id, prev.known_from, start, prev.figures))
    out.extend(Row(case_id, a, b, f) for a, b, f in segments if f is not None)
    return out


# --------------------------------------------------------------------------- maintenance


class Projector:
    """Keeps the projection up to date; one per store (it caches each pool's history)."""

    def __init__(self) -> None:
        self._histories: dict[str, tuple[tuple[int, int], PoolHistory]] = {}
        self._checked: set[str] = set()  # pools whose cached history was checked in this apply
        self._caps = CapRows()

    def history(self, conn: Connection, pool: str) -> PoolHistory:
        """The pool's history as the index holds it (cached while no pool event is added)."""
        cached = self._histories.get(pool)
        if cached is not None and pool in self._checked:
            return cached[1]
        self._checked.add(pool)
        t = index_table
        where = and_(t.c.pool == pool, t.c.event_type.in_(POOL_HISTORY_TYPES))
        key = tuple(conn.execute(select(func.count(), func.coalesce(func.max(t.c.seq), 0)).where(where)).one())
        cached = self._histories.get(pool)
        if cached is not None and cached[0] == key:
            return cached[1]
        events = [decode_stored(et, b) for et, b in conn.execute(select(t.c.event_type, t.c.body).where(where))]
        found = PoolHistory(pool, events)
        self._histories[pool] = (key, found)  # type: ignore[assignment]
        return found

    def apply(self, conn: Connection, batch: Sequence[tuple[int, Any]], pools: dict[str, str], after: int) -> int:
        """Brings the rows up to date with `batch` (journal position, event), just indexed in
        this transaction, the projection having been at position `after`. `pools`: hospital ->
        pool. Returns how many cases were recomputed."""
        self._checked.clear()
        self._caps.follow(after)
        n = self._apply(conn, batch, pools)
        if batch:
            self._caps.at = batch[-1][0]
        return n

    def _apply(self, conn: Connection, batch: Sequence[tuple[int, Any]], pools: dict[str, str]) -> int:
        own: dict[str, datetime] = {}
        reaching: list[tuple[Any, Any, PoolHistory]] = []
        for _, ev in batch:
            effect = impact(ev)
            if effect.case_id is not None:
                if ev.event_type in CASE_EVENTS:
                    _earliest(own, effect.case_id, ev.recorded_at)
            elif ev.event_type in POOL_HISTORY_TYPES and effect.points and not effect.changes_nothing:
                reaching.append((ev, effect, self.history(conn, effect.pool)))
        known = {seq: ev for seq, ev in batch}
        touched: dict[tuple[str, int, str], datetime] = {}
        events: dict[str, list[Any]] = {}
        n = 0
        # A pool event can reach every case of a pool-year (a back-dated catalogue): the
        # cases are found, read and folded a chunk at a time, so memory stays flat.
        for chunk, reached in _chunks(conn, own, reaching):
            found, earlier = _case_events(conn, list(chunk), known, bodies=reached)
            # A case none of whose events precedes the batch has no rows yet (rows are folded
            # from the index, which the projection is at): only the others' are read.
            for key, at in self._recompute(conn, chunk, found, pools, held=earlier).items():
                _earliest(touched, key, at)
            events = found if not n else {}  # the cap check reads again what it needs
            n += len(chunk)
        if not n:
            return 0
        self._check_caps(conn, touched, events, pools)
        return n

    def _recompute(
        self,
        conn: Connection,
        starts: dict[str, datetime],
        events: dict[str, list[Any]],
        pools: dict[str, str],
        caps: dict[str, tuple[list[datetime], list[bool | str]]] | None = None,
        held: set[str] | None = None,
    ) -> dict[tuple[str, int, str], datetime]:
        """Recomputes each case's rows from its start; returns the hospital-years touched,
        each with the earliest start. `held`: the only cases that may have rows (default all)."""
        rows_held = _held(conn, starts if held is None else {c: starts[c] for c in held})
        touched: dict[tuple[str, int, str], datetime] = {}
        removed: list[Row] = []
        closed: list[tuple[Row, Row]] = []
        added: list[Row] = []
        histories: dict[str, PoolHistory] = {}
        for case_id, start in starts.items():
            evs = events.get(case_id, [])
            hospital = _hospital_of(evs)
            old = rows_held.get(case_id, [])
            new: list[Row] = []
            pool = pools.get(hospital) if hospital is not None else None
            if pool is not None:
                history = histories.get(pool)
                if history is None:
                    history = histories[pool] = self.history(conn, pool)
                over_cap, flips = _cap_function(caps.get(case_id) if caps else None)
                timeline = case_timeline(evs, history, start, over_cap, flips)
                new = rows_from(case_id, start, old, timeline)
            if old:
                _diff(old, new, removed, closed, added)
            else:
                added.extend(new)
            for r in (*old, *new):
                f = r.figures
                _earliest(touched, (f.pool, f.year, f.hospital_id), start)
        _write(conn, removed, closed, added)
        removed.extend(o for o, _ in closed)
        added.extend(n for _, n in closed)
        self._caps.written(removed, added)
        return touched

    def _check_caps(
        self,
        conn: Connection,
        touched: dict[tuple[str, int, str], datetime],
        events: dict[str, list[Any]],
        pools: dict[str, str],
    ) -> None:
        """Recomputes the approved cases whose cap answer (seed 001 二(二)) is not the one their
        rows were priced with, at some moment from the hospital-year's earliest start on."""
        if not touched:
            return
        start = min(touched.values())
        held = self._caps.of(conn, list(touched))
        redo: dict[str, datetime] = {}
        answers: dict[str, tuple[list[datetime], list[bool | str]]] = {}
        for key, cases in held.items():
            rows = cases.approved_after(start)
            if not rows:
                continue
            pool, year, hospital_id = key
            history = self.history(conn, pool)
            # Moments in microseconds: the live count's changes, the pool's events, `start`.
            # Only at a `bound` (the start, a pool event, an approved row opening or closing)
            # can the approved rows or the book change; between bounds only the live count does.
            start_us = _us(start)
            changes = cases.changes_after(start_us)
            pool_moments = {_us(h): h for h in history.after(start)}
            moments = sorted({start_us, *changes, *pool_moments})
            bounds = {start_us, *pool_moments}
            for r in rows:
                bounds.add(_us(r.known_from))
                if r.known_until is not None:
                    bounds.add(_us(r.known_until))
            case_ids = list(dict.fromkeys(r.case_id for r in rows))
            entry = {id(r): (*r.figures.approved, r.case_id, r.figures.discharge_date) for r in rows}  # type: ignore[misc]
            # Only the moments at which some answer moves are kept: between them the answers,
            # and so the rows found wrong, are those of the moment before.
            kept: list[datetime] = []
            by_case: dict[str, list[bool | str]] = {case_id: [] for case_id in case_ids}
            before: tuple[list[Row], dict[str, bool | str]] | None = None
            last: _CapInputs | None = None  # what the answer of the last moment computed read
            for x in moments:
                n = cases.live(x)
                if last is not None and x not in bounds and last.same_caps(n):
                    continue  # the rows, book and registration of `last`, and the same caps
                # The moment as a datetime, as a set of the three kinds would keep it.
                m = start if x == start_us else (_EPOCH + x * _US if x in changes else pool_moments[x])
                live = [r for r in rows if r.known_from <= m and (r.known_until is None or r.known_until > m)]
                book, hospitals = history.at(m)
                hospital = hospitals.get(hospital_id)
                inputs = _CapInputs.of(live, book, hospital, n, last)
                if inputs.same_answer(last):
                    continue  # the answer of the moment before, which `before` holds already
                last = inputs
                answer: dict[str, bool | str] = {}
                if hospital is not None and live:
                    try:
                        beyond, _ = incentive_over_cap([entry[id(r)] for r in live], n, hospital, book)
                        answer = {r.case_id: r.case_id in beyond for r in live}
                    except PolicyMissing as exc:
                        answer = {r.case_id: str(exc) for r in live}
                if before is not None and answer == before[1] and _same(live, before[0]):
                    continue
                before = (live, answer)
                for r in live:
                    want = answer.get(r.case_id, False)
                    got: bool | str = r.figures.error if r.figures.over_cap is None and r.figures.error else bool(r.figures.over_cap)
                    if want != got:
                        _earliest(redo, r.case_id, max(m, start))
                kept.append(m)
                for case_id in case_ids:
                    by_case[case_id].append(answer.get(case_id, False))
            for case_id, values in by_case.items():
                answers[case_id] = (kept, values)
        if not redo:
            return
        missing = [c for c in redo if c not in events]
        if missing:
            events.update(_case_events(conn, missing, {})[0])
        self._recompute(conn, redo, events, pools, answers)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _us(m: datetime) -> int:
    return (m - _EPOCH) // _US


def _pg_us(column: Any) -> Any:
    """`_us` of a timestamptz column, on PostgreSQL (its epoch is an exact numeric)."""
    return cast(func.extract("epoch", column) * 1_000_000, BigInteger)


class HospitalYearRows:
    """One hospital-year's rows as the incentive cap needs them: the moments they open and
    close (microseconds, sorted) and the approved rows."""

    def __init__(self, froms: Iterable[int] = (), untils: Iterable[int] = (), approved: Iterable[Row] = ()) -> None:
        self.froms = array("q", sorted(froms))
        self.untils = array("q", sorted(untils))
        self.approved = {(r.case_id, r.known_from): r for r in approved}

    def live(self, at: int) -> int:
        """How many rows are held at `at` microseconds since the epoch (known_from <= at <
        known_until): the live cases."""
        return bisect_right(self.froms, at) - bisect_right(self.untils, at)

    def changes_after(self, at: int) -> set[int]:
        """The moments after `at` (microseconds since the epoch) at which the live count can change."""
        return {*self.froms[bisect_right(self.froms, at):], *self.untils[bisect_right(self.untils, at):]}

    def approved_after(self, start: datetime) -> list[Row]:
        return [r for r in self.approved.values() if r.known_until is None or r.known_until > start]

    def add(self, r: Row) -> None:
        insort(self.froms, _us(r.known_from))
        if r.known_until is not None:
            insort(self.untils, _us(r.known_until))
        if r.figures.approved is not None:
            self.approved[(r.case_id, r.known_from)] = r

    def remove(self, r: Row) -> None:
        _drop(self.froms, _us(r.known_from))
        if r.known_until is not None:
            _drop(self.untils, _us(r.known_until))
        self.approved.pop((r.case_id, r.known_from), None)


def _drop(a: array, x: int) -> None:
    i = bisect_left(a, x)
    assert i < len(a) and a[i] == x, "a row the projection holds"
    del a[i]


class CapRows:
    """The incentive cap's view of the rows (`HospitalYearRows` per hospital-year), as the
    projection holds them at journal position `at`: read from the table on first use, then
    kept in step with what this projector writes, so a batch does not count every row of
    the hospitals it touches again (at province scale that count was most of an ingest).
    Dropped when a batch does not follow `at` (another writer moved the projection, a
    rebuild, a transaction that did not commit): the projection is a function of the
    journal, so rows at the same position are the same rows, whoever wrote them."""

    def __init__(self) -> None:
        self.at: int | None = None
        self.keys: dict[tuple[str, int, str], HospitalYearRows] = {}

    def follow(self, after: int) -> None:
        """A batch starts from position `after`; until it ends (`at` is set) nothing is trusted."""
        if after != self.at:
            self.keys.clear()
        self.at = None

    def written(self, removed: Iterable[Row], added: Iterable[Row]) -> None:
        """Rows this projector deleted and inserted, for the hospital-years already read."""
        for r in removed:
            held = self.keys.get(_key(r))
            if held is not None:
                held.remove(r)
        for r in added:
            held = self.keys.get(_key(r))
            if held is not None:
                held.add(r)

    def of(self, conn: Connection, keys: list[tuple[str, int, str]]) -> dict[tuple[str, int, str], HospitalYearRows]:
        """The hospital-years' rows, those not in hand read from the table (per pool-year, by
        the pool-year-hospital index)."""
        t = table
        missing: dict[tuple[str, int], list[str]] = defaultdict(list)
        for k in keys:
            if k not in self.keys:
                missing[(k[0], k[1])].append(k[2])
        for (pool, year), hospitals in missing.items():
            # A few hospitals a statement: the driver holds a whole result (psycopg), and one
            # of 900 hospitals' rows was a third of a province's projection.
            for i in range(0, len(hospitals), _HOSPITALS):
                group = hospitals[i : i + _HOSPITALS]
                froms: dict[str, array] = defaultdict(lambda: array("q"))
                untils: dict[str, array] = defaultdict(lambda: array("q"))
                approved: dict[str, list[Row]] = defaultdict(list)
                where = (t.c.pool == pool, t.c.year == year, t.c.hospital_id.in_(group))
                pg = conn.dialect.name == "postgresql"  # the server gives the microseconds (`_us`)
                us = int if pg else _us
                moments = (_pg_us(t.c.known_from), _pg_us(t.c.known_until)) if pg else (t.c.known_from, t.c.known_until)
                for h, kf, ku in conn.execute(select(t.c.hospital_id, *moments).where(*where)):
                    froms[h].append(us(kf))
                    if ku is not None:
                        untils[h].append(us(ku))
                for r in conn.execute(select(t).where(*where, t.c.approved_at.is_not(None))):
                    approved[r.hospital_id].append(Row.of(r))
                for h in group:
                    self.keys[(pool, year, h)] = HospitalYearRows(froms.pop(h, ()), untils.pop(h, ()), approved[h])
        return {k: self.keys[k] for k in keys}


@dataclass(frozen=True, slots=True)
class _CapInputs:
    """What `incentive_over_cap` reads at one moment of a hospital-year (seed 001 二(二)): the
    approved live rows, the policy book, the registration, the live count, and the caps it
    gives (`caps` None: cannot be said, `PolicyMissing`). Two moments with the same rows,
    book, registration and caps have the same answer: the moments in between need no sort."""

    live: list[Row]
    book: Any
    hospital: Any
    n: int
    dates: list[date]
    caps: tuple[int | None, ...] | None

    @classmethod
    def of(cls, live: list[Row], book: Any, hospital: Any, n: int, last: _CapInputs | None) -> _CapInputs:
        if hospital is None or not live:
            return cls(live, book, hospital, n, [], ())
        try:
            if last is not None and last.book is book and _same(live, last.live):
                dates = last.dates
            else:
                dates = cap_dates(book, (r.figures.discharge_date for r in live))
            caps = tuple(incentive_cap(n, hospital, book, d) for d in dates)
        except PolicyMissing:
            return cls(live, book, hospital, n, [], None)
        return cls(live, book, hospital, n, dates, caps)

    def same_caps(self, n: int) -> bool:
        """Whether a live count of `n`, with these rows, book and registration, gives the same
        caps (and so the same answer)."""
        if n == self.n:
            return True
        if self.caps is None:
            return False
        return tuple(incentive_cap(n, self.hospital, self.book, d) for d in self.dates) == self.caps

    def same_answer(self, last: _CapInputs | None) -> bool:
        return (
            last is not None and self.book is last.book and self.hospital is last.hospital and _same(self.live, last.live)
            and (self.n == last.n or (self.caps is not None and self.caps == last.caps))
        )


def _key(r: Row) -> tuple[str, int, str]:
    f = r.figures
    return (f.pool, f.year, f.hospital_id)


def _same(a: list[Row], b: list[Row]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def _earliest(d: dict[Any, datetime], key: Any, moment: datetime) -> None:
    if key not in d or moment < d[key]:
        d[key] = moment


def _diff(old: list[Row], new: list[Row], removed: list[Row], closed: list[tuple[Row, Row]], added: list[Row]) -> None:
    """What turns a case's `old` rows into its `new` ones (each case's rows have distinct
    `known_from`): rows to delete, rows that keep their figures and only end at another moment
    (`closed`: old, new; a back-dated change cuts the row held when it was recorded), rows to insert."""
    by_from = {r.known_from: r for r in old}
    for n in new:
        o = by_from.pop(n.known_from, None)
        if o is None:
            added.append(n)
        elif o.figures is n.figures or o.figures == n.figures:
            if o.known_until != n.known_until:
                closed.append((o, n))
        else:
            removed.append(o)
            added.append(n)
    removed.extend(by_from.values())


def _write(conn: Connection, removed: list[Row], closed: list[tuple[Row, Row]], added: list[Row]) -> None:
    """Deletes `removed`, moves the end of each `closed` row, inserts `added`: on PostgreSQL
    one statement each (the keys as arrays), on SQLite one prepared statement a row."""
    t = table
    if conn.dialect.name == "postgresql":  # arrays in binary: psycopg's text dump of instants is slow
        with conn.connection.driver_connection.cursor() as cur:
            if removed:
                cur.execute(_PG_DELETE, ([r.case_id for r in removed], [r.known_from for r in removed]))
            if closed:
                cur.execute(_PG_CLOSE, ([o.case_id for o, _ in closed], [o.known_from for o, _ in closed],
                                        [n.known_until for _, n in closed]))
    else:
        if removed:
            conn.execute(delete(t).where(t.c.case_id == bindparam("c"), t.c.known_from == bindparam("f")),
                         [{"c": r.case_id, "f": r.known_from} for r in removed])
        if closed:
            conn.execute(update(t).where(t.c.case_id == bindparam("c"), t.c.known_from == bindparam("f"))
                         .values(known_until=bindparam("u")),
                         [{"c": o.case_id, "f": o.known_from, "u": n.known_until} for o, n in closed])
    bulk_insert(conn, t, [r.values() for r in added])


_PG_DELETE = (
    f"DELETE FROM {NAME} WHERE (case_id, known_from) IN "
    "(SELECT * FROM unnest(%b::varchar[], %b::timestamptz[]))"
)
_PG_CLOSE = (
    f"UPDATE {NAME} AS t SET known_until = v.until FROM unnest(%b::varchar[], %b::timestamptz[], "
    "%b::timestamptz[]) AS v(case_id, known_from, until) WHERE t.case_id = v.case_id AND t.known_from = v.known_from"
)


def _cap_function(answers: tuple[list[datetime], list[bool | str]] | None) -> tuple[Any, list[datetime]]:
    if answers is None:
        return (lambda _m: False), []
    moments, values = answers

    def over_cap(m: datetime) -> bool | str:
        i = bisect_right(moments, m)
        return values[i - 1] if i else False

    return over_cap, moments


def _hospital_of(events: list[Any]) -> str | None:
    subs = [e for e in events if e.event_type == EventType.CASE_SUBMITTED]
    if not subs:
        return None
    if len(subs) == 1:
        return str(subs[0].payload.hospital_id)
    return str(max(subs, key=lambda e: (e.payload.revision, e.recorded_at, e.event_id)).payload.hospital_id)


def _chunks(
    conn: Connection, own: dict[str, datetime], reaching: list[tuple[Any, Any, PoolHistory]]
) -> Iterator[tuple[dict[str, datetime], bool]]:
    """The cases a batch recomputes, each with its start, at most `_CHUNK` at a time: those
    the pool events `reaching` reach (`_reached`, a page at a time) and the batch's own
    cases (`own`: case id -> its earliest event's recorded_at), each once, from the
    earliest of its starts. With each chunk, whether it was reached (its cases hold rows,
    so their events are in the index before the batch)."""
    own = dict(own)
    if reaching:
        for page in _reached(conn, reaching):
            for case_id in page.keys() & own.keys():
                _earliest(page, case_id, own.pop(case_id))
            yield page, True
    ids = list(own)
    for i in range(0, len(ids), _CHUNK):
        yield {c: own[c] for c in ids[i : i + _CHUNK]}, False


def _reached(conn: Connection, reaching: list[tuple[Any, Any, PoolHistory]]) -> Iterator[dict[str, datetime]]:
    """The cases with a row still held when a pool event of `reaching` was recorded, or later,
    that it can change (`PoolHistory.reaches`: its impact, a catalogue narrowed to the DRG
    groups it can match), each with the earliest such event's recorded_at. Read in case-id
    order, at most `_CHUNK` cases a page: the caller rewrites a page's cases (ids up to the
    page's last) before the next page is read (ids after it)."""
    t = table
    moment = min(ev.recorded_at for ev, _, _ in reaching)
    where: list[Any] = [t.c.pool.in_(sorted({effect.pool for _, effect, _ in reaching})),
                        or_(t.c.known_until.is_(None), t.c.known_until > moment)]
    if len(reaching) <= 50:  # the database narrows as each event does; Python decides below
        where.append(or_(*(and_(*_narrowed(ev, effect)) for ev, effect, _ in reaching)))
    columns = (t.c.case_id, t.c.pool, t.c.year, t.c.hospital_id, t.c.drg_code, t.c.known_until)
    # An event narrowed to a hospital can reach only its rows (`Impact.touches_case`): each
    # row is asked only of its hospital's events and of those not narrowed to one.
    by_hospital: dict[str, list[tuple[Any, Any, PoolHistory]]] = defaultdict(list)
    unnarrowed: list[tuple[Any, Any, PoolHistory]] = []
    for item in reaching:
        hospital_id = item[1].hospital_id
        (unnarrowed if hospital_id is None else by_hospital[hospital_id]).append(item)
    after: str | None = None
    while True:
        q = select(*columns).where(*where, *(() if after is None else (t.c.case_id > after,)))
        rows = conn.execute(q.order_by(t.c.case_id).limit(_CHUNK + 1)).all()
        full = len(rows) > _CHUNK
        if full:  # the page ends with a whole case: the last one's rows are read with the next page
            last = rows[-1][0]
            rows = [r for r in rows if r[0] != last]
            if not rows:  # one case holds more rows than a page
                rows = conn.execute(select(*columns).where(*where, t.c.case_id == last)).all()
        page: dict[str, datetime] = {}
        for case_id, pool, year, hospital_id, drg_code, known_until in rows:
            for ev, effect, history in (*by_hospital.get(hospital_id, ()), *unnarrowed):
                at = ev.recorded_at
                if (known_until is None or known_until > at) and history.reaches(ev, effect, pool, year, hospital_id, drg_code):
                    _earliest(page, case_id, at)
        if page:
            yield page
        if not full:
            return
        after = rows[-1][0]


def _narrowed(event: Any, effect: Any) -> list[Any]:
    """The rows `event` can reach, as SQL: its pool, still held when it was recorded, its
    years, hospital and DRG group when it names them (`Impact`)."""
    t = table
    c: list[Any] = [t.c.pool == effect.pool, or_(t.c.known_until.is_(None), t.c.known_until > event.recorded_at)]
    if effect.years is not None:
        c.append(t.c.year.between(min(effect.years), max(effect.years)))  # intervals are contiguous
    if effect.hospital_id is not None:
        c.append(t.c.hospital_id == effect.hospital_id)
    if effect.drg_code is not None:
        c.append(t.c.drg_code == effect.drg_code)
    return c


def _case_events(
    conn: Connection, case_ids: list[str], known: dict[int, Any], bodies: bool = False
) -> tuple[dict[str, list[Any]], set[str]]:
    """Every event of the cases (`CASE_EVENTS`), from the index, and the cases with an event
    not in `known` (by journal position), which are parsed from their bodies. `bodies`: most
    events are not in `known`, so the bodies are read with the positions, in one statement."""
    t = index_table
    out: dict[str, list[Any]] = defaultdict(list)
    unknown: list[int] = []
    earlier: set[str] = set()
    # By case id alone, the types kept here: with `event_type IN (...)` in the statement,
    # SQLite searched the event-type index, every case event of the store for each batch.
    where = among(conn, t.c.case_id, case_ids)
    if bodies:
        for seq, case_id, event_type, body in conn.execute(select(t.c.seq, t.c.case_id, t.c.event_type, t.c.body).where(where)):
            if event_type in CASE_EVENTS:
                ev = known.get(seq)
                if ev is None:
                    ev = decode_stored(event_type, body)
                    earlier.add(case_id)
                out[case_id].append(ev)
        return out, earlier
    rows = conn.execute(select(t.c.seq, t.c.case_id, t.c.event_type).where(where))
    for seq, case_id, event_type in rows:
        if event_type not in CASE_EVENTS:
            continue
        ev = known.get(seq)
        if ev is None:
            unknown.append(seq)
            earlier.add(case_id)
        else:
            out[case_id].append(ev)
    if unknown:  # bodies only of those not in hand
        for case_id, event_type, body in conn.execute(
            select(t.c.case_id, t.c.event_type, t.c.body).where(among(conn, t.c.seq, unknown))
        ):
            out[case_id].append(decode_stored(event_type, body))
    return out, earlier


def _held(conn: Connection, starts: dict[str, datetime]) -> dict[str, list[Row]]:
    """Each case's rows held at or after its start, and the one held just before it."""
    out: dict[str, list[Row]] = defaultdict(list)
    if not starts:
        return out
    t = table
    ids = list(starts)
    earliest = min(starts.values())
    rows = conn.execute(
        select(t).where(among(conn, t.c.case_id, ids), or_(t.c.known_until.is_(None), t.c.known_until >= earliest))
    )
    for r in rows:
        row = Row.of(r)
        if row.known_until is None or row.known_until >= starts[row.case_id]:
            out[row.case_id].append(row)
    return out


# --------------------------------------------------------------------------- tracking


def position(conn: Connection) -> int:
    t = tracking_table
    found = conn.execute(select(t.c.notification_id).where(t.c.name == NAME)).scalar()
    return int(found) if found is not None else 0


def move(conn: Connection, old: int, new: int) -> bool:
    """Moves the tracking row from `old` to `new`; False when it was not at `old`."""
    t = tracking_table
    return bool(conn.execute(update(t).where(t.c.name == NAME, t.c.notification_id == old).values(notification_id=new)).rowcount == 1)


def catch_up(store: LedgerStore, projector: Projector) -> int:
    """Applies the index rows the projection has not seen, a page at a time; returns how many."""
    t = index_table
    done = 0
    while True:
        with store.engine.begin() as conn:
            at = position(conn)
            rows = conn.execute(
                select(t.c.seq, t.c.event_type, t.c.body).where(t.c.seq > at).order_by(t.c.seq).limit(_PAGE)
            ).all()
            if not rows:
                return done
            batch = [(seq, decode_stored(et, b)) for seq, et, b in rows]
            if not move(conn, at, rows[-1][0]):
                continue
            projector.apply(conn, batch, store.registered_pools(conn), after=at)
            done += len(rows)


def clear_rows(conn: Connection) -> None:
    """Empties the projection (`LedgerStore.rebuild` builds it again)."""
    conn.execute(delete(table))
    conn.execute(update(tracking_table).where(tracking_table.c.name == NAME).values(notification_id=0))


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class Sums:
    """Per hospital, the sums of the versions live at a moment; `versions` how many were read."""

    hospitals: dict[str, CaseSums]
    versions: int


def live_at(known_at: datetime) -> Any:
    t = table
    return and_(t.c.known_from <= known_at, or_(t.c.known_until.is_(None), t.c.known_until > known_at))


def sums(
    conn: Connection, pool: str, year: int, known_at: datetime, *, until: date | None = None,
    hospital_id: str | None = None,
) -> Sums:
    """Each hospital's case sums over the versions live at `known_at` (cases discharged by
    `until` when given): one aggregate. Raises `ClearingError` when a live case cannot be
    settled as known then, with the reason the replay would give."""
    t = table
    where = [_scanned(conn, t.c.pool) == pool, t.c.year == year, live_at(known_at)]
    if until is not None:
        where.append(t.c.discharge_date <= until)
    if hospital_id is not None:
        where.append(t.c.hospital_id == hospital_id)
    rows = _by_hospital(conn, where)
    if any(r[5] for r in rows):
        message = conn.execute(select(t.c.error).where(*where, t.c.error.is_not(None)).order_by(t.c.case_id).limit(1)).scalar()
        raise ClearingError(message)
    out = {hid: _summed(n, settled, deducted, personal) for hid, n, settled, deducted, personal, _ in rows}
    return Sums(out, sum(int(r[1]) for r in rows))


def hospital_sums(
    conn: Connection, pool: str, year: int, known_at: datetime, hospital_ids: Sequence[str] | None = None,
) -> dict[str, CaseSums | ClearingError]:
    """Each hospital's case sums over the versions live at `known_at`, or the error of its
    first case (by id) that cannot be settled as known then: what `sums` would give or raise
    for that hospital alone. One aggregate for all of them (the running totals' rows, one per
    hospital, and `running_totals.lagging`'s check of them)."""
    t = table
    where = [_scanned(conn, t.c.pool) == pool, t.c.year == year, live_at(known_at)]
    if hospital_ids is not None:
        where.append(among(conn, t.c.hospital_id, sorted(set(hospital_ids))))
    rows = _by_hospital(conn, where)
    failing = [r[0] for r in rows if r[5]]
    errors: dict[str, str] = {}
    if failing:
        found = conn.execute(
            select(t.c.hospital_id, t.c.error).where(*where, t.c.error.is_not(None), among(conn, t.c.hospital_id, failing))
            .order_by(t.c.hospital_id, t.c.case_id)
        )
        for hid, message in found:
            errors.setdefault(hid, message)
    return {hid: ClearingError(errors[hid]) if hid in errors else _summed(n, settled, deducted, personal)
            for hid, n, settled, deducted, personal, _ in rows}


def _by_hospital(conn: Connection, where: list[Any]) -> list[Any]:
    """Per hospital among the rows `where` selects: count, settled, deducted, personal paid,
    and how many cannot be settled (the aggregate behind `sums` and `hospital_sums`)."""
    t = table
    return conn.execute(
        select(
            t.c.hospital_id, func.count(), func.sum(t.c.settled), func.sum(t.c.deducted), func.sum(t.c.personal_paid),
            func.count(t.c.error),
        ).where(*where).group_by(t.c.hospital_id)
    ).all()


def _summed(n: int, settled: int, deducted: int | None, personal: int) -> CaseSums:
    """Case sums from an aggregate of stored units; `deducted` None (no penalty among them)
    is the exact zero a replay adds up to."""
    return CaseSums(
        _decimal(int(settled), POINTS_SCALE),
        Decimal(0) if deducted is None else _decimal(int(deducted), POINTS_SCALE),
        _decimal(int(personal), MONEY_SCALE),
        Decimal(0),
        int(n),
    )


def _scanned(conn: Connection, column: Any) -> Any:
    """`column` as a predicate SQLite answers by scanning the table: a pool-year is most of
    it, and visiting its rows through the pool-year index was twice as slow (220-300 ms vs
    124 ms at city scale). PostgreSQL's planner chooses for itself."""
    return column.concat("") if conn.dialect.name == "sqlite" else column


def daily_sums(
    conn: Connection, pool: str, year: int, known_at: datetime, hospital_id: str
) -> tuple[dict[date, CaseSums], dict[date, CaseSums]]:
    """The hospital's and the pool's case sums per discharge day (live at `known_at`): what a
    series of balances is cut from, in one aggregate. Grouped by the comparison itself:
    PostgreSQL estimates two groups per day for it (732 in a year) and aggregates in parallel,
    where for a CASE of it it estimated a group per hospital and day and did not."""
    t = table
    mine = (t.c.hospital_id == hospital_id).label("mine")
    rows = conn.execute(
        select(
            t.c.discharge_date, mine, func.count(), func.sum(t.c.settled), func.sum(t.c.deducted),
            func.sum(t.c.personal_paid), func.count(t.c.error),
        ).where(_scanned(conn, t.c.pool) == pool, t.c.year == year, live_at(known_at)).group_by(t.c.discharge_date, mine)
    ).all()
    if any(r[6] for r in rows):
        sums(conn, pool, year, known_at)  # raises with the reason
    own: dict[date, CaseSums] = {}
    pool_days: dict[date, CaseSums] = {}
    for day, is_mine, n, settled, deducted, personal, _ in rows:
        s = _summed(n, settled, deducted, personal)
        _add(pool_days.setdefault(day, CaseSums()), s)
        if is_mine:
            _add(own.setdefault(day, CaseSums()), s)
    return own, pool_days


def _add(into: CaseSums, s: CaseSums) -> None:
    into.settled += s.settled
    into.deducted += s.deducted
    into.personal_paid += s.personal_paid
    into.cases += s.cases


def total(parts: Iterable[CaseSums]) -> CaseSums:
    """The sum of several hospitals' sums (from exact zero, as `case_sums` adds them)."""
    out = CaseSums()
    for s in parts:
        _add(out, s)
    return out


def cumulative(days: dict[date, CaseSums], until: date) -> CaseSums:
    """The sums of the days up to `until` (from exact zero, as `case_sums` adds them)."""
    out = CaseSums()
    for day in sorted(days):
        if day > until:
            break
        _add(out, days[day])
    return out


def versions_of(conn: Connection, case_id: str) -> list[Row]:
    """Every version of a case, oldest first (`explain`, audits)."""
    t = table
    return [Row.of(r) for r in conn.execute(select(t).where(t.c.case_id == case_id).order_by(t.c.known_from))]


def held_at(conn: Connection, case_id: str, known_at: datetime) -> Row | None:
    """The version of a case live at `known_at`, if any."""
    t = table
    r = conn.execute(select(t).where(t.c.case_id == case_id, live_at(known_at))).first()
    return None if r is None else Row.of(r)



# --------------------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True)
class PoolRead:
    """The pool's own events an answer read: those parsed (`events`), and how many were read
    in all with the latest `ingested_at` among them (what the answer's `Basis` counts)."""

    events: list[Any]
    count: int
    latest_ingested_at: datetime | None


def pool_year(
    store: LedgerStore, pool: str, year: int, known_at: datetime, *, hospital_id: str | None = None
) -> tuple[Any, PoolRead]:
    """The pool-year as known at `known_at` with no case settled: hospitals, policy, budget,
    prepayments and recorded clearings, from the pool's own events (`pool_events`)."""
    from ledger.clearing import settle

    read = pool_events(store, pool, year, known_at, hospital_id=hospital_id)
    return settle(read.events, pool, year, known_at), read


def pool_events(
    store: LedgerStore, pool: str, year: int, known_at: datetime, *, hospital_id: str | None = None
) -> PoolRead:
    """The pool's own events a pool-year as known at `known_at` rests on (a few hundred): its
    history, and the year's budget, prepayments and recorded clearings.

    With `hospital_id`, only that hospital's prepayments are parsed (a balance or an
    explanation reads no other's, RULES.md 6): the others are counted, their bodies not read."""
    t = index_table
    history_types = [*POOL_HISTORY_TYPES]
    money_types = [EventType.BUDGET_SET, EventType.PREPAYMENT_MADE, EventType.CLEARING_COMPLETED]
    where = [t.c.pool == pool, t.c.recorded_at <= known_at,
             or_(t.c.event_type.in_(history_types), and_(t.c.event_type.in_(money_types), t.c.year == year))]
    body = t.c.body if hospital_id is None else case(
        (or_(t.c.event_type != EventType.PREPAYMENT_MADE, t.c.hospital_id == hospital_id), t.c.body), else_=None
    )
    with store.engine.connect() as conn:
        rows = conn.execute(select(t.c.event_type, t.c.ingested_at, body).where(*where).order_by(t.c.seq)).all()
    latest = max((r[1] for r in rows if r[1] is not None), default=None)
    return PoolRead([decode_stored(et, b) for et, _, b in rows if b is not None], len(rows), latest)


def fresh(store: LedgerStore) -> int:
    """Catches the projection up with the index when it is behind (an older store, a crash
    the store has not healed yet) and returns the journal position both are at."""
    t = tracking_table
    with store.engine.connect() as conn:  # both tracking rows in one statement
        found = dict(conn.execute(select(t.c.name, t.c.notification_id).where(t.c.name.in_([NAME, index_table.name]))).all())
    at = int(found.get(NAME, 0))
    if at != int(found[index_table.name]):
        store.catch_up_projection()
        with store.engine.connect() as conn:
            at = position(conn)
    return at
