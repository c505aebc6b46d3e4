"""LedgerStore on a real database (SQLite file and PostgreSQL): appending, the index, reading.

Given past events, when lines are ingested, then the report, the journal, the index and the
dead letters say what EVENTS.md "Envelope", "Order of arrival" and "Bad input" require.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from ledger.events import InvalidEvent, canonical_json, content_hash, parse_event
from ledger.journal import Journal, LedgerEntry
from projections.store import (
    DATABASE_URL_ENV,
    IngestReport,
    LedgerStore,
    among,
    index_table,
    journal_env,
)
from tests.factories import (
    budget,
    case,
    hospital,
    lines,
    penalty,
    policy,
    prepayment,
    verdict,
    withdrawal,
)

NOW = datetime(2022, 6, 30, 12, 0, tzinfo=UTC)  # after every default recorded_at of the factories
LATER = datetime(2022, 7, 5, 9, 30, tzinfo=UTC)


def as_sent(ev: Any) -> Any:
    """A stored event without the `ingested_at` the ledger stamped on it."""
    return None if ev is None else ev.model_copy(update={"ingested_at": None})


@pytest.fixture(autouse=True)
def wide_late_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests pin the ingest clock in 2020 and test the store's mechanics; the window
    itself is tested in test_hardening.py."""
    monkeypatch.setenv("DRG_LEDGER_LATE_WINDOW_DAYS", "36500")


@pytest.fixture
def store(database_url: str) -> Iterator[LedgerStore]:
    with LedgerStore.open(database_url) as s:
        yield s


def ingest(store: LedgerStore, *envelopes: dict[str, Any], now: datetime = NOW, **kw: Any) -> IngestReport:
    return store.ingest(lines(*envelopes), origin="file:test.jsonl", now=now, **kw)


def index_rows(store: LedgerStore) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(index_table).order_by(index_table.c.seq)).mappings()]


def ids(events: list[Any]) -> list[str]:
    return [e.event_id for e in events]


def clearing_completed(event_id: str = "clearing-panzhihua-2020", source: str = "system") -> Any:
    return parse_event(
        {"event_id": event_id, "event_type": "ClearingCompleted", "recorded_at": "2021-03-01T00:00:00+00:00",
         "source": source, "payload": {"pool": "panzhihua", "year": 2020, "known_at": "2021-03-01T00:00:00+00:00",
                                       "point_value": "95.123456", "results": []}}
    )


AWKWARD_IDS = ['plain', 'NULL', '', 'a,b', '{x}', 'a "quoted" one', 'back\\slash', 'trailing\\', ' spaced ', '中文',
               '\\"', 'null']


def test_among_finds_exactly_the_values_given_whatever_their_characters(database_url: str) -> None:
    """`column IN values` as one array parameter: text that PostgreSQL's array syntax treats
    specially (NULL, quotes, backslashes, commas, braces, blanks) is matched as itself."""
    t = index_table
    with LedgerStore.open(database_url) as store, store.engine.begin() as conn:
        conn.execute(t.insert(), [
            {"seq": i, "event_id": eid, "event_type": "CaseSubmitted", "source": "test", "content_hash": "h",
             "body": "{}", "recorded_at": NOW, "case_id": eid}
            for i, eid in enumerate([*AWKWARD_IDS, "other", "NULLS"], start=1)
        ])
        for values, expected in ((AWKWARD_IDS, AWKWARD_IDS), (["NULL", "absent"], ["NULL"]), ([], [])):
            found = conn.execute(select(t.c.event_id).where(among(conn, t.c.event_id, values))).scalars()
            assert sorted(found) == sorted(expected)
        seqs = conn.execute(select(t.c.seq).where(among(conn, t.c.seq, [2, 5, 99]))).scalars()
        assert sorted(seqs) == [2, 5]


# --------------------------------------------------------------------------- idempotency


