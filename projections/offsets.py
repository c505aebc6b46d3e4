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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

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
