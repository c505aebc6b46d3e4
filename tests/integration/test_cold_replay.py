"""`clear --cold` settles hospital groups in worker processes (projections/cold.py): the same
clearing and basis as one process replaying the journal, on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
from datetime import datetime
from typing import Any

import pytest

from ledger.events import ENVELOPES, Component, canonical_json, decode_stored
from projections import cold
from projections.chain import BrokenEntry, checked_entries, entry_record
from projections.queries import clear_pool
from projections.store import LedgerStore, _utc
from tests import factories as f
from tests.integration.test_trust import _names, owner

MOMENTS = [datetime.fromisoformat(t) for t in ("2020-08-01T00:00:00+08:00", "2021-05-12T00:00:00+08:00")]


def city() -> list[dict[str, Any]]:
    """Four hospitals; verdicts journalled before their cases, incentive approvals past the
    cap, a withdrawal, a resubmission and a prepayment."""
    events: list[dict[str, Any]] = [f.policy(c.value) for c in Component]
    events += [f.hospital("H001", grade="3A"), f.hospital("H002", grade="2A"), f.hospital("H003", grade="3B"),
               f.hospital("H004", grade="1"), f.budget("2000000", year=2020)]
    events += [f.verdict("H002-C0", outcome="violation", violation_type="upcoding", violating_points="20"),
               f.verdict("H003-C1", outcome="incentive_approved", recorded_at="2020-07-01T10:00:00+08:00")]
    for n in range(40):
        for h in ("H001", "H002", "H003", "H004"):
            events.append(f.case(f"{h}-C{n}", hospital_id=h, drg_code="GB21" if n % 3 else "BJ11",
                                 total_cost=str(5000 + 997 * n), discharge_date=f"2020-{1 + n % 12:02d}-{1 + n % 28:02d}"))
    events += [f.verdict(f"H003-C{n}", outcome="incentive_approved", recorded_at=f"2020-07-{n:02d}T10:00:00+08:00")
               for n in range(2, 9)]
    events += [f.withdrawal("H004-C5", hospital_id="H004", recorded_at="2020-12-31T09:00:00+08:00"),
               f.case("H001-C7", hospital_id="H001", revision=2, total_cost="31000", discharge_date="2020-08-08",
                      recorded_at="2021-05-11T09:00:00+08:00"),
               f.verdict("H001-C9", outcome="special_review_approved", recorded_at="2021-05-11T10:00:00+08:00"),
               f.prepayment("50000", hospital_id="H002", paid_on="2020-06-30", recorded_at="2020-06-30T12:00:00+08:00")]
    return events


def ingest(url: str, events: list[dict[str, Any]]) -> None:
    with LedgerStore.open(url) as store:
        report = store.ingest(f.lines(*events), backfill=True, origin="test")
        assert not report.rejected, report.rejected


@pytest.mark.parametrize("processes", [2, 3])
def test_hospital_groups_settled_apart_give_the_one_process_clearing(database_url: str, processes: int) -> None:
    ingest(database_url, city())
    with LedgerStore.open(database_url) as store:
        for t in MOMENTS:
            one = cold.cold_clearing(store, "panzhihua", 2020, t, processes=1)
            apart = cold._parallel(store, "panzhihua", 2020, t, store.journal.head(), processes)  # no fallback
            assert apart.as_json() == one.as_json()
            assert apart.hospitals == clear_pool(store, "panzhihua", 2020, t).hospitals  # and the index path
            assert sum(h.cases for h in apart.hospitals) == {MOMENTS[0]: 100, MOMENTS[1]: 159}[t]  # by August; one withdrawn
        assert one.point_value != cold.cold_clearing(store, "panzhihua", 2020, MOMENTS[0], processes=1).point_value


def test_a_case_naming_hospitals_of_two_groups_is_settled_in_one_process(database_url: str) -> None:
    moved = f.case("H001-C3", hospital_id="H002", revision=2, total_cost="12000", discharge_date="2020-04-04",
                   event_id="his-H002-H001-C3-r2")
    ingest(database_url, [*city(), moved])
    with LedgerStore.open(database_url) as store:
        t = MOMENTS[1]
        with pytest.raises(cold._Split):
            cold._parallel(store, "panzhihua", 2020, t, store.journal.head(), 2)
        apart = cold.cold_clearing(store, "panzhihua", 2020, t, processes=2)
        assert apart.as_json() == cold.cold_clearing(store, "panzhihua", 2020, t, processes=1).as_json()
        assert apart.hospitals == clear_pool(store, "panzhihua", 2020, t).hospitals


class Collect:
    """Stands for a worker's pipe: keeps what the router sends."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, message: Any) -> None:
        kind, batch = message
        self.sent.append((kind, list(batch)))  # a pipe pickles it at once; the router reuses the list


def test_pool_events_stay_with_the_parent_and_each_hospitals_cases_go_to_one_group(database_url: str) -> None:
    ingest(database_url, city())
    with LedgerStore.open(database_url) as store:
        pipes = [Collect(), Collect()]
        pool_entries = cold._route(store, store.journal.head(), pipes)  # type: ignore[arg-type]
    assert {t for t, _ in pool_entries} >= {"PolicyVersionPublished", "HospitalRegistered", "BudgetSet"}
    assert not {t for t, _ in pool_entries} & cold.CASE_EVENTS
    sent = [[entry for _, batch in p.sent for entry in batch] for p in pipes]
    assert all(sent) and sum(map(len, sent)) == 4 * 40 + 1 + 10 + 1  # cases, resubmission, verdicts, withdrawal
    hospitals = [{e[8] for e in group if e[6] == "CaseSubmitted"} for group in sent]
    assert hospitals[0] and hospitals[1] and not hospitals[0] & hospitals[1]
    cases = [{e[7] for e in group} for group in sent]
    assert not cases[0] & cases[1]