def test_accepted_events_are_journalled_and_indexed(store: LedgerStore) -> None:
    report = ingest(store, hospital("H001"), case("C1"), verdict("C1"))

    assert report.to_json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    assert report.ok
    assert store.journal.head() == 3
    assert store.counts() == {"events": 3, "dead_letters": 0, "CaseSubmitted": 1,
                              "HospitalRegistered": 1, "ReviewVerdictRecorded": 1}
    assert as_sent(store.event("his-H001-C1-r1")) == parse_event(case("C1"))
    assert store.event("his-H001-C1-r1").ingested_at == NOW


def test_the_same_event_twice_is_a_duplicate_and_changes_nothing(store: LedgerStore) -> None:
    ingest(store, hospital("H001"), case("C1"))
    rows_before = index_rows(store)

    report = ingest(store, hospital("H001"), case("C1"), now=LATER)

    assert report.to_json() == {"accepted": 0, "duplicates": 2, "rejected": []}
    assert index_rows(store) == rows_before
    assert store.journal.head() == 2
    assert store.dead_letters() == []


def test_the_same_event_twice_in_one_batch_is_a_duplicate(store: LedgerStore) -> None:
    report = ingest(store, hospital("H001"), case("C1"), case("C1"))

    assert (report.accepted, report.duplicates, report.rejected) == (2, 1, [])


def test_duplicates_across_batches_of_one_file_are_found(store: LedgerStore) -> None:
    report = ingest(store, hospital("H001"), case("C1"), case("C2"), case("C1"), hospital("H001"), batch_size=2)

    assert (report.accepted, report.duplicates) == (3, 2)


def test_parsed_into_hands_back_every_line_that_parsed_by_line(store: LedgerStore) -> None:
    """The Kafka intake's recompute keys come from ingest's own parse: accepted, duplicate and
    refused-by-the-store lines are there as their events; a line that does not parse is not."""
    raw = [*lines(hospital("H001"), case("C1"), case("C1")), b'{"event_id": "x", "trunc', *lines(case("C9", hospital_id="H404"))]
    read: dict[int, Any] = {}
    report = store.ingest(raw, origin="file:p.jsonl", now=NOW, parsed_into=read, batch_size=2)
    assert (report.accepted, report.duplicates, [r.line for r in report.rejected]) == (2, 1, [4, 5])
    assert {line: ev.event_id for line, ev in read.items()} == {
        1: "reg-panzhihua-H001", 2: "his-H001-C1-r1", 3: "his-H001-C1-r1", 5: "his-H404-C9-r1",
    }
    assert read[2] == parse_event(raw[1]) and read[5].payload.hospital_id == "H404"


def test_same_id_with_other_content_is_rejected_and_dead_lettered(store: LedgerStore) -> None:
    ingest(store, hospital("H001"), case("C1", total_cost="1000"))
    other = lines(case("C1", total_cost="2000"))[0]

    report = store.ingest([other], origin="file:more.jsonl", first_line=7, now=NOW)

    assert report.to_json() == {
        "accepted": 0, "duplicates": 0,
        "rejected": [{"line": 7, "event_id": "his-H001-C1-r1",
                      "reason": "event_id: event_id 'his-H001-C1-r1' already recorded with other content"}],
    }
    (letter,) = store.dead_letters()
    assert (letter.raw, letter.origin, letter.event_id, letter.field) == (
        other, "file:more.jsonl:7", "his-H001-C1-r1", "event_id")
    assert str(store.event("his-H001-C1-r1").payload.total_cost) == "1000"


def test_same_id_with_other_content_in_one_batch_keeps_the_first(store: LedgerStore) -> None:
    report = ingest(store, hospital("H001"), case("C1", total_cost="1000"), case("C1", total_cost="2000"))

    assert report.accepted == 2
    assert [(r.line, r.field) for r in report.rejected] == [(3, "event_id")]
    assert str(store.event("his-H001-C1-r1").payload.total_cost) == "1000"


