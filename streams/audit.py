"""`drg-ledger stream-audit`: per partition, the broker's offsets against what the store processed.

The store side is `projections.offsets.marks` (every consumed record's fate, by offset).
The broker side is each partition's log start and log end. The log end is *read*, never
taken from `end_offsets()` alone: Tansu answers ListOffsets LATEST with the first offset of
the last batch + 1 when that batch holds several records (KAFKA-AND-STORES.md), so the
audit seeks to that answer minus one and consumes until the partition is exhausted; the
last offset it sees + 1 is the end. Against a correct broker this reads one record.

A **hole** is an offset from the log start up to the highest processed one that has no
fate: something consumed was lost. The **lag** is what follows the highest processed
offset up to the log end: not processed yet. The audit fails on holes only.

An ingest in flight can show a passing hole: the store writes a batch's dead letters before
its journal entries (a crash in between loses nothing), so for a moment a refused record's
offset has its fate and the accepted ones before it not yet. A hole therefore counts only
when it is missing in two looks `settle_s` apart (default 5 s; more than a batch takes).

The marks audited are those of the log the broker holds now under the topic's name (its
topic id, `projections.offsets.log_of`): after a broker lost its topics, the new log's, not
the old one's. Without a broker, the log the store saw last.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from projections.offsets import PartitionMark, last_log, log_of, marks

if TYPE_CHECKING:
    from projections.store import LedgerStore


@dataclass(frozen=True)
class PartitionAudit:
    """One partition: the broker's log (start, end; None without a broker) and the store's mark."""

    mark: PartitionMark
    log_end: int | None  # the offset the next record will get; None: broker not asked

    @property
    def lag(self) -> int | None:
        return None if self.log_end is None else max(self.log_end - 1 - self.mark.highest, 0)

    def as_json(self) -> dict[str, Any]:
        return {**self.mark.as_json(), "log_end": self.log_end, "lag": self.lag,
                "missing_offsets": self.mark.missing_offsets()}


@dataclass(frozen=True)
class StreamAudit:
    """Every partition of the topics audited; ok when no hole remains."""

    partitions: list[PartitionAudit]
    broker: str | None

    @property
    def holes(self) -> int:
        return sum(p.mark.missing for p in self.partitions)

    @property
    def lag(self) -> int | None:
        lags = [p.lag for p in self.partitions]
        return None if any(x is None for x in lags) else sum(x for x in lags if x is not None)

    @property
    def ok(self) -> bool:
        return self.holes == 0

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "broker": self.broker, "holes": self.holes, "lag": self.lag,
                "partitions": [p.as_json() for p in self.partitions]}


def log_offsets(bootstrap_servers: str, topic: str, timeout_s: float = 30.0) -> dict[int, tuple[int, int]]:
    """partition -> (log start, log end) of `topic`, the end read by consuming (module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=1000)
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or [])
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            return {}
        starts = consumer.beginning_offsets(tps)
        reported = consumer.end_offsets(tps)
        consumer.assign(tps)
        ends = {tp: int(reported[tp]) for tp in tps}
        for tp in tps:
            consumer.seek(tp, max(int(reported[tp]) - 1, int(starts[tp])))
        deadline = time.monotonic() + timeout_s
        idle = 0
        while time.monotonic() < deadline and idle < 2:
            got = consumer.poll(timeout_ms=500, max_records=10_000)
            if not got:
                idle += 1
                continue
            idle = 0
            for tp, recs in got.items():
                ends[tp] = max(ends[tp], recs[-1].offset + 1)
        return {tp.partition: (int(starts[tp]), ends[tp]) for tp in tps}
    finally:
        consumer.close()


def _topic_id(bootstrap_servers: str, topic: str) -> str | None:
    """The broker's id of `topic` (None: absent, or a broker without ids)."""
    from streams.topics import topic_ids

    return topic_ids(bootstrap_servers, [topic]).get(topic)


SETTLE_S = 5.0


def intersect(a: tuple[tuple[int, int], ...], b: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """The offsets in both lists of inclusive ranges, as ranges."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def audit(store: LedgerStore, topics: str | Sequence[str], bootstrap_servers: str | None = None,
          settle_s: float = SETTLE_S) -> StreamAudit:
    """The store's marks of `topics`, against the broker's logs when `bootstrap_servers` is
    given; a hole counts when it is still there `settle_s` later (module docstring)."""
    topics = [topics] if isinstance(topics, str) else list(topics)
    logs: dict[str, dict[int, tuple[int, int]]] = {}
    starts: dict[tuple[str, int], int] = {}
    names: dict[str, str] = {}
    for topic in topics:
        logs[topic] = log_offsets(bootstrap_servers, topic) if bootstrap_servers else {}
        names[topic] = (log_of(store, topic, _topic_id(bootstrap_servers, topic), register=False)
                        if bootstrap_servers else last_log(store, topic))
        starts.update({(names[topic], p): start for p, (start, _) in logs[topic].items()})

    def look() -> dict[tuple[str, int], PartitionMark]:
        found: dict[tuple[str, int], PartitionMark] = {}
        for name in names.values():
            found.update(marks(store, name, {k: v for k, v in starts.items() if k[0] == name}))
        return found

    found = look()
    if settle_s > 0 and any(m.holes for m in found.values()):
        time.sleep(settle_s)
        again = look()
        found = {tp: replace(m, holes=intersect(found[tp].holes, m.holes)) if tp in found else m
                 for tp, m in again.items()}
    ends = {(names[t], p): end for t, parts in logs.items() for p, (_, end) in parts.items()}
    out = [PartitionAudit(m, ends.get(key)) for key, m in found.items()]
    return StreamAudit(out, bootstrap_servers)


def intake_topics(prefix: str, bootstrap_servers: str | None, store: LedgerStore) -> list[str]:
    """The topics the worker of `prefix` reads: its events topic and every per-HIS topic,
    those the broker holds (without a broker, those the store has records of)."""
    import re

    from projections.offsets import LOG_SEPARATOR
    from streams.topics import TopicNames

    names = TopicNames(prefix)
    pattern = re.compile(names.intake_pattern())
    if bootstrap_servers:
        from streams.topics import admin_client

        admin = admin_client(bootstrap_servers, "drg-ledger-audit")
        try:
            seen = set(admin.list_topics())
        finally:
            admin.close()
    else:
        seen = {log.split(LOG_SEPARATOR, 1)[0] for log, _ in marks(store)}
    return [names.events] + sorted(t for t in seen if pattern.match(t) and t != names.events)
