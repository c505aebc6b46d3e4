"""Which Kafka records the store has processed: per partition, the contiguous mark and the holes.

Every consumed record's fate is durable with the fate itself (streams/README.md "Offsets"):
an accepted record's origin `kafka:<topic>/<partition>/<offset>` is written in its journal
entry (`LedgerEntry.Recorded.origin`), a refused one's in its dead letter, a duplicate's (or
an empty message's) in its own row. `consumed_offsets` indexes all of them by
(topic, partition, offset); its accepted rows are written with the index rows of the
entries, in the same transaction, and rebuilt from the journal with the index.

From it, per partition: the **mark**, the highest offset m such that every offset from the
log start to m has a fate (the worker resumes at mark + 1, whatever the consumer group
committed), and the **holes**, offsets above the log start and below the highest processed
offset that have none (a record the consumer library never handed over, or lost).

A topic name can stand for several logs: a broker that lost its topics (Tansu keeps them in
memory) recreates them empty, with a new topic id, their offsets from 0 again. Each log
gets a name of its own (`log_of`, table `kafka_logs`), and origins and marks use that name,
so the marks of the new log never describe the old one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, DateTime, MetaData, String, Table, func, inspect, select
from sqlalchemy.exc import IntegrityError

from projections.store import consumed_offsets_table

if TYPE_CHECKING:
    from projections.store import LedgerStore

TopicPartition = tuple[str, int]


@dataclass(frozen=True)
class PartitionMark:
    """What the store processed of one partition, from `start` (the broker's log start)."""

    topic: str
    partition: int
    start: int  # the log start the holes are counted from (0 unless the broker dropped older records)
    processed: int  # offsets >= start with a fate
    highest: int  # the highest processed offset (start - 1 when none)
    holes: tuple[tuple[int, int], ...] = field(default=())  # inclusive ranges, ascending

    @property
    def mark(self) -> int:
        """The highest offset up to which every offset from `start` has a fate (start - 1: none)."""
        return self.holes[0][0] - 1 if self.holes else self.highest

    @property
    def missing(self) -> int:
        return sum(b - a + 1 for a, b in self.holes)

    def missing_offsets(self, limit: int = 1000) -> list[int]:
        """The offsets of the holes, the first `limit` of them."""
        out: list[int] = []
        for a, b in self.holes:
            out.extend(range(a, min(b, a + limit - len(out) - 1) + 1))
            if len(out) >= limit:
                break
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "start": self.start,
            "mark": self.mark,
            "highest": self.highest,
            "processed": self.processed,
            "holes": [[a, b] for a, b in self.holes],
            "missing": self.missing,
        }


def marks(store: LedgerStore, topic: str | None = None,
          starts: Mapping[TopicPartition, int] | None = None) -> dict[TopicPartition, PartitionMark]:
    """Per (topic, partition) the store has records of (of `topic` when given), its mark and holes.

    `starts`: the broker's log start per partition (default 0; a partition named there and
    never processed is included, with no hole and mark start - 1). The index first catches
    up with the journal, so an entry journalled just before a crash counts.
    One window query (gaps and islands) over the primary key: cost O(consumed records)
    in the database, O(partitions + holes) in Python.
    """
    store.sync_index()
    t = consumed_offsets_table
    nxt = func.lead(t.c.offset).over(partition_by=(t.c.topic, t.c.partition), order_by=t.c.offset).label("nxt")
    inner = select(t.c.topic, t.c.partition, t.c.offset, nxt)
    counts = select(t.c.topic, t.c.partition, func.min(t.c.offset), func.max(t.c.offset), func.count())
    if topic is not None:
        inner = inner.where(t.c.topic == topic)
        counts = counts.where(t.c.topic == topic)
    g = inner.subquery()
    gaps_q = select(g.c.topic, g.c.partition, g.c.offset, g.c.nxt).where(g.c.nxt > g.c.offset + 1)
    starts = dict(starts or {})
    with store.engine.connect() as conn:
        summary = conn.execute(counts.group_by(t.c.topic, t.c.partition)).all()
        gaps: dict[TopicPartition, list[tuple[int, int]]] = {}
        for tp_topic, partition, offset, following in conn.execute(gaps_q):
            gaps.setdefault((tp_topic, partition), []).append((offset + 1, following - 1))
        below: dict[TopicPartition, int] = {}
        for (tp_topic, partition), start in starts.items():
            if start > 0:
                below[(tp_topic, partition)] = int(conn.execute(
                    select(func.count()).where(t.c.topic == tp_topic, t.c.partition == partition, t.c.offset < start)
                ).scalar_one())
    out: dict[TopicPartition, PartitionMark] = {}
    for tp_topic, partition, lowest, highest, count in summary:
        tp = (tp_topic, partition)
        start = starts.get(tp, 0)
        holes = [(a, b) for a, b in sorted(gaps.get(tp, [])) if b >= start]
        holes = [(max(a, start), b) for a, b in holes]
        if lowest > start:
            holes.insert(0, (start, lowest - 1))
        out[tp] = PartitionMark(tp_topic, partition, start, int(count) - below.get(tp, 0),
                                max(int(highest), start - 1), tuple(holes))
    for tp, start in starts.items():
        if tp not in out and (topic is None or tp[0] == topic):
            out[tp] = PartitionMark(tp[0], tp[1], start, 0, start - 1, ())
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- which log of a topic

