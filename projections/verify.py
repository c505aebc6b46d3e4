"""`drg-ledger verify`: the journal re-walked, every hash recomputed, every derived table
compared with what the journal implies (issue 12, "Hash chain").

Digests: `position:chain_hash` (projections/chain.py). The chain hash is recomputed from the
entries alone, so a digest kept outside the database proves the journal up to its position
unchanged even when an attacker rewrote the chain table to match altered entries.

What is checked, in one pass in journal order:
- journal: each entry's content hash against its chain row, each chain row's link to the
  previous one, no chain row without its entry (deleted) and no entry without a chain row
  (inserted behind the ledger's back), each entry decodes and names the event its row names;
- digests: `--digest P:H`, and the `log_digest` of every recorded `ClearingCompleted`,
  against the chain recomputed from the entries;
- `ledger_index`: one row per entry, each column equal to what `_index_row` makes of the
  entry (body and content_hash included), no row without an entry;
- tracking positions (index, penalties, case_versions, running totals) not beyond the head;
- pool claims: every registration's hospital claimed for its pool;
- penalties: every `PenaltyImposed` derived from a journalled violation verdict;
- dead letters: each one's sha256 and length agree with the bytes kept;
- the case-points projection at every policy moment, and the running totals now: equal to
  a cold replay of their pool-year (`reconcile`);
- the append-only triggers on the journal and its chain are present and enabled.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect, select, text

from ledger.events import ENVELOPES, MAX_LINE_BYTES, EventType
from ledger.journal import LedgerEntry, entry_id
from projections.chain import GENESIS, chain_table_name, content_hash, digest_at, link, read_chain, stored_event_id
from projections.store import (
    _INDEX,
    _PENALTIES,
    _index_row,
    dead_letters_table,
    hospital_pools_table,
    index_table,
    tracking_table,
)

if TYPE_CHECKING:
    from projections.store import LedgerStore

PAGE = 5_000
MAX_FINDINGS = 50


def _full_parse(event_type: str, body: str) -> Any:
    """A journalled envelope parsed with every validator of `ledger.events`, not the store's
    `decode_stored`: verify is the independent check, so an entry the validators of this
    code would refuse (written behind the ledger's back, or before a rule was tightened) is
    reported here, while the store's reads, which trust the chain-checked bytes, decode it."""
    return ENVELOPES[event_type].model_validate_json(body)


class BadDigest(ValueError):
    """A digest is not `position:sha256-hex`."""


def parse_digest(digest: str) -> tuple[int, str]:
    """`position:hash` -> (position, hash); raises `BadDigest` naming what is wrong."""
    position, sep, value = digest.strip().partition(":")
    if not sep or not position.isdigit() or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise BadDigest(f"{digest!r} is not a digest: expected POSITION:SHA256 (64 lowercase hex digits)")
    return int(position), value


def head_digest(store: LedgerStore) -> str:
    """`position:chain_hash` of the journal head, from the chain table (`0:<zeros>` when empty).

    Take it when the ledger is trusted (after a `verify`), keep it outside the database."""
    return digest_at(store.journal, store.engine, store.journal.head())


@dataclass(frozen=True)
class Finding:
    """One thing that is not as the journal implies: where (position, event_id), what differs."""

    check: str
    position: int | None
    event_id: str | None
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"check": self.check, "position": self.position, "event_id": self.event_id, "detail": self.detail}


@dataclass
class Verification:
    """What `verify` found: ok when there are no findings."""

    entries: int = 0
    head: int = 0
    head_digest: str = f"0:{GENESIS}"
    digest: str | None = None
    checked: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    more_findings: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first(self) -> Finding | None:
        """The first broken link: the earliest journal position named, else the first finding."""
        placed = [f for f in self.findings if f.position is not None]
        return min(placed, key=lambda f: f.position or 0) if placed else (self.findings[0] if self.findings else None)

    def add(self, check: str, position: int | None, event_id: str | None, detail: str) -> None:
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(Finding(check, position, event_id, detail))
        else:
            self.more_findings += 1

    def count(self, check: str, n: int = 1) -> None:
        self.checked[check] = self.checked.get(check, 0) + n

    def as_json(self) -> dict[str, Any]:
        first = self.first
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head": self.head,
            "head_digest": self.head_digest,
            "digest": self.digest,
            "checked": self.checked,
            "first_broken": None if first is None else first.as_json(),
            "findings": [f.as_json() for f in self.findings],
            "more_findings": self.more_findings,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.entries / self.seconds) if self.seconds > 0 else None,
        }


