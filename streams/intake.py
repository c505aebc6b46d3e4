"""Agent `ingest_events`: Kafka messages of `drg-ledger.events` into the ledger.

Per batch: append the messages to the store (idempotent on `event_id`, origin
`kafka:topic/partition/offset`), forward each refused message to the dead-letter topic,
and ask for the recomputation of every running total the batch can change
(`projections.running_totals.recompute_keys`), keyed by hospital on `drg-ledger.recompute`.

The blocking half (`run_batch`) is plain Python on a `LedgerStore`; the agent only
decodes, delegates to it on its own thread, sends what it returns and stops (STYLE.md 1).
Offsets are committed only after the batch's sends are acknowledged, so a crash anywhere
redelivers the batch: appends are idempotent, recomputation reads the store, and a
message already refused is recognised by its origin and not refused twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ledger.events import LEDGER_WRITTEN, InvalidEvent, parse_event
from projections.running_totals import Key, keys_for, store_engine
from projections.store import dead_letters_table
from streams.retry import retrying

if TYPE_CHECKING:
    from projections.store import LedgerStore

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class Inbound:
    """One consumed message: where it sat, its key and its raw value."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes

    @property
    def origin(self) -> str:
        return f"kafka:{self.topic}/{self.partition}/{self.offset}"


@dataclass(frozen=True, slots=True)
class Refused:
    """A message the ledger refused, with its reason, for the dead-letter topic."""

    message: Inbound
    field: str
    reason: str
    event_id: str | None

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("reason", (f"{self.field}: {self.reason}" if self.field else self.reason).encode("utf-8")),
            ("field", self.field.encode("utf-8")),
            ("event_id", (self.event_id or "").encode("utf-8")),
            ("origin", self.message.origin.encode("utf-8")),
        ]


@dataclass
class IntakeResult:
    """What a batch did and what the agent must send."""

    accepted: int = 0
    duplicates: int = 0
    refused: list[Refused] = field(default_factory=list)
    recompute: dict[Key, str] = field(default_factory=dict)  # key -> one event_id that caused it


def run_batch(store: LedgerStore, messages: Sequence[Inbound]) -> IntakeResult:
    """Appends `messages` to the store; returns the refusals and the totals to recompute.

    1. Messages whose origin is already a dead letter were refused before a crash: they
       are forwarded again (the topic is at least once) but not stored again (the store
       keeps one dead letter per origin).
    2. The rest go to `LedgerStore.ingest`, one call per run of consecutive offsets of a
       partition, so each dead letter's origin is its exact offset.
    3. Every message that parses, duplicates included, names totals to recompute: a
       duplicate may be the redelivery of a batch whose recomputation never happened.
    """
    result = IntakeResult()
    parsed: dict[int, Any] = {}
    for i, m in enumerate(messages):
        try:
            ev = parse_event(m.value)
        except InvalidEvent:
            continue  # ingest refuses it below, naming the field
        if ev.event_type not in LEDGER_WRITTEN:
            parsed[i] = ev
    skip: set[int] = set()
    by_origin = {m.origin: i for i, m in enumerate(messages)}
    t = dead_letters_table
    with store_engine(store).connect() as conn:
        origins = list(by_origin)
        for k in range(0, len(origins), 900):
            rows = conn.execute(
                select(t.c.origin, t.c.field, t.c.reason, t.c.event_id).where(t.c.origin.in_(origins[k : k + 900]))
            ).all()
            for origin, fld, reason, event_id in rows:
                i = by_origin[origin]
                if i not in skip:
                    skip.add(i)
                    result.refused.append(Refused(messages[i], fld, reason, event_id))
                    parsed.pop(i, None)

    for run in _runs([(i, m) for i, m in enumerate(messages) if i not in skip]):
        first = run[0][1]
        report = store.ingest(
            [m.value for _, m in run],
            origin=f"kafka:{first.topic}/{first.partition}/",
            first_line=first.offset,
            batch_size=max(len(run), 1),
        )
        result.accepted += report.accepted
        result.duplicates += report.duplicates
        by_offset = {m.offset: m for _, m in run}
        index_of = {m.offset: i for i, m in run}
        for r in report.rejected:
            result.refused.append(Refused(by_offset[r.line], r.field, r.reason, r.event_id))
            # A refused message changes no total; and its fields (a NUL in an id) may be
            # unusable in the recompute lookup below (found by the hostile flood, issue 12).
            parsed.pop(index_of[r.line], None)

    events = list(parsed.values())
    if events:
        causes = {ev.event_id: ev for ev in events}
        for key in sorted(keys_for(store, events)):
            result.recompute[key] = _cause(key, causes)
    return result