def test_missing_recorded_at_is_stamped_and_redelivery_is_still_duplicate(store: LedgerStore) -> None:
    bare = case("C1", recorded_at=None)
    ingest(store, hospital("H001"), bare, now=NOW)

    recorded = store.event("his-H001-C1-r1")
    assert recorded.recorded_at == NOW
    assert ingest(store, bare, now=LATER).to_json() == {"accepted": 0, "duplicates": 1, "rejected": []}
    # The sender may also echo the time the ledger stamped: still the same content.
    echoed = {**bare, "recorded_at": NOW.isoformat()}
    assert ingest(store, echoed, now=LATER).duplicates == 1
    assert store.event("his-H001-C1-r1").recorded_at == NOW


def test_stamping_uses_now_in_utc(store: LedgerStore) -> None:
    beijing = datetime(2021, 1, 1, 8, 0, tzinfo=timezone(timedelta(hours=8)))
    ingest(store, hospital("H001"), case("C1", recorded_at=None), now=beijing)

    stamped = store.event("his-H001-C1-r1").recorded_at
    assert stamped == beijing and stamped.utcoffset() == timedelta(0)


def test_naive_now_is_refused(store: LedgerStore) -> None:
    with pytest.raises(ValueError, match="zone"):
        ingest(store, hospital("H001"), now=datetime(2021, 1, 1))


# --------------------------------------------------------------------------- refusals


def test_case_for_unregistered_hospital_is_refused_naming_payload_hospital_id(store: LedgerStore) -> None:
    report = ingest(store, case("C1", hospital_id="H404"), withdrawal("C2", hospital_id="H404"))

    assert [(r.line, r.field) for r in report.rejected] == [(1, "payload.hospital_id"), (2, "payload.hospital_id")]
    assert report.to_json()["rejected"][0]["reason"] == "payload.hospital_id: unknown hospital 'H404': never registered"
    assert store.counts()["events"] == 0
    assert [d.field for d in store.dead_letters()] == ["payload.hospital_id"] * 2


def test_a_hospital_registered_earlier_in_the_file_counts_but_not_one_registered_later(store: LedgerStore) -> None:
    report = ingest(store, case("C0", hospital_id="H002"), hospital("H002"), case("C1", hospital_id="H002"),
                    batch_size=1000)

    assert report.accepted == 2
    assert [(r.line, r.event_id) for r in report.rejected] == [(1, "his-H002-C0-r1")]


def test_a_hospital_registered_in_an_earlier_ingest_counts(store: LedgerStore) -> None:
    ingest(store, hospital("H001"))

    assert ingest(store, case("C1")).accepted == 1


def test_his_source_cannot_publish_operator_events(store: LedgerStore) -> None:
    ingest(store, hospital("H001"))

    report = ingest(store, budget(source="his:H001"), verdict("C1", source="his:H001"),
                    hospital("H009", source="his:H009"), case("C1", source="his:H002"))

    assert report.accepted == 0
    assert [r.field for r in report.rejected] == ["source"] * 4
    assert report.rejected[0].message == "source: BudgetSet is operator-only, refused from his:H001"


def test_ledger_written_events_are_refused_from_outside(store: LedgerStore) -> None:
    report = ingest(store, penalty("C1", source="operator:panzhihua-mib"))

    (rejection,) = report.rejected
    assert rejection.field == "event_type"
    assert rejection.message == (
        "event_type: PenaltyImposed is written by the ledger, refused from operator:panzhihua-mib")


def test_malformed_json_keeps_raw_bytes_in_dead_letters(store: LedgerStore) -> None:
    garbage = [b'{"event_id": "x", "event_type": ', b"\xff\xfe not utf-8\n", b"[1, 2]"]

    report = store.ingest(garbage, origin="kafka:cases/0/", first_line=41, now=NOW)

    assert [(r.line, r.event_id) for r in report.rejected] == [(41, None), (42, None), (43, None)]
    assert report.rejected[0].message.startswith("malformed JSON")
    letters = sorted(store.dead_letters(), key=lambda d: d.id)
    assert [d.raw for d in letters] == garbage
    assert [d.origin for d in letters] == ["kafka:cases/0/41", "kafka:cases/0/42", "kafka:cases/0/43"]
    assert all(d.received_at == NOW for d in letters)


