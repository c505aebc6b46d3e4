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
from tests.factories import DEFAULT_BODIES, case, hospital, lines, policy

TOPIC = "drg-test.events"
WIDE = timedelta(days=36500)  # the factories' events are 2020 history


def ingest_at(store: LedgerStore, partition: int, first: int, raws: list[bytes]) -> None:
    """As the worker does: one call per run of consecutive offsets of a partition."""
    store.ingest(raws, origin=f"kafka:{TOPIC}/{partition}/", first_line=first, batch_size=len(raws))


def test_kafka_origin_parses_topic_partition_offset() -> None:
    assert kafka_origin("kafka:drg-ledger.events/3/1228") == ("drg-ledger.events", 3, 1228)
    assert kafka_origin("kafka:drg-ledger.events#2/3/0") == ("drg-ledger.events#2", 3, 0)
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
    with LedgerStore(database_url, late_window=WIDE):
        env = journal_env(database_url)
    journal = Journal(env=env)
    old = LedgerEntry.recorded(event_id="old-1", event_type="BudgetSet", envelope=json.dumps({}), content_hash="x")
    old.__dict__.pop("origin", None)  # as the code before this change stored it
    journal.append([old])
    (_, decoded), = journal.read()
    assert decoded.origin is None and decoded.event_id == "old-1"
    journal.close()


def test_totals_that_differ_from_the_store_lag_and_reconcile_fails_beyond_the_bound(database_url: str) -> None:
    from projections.running_totals import Key, create_tables, lagging, recompute, reconcile, upsert
    from tests.factories import verdict, withdrawal

    with LedgerStore(database_url, late_window=WIDE) as store:
        store.ingest(lines(hospital("H001"), hospital("H002"), *[policy(c) for c in DEFAULT_BODIES],
                           case("C1"), case("C9", hospital_id="H002")), origin="file:t.jsonl")
        create_tables(store.engine)
        h1, h2 = Key("panzhihua", 2020, "H001"), Key("panzhihua", 2020, "H002")
        # No rows yet: both hospitals with cases lag.
        assert [(lag.key, lag.position, lag.missed_since) for lag in lagging(store)] == [(h1, None, None), (h2, None, None)]
        upsert(store.engine, [recompute(store, h1), recompute(store, h2)])
        assert lagging(store) == []

        # An upheld verdict on C9 changes no figure: H002's row is still what the store says.
        store.ingest(lines(verdict("C9")), origin="file:t2.jsonl")
        assert lagging(store) == [] and reconcile(store, "panzhihua", 2020, bound=timedelta(0)).ok

        # A withdrawal changes H001's figures: it lags (and differs) until recomputed.
        before = store.position
        store.ingest(lines(withdrawal("C1")), origin="file:t3.jsonl")
        (lag,) = lagging(store)
        assert (lag.key, lag.latest) == (h1, store.position) and lag.position is not None and lag.position < before
        assert lag.missed_since is not None
        assert lagging(store, hospitals={"H002"}) == []
        late = reconcile(store, "panzhihua", 2020, bound=timedelta(0))
        assert [d.hospital_id for d in late.differences] == ["H001"] and [x.key for x in late.lagging] == [h1]
        within = reconcile(store, "panzhihua", 2020, bound=timedelta(hours=1))
        assert within.lagging == [] and not within.ok, "within the bound it does not lag, but it still differs"
        upsert(store.engine, [recompute(store, h1)])
        assert lagging(store) == [] and reconcile(store, "panzhihua", 2020, bound=timedelta(0)).ok