def verify(
    store: LedgerStore,
    *,
    digest: str | None = None,
    totals: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> Verification:
    """Re-walks the journal and checks everything derived from it (module docstring).

    `digest` (`position:hash`) must equal the chain recomputed from the entries up to that
    position. `on_progress(entries walked, head)` after each page."""
    started = time.perf_counter()
    target = parse_digest(digest) if digest is not None else None
    out = Verification(head=store.journal.head(), digest=digest)
    _walk(store, out, target, on_progress)
    _tracking(store, out)
    _dead_letters(store, out)
    from projections.roles import triggers_present

    out.count("append-only triggers")
    for name in triggers_present(store):
        out.add("immutability", None, None, f"append-only trigger {name} is missing or disabled "
                "(`drg-ledger migrate` reinstalls it)")
    if totals:
        _running_totals(store, out)
    out.head_digest = digest_at(store.journal, store.engine, out.head)
    out.seconds = time.perf_counter() - started
    return out


def _walk(
    store: LedgerStore, out: Verification, target: tuple[int, str] | None, on_progress: Callable[[int, int], None] | None
) -> None:
    journal, engine = store.journal, store.engine
    table = chain_table_name(journal)
    indexed_to = store.position
    clearing_digests = _clearing_digests(store)
    wanted = {p for p, _ in clearing_digests.values()} | ({target[0]} if target else set())
    recomputed_at: dict[int, str] = {}
    previous_row, recomputed = GENESIS, GENESIS
    pools: dict[str, str] = {}
    registrations: dict[str, tuple[int, str, str]] = {}
    violations: set[str] = set()
    penalties: list[tuple[int, str]] = []
    clearings: list[tuple[int, str, str]] = []
    unindexed = 0
    after = 0
    while True:
        notifications = journal.recorder.select_notifications(after + 1, PAGE)
        if not notifications:
            break
        last = notifications[-1].id
        chain = {r.position: r for r in read_chain(engine, table, after + 1, last)}
        with engine.connect() as conn:
            index_rows = {r["seq"]: dict(r) for r in conn.execute(
                select(index_table).where(index_table.c.seq > after, index_table.c.seq <= last)).mappings()}
        for n in notifications:
            for gone in sorted(p for p in chain if p < n.id):
                row = chain.pop(gone)
                out.add("journal", gone, row.event_id, "entry deleted: its chain row remains, the entry does not")
            h = content_hash(n.topic, n.state)
            recomputed = link(recomputed, h)
            if n.id in wanted:
                recomputed_at[n.id] = recomputed
            eid = stored_event_id(n.state)
            row = chain.pop(n.id, None)
            out.count("journal entries")
            if row is None:
                out.add("journal", n.id, eid, "entry has no chain row: written behind the ledger's back")
            else:
                if h != row.content_hash:
                    out.add("journal", n.id, eid, "content differs from the hash chained when it was recorded"
                            + _against_index(n.state, index_rows.get(n.id)))
                if link(previous_row, row.content_hash) != row.chain_hash:
                    out.add("chain", n.id, eid, "chain hash does not follow from the previous entry's "
                            "(the chain table was rewritten)")
                previous_row = row.chain_hash
                if row.event_id != eid:
                    out.add("journal", n.id, eid, f"entry names event {eid!r}, its chain row {row.event_id!r}")
            try:
                recorded = journal.mapper.to_domain_event(n)
                assert isinstance(recorded, LedgerEntry.Recorded)
                ev = _full_parse(recorded.event_type, recorded.envelope)
            except Exception as exc:  # noqa: BLE001 - a tampered entry may not decode at all
                out.add("journal", n.id, eid, f"entry does not decode: {type(exc).__name__}: {str(exc)[:160]}")
                index_rows.pop(n.id, None)
                continue
            if recorded.originator_id != entry_id(recorded.event_id) or ev.event_id != recorded.event_id:
                out.add("journal", n.id, recorded.event_id, "entry id, event_id and envelope do not agree")
            expected = _index_row(n.id, ev, recorded.envelope, recorded.content_hash, pools)
            actual = index_rows.pop(n.id, None)
            if n.id > indexed_to:
                unindexed += 1
            elif actual is None:
                out.add("index", n.id, ev.event_id, f"{_INDEX} has no row for this entry")
            else:
                out.count("index rows")
                for column, value in expected.items():
                    if actual.get(column) != value:
                        out.add("index", n.id, ev.event_id, f"{_INDEX}.{column} differs from the journal entry: "
                                f"index has {_short(actual.get(column))}, journal implies {_short(value)}")
                        break
            p = ev.payload
            if ev.event_type == EventType.HOSPITAL_REGISTERED:
                registrations[p.hospital_id] = (n.id, ev.event_id, p.pool)
            elif ev.event_type == EventType.REVIEW_VERDICT_RECORDED and p.outcome == "violation":
                violations.add(ev.event_id)
            elif ev.event_type == EventType.PENALTY_IMPOSED:
                penalties.append((n.id, ev.event_id))
            elif ev.event_type == EventType.CLEARING_COMPLETED and getattr(p, "log_digest", None):
                clearings.append((n.id, ev.event_id, p.log_digest))
        for seq in sorted(index_rows):
            out.add("index", seq, index_rows[seq]["event_id"], f"{_INDEX} row has no journal entry")
        for gone in sorted(p for p in chain if p <= last):
            out.add("journal", gone, chain[gone].event_id, "entry deleted: its chain row remains, the entry does not")
        out.entries += len(notifications)
        if on_progress is not None:
            on_progress(out.entries, out.head)
        after = last
        if len(notifications) < PAGE:
            break
    for row in read_chain(engine, table, after + 1):
        out.add("journal", row.position, row.event_id, "entry deleted: its chain row remains, the entry does not")
    with engine.connect() as conn:
        for seq, eid in conn.execute(select(index_table.c.seq, index_table.c.event_id).where(index_table.c.seq > after)):
            out.add("index", seq, eid, f"{_INDEX} row has no journal entry")
    if unindexed:
        out.add("index", indexed_to + 1, None, f"{unindexed:,} journal entries after position {indexed_to:,} are not "
                "indexed yet (`drg-ledger doctor` catches the index up)")
    if target is not None:
        position, value = target
        out.count("digests")
        got = recomputed_at.get(position)
        if got is None:
            out.add("digest", position, None, f"digest position {position} is not a journal entry")
        elif got != value:
            out.add("digest", position, None, "the journal up to this position is not the one the digest was taken of "
                    f"(recomputed {got[:16]}..., digest {value[:16]}...)")
    for nid, eid, d in clearings:
        out.count("clearing digests")
        position, value = parse_digest(d)
        got = recomputed_at.get(position)
        if got is None:
            out.add("digest", nid, eid, f"clearing's log digest names position {position}, which is not a journal entry")
        elif got != value:
            out.add("digest", nid, eid, f"the journal up to position {position} is not the one this clearing was "
                    "computed from")
    _claims(store, out, registrations)
    for nid, eid in penalties:
        out.count("penalties")
        if eid.removeprefix("penalty:") not in violations:
            out.add("penalties", nid, eid, "penalty without a journalled violation verdict")


def _clearing_digests(store: LedgerStore) -> dict[str, tuple[int, str]]:
    """event_id -> (position, hash) of the recorded clearings' log digests (from the index:
    only where to look; the clearings themselves are read from the journal)."""
    t = index_table
    out: dict[str, tuple[int, str]] = {}
    with store.engine.connect() as conn:
        for eid, body in conn.execute(select(t.c.event_id, t.c.body).where(t.c.event_type == EventType.CLEARING_COMPLETED)):
            try:
                d = json.loads(body).get("payload", {}).get("log_digest")
                if d:
                    out[eid] = parse_digest(d)
            except (ValueError, AttributeError):
                continue
    return out


def _claims(store: LedgerStore, out: Verification, registrations: dict[str, tuple[int, str, str]]) -> None:
    t = hospital_pools_table
    with store.engine.connect() as conn:
        claims = dict(conn.execute(select(t.c.hospital_id, t.c.pool)).all())
    for hospital, (nid, eid, pool) in sorted(registrations.items(), key=lambda kv: kv[1][0]):
        out.count("pool claims")
        if claims.get(hospital) != pool:
            out.add("pool claims", nid, eid, f"hospital {hospital!r} is registered in pool {pool!r}, "
                    f"claimed for {claims.get(hospital)!r}")


def _tracking(store: LedgerStore, out: Verification) -> None:
    head = out.head
    t = tracking_table
    with store.engine.connect() as conn:
        rows = dict(conn.execute(select(t.c.name, t.c.notification_id)).all())
        for name in (_INDEX, _PENALTIES, "case_versions"):
            out.count("tracking positions")
            if rows.get(name, 0) > head:
                out.add("tracking", rows[name], None, f"{t.name} row {name!r} is at {rows[name]:,}, beyond the "
                        f"journal head {head:,}")
        tables = set(inspect(store.engine).get_table_names())
        for table, label in (("running_totals", "running totals"),):
            if table not in tables:
                continue
            for pos, in conn.execute(text(f"SELECT position FROM {table} WHERE position > :h"), {"h": head}):
                out.add("tracking", int(pos), None, f"{label} say they reflect position {int(pos):,}, beyond the "
                        f"journal head {head:,}")
            out.count("tracking positions", int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()))