def test_schema_errors_name_the_field(store: LedgerStore) -> None:
    ingest(store, hospital("H001"))

    report = ingest(store, case("C1", total_cost="abc"))

    assert report.to_json()["rejected"] == [
        {"line": 1, "event_id": "his-H001-C1-r1", "reason": "payload.total_cost: Input should be a valid decimal"}
    ]
    assert store.dead_letters()[0].field == "payload.total_cost"


def test_blank_lines_are_skipped_but_keep_their_line_numbers(store: LedgerStore) -> None:
    raws = [lines(hospital("H001"))[0], b"", b"  \n", b"{"]

    report = store.ingest(raws, origin="file:f", now=NOW)

    assert report.accepted == 1 and [r.line for r in report.rejected] == [4]


def test_str_lines_are_accepted_and_dead_lettered_as_utf8(store: LedgerStore) -> None:
    report = store.ingest([json.dumps(hospital("H001")), "{坏"], origin="file:f", now=NOW)

    assert report.accepted == 1
    assert store.dead_letters()[0].raw == "{坏".encode()


def test_progress_is_reported_after_each_batch(store: LedgerStore) -> None:
    seen: list[int] = []

    ingest(store, hospital("H001"), case("C1"), case("C2"), case("C3"), case("C4"),
           batch_size=2, on_progress=seen.append)

    assert seen == [2, 4, 5]


def test_lines_read_lazily_land_batch_by_batch_until_the_reader_fails(store: LedgerStore) -> None:
    """A file read line by line: what the reader raises reaches the caller once the batches
    before it have landed, and the lines of the batch it broke are not journalled."""
    seen: list[int] = []

    def reader() -> Iterator[bytes]:
        yield from lines(hospital("H001"), case("C1"), case("C2"), case("C3"), case("C4"))
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        store.ingest(reader(), origin="file:lazy.jsonl", now=NOW, batch_size=2, on_progress=seen.append)

    assert seen == [2, 4]
    assert [r["event_id"] for r in index_rows(store)] == ["reg-panzhihua-H001", "his-H001-C1-r1", "his-H001-C2-r1",
                                                        "his-H001-C3-r1"]
    report = store.ingest(iter(lines(case("C4"), case("C5"))), origin="file:lazy.jsonl", now=NOW, batch_size=1)
    assert (report.accepted, report.duplicates) == (2, 0)


_LINES = [
    hospital("H001"), hospital("H002", grade="2A"), case("C1"), case("C1", total_cost="1"), case("C2"),
    case("C3", hospital_id="H002", recorded_at=None), withdrawal("C1"), verdict("C1"), budget(),
]


@settings(max_examples=15, deadline=None)
@given(order=st.lists(st.sampled_from(range(len(_LINES))), max_size=14), batch_size=st.integers(1, 6))
def test_batch_boundaries_never_change_the_outcome(order: list[int], batch_size: int) -> None:
    sent = lines(*(_LINES[i] for i in order)) + [b"{"]
    outcomes = []
    for size in (batch_size, 1000):
        with tempfile.TemporaryDirectory() as tmp, LedgerStore.open(f"sqlite:///{tmp}/l.db") as store:
            report = store.ingest(sent, origin="f", now=NOW, batch_size=size)
            outcomes.append((report.to_json(), store.load(), len(store.dead_letters())))

    assert outcomes[0] == outcomes[1]


# --------------------------------------------------------------------------- concurrency and crashes


def test_a_racing_writer_is_classified_one_by_one(database_url: str) -> None:
    class RacedStore(LedgerStore):
        """Its first duplicate lookup misses what another writer is journalling meanwhile."""

        raced = False

        def _stored_hashes(self, event_ids: Any) -> dict[str, str]:
            found = super()._stored_hashes(event_ids)
            if not self.raced:
                self.raced = True
                with LedgerStore.open(database_url) as other:
                    other.ingest(lines(case("C1"), case("C2", total_cost="1")), origin="other", now=NOW)
            return found

    with LedgerStore.open(database_url) as seed:
        seed.ingest(lines(hospital("H001")), origin="seed", now=NOW)
    with RacedStore.open(database_url) as store:
        report = store.ingest(lines(case("C1"), case("C2", total_cost="2"), case("C3")), origin="f", now=NOW)

        assert (report.accepted, report.duplicates) == (1, 1)
        assert [(r.line, r.field) for r in report.rejected] == [(2, "event_id")]
        assert store.dead_letters()[0].origin == "f:2"
        assert store.counts()["CaseSubmitted"] == 3
        assert index_rows(store) == _rebuilt(store)