kafka_logs_metadata = MetaData()
kafka_logs_table = Table(
    "kafka_logs",
    kafka_logs_metadata,
    Column("topic", String(249), primary_key=True),
    Column("topic_id", String(64), primary_key=True, comment="the broker's topic id (a UUID) of this log"),
    Column("log", String(249), nullable=False, comment="the name origins and consumed_offsets use for it"),
    Column("seen_at", DateTime(timezone=True), nullable=False),
    comment="every log a topic name has stood for: a topic deleted and recreated (a Tansu restart) "
            "restarts its offsets at 0, so its records are another log's (projections/offsets.py)",
)

LOG_SEPARATOR = "#"
"""Between a topic's name and the number of its log: never in a Kafka topic name ([A-Za-z0-9._-])."""


def create_log_table(engine: Any) -> None:
    """Creates `kafka_logs` if missing (the owner's migration does; the worker too, when it may)."""
    kafka_logs_metadata.create_all(engine)


def log_of(store: LedgerStore, topic: str, topic_id: str | None, *, register: bool = True) -> str:
    """The name under which the records of `topic`'s log `topic_id` are recorded
    (`kafka:<log>/<partition>/<offset>`, `consumed_offsets.topic`).

    The first log seen of a topic is recorded under the topic's own name (so every origin
    written before logs were told apart keeps its meaning); each later one, a topic recreated
    under the same name, under `<topic>#<n>`, n = 2, 3, ...: its offsets start again at 0
    and must not meet the marks, holes and dead letters of the log before it. `register`
    records a log not seen before (the worker); without it (an audit) an unseen log gets the
    name it would get. Without a topic id (a broker that has none) the topic's name.
    """
    if not topic_id:
        return topic
    t = kafka_logs_table
    engine = store.engine
    if not inspect(engine).has_table(t.name):
        if not register:
            return topic
        create_log_table(engine)
    for _ in range(3):
        with engine.connect() as conn:
            known = dict(conn.execute(select(t.c.topic_id, t.c.log).where(t.c.topic == topic)).all())
        if topic_id in known:
            return str(known[topic_id])
        log = topic if not known else f"{topic}{LOG_SEPARATOR}{len(known) + 1}"
        if not register:
            return log
        try:
            with engine.begin() as conn:
                conn.execute(t.insert().values(topic=topic, topic_id=topic_id, log=log, seen_at=datetime.now(UTC)))
            return log
        except IntegrityError:  # another worker registered it first: read its name
            continue
    raise RuntimeError(f"could not register log {topic_id} of topic {topic}")


def last_log(store: LedgerStore, topic: str) -> str:
    """The name of the log of `topic` the store saw last (the topic's own name when none)."""
    t = kafka_logs_table
    if not inspect(store.engine).has_table(t.name):
        return topic
    with store.engine.connect() as conn:
        row = conn.execute(select(t.c.log).where(t.c.topic == topic).order_by(t.c.seen_at.desc()).limit(1)).first()
    return topic if row is None else str(row[0])
