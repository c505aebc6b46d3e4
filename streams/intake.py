"""The intake: Kafka records of `drg-ledger.events` into the ledger, losing none.

Per batch: append the records to the store (idempotent on `event_id`, origin
`kafka:topic/partition/offset`, so each record's fate is durable with the fate itself:
projections/offsets.py), forward each refused record to the dead-letter topic, and ask for
the recomputation of every running total the batch can change
(`projections.running_totals.recompute_keys`), keyed by hospital on `drg-ledger.recompute`.

The events topic is consumed with aiokafka directly (`EventsConsumer`, a service of the
Faust app), not by a Faust agent: Faust's consumer keeps its own offset bookkeeping and
drops records it believes it has seen when a partition is sought back (faust-streaming/faust
#216, #221, #606), which is exactly what re-reading a hole needs. The store owns the offsets:
on every assignment each partition is sought to the store's mark + 1; every
`audit_interval_s` the partitions are checked for holes (offsets handed over by the client
but without a fate) and sought back to re-read them, and the running totals of the
partitions' hospitals are brought up to the store's position. Kafka commits are advisory
(lag monitoring only).

Besides the events topic it reads every per-HIS topic `<prefix>.his.<hospital_id>` (one
pattern subscription): what only that HIS may write, checked by streams/signed_intake.py.

A broker can lose its topics (Tansu keeps them in memory: a restart empties it) and come
back with the same names standing for new, empty logs. The consumer records each topic's
log by its topic id (`projections.offsets.log_of`): origins and marks carry the log's name,
so offsets of a new log never meet the fates of the old one. Every
`$DRG_LEDGER_BROKER_CHECK_S`, on every assignment, and when offsets go back without a seek,
it asks the broker for its topics; when one is gone or has another id, it stops consuming
and the worker restarts itself in place
(streams/app.py): the topics are created again, the new log is read from its start, and
Faust's table state, which described the lost changelog, starts afresh (totals are
recomputed from the store).

The blocking half (`run_batch`) is plain Python on a `LedgerStore`, run on a thread of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRebalanceListener
from sqlalchemy import select

from projections.running_totals import Key, keys_for, store_engine
from projections.store import among, dead_letters_table
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
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds (the worker's log)


def run_batch(store: LedgerStore, messages: Sequence[Inbound],
              reread: dict[tuple[str, int], tuple[int, int]] | None = None) -> IntakeResult:
    """Appends `messages` to the store; returns the refusals and the totals to recompute.

    1. Messages whose origin is already a dead letter were refused before a crash: they
       are forwarded again (the topic is at least once) but not stored again (the store
       keeps one dead letter per origin) — except inside `reread` ((topic, partition) ->
       first, last offset re-read after a hole): those were judged without the records
       of the hole (a case whose registration was lost), so they are judged again.
    2. The rest go to `LedgerStore.ingest` in one call, partition by partition in offset
       order, each line's origin its exact offset (one call per partition run cost a
       journal and an index transaction each: 12 a batch on 12 partitions).
    3. Every message that parses, duplicates included, names totals to recompute: a
       duplicate may be the redelivery of a batch whose recomputation never happened.
    """
    result = IntakeResult()
    clock = _Phases(result.timings)
    parsed: dict[int, Any] = {}  # message -> its event (ingest's parse), for the recompute keys
    skip: set[int] = set()
    by_origin = {m.origin: i for i, m in enumerate(messages)}
    t = dead_letters_table
    with store_engine(store).connect() as conn:
        rows = conn.execute(
            select(t.c.origin, t.c.field, t.c.reason, t.c.event_id).where(among(conn, t.c.origin, list(by_origin)))
        ).all()
    for origin, fld, reason, event_id in rows:
        i = by_origin[origin]
        m = messages[i]
        first, last = (reread or {}).get((m.topic, m.partition), (0, -1))
        if first <= m.offset <= last:
            continue
        if i not in skip:
            skip.add(i)
            result.refused.append(Refused(messages[i], fld, reason, event_id))
            parsed.pop(i, None)
    # Records with no line to store leave no entry and no dead letter: their fate is recorded
    # here. A dead letter kept before the store recorded offsets gets its fate too.
    blank = [i for i, m in enumerate(messages) if i not in skip and not m.value.strip()]
    store.record_consumed([messages[i].origin for i in blank], "blank")
    store.record_consumed([messages[i].origin for i in sorted(skip)], "dead-letter")
    skip.update(blank)
    clock("dead letters")

    # One ingest for the whole batch (one journal and one index transaction), the runs in
    # order; a line's number is its place here, its origin the exact offset.
    kept = [im for run in _runs([(i, m) for i, m in enumerate(messages) if i not in skip]) for im in run]
    if kept:
        read: dict[int, Any] = {}  # the events ingest parsed, by line: no second parse here
        report = store.ingest([m.value for _, m in kept], origin=lambda line: kept[line][1].origin,
                              first_line=0, batch_size=len(kept), parsed_into=read)
        parsed.update((kept[line][0], ev) for line, ev in read.items())
        result.accepted += report.accepted
        result.duplicates += report.duplicates
        for r in report.rejected:
            i, m = kept[r.line]
            result.refused.append(Refused(m, r.field, r.reason, r.event_id))
            # A refused message changes no total; and its fields (a NUL in an id) may be
            # unusable in the recompute lookup below (found by the hostile flood, issue 12).
            parsed.pop(i, None)
    clock("ingest")

    events = list(parsed.values())
    if events:
        causes = {ev.event_id: ev for ev in events}
        for key in sorted(keys_for(store, events)):
            result.recompute[key] = _cause(key, causes)
    clock("keys")
    return result


class _Phases:
    """Adds the seconds since the previous call to `into[phase]` (the worker logs a batch's phases)."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into = into
        self.since = time.perf_counter()

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        self.into[phase] = self.into.get(phase, 0.0) + now - self.since
        self.since = now


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


# --------------------------------------------------------------------------- the consumer

AUDIT_INTERVAL_ENV = "DRG_LEDGER_AUDIT_INTERVAL_S"
DEFAULT_AUDIT_INTERVAL_S = 10.0
"""How often the worker checks its partitions for holes and its hospitals' totals for lag."""

FAULT_DROP_ENV = "DRG_LEDGER_FAULT_DROP"
"""Fault injection for tests: `<partition>:<count>` makes the consumer silently lose `count`
records of that partition once, after the first record of a batch, as a client library
bug would (the client's position moves past them, nothing is stored, no error)."""


class FaultDrop:
    """`$DRG_LEDGER_FAULT_DROP`: loses records at the library boundary, once (tests only)."""

    def __init__(self, spec: str | None) -> None:
        self.partition: int | None = None
        self.count = 0
        if spec:
            partition, _, count = spec.partition(":")
            self.partition, self.count = int(partition), int(count or 1)

    def apply(self, records: dict[Any, list[Any]]) -> None:
        if self.partition is None:
            return
        for tp, recs in records.items():
            if tp.partition == self.partition and len(recs) > self.count + 1:
                lost = recs[1 : 1 + self.count]
                del recs[1 : 1 + self.count]
                log.warning("fault injection: dropped offsets %s/%d [%d,%d]", tp.topic, tp.partition,
                            lost[0].offset, lost[-1].offset)
                self.partition = None
                return


def hole_ranges(mark: Any, position: int) -> list[tuple[int, int]]:
    """The offsets below `position` (the client's next offset) that have no fate in the store."""
    out = [(a, b) for a, b in mark.holes if a < position]
    out = [(a, min(b, position - 1)) for a, b in out]
    if position - 1 > mark.highest:
        out.append((mark.highest + 1, position - 1))
    return out


BROKER_CHECK_ENV = "DRG_LEDGER_BROKER_CHECK_S"
DEFAULT_BROKER_CHECK_S = 5.0
"""How often the worker asks the broker whether its topics are still the logs it reads."""

METADATA_MAX_AGE_MS = 15_000
"""How soon the consumer sees a per-HIS topic created after it started (its pattern's topics)."""

restart_requested: list[str] = []
"""Why the worker must restart itself in place (streams/app.py `run_worker` reads it)."""

RESTART_GRACE_S = 15.0
"""How long Faust's graceful stop may take before the worker restarts anyway: its producer
can wait for good on sends to topics the broker lost (seen: `Flush producer buffer...`)."""

restart_now: Any = None
"""`restart_now(why)` replaces the process at once (set by streams/app.py `run_worker`)."""


class EventsConsumer:
    """Consumes the events topic and the per-HIS topics with aiokafka; the store decides where
    each partition resumes."""

    def __init__(self, app: Any, settings: Any, dead_letters: Any, recompute: Any) -> None:
        from streams.topics import TopicNames

        self.app = app
        self.settings = settings
        self.names = TopicNames(settings.topic_prefix)
        self.topic = self.names.events  # and every per-HIS topic (`names.intake_pattern()`)
        self.topic_ids: dict[str, str | None] = {}  # per topic read, the broker's id of its log
        self.logs: dict[str, str] = {}  # per topic read, the name its records are recorded under (log_of)
        self.restarting: str | None = None  # why the broker's topics are no longer what it reads
        self.broker_check_s = float(os.environ.get(BROKER_CHECK_ENV) or DEFAULT_BROKER_CHECK_S)
        self.group = f"{settings.topic_prefix}.intake"
        self.dead_letters = dead_letters
        self.recompute = recompute
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="drg-intake")
        self.holder: dict[str, LedgerStore] = {}
        self.assigned: set[Any] = set()
        self.consumer: Any = None
        self.interval = float(os.environ.get(AUDIT_INTERVAL_ENV) or DEFAULT_AUDIT_INTERVAL_S)
        self.fault = FaultDrop(os.environ.get(FAULT_DROP_ENV))
        from streams.signing import load_keyring

        self.keyring = load_keyring(getattr(settings, "key_file", None))  # signatures required when set
        self._check_due = time.monotonic() + self.interval
        self._converge_now = False
        self._resume: set[Any] = set()
        self._seeks: dict[Any, int] = {}  # per partition, how many times it was sought
        self._sought: dict[Any, int] = {}  # per partition, the offset it was last sought to
        self._ready: set[Any] = set()  # assigned partitions already sought from the store's mark
        self._reread: dict[tuple[str, int], tuple[int, int]] = {}  # offsets re-read after a hole
        self._next: dict[Any, int] = {}  # per partition, the offset after the last record handled

    # -- blocking work, on the intake thread (LedgerStore is one per thread)

    def _store(self) -> LedgerStore:
        from projections.store import LedgerStore

        if "store" not in self.holder:
            self.holder["store"] = LedgerStore.open(self.settings.database_url)
        return self.holder["store"]

    async def _blocking(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)

    def _marks(self, starts: dict[tuple[str, int], int]) -> dict[tuple[str, int], Any]:
        from projections.offsets import marks

        found: dict[tuple[str, int], Any] = {}
        for name in sorted({log_name for log_name, _ in starts}):
            found.update(marks(self._store(), name, {k: v for k, v in starts.items() if k[0] == name}))
        return found

    def _log_of(self, topic: str, topic_id: str | None) -> str:
        from projections.offsets import log_of

        return log_of(self._store(), topic, topic_id)

    def _key(self, tp: Any) -> tuple[str, int]:
        """(log name, partition) of a Kafka topic-partition: how the store knows it."""
        return (self.logs[tp.topic], tp.partition)

    def _lagging(self, partitions: set[int], count: int, hospitals: set[str]) -> list[Key]:
        from projections.running_totals import create_tables, lagging
        from streams.topics import partition_of

        store = self._store()
        create_tables(store_engine(store))
        return [lag.key for lag in lagging(store)
                if partition_of(lag.key.hospital_id.encode("utf-8"), count) in partitions
                or lag.key.hospital_id in hospitals]

    # -- the loop

    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer

        from streams.app import FETCH_MAX_WAIT_MS

        await self._blocking(self._store)  # the store's tables exist before the first record is read
        await retrying(lambda: self._identify([self.topic], create=True), "identify the events topic's log")
        conf = self.app.conf
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers, group_id=self.group,
            group_instance_id=self.settings.instance_id, client_id=f"{self.group}-consumer",
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=int(conf.broker_session_timeout * 1000),
            heartbeat_interval_ms=int(conf.broker_heartbeat_interval * 1000),
            rebalance_timeout_ms=int(conf.broker_rebalance_timeout * 1000),
            max_poll_records=self.settings.batch_size,
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,  # Tansu waits it out whatever arrives (streams/app.py)
        )
        self.consumer.subscribe(pattern=self.names.intake_pattern(), listener=_Listener(self))
        await retrying(self.consumer.start, "start the events consumer")
        log.info("consuming %s in group %s%s", self.topic, self.group,
                 f" as static member {self.settings.instance_id}" if self.settings.instance_id else "")
        watch = asyncio.ensure_future(self._watch_broker())
        try:
            while True:
                if self.restarting:
                    await asyncio.sleep(1)
                    continue
                await self._resume_assigned()
                before = dict(self._seeks)
                got = await self.consumer.getmany(timeout_ms=int(self.settings.batch_within_s * 1000),
                                                  max_records=self.settings.batch_size)
                # Records fetched before a seek made while we waited (an assignment) come again
                # from the sought offset: processing them now would only duplicate work.
                # Records of a partition not sought from the store yet (aiokafka fetches from the
                # group's offset before the assignment callback has run) come again likewise.
                kept = {}
                for tp, recs in got.items():
                    if tp in self._ready and self._seeks.get(tp, 0) == before.get(tp, 0):
                        kept[tp] = recs
                    elif tp in self._ready and tp in self.assigned:
                        # aiokafka moved its position past the records it handed over, the
                        # seek notwithstanding: seek again, or they would become a hole.
                        self.consumer.seek(tp, self._sought[tp])
                if kept and await self._went_back(kept, before):
                    kept = {}
                got = kept if not self.restarting else {}
                self.fault.apply(got)
                batch = [r for recs in got.values() for r in recs]
                if batch:
                    result = await self.handle(batch)
                    committing = time.perf_counter()
                    await self._commit(got)
                    result.timings["commit"] = time.perf_counter() - committing
                    self._next.update({tp: recs[-1].offset + 1 for tp, recs in got.items() if recs})
                    log.info("ingested %d (+%d duplicates, %d refused) -> %d recompute requests in %.0f ms: %s",
                             result.accepted, result.duplicates, len(result.refused), len(result.recompute),
                             sum(result.timings.values()) * 1000,
                             ", ".join(f"{k} {v * 1000:.0f}" for k, v in result.timings.items()))
                if self._converge_now:
                    self._converge_now = False
                    await retrying(self.converge, "bring the running totals up to the store")
                if time.monotonic() >= self._check_due:
                    self._check_due = time.monotonic() + self.interval
                    await retrying(self.check, "audit offsets and totals")
        finally:
            watch.cancel()
            await self.consumer.stop()
            self.executor.shutdown(wait=False)

    async def _identify(self, topics: list[str], create: bool = False) -> None:
        """Which log of each of `topics` this worker reads: the broker's topic id, recorded in the store."""
        from streams.topics import ensure_topics, topic_ids

        loop = asyncio.get_running_loop()
        bootstrap = self.settings.bootstrap_servers
        if create:
            await loop.run_in_executor(None, lambda: ensure_topics(bootstrap, self.names.all(),
                                                                   partitions=self.settings.partitions))
        ids = await loop.run_in_executor(None, topic_ids, bootstrap, topics)
        for topic in topics:
            if topic not in ids:
                raise RuntimeError(f"topic {topic} vanished while the worker was to read it")
            self.topic_ids[topic] = ids[topic]
            self.logs[topic] = await self._blocking(self._log_of, topic, ids[topic])
            log.info("reading %s, log %s (topic id %s)%s", topic, self.logs[topic], ids[topic],
                     "" if self.logs[topic] == topic else ": the topic was recreated since the store first read it")

    async def _watch_broker(self) -> None:
        """Asks the broker every `broker_check_s` whether its topics are still the logs this
        worker reads; when not (module docstring), restarts the worker in place."""
        from streams.topics import topic_ids

        loop = asyncio.get_running_loop()
        while not self.restarting:
            await asyncio.sleep(self.broker_check_s)
            known = dict(self.topic_ids)
            try:
                ids = await loop.run_in_executor(None, topic_ids, self.settings.bootstrap_servers,
                                                 sorted(set(self.names.all()) | set(known)))
            except Exception as exc:  # noqa: BLE001 - broker unreachable: the clients reconnect; look again
                log.debug("broker check: %s", exc)
                continue
            lost = [n for n in self.names.all() if n not in ids]
            changed = [t for t, was in known.items() if was is not None and ids.get(t) not in (None, was)]
            if lost or changed:
                why = "; ".join([f"topics {', '.join(lost)} gone"] * bool(lost)
                                + [f"topic {t} recreated (id {known[t]} -> {ids[t]})" for t in changed])
                self.restart(why)

    async def _logs_changed(self, topics: list[str]) -> bool:
        """Whether any of `topics` is now another log than the one this worker reads (then it restarts)."""
        from streams.topics import topic_ids

        if not topics:
            return False
        loop = asyncio.get_running_loop()
        try:
            ids = await loop.run_in_executor(None, topic_ids, self.settings.bootstrap_servers, topics)
        except Exception as exc:  # noqa: BLE001 - unreachable: the periodic check looks again
            log.debug("log check: %s", exc)
            return False
        changed = [t for t in topics if self.topic_ids.get(t) is not None and ids.get(t) != self.topic_ids[t]]
        if changed:
            self.restart("; ".join(f"topic {t} is another log now (id {self.topic_ids[t]} -> {ids.get(t)})"
                                   for t in changed))
        return bool(changed)

    async def _went_back(self, got: dict[Any, list[Any]], before: dict[Any, int]) -> bool:
        """Records below what this worker already read, with no seek of its own: the client
        reset its position, as it does on a log that restarted. Checks the logs before using them."""
        back = sorted({tp.topic for tp, recs in got.items()
                       if recs and recs[0].offset < self._next.get(tp, 0) and self._seeks.get(tp, 0) == before.get(tp, 0)})
        if back:
            log.info("offsets of %s went back without a seek: checking the topics are still the logs read",
                     ", ".join(back))
        return await self._logs_changed(back)

    def restart(self, why: str) -> None:
        """Stops consuming and stops the worker, which then starts itself again (streams/app.py)."""
        self.restarting = why
        restart_requested.append(why)
        log.warning("the broker no longer holds the logs this worker reads (%s): restarting in place", why)
        os.kill(os.getpid(), signal.SIGTERM)  # Faust's own graceful stop; run_worker then restarts
        if restart_now is not None:
            def overdue() -> None:
                log.warning("the graceful stop takes over %.0f s: restarting now", RESTART_GRACE_S)
                restart_now(why)

            timer = threading.Timer(RESTART_GRACE_S, overdue)
            timer.daemon = True
            timer.start()

    async def _resume_assigned(self) -> None:
        """Seeks newly assigned partitions to the store's mark + 1 (the group's commit is advisory)."""
        if not self._resume or self.restarting:
            return
        tps, self._resume = sorted(self._resume & self.assigned), set()
        if not tps:
            return
        if await self._logs_changed(sorted({tp.topic for tp in tps} & set(self.logs))):
            return  # a rejoin after the broker lost its topics: nothing of the new logs is read here
        unknown = sorted({tp.topic for tp in tps} - set(self.logs))
        if unknown:  # a per-HIS topic seen for the first time
            await retrying(lambda: self._identify(unknown), "identify the logs of " + ", ".join(unknown))
        starts = await self._starts(tps)
        found = await retrying(lambda: self._blocking(self._marks, {self._key(tp): starts[tp] for tp in tps}),
                               "read the store's offsets")
        committed = await self._committed(tps)
        for tp in tps:
            m = found[self._key(tp)]
            # Never past the store's mark. Before it when the group's commit is lower: the
            # commit follows the broker's acknowledgement of a batch's dead letters and
            # recompute requests, so the records after it may have been processed without
            # those sends (a kill in between); reading them again sends them (idempotent).
            at = max(min(m.mark + 1, committed.get(tp, starts[tp])), starts[tp])
            self._seek(tp, at)
            self._ready.add(tp)
            if m.holes:
                self._reread[self._key(tp)] = (at, m.highest)
            log.info("partition %s/%d assigned: resuming at offset %d (store mark %d, group commit %s%s)", self.logs[tp.topic],
                     tp.partition, at, m.mark, committed.get(tp), f", holes {list(m.holes)}" if m.holes else "")
        # The seek re-reads every hole; the totals of these partitions' hospitals converge now.
        self._converge_now = True
        self._check_due = time.monotonic() + self.interval

    async def _committed(self, tps: list[Any]) -> dict[Any, int]:
        """The group's committed offset of each partition that has one."""
        out = {}
        for tp in tps:
            try:
                offset = await asyncio.wait_for(self.consumer.committed(tp), 10)
            except Exception:  # noqa: BLE001 - unknown: resume from the log start (idempotent)
                log.warning("could not read the committed offset of %s; re-reading from the log start", tp)
                continue
            if offset is not None and offset >= 0:
                out[tp] = int(offset)
        return out

    def _seek(self, tp: Any, offset: int) -> None:
        self.consumer.seek(tp, offset)
        self._seeks[tp] = self._seeks.get(tp, 0) + 1
        self._sought[tp] = offset
        self._next[tp] = offset

    async def _starts(self, tps: list[Any]) -> dict[Any, int]:
        try:
            found = await self.consumer.beginning_offsets(tps)
            return {tp: int(found.get(tp, 0)) for tp in tps}
        except Exception:  # noqa: BLE001 - the log start is 0 unless the broker deleted records
            log.warning("could not read the log start of %s; counting from 0", tps, exc_info=True)
            return dict.fromkeys(tps, 0)

    async def check(self) -> None:
        """Re-reads every hole of the assigned partitions; asks for the totals that lag."""
        tps = sorted(self.assigned)
        if not tps:
            return
        starts = await self._starts(tps)
        found = await self._blocking(self._marks, {self._key(tp): starts[tp] for tp in tps})
        for tp in tps:
            try:
                position = await asyncio.wait_for(self.consumer.position(tp), 5)
            except Exception:  # noqa: BLE001 - no longer ours (a rebalance) or no position yet
                continue
            m = found[self._key(tp)]
            holes = hole_ranges(m, position)
            if holes:
                at = max(m.mark + 1, starts[tp])
                log.warning("partition %s/%d: offsets %s were handed over but have no fate in the store: "
                            "re-reading from %d", self.logs[tp.topic], tp.partition, holes, at)
                self._seek(tp, at)
                self._reread[self._key(tp)] = (at, max(position - 1, m.highest))
        await self.converge()

    async def converge(self) -> None:
        """Asks for the recomputation of every running total of the assigned partitions'
        hospitals that differs from the store's figures now (`projections.running_totals.lagging`)."""
        tps = sorted(self.assigned)
        if not tps:
            return
        count = len(self.consumer.partitions_for_topic(self.topic) or ()) or self.settings.partitions
        his = {p.removeprefix("his:") for tp in tps if (p := self.names.principal_of(tp.topic))}
        keys = await self._blocking(self._lagging, {tp.partition for tp in tps if tp.topic == self.topic}, count, his)
        if keys:
            log.info("%d running totals lag the store: requesting their recomputation", len(keys))
            futures = [await self.recompute.send(key=k.hospital_id.encode("utf-8"), value=request(k, "convergence"))
                       for k in keys]
            await asyncio.gather(*futures)

    async def _commit(self, got: dict[Any, list[Any]]) -> None:
        """Advisory: the group's offsets show the lag; the worker resumes from the store."""
        offsets = {tp: recs[-1].offset + 1 for tp, recs in got.items() if recs and tp in self.assigned}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except Exception as exc:  # noqa: BLE001 - a rebalance in progress; the next batch commits
            log.debug("advisory commit skipped: %s", exc)

    async def handle(self, records: Sequence[Any]) -> IntakeResult:
        """Stores a batch, then sends its dead letters and recompute requests (acknowledged)."""
        from streams.signed_intake import screened_batch  # it imports this module

        # Recorded under the log's name (`kafka:<log>/<partition>/<offset>`), not the topic's.
        messages = [Inbound(self.logs[r.topic], r.partition, r.offset, r.key, r.value or b"") for r in records]
        headers = [r.headers for r in records]
        reread = dict(self._reread)
        started = time.perf_counter()
        result = await retrying(lambda: self._blocking(lambda: screened_batch(
            self._store(), messages, headers, self.keyring, run=lambda st, ms: run_batch(st, ms, reread),
            names=self.names)), "ingest")
        stored = time.perf_counter()
        # The wait for the intake thread (and a retry) beyond the phases run_batch timed.
        result.timings["thread"] = max(0.0, stored - started - sum(result.timings.values()))
        for m in messages:  # past the re-read range: judged as usual again
            tp = (m.topic, m.partition)
            if tp in self._reread and m.offset >= self._reread[tp][1]:
                del self._reread[tp]

        async def send_all() -> None:
            futures = []
            for r in result.refused:
                futures.append(await self.dead_letters.send(key=r.message.key, value=r.message.value,
                                                            headers=r.headers()))
            for key, cause in result.recompute.items():
                futures.append(await self.recompute.send(key=key.hospital_id.encode("utf-8"),
                                                         value=request(key, cause)))
            await asyncio.gather(*futures)

        # Retried whole: a resend duplicates messages, which both topics tolerate (at least once).
        await retrying(send_all, "send dead letters and recompute requests")
        result.timings["sends"] = time.perf_counter() - stored
        return result


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's rebalance callbacks: remember what is ours; seek it from the store before fetching."""

    def __init__(self, owner: EventsConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.owner.assigned -= set(revoked)
        self.owner._ready -= set(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if self.owner.restarting:
            return  # the broker lost the log these partitions were; nothing of it is read
        self.owner.assigned = set(assigned)
        self.owner._resume |= set(assigned)
        # Seek before the first fetch of the new assignment: getmany fetches only after this returns.
        await self.owner._resume_assigned()


def install(app: Any, settings: Any, dead_letters: Any, recompute: Any) -> EventsConsumer:
    """Registers the events consumer as a task of `app` (a faust.App); returns it."""
    consumer = EventsConsumer(app, settings, dead_letters, recompute)

    @app.task
    async def consume_events() -> None:
        await consumer.run()

    return consumer