def test_a_case_that_cannot_be_settled_stops_only_its_own_hospitals_totals(database_url: str) -> None:
    """The worker's rows and `lagging` read the same per-hospital sums: a case of H002
    discharged where the case rules have a gap is H002's error (the replay's `PolicyMissing`),
    H001's totals stand, and neither row lags once written."""
    from projections.running_totals import Key, create_tables, lagging, recompute_many, upsert

    policies = [policy(c, effective_to="2020-06-30" if c == "case_rules" else None) for c in DEFAULT_BODIES]
    with LedgerStore(database_url, late_window=WIDE) as store:
        store.ingest(lines(hospital("H001"), hospital("H002"), *policies,
                           case("C1"), case("C9", hospital_id="H002", discharge_date="2020-09-01")), origin="file:t.jsonl")
        create_tables(store.engine)
        h1, h2 = Key("panzhihua", 2020, "H001"), Key("panzhihua", 2020, "H002")
        one, two = recompute_many(store, [h1, h2])
        assert one.error is None and one.totals.cases == 1
        assert two.error == "no case_rules policy of pool panzhihua in force on 2020-09-01"
        upsert(store.engine, [one, two])
        assert lagging(store) == []


def test_stream_audit_command_names_the_holes_and_exits_1(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from drg_ledger.cli import app

    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    with LedgerStore(database_url, late_window=WIDE) as store:
        ingest_at(store, 0, 0, lines(hospital("H001"), policy("drg_table")))
        ingest_at(store, 0, 5, lines(case("C1")))
    runner = CliRunner()
    args = ["stream-audit", "--topic-prefix", "drg-test", "--settle", "0", "--database-url", database_url]
    table = runner.invoke(app, args)
    assert table.exit_code == 1, table.output
    assert "2-4" in table.output and "3 offsets were never processed" in table.output
    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 1
    (p0,) = json.loads(as_json.output)["partitions"]
    assert (p0["mark"], p0["missing_offsets"], p0["lag"]) == (1, [2, 3, 4], None)
    with LedgerStore(database_url, late_window=WIDE) as store:
        ingest_at(store, 0, 2, lines(case("C2"), case("C3"), case("C4")))
    done = runner.invoke(app, args)
    assert done.exit_code == 0 and "no hole" in done.output


def test_a_recreated_topic_is_another_log_and_its_offsets_meet_none_of_the_old_fates(database_url: str) -> None:
    """Why the broker-restart test lost an event (issue 12): Tansu restarted empty, the worker
    read the recreated topic from offset 0 under the old origins, and a valid record at an
    offset whose old record had been dead-lettered was taken for that refusal redelivered
    (`run_batch` step 1): never stored. Each log of a topic name now has a name of its own."""
    from projections.offsets import last_log, log_of
    from streams.intake import Inbound, run_batch

    with LedgerStore(database_url, late_window=WIDE) as store:
        old = log_of(store, TOPIC, "id-1")
        assert old == TOPIC, "the first log keeps the topic's name (origins written before keep their meaning)"
        first = [*lines(hospital("H001"), policy("drg_table"), case("C1")), b"{not json"]
        run_batch(store, [Inbound(old, 0, i, None, v) for i, v in enumerate(first)])
        # The broker lost its topics; the same name is now a new log, offsets from 0 again.
        late = lines(hospital("H001"), policy("drg_table"), case("C1"), case("C2"))
        under_old_name = run_batch(store, [Inbound(old, 0, i, None, v) for i, v in enumerate(late)])
        c2 = json.loads(late[3])["event_id"]
        assert under_old_name.accepted == 0 and [r.message.offset for r in under_old_name.refused] == [3]
        assert store.stored_event_ids([c2]) == set(), "under the old name, case C2 at offset 3 is taken for the "\
            "old offset 3's dead letter redelivered: lost"

        new = log_of(store, TOPIC, "id-2")
        assert new == f"{TOPIC}#2" and log_of(store, TOPIC, "id-2") == new and log_of(store, TOPIC, "id-1") == old
        assert last_log(store, TOPIC) == new
        assert marks(store, new) == {}, "the new log has no fate yet: it is read from its start"
        result = run_batch(store, [Inbound(new, 0, i, None, v) for i, v in enumerate(late)])
        assert (result.accepted, result.duplicates, result.refused) == (1, 3, [])
        assert store.stored_event_ids([c2]) == {c2}
        assert marks(store, new)[(new, 0)].mark == 3 and marks(store, old)[(old, 0)].mark == 3