def test_two_writers_ingesting_the_same_file_record_each_event_once(database_url: str) -> None:
    sent = lines(hospital("H001"), *(case(f"C{i}") for i in range(300)))
    reports: list[IngestReport] = []

    def write() -> None:
        with LedgerStore.open(database_url) as s:
            reports.append(s.ingest(sent, origin="f", now=NOW, batch_size=40))

    writers = [threading.Thread(target=write) for _ in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()

    assert sorted((r.accepted + r.duplicates, len(r.rejected)) for r in reports) == [(301, 0), (301, 0)]
    assert sum(r.accepted for r in reports) == 301
    with LedgerStore.open(database_url) as store:
        assert store.journal.head() >= 301 and store.counts()["events"] == 301
        assert index_rows(store) == _rebuilt(store)


def test_index_heals_after_crash_between_journal_and_index(database_url: str) -> None:
    with LedgerStore.open(database_url) as store:
        store.ingest(lines(hospital("H001")), origin="f", now=NOW)
        # Another process journals an event and dies before its index write.
        _journal_only(database_url, case("C1"))
        assert store.counts()["events"] == 1

        # Catching up happens before every append...
        report = store.ingest(lines(case("C1")), origin="f", now=NOW)
        assert (report.accepted, report.duplicates) == (0, 1)
        assert ids(store.load(pool="panzhihua", year=2020)) == ["reg-panzhihua-H001", "his-H001-C1-r1"]

    _journal_only(database_url, case("C2"))
    # ... and on open.
    with LedgerStore.open(database_url) as store:
        assert store.event("his-H001-C2-r1") is not None
        assert index_rows(store)[-1]["pool"] == "panzhihua"


def test_index_rebuilt_from_journal_equals_live_index(store: LedgerStore) -> None:
    ingest(store, hospital("H001"), hospital("H002", pool="xuancheng", grade="2A"),
           policy("drg_table"), policy("penalty_rules"), budget(), prepayment(),
           verdict("C9"), case("C1"), case("C2", hospital_id="H002", discharge_date="2021-01-03"),
           withdrawal("C1"), case("C1", revision=2), case("C3", recorded_at=None), batch_size=3)
    store.append_system_events([clearing_completed()])
    live = index_rows(store)

    assert store.rebuild_index() == len(live) == 13
    assert index_rows(store) == live


def test_index_rows_carry_pool_year_and_case(store: LedgerStore) -> None:
    ingest(store, hospital("H002", pool="xuancheng"), case("C2", hospital_id="H002", discharge_date="2021-01-03"),
           prepayment(hospital_id="H002", pool="xuancheng", paid_on="2021-02-01"), verdict("C2"))

    rows = {r["event_type"]: r for r in index_rows(store)}
    assert (rows["CaseSubmitted"]["pool"], rows["CaseSubmitted"]["year"], rows["CaseSubmitted"]["case_id"]) == (
        "xuancheng", 2021, "C2")
    assert (rows["PrepaymentMade"]["year"], rows["PrepaymentMade"]["hospital_id"]) == (2021, "H002")
    assert (rows["ReviewVerdictRecorded"]["pool"], rows["ReviewVerdictRecorded"]["case_id"]) == (None, "C2")
    assert rows["HospitalRegistered"]["recorded_at"] == datetime(2020, 1, 1, 0, 0, tzinfo=UTC)
    assert rows["CaseSubmitted"]["content_hash"] == content_hash(parse_event(case("C2", hospital_id="H002",
                                                                                  discharge_date="2021-01-03")))


# --------------------------------------------------------------------------- reading


def _world(store: LedgerStore) -> None:
    ingest(
        store,
        verdict("C1", outcome="violation", violation_type="upcoding", violating_points="10",
                recorded_at="2020-02-01T00:00:00+08:00"),  # before its case
        hospital("H001"), hospital("H002"), hospital("X001", pool="xuancheng"),
        policy("drg_table"), policy("drg_table", pool="xuancheng"), budget(year=2019), budget(year=2020),
        prepayment(paid_on="2020-03-31"),
        case("C1", discharge_date="2020-03-01"),
        case("C2", hospital_id="H002", discharge_date="2019-12-30"),
        case("C2", hospital_id="H002", discharge_date="2020-01-02", revision=2,
             recorded_at="2020-02-10T00:00:00+08:00"),
        case("C3", discharge_date="2019-06-01"),
        withdrawal("C1", recorded_at="2020-11-01T00:00:00+08:00"),
        verdict("C3"),
        case("X1", hospital_id="X001", discharge_date="2020-05-05"),
        verdict("X1"),
    )


def test_load_returns_verdicts_that_arrived_before_their_case(store: LedgerStore) -> None:
    _world(store)

    loaded = ids(store.load(pool="panzhihua", year=2020))

    assert "verdict-C1-violation" in loaded
    assert loaded.index("verdict-C1-violation") < loaded.index("his-H001-C1-r1")


def test_load_for_a_pool_year_returns_what_clearing_needs(store: LedgerStore) -> None:
    _world(store)

    loaded = set(ids(store.load(pool="panzhihua", year=2020)))

    assert loaded == {
        "reg-panzhihua-H001", "reg-panzhihua-H002", "policy-panzhihua-drg_table-2020",
        "budget-panzhihua-2019", "budget-panzhihua-2020", "prepay-H001-2020-03-31",
        "his-H001-C1-r1", "his-H001-C1-withdrawn", "verdict-C1-violation",
        # C2 has a revision discharged in 2020: every revision comes along.
        "his-H002-C2-r1", "his-H002-C2-r2",
    }


def test_load_known_at_hides_what_was_recorded_later(store: LedgerStore) -> None:
    _world(store)

    loaded = set(ids(store.load(pool="panzhihua", year=2020, known_at=datetime(2020, 2, 5, tzinfo=UTC))))

    assert not {"his-H002-C2-r2", "his-H001-C1-r1", "his-H001-C1-withdrawn"} & loaded
    assert {"verdict-C1-violation", "his-H002-C2-r1", "budget-panzhihua-2020"} <= loaded


def test_load_by_case_brings_its_pool_and_its_verdicts(store: LedgerStore) -> None:
    _world(store)

    loaded = set(ids(store.load(case_ids=["C3"])))

    assert {"his-H001-C3-r1", "verdict-C3-upheld", "reg-panzhihua-H001", "policy-panzhihua-drg_table-2020"} <= loaded
    assert not any("C1" in i or "C2" in i or "xuancheng" in i for i in loaded)


def test_load_by_case_finds_a_verdict_whose_case_is_not_known_yet(store: LedgerStore) -> None:
    ingest(store, verdict("C7"))

    assert ids(store.load(case_ids=["C7"])) == ["verdict-C7-upheld"]


def test_load_by_hospital_keeps_its_cases_and_its_pool(store: LedgerStore) -> None:
    _world(store)

    loaded = set(ids(store.load(hospital_id="H002", year=2020)))

    assert {"his-H002-C2-r1", "his-H002-C2-r2", "reg-panzhihua-H002", "budget-panzhihua-2020"} <= loaded
    assert "his-H001-C1-r1" not in loaded and "reg-xuancheng-X001" not in loaded


def test_replay_equals_load_for_the_same_known_at(store: LedgerStore) -> None:
    _world(store)

    for known_at in (None, datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 2, 5, tzinfo=UTC), LATER):
        assert list(store.replay(known_at=known_at)) == store.load(known_at=known_at)
    assert len(store.load()) == 17