def test_a_worker_refuses_an_entry_sent_as_another_case(database_url: str) -> None:
    """The router reads case and hospital from the stored bytes; the worker checks them
    against the decoded event, and fails (the clearing then settles in one process)."""
    ingest(database_url, city())
    t = MOMENTS[1]
    with LedgerStore.open(database_url) as store:
        pipes = [Collect()]
        pool_entries = cold._route(store, store.journal.head(), pipes)  # type: ignore[arg-type]
    entries = [entry for _, batch in pipes[0].sent for entry in batch]
    submission = next(e for e in entries if e[6] == "CaseSubmitted")
    ctx = multiprocessing.get_context("fork")
    for message, refused in (([submission], False), ([(*submission[:7], "H009-C1", submission[8])], True),
                             ([(*submission[:8], "H009")], True)):
        receive, send = ctx.Pipe(duplex=False)
        result_receive, result_send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=cold._worker, args=(receive, result_send, "panzhihua", 2020, t, _utc(t)))
        proc.start()
        send.send(("cases", message))
        send.send(("pool", pool_entries))
        part = result_receive.recv()
        proc.join()
        assert (part is None) == refused, message[0][6:]
        if not refused:
            assert part.events_read == 1


def test_the_stored_decoding_gives_the_validated_event(database_url: str) -> None:
    """A case entry's record decoded without the Python validators (`cold._RECORDS`) equals
    the envelope validated in full, and the store's `decode_stored` of it, field by field and
    as canonical JSON."""
    ingest(database_url, [*city(), f.withdrawal("H002-C3", hospital_id="H002", reason="重复提交 \"x\"")])
    with LedgerStore.open(database_url) as store:
        pages = checked_entries(store.journal, store.engine, 0, 10_000)
    seen = set()
    for entry, row in pages:
        record = entry_record(*entry, row.event_id)
        if record["event_type"] in cold.CASE_EVENTS:
            full = ENVELOPES[record["event_type"]].model_validate_json(record["envelope"])
            stored = entry_record(*entry, row.event_id, cold._RECORDS[record["event_type"]].validate_json)
            assert stored["envelope"] == full and canonical_json(stored["envelope"]) == canonical_json(full)
            assert decode_stored(record["event_type"], record["envelope"]) == full
            seen.add(record["event_type"])
    assert seen == cold.CASE_EVENTS


def _journalled(url: str) -> list[tuple[int, str, str]]:
    """(position, event_id, event_type) of every journal entry, in order."""
    with LedgerStore.open(url) as store:
        return [(entry[0], row.event_id, entry_record(*entry, row.event_id)["event_type"])
                for entry, row in checked_entries(store.journal, store.engine, 0, 10_000)]


@pytest.mark.parametrize("kind", ["CaseSubmitted", "BudgetSet"])
def test_an_altered_entry_in_the_middle_of_a_page_is_named_by_its_position(
        database_url: str, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """A case entry (checked by a worker) or a pool entry (by the parent), altered behind the
    ledger's back in the middle of a page: the cold replay refuses it, naming its position."""
    ingest(database_url, city())
    monkeypatch.setattr(cold, "_PAGE", 7)
    entries = _journalled(database_url)
    of_kind = [e for e in entries if e[2] == kind]
    position, event_id, _ = of_kind[len(of_kind) // 2]
    assert position % 7 not in (0, 1)  # neither a page's first entry nor its last
    events, _, column = _names(database_url)
    with owner(database_url) as conn:
        (state,) = conn.execute(f"SELECT state FROM {events} WHERE {column} = {position}").fetchone()
        altered = bytes(state).replace(b'\\"event_type\\"', b'\\"event_type\\" ', 1)
        assert altered != bytes(state)
        mark = "?" if database_url.startswith("sqlite") else "%s"
        conn.execute(f"UPDATE {events} SET state = {mark} WHERE {column} = {mark}", (altered, position))
    assert _refused(database_url, "content differs") == (position, event_id)


@pytest.mark.parametrize("where", ["middle", "first"])
def test_a_broken_chain_link_is_named_by_its_position(database_url: str, monkeypatch: pytest.MonkeyPatch,
                                                      where: str) -> None:
    """A chain row rewritten in the middle of a page, or as a page's first (its link read from
    the page before): the cold replay refuses the entry, naming its position."""
    ingest(database_url, city())
    monkeypatch.setattr(cold, "_PAGE", 7)
    entries = _journalled(database_url)
    position, event_id, _ = next(e for e in entries[len(entries) // 2:] if (e[0] % 7 == 1 if where == "first" else e[0] % 7 not in (0, 1)))
    _, chain, _ = _names(database_url)
    with owner(database_url) as conn:
        conn.execute(f"UPDATE {chain} SET chain_hash = '{'f' * 64}' WHERE position = {position}")
    assert _refused(database_url, "chain hash does not follow") == (position, event_id)


def _refused(database_url: str, reason: str) -> tuple[int, str]:
    """The position and event id the cold replay names, refusing the store at 2021-05-12: the
    parallel path gives up (`_Split`) and the one-process replay raises `BrokenEntry`."""
    t = MOMENTS[1]
    with LedgerStore.open(database_url) as store:
        with pytest.raises(cold._Split):
            cold._parallel(store, "panzhihua", 2020, t, store.journal.head(), 2)
        with pytest.raises(BrokenEntry, match=reason) as broken:
            cold.cold_clearing(store, "panzhihua", 2020, t, processes=2)
    return broken.value.position, broken.value.event_id