def _runs(indexed: list[tuple[int, Inbound]]) -> list[list[tuple[int, Inbound]]]:
    """Splits messages into runs of consecutive offsets of one topic-partition, in offset order."""
    by_tp: dict[tuple[str, int], list[tuple[int, Inbound]]] = {}
    for i, m in indexed:
        by_tp.setdefault((m.topic, m.partition), []).append((i, m))
    runs: list[list[tuple[int, Inbound]]] = []
    for tp in sorted(by_tp):
        ordered = sorted(by_tp[tp], key=lambda im: im[1].offset)
        current: list[tuple[int, Inbound]] = []
        for im in ordered:
            if current and im[1].offset != current[-1][1].offset + 1:
                runs.append(current)
                current = []
            current.append(im)
        if current:
            runs.append(current)
    return runs


def _cause(key: Key, events: dict[str, Any]) -> str:
    """One event of the batch that names this key's hospital, else the first of the batch (for tracing)."""
    for eid, ev in events.items():
        if getattr(ev.payload, "hospital_id", None) == key.hospital_id:
            return eid
    return next(iter(events))


def request(key: Key, cause: str) -> bytes:
    """The value of a recompute request (schemas/topics.json)."""
    return json.dumps(
        {"pool": key.pool, "year": key.year, "hospital_id": key.hospital_id, "cause": cause},
        ensure_ascii=False, separators=(",", ":"),
    ).encode("utf-8")


def install(app: Any, settings: Any, events: Any, dead_letters: Any, recompute: Any) -> Any:
    """Registers agent `ingest_events` on `app` (a faust.App); returns it."""
    from projections.store import LedgerStore

    from streams.signed_intake import screened_batch
    from streams.signing import load_keyring

    executor = ThreadPoolExecutor(1, thread_name_prefix="drg-intake")
    holder: dict[str, LedgerStore] = {}
    keyring = load_keyring(getattr(settings, "key_file", None))  # signatures required when set

    def blocking(messages: list[Inbound], headers: list[Any]) -> IntakeResult:
        # One store, used from this one thread only (LedgerStore is not thread-safe).
        if "store" not in holder:
            holder["store"] = LedgerStore.open(settings.database_url)
        return screened_batch(holder["store"], messages, headers, keyring)

    async def handle(batch: Sequence[Any]) -> None:
        messages = [
            Inbound(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value or b"")
            for e in batch
        ]
        headers = [e.message.headers for e in batch]
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        result = await retrying(lambda: loop.run_in_executor(executor, blocking, messages, headers), "ingest")
        stored = time.perf_counter()

        async def send_all() -> None:
            futures = []
            for r in result.refused:
                futures.append(await dead_letters.send(key=r.message.key, value=r.message.value, headers=r.headers()))
            for key, cause in result.recompute.items():
                futures.append(await recompute.send(key=key.hospital_id.encode("utf-8"), value=request(key, cause)))
            # The broker's acknowledgements, before the batch is acked (its offsets committed).
            await asyncio.gather(*futures)

        # Retried whole: a resend duplicates messages, which both topics tolerate (at least once).
        await retrying(send_all, "send dead letters and recompute requests")
        log.info("ingested %d (+%d duplicates, %d refused) -> %d recompute requests; store %.0f ms, sends %.0f ms",
                 result.accepted, result.duplicates, len(result.refused), len(result.recompute),
                 (stored - started) * 1000, (time.perf_counter() - stored) * 1000)

    @app.agent(events, name="ingest_events")
    async def ingest_events(stream: Any) -> None:
        async for batch in stream.take_events(settings.batch_size, within=settings.batch_within_s):
            await handle(batch)

    return ingest_events