def test_stored_events_come_back_equal_to_what_was_accepted(store: LedgerStore) -> None:
    sent = [hospital("H001"), *(policy(c) for c in ("drg_table", "coefficients", "high_tech_catalogue",
                                                   "case_rules", "penalty_rules", "clearing_rules")),
            case("C1", personal_paid="100", bilateral=True, diagnosis_codes=["I21.0"]), prepayment()]
    ingest(store, *sent)

    assert [as_sent(e) for e in store.load()] == [parse_event(e) for e in sent]
    assert [canonical_json(as_sent(e)) for e in store.replay()] == [canonical_json(parse_event(e)) for e in sent]


def test_the_idempotency_hash_is_the_events_content_hash(store: LedgerStore) -> None:
    sent = [hospital("H001"), case("C1"), case("C2", recorded_at=None)]
    ingest(store, *sent)

    assert [r["content_hash"] for r in index_rows(store)] == [content_hash(parse_event(e)) for e in sent]
    assert [store.journal.entry(r["event_id"]).content_hash for r in index_rows(store)] == [
        content_hash(parse_event(e)) for e in sent]


def test_hospitals_lists_the_last_registration_of_each(store: LedgerStore) -> None:
    ingest(store, hospital("H001", grade="3B"), hospital("H002"),
           hospital("H001", grade="3A", event_id="reg-H001-regraded", recorded_at="2021-01-01T00:00:00+08:00"))

    registered = store.hospitals()

    assert sorted(registered) == ["H001", "H002"]
    assert registered["H001"].grade == "3A"