def _dead_letters(store: LedgerStore, out: Verification) -> None:
    t = dead_letters_table
    with store.engine.connect() as conn:
        for id_, raw, length, digest in conn.execute(select(t.c.id, t.c.raw, t.c.raw_length, t.c.raw_sha256)):
            out.count("dead letters")
            raw = bytes(raw)
            if len(raw) != min(length, MAX_LINE_BYTES):
                out.add("dead letters", None, None, f"dead letter {id_} keeps {len(raw):,} bytes of {length:,}")
            elif length <= MAX_LINE_BYTES and hashlib.sha256(raw).hexdigest() != digest:
                out.add("dead letters", None, None, f"dead letter {id_}: its bytes do not have its sha256")


def _running_totals(store: LedgerStore, out: Verification) -> None:
    """The case-points projection at every policy moment, and the running totals now, against
    a cold replay of the journal (`reconcile`), for every pool-year either holds."""
    from projections.chain import BrokenEntry
    from projections.running_totals import reconcile

    if not out.ok:
        return  # the journal itself is broken (named above): a replay of it proves nothing
    tables = set(inspect(store.engine).get_table_names())
    found: dict[str, set[tuple[str, int]]] = {}
    with store.engine.connect() as conn:
        for table in ("running_totals", "case_versions"):
            if table in tables:
                found[table] = {(p, int(y)) for p, y in conn.execute(text(f"SELECT DISTINCT pool, year FROM {table}"))}
    running = found.get("running_totals", set())
    for pool, year in sorted(running | found.get("case_versions", set())):
        out.count("running totals pool-years")
        try:
            result = reconcile(store, pool, year, running=(pool, year) in running)
        except BrokenEntry:
            return
        except (LookupError, ValueError) as exc:  # the replay itself cannot be computed now
            out.add("running totals", None, None, f"{pool} {year}: the replay cannot be computed: {exc}")
            continue
        for d in result.differences[:5]:
            out.add("running totals", None, None, f"{pool} {year} {d.hospital_id}: running totals differ from a "
                    f"full replay: {d.figures or d.error}")
        for m in result.moments:
            out.count("projection moments")
            if not m.ok:
                detail = m.differences[0].figures if m.differences else (m.projection_error, m.replay_error)
                out.add("case-points projection", None, None, f"{pool} {year} as known at {m.known_at.isoformat()}: "
                        f"the projection differs from a replay of the journal: {detail}")


def _against_index(state: bytes, row: dict[str, Any] | None) -> str:
    """What differs between an altered entry and the index's copy of it, when that can be told."""
    if row is None:
        return ""
    try:
        now = json.loads(json.loads(bytes(state))["envelope"])
        then = json.loads(row["body"])
    except (ValueError, KeyError, TypeError):
        return ""
    diffs = _diff(then, now, "")
    return ("; against the index's copy: " + ", ".join(diffs[:3])) if diffs else ""


def _diff(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out.extend(_diff(a.get(k), b.get(k), f"{path}.{k}" if path else k))
        return out
    return [] if a == b else [f"{path} {_short(a)} -> {_short(b)}"]


def _short(value: Any) -> str:
    text_ = repr(value)
    return text_ if len(text_) <= 80 else text_[:77] + "..."
