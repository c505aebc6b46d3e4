"""The store owns the consumed offsets (projections/offsets.py), on SQLite and PostgreSQL.

Given Kafka records ingested with their origins, when some are accepted, some duplicates,
some refused and some never seen, then each partition's mark is the highest contiguous
offset with a fate and its holes are exactly the offsets never seen.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import delete, select

from ledger.journal import Journal, LedgerEntry
from projections.offsets import marks
from projections.store import LedgerStore, consumed_offsets_table, journal_env, kafka_origin
from tests.factories import case, hospital, lines, policy

TOPIC = "drg-test.events"
WIDE = timedelta(days=36500)  # the factories' events are 2020 history


def ingest_at(store: LedgerStore, partition: int, first: int, raws: list[bytes]) -> None:
    """As the worker does: one call per run of consecutive offsets of a partition."""
    store.ingest(raws, origin=f"kafka:{TOPIC}/{partition}/", first_line=first, batch_size=len(raws))


def test_kafka_origin_parses_topic_partition_offset() -> None:
    assert kafka_origin("kafka:drg-ledger.events/3/1228") == ("drg-ledger.events", 3, 1228)
    assert kafka_origin("kafka:a.b-c_d/0/0") == ("a.b-c_d", 0, 0)
    assert kafka_origin("file:events.jsonl:7") is None
    assert kafka_origin("kafka:nopartition/12") is None


def test_every_fate_counts_and_holes_are_the_offsets_never_seen(database_url: str) -> None:
    with LedgerStore(database_url, late_window=WIDE) as store:
        # Partition 0: offsets 0..4 registration, policy, two cases, a duplicate of the first case.
        p0 = lines(hospital("H001"), policy("drg_table"), case("C1"), case("C2"), case("C1"))
        ingest_at(store, 0, 0, p0)
        # Offsets 5, 6 never handed over by the consumer; 7 refused (not JSON), 8 a case, 9 blank-ish.
        ingest_at(store, 0, 7, [b"{not json", *lines(case("C3"))])
        store.record_consumed([f"kafka:{TOPIC}/0/9"], "blank")
        # Partition 1: the consumer started at 0 but the first record it gave was 3.
        ingest_at(store, 1, 3, lines(hospital("H002"), case("C9", hospital_id="H002")))

        found = marks(store, TOPIC)
        p0m, p1m = found[(TOPIC, 0)], found[(TOPIC, 1)]
        assert (p0m.mark, p0m.highest, p0m.processed, p0m.holes) == (4, 9, 8, ((5, 6),))
        assert p0m.missing_offsets() == [5, 6]
        assert (p1m.mark, p1m.highest, p1m.holes) == (-1, 4, ((0, 2),))

        with store.engine.connect() as conn:
            fates = dict(conn.execute(select(consumed_offsets_table.c.offset, consumed_offsets_table.c.fate)
                                      .where(consumed_offsets_table.c.partition == 0)).all())
        assert fates == {0: "accepted", 1: "accepted", 2: "accepted", 3: "accepted", 4: "duplicate",
                         7: "dead-letter", 8: "accepted", 9: "blank"}

        # The hole re-read: redelivered offsets 5..9 (5, 6 new cases; 7..9 again) close it.
        ingest_at(store, 0, 5, [*lines(case("C4"), case("C5")), b"{not json", *lines(case("C3")), b"  "])
        store.record_consumed([f"kafka:{TOPIC}/0/9"], "blank")
        again = marks(store, TOPIC)[(TOPIC, 0)]
        assert (again.mark, again.holes, again.processed) == (9, (), 10)
        assert len(store.dead_letters()) == 1, "a redelivered refusal is kept once"

        # A broker whose log starts at 2 on partition 1 (older records deleted): no hole below it.
        trimmed = marks(store, TOPIC, starts={(TOPIC, 1): 3, (TOPIC, 2): 0})
        assert (trimmed[(TOPIC, 1)].mark, trimmed[(TOPIC, 1)].holes) == (4, ())
        assert (trimmed[(TOPIC, 2)].mark, trimmed[(TOPIC, 2)].processed) == (-1, 0)


def test_accepted_offsets_are_rebuilt_from_the_journal(database_url: str) -> None:
    with LedgerStore(database_url, late_window=WIDE) as store:
        ingest_at(store, 2, 10, lines(hospital("H001"), policy("drg_table"), case("C1")))
        before = marks(store, TOPIC)
        entry = store.journal.entry("his-H001-C1-r1")
        assert entry is not None and entry.origin == f"kafka:{TOPIC}/2/12"
        with store.engine.begin() as conn:
            conn.execute(delete(consumed_offsets_table))
        store.rebuild_index()
        assert marks(store, TOPIC) == before
        # A file ingest leaves no Kafka offsets, but its entries carry their origin too.
        store.ingest(lines(case("C2")), origin="file:more.jsonl")
        assert store.journal.entry("his-H001-C2-r1").origin == "file:more.jsonl:1"
        assert marks(store, TOPIC) == before


def test_entries_journalled_before_origins_existed_still_decode(database_url: str) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("one backend is enough: the decoding is the library's")
    with LedgerStore(database_url, late_window=WIDE) as store:
        env = journal_env(database_url)
    journal = Journal(env=env)
    old = LedgerEntry.recorded(event_id="old-1", event_type="BudgetSet", envelope=json.dumps({}), content_hash="x")
    old.__dict__.pop("origin", None)  # as the code before this change stored it
    journal.append([old])
    (_, decoded), = journal.read()
    assert decoded.origin is None and decoded.event_id == "old-1"
    journal.close()