def test_event_of_an_unknown_id_is_none(store: LedgerStore) -> None:
    assert store.event("nope") is None


# --------------------------------------------------------------------------- ledger-written events


def test_system_events_are_appended_once(store: LedgerStore) -> None:
    ingest(store, hospital("H001"), case("C1"))
    imposed = parse_event(penalty("C1", hospital_id="H001"))

    assert store.append_system_events([clearing_completed(), imposed, imposed]) == 2
    assert store.append_system_events([clearing_completed(), imposed]) == 0
    assert store.counts()["events"] == 4
    assert ids(store.load(pool="panzhihua", year=2020))[-2:] == ["clearing-panzhihua-2020", "penalty-C1"]
    assert as_sent(store.event("clearing-panzhihua-2020")) == clearing_completed()


def test_system_events_must_come_from_system(store: LedgerStore) -> None:
    with pytest.raises(InvalidEvent) as refused:
        store.append_system_events([clearing_completed(source="operator:someone")])

    assert refused.value.field == "source"
    assert store.counts()["events"] == 0


def test_open_reads_the_url_from_the_environment_then_defaults_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATABASE_URL_ENV, f"sqlite:///{tmp_path / 'from-env.db'}")
    with LedgerStore.open() as store:
        store.ingest(lines(hospital("H001")), origin="f", now=NOW)
    assert (tmp_path / "from-env.db").exists()

    monkeypatch.delenv(DATABASE_URL_ENV)
    with LedgerStore.open() as store:
        assert store.counts()["events"] == 0
    assert (tmp_path / "drg-ledger.db").exists()


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(ValueError, match="in-memory"):
        LedgerStore.open("sqlite://")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p%40ss@db.example:6543/ledger",
         {"POSTGRES_HOST": "db.example", "POSTGRES_PORT": "6543", "POSTGRES_USER": "u", "POSTGRES_PASSWORD": "p@ss",
          "POSTGRES_DBNAME": "ledger"}),
        ("postgresql+psycopg://postgres@127.0.0.1/test?options=-csearch_path%3Dledger_2020",
         {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": "5432", "POSTGRES_SCHEMA": "ledger_2020"}),
    ],
)
def test_postgres_urls_become_the_journal_environment(url: str, expected: dict[str, str]) -> None:
    env = journal_env(url)

    assert env["PERSISTENCE_MODULE"] == "eventsourcing.postgres"
    assert expected.items() <= env.items()


def test_journal_refuses_a_second_entry_for_an_event_id(database_url: str) -> None:
    from eventsourcing.persistence import IntegrityError

    with Journal(env=journal_env(database_url)) as journal:
        entry = LedgerEntry.recorded(event_id="e1", event_type="BudgetSet", envelope="{}", content_hash="h")
        journal.append([entry])
        with pytest.raises(IntegrityError):
            journal.append([LedgerEntry.recorded(event_id="e1", event_type="BudgetSet", envelope="{}",
                                                 content_hash="x")])
        assert journal.head() == 1
        assert journal.entry("e1") is not None and journal.entry("e2") is None


_UTF8_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)


@settings(max_examples=25, deadline=None)
@given(event_id=_UTF8_TEXT.filter(bool), envelope=_UTF8_TEXT, origin=st.none() | _UTF8_TEXT)
def test_the_journal_stores_an_entry_as_the_librarys_mapper_would(event_id: str, envelope: str,
                                                                   origin: str | None) -> None:
    """`Journal.append` writes the stored record itself, without the domain event object: the
    same id, topic and state bytes the library's mapper makes of that event, so the library
    (`Journal.read`) reads it back as it was."""
    import uuid

    from ledger.journal import NAMESPACE, Entry, entry_id

    with tempfile.TemporaryDirectory() as d, Journal(env=journal_env(f"sqlite:///{d}/j.db")) as journal:
        (stored,) = journal._stored([Entry(event_id, "BudgetSet", envelope, "h", origin)])
        decoded = journal.mapper.to_domain_event(stored)
        assert isinstance(decoded, LedgerEntry.Recorded)
        assert stored == journal.mapper.to_stored_event(decoded)
        assert (decoded.event_id, decoded.envelope, decoded.content_hash, decoded.origin) == (
            event_id, envelope, "h", origin)
        assert decoded.originator_id == entry_id(event_id) == uuid.uuid5(NAMESPACE, event_id)


# --------------------------------------------------------------------------- helpers


def _journal_only(database_url: str, envelope: dict[str, Any]) -> None:
    """Journal an event the way `ingest` does, without touching the index."""
    ev = parse_event(envelope)
    with Journal(env=journal_env(database_url)) as journal:
        journal.append([LedgerEntry.recorded(event_id=ev.event_id, event_type=ev.event_type,
                                             envelope=canonical_json(ev), content_hash=content_hash(ev))])


def _rebuilt(store: LedgerStore) -> list[dict[str, Any]]:
    store.rebuild_index()
    return index_rows(store)


# --------------------------------------------------------------------------- penalty derivation


def test_a_policy_arriving_after_the_verdicts_derives_their_penalties_a_chunk_of_cases_at_a_time(
    store: LedgerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RULES.md 4: one penalty per violation verdict, upcoding x4; EVENTS.md "Order of arrival":
    # the verdicts wait for the policy, which reaches every case of its pool-year. The verdicts'
    # cases are read `_DERIVATION_CASES` at a time (a province's policy reaches 10M cases).
    import projections.store as store_module

    monkeypatch.setattr(store_module, "_DERIVATION_CASES", 2)
    seen: list[int] = []
    real = store_module.penalty_events
    monkeypatch.setattr(store_module, "penalty_events",
                        lambda events: seen.append(sum(e.event_type == "CaseSubmitted" for e in events)) or real(events))
    points = {"C1": "10", "C2": "20", "C3": "30.5", "C4": "0.25", "C5": "7"}
    ingest(store, hospital("H001"), *(case(c) for c in points), case("C6"),
           *(verdict(c, outcome="violation", violation_type="upcoding", violating_points=p) for c, p in points.items()),
           verdict("C6", outcome="upheld"))
    assert [e for e in store.load() if e.event_type == "PenaltyImposed"] == []
    seen.clear()
    ingest(store, *(policy(c) for c in ("drg_table", "coefficients", "case_rules", "penalty_rules", "clearing_rules")))
    assert seen == [2, 2, 2]  # C1 C2 | C3 C4 | C5 C6: the cases with a verdict, 2 at a time
    derived = {e.payload.case_id: str(e.payload.deducted_points) for e in store.load() if e.event_type == "PenaltyImposed"}
    assert derived == {"C1": "40.0000", "C2": "80.0000", "C3": "122.0000", "C4": "1.0000", "C5": "28.0000"}
