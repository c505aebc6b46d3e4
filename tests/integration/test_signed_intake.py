"""The worker's signature gate on both databases: forged, unsigned and cross-hospital messages
are dead letters with their reason and change nothing in the ledger (issue 12)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from projections.store import LedgerStore
from streams.intake import Inbound
from streams.signed_intake import screened_batch
from streams.signing import Key, Keyring, signature_headers
from tests import factories as f

H001 = Key("H001-2026-07", "his:H001", bytes(range(32)))
H002 = Key("H002-2026-07", "his:H002", bytes(range(1, 33)))
RING = Keyring([H001, H002])


def _case(case_id: str, hospital: str) -> bytes:
    now = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    return json.dumps(f.case(case_id, hospital_id=hospital, recorded_at=now)).encode()


def test_only_messages_signed_by_their_own_hospital_reach_the_ledger(database_url: str) -> None:
    good, unsigned, forged, cross, unknown = (_case("C1", "H001"), _case("C2", "H002"), _case("C3", "H002"),
                                              _case("C4", "H002"), _case("C5", "H001"))
    headers = [
        signature_headers(good, H001),
        [],
        [("drg-key-id", b"H002-2026-07"), ("drg-signature", b"0" * 64)],
        signature_headers(cross, H001),  # hospital H001's key on an event of H002
        signature_headers(unknown, Key("H001-old", "his:H001", bytes(32))),
    ]
    messages = [Inbound("drg.events", 0, i, b"k", v) for i, v in enumerate([good, unsigned, forged, cross, unknown])]
    with LedgerStore(database_url) as store:
        store.ingest([json.dumps(f.hospital("H001")), json.dumps(f.hospital("H002"))], origin="file:reg",
                     backfill=True)
        before = store.counts()
        result = screened_batch(store, messages, headers, RING)
        again = screened_batch(store, messages, headers, RING)  # redelivered: dead letters stored once

        assert result.accepted == 1 and again.duplicates == 1
        reasons = {r.message.offset: r.reason.split(":")[0] for r in result.refused}
        assert reasons == {1: "unsigned", 2: "bad_signature", 3: "wrong_signer", 4: "unknown_key"}
        letters = {d.origin: d for d in store.dead_letters()}
        assert sorted(letters) == [f"kafka:drg.events/0/{i}" for i in (1, 2, 3, 4)]
        assert letters["kafka:drg.events/0/3"].reason.startswith("wrong_signer: key 'H001-2026-07' of his:H001")
        assert letters["kafka:drg.events/0/3"].raw == cross
        assert store.event("his-H001-C1-r1") is not None
        assert all(store.event(f"his-{h}-{c}-r1") is None for h, c in (("H002", "C2"), ("H002", "C3"),
                                                                        ("H002", "C4"), ("H001", "C5")))
        after = store.counts()
        assert after["CaseSubmitted"] == before.get("CaseSubmitted", 0) + 1
        assert after["dead_letters"] == before["dead_letters"] + 4


def test_without_a_key_file_every_message_goes_on_to_the_ledger(database_url: str) -> None:
    with LedgerStore(database_url) as store:
        store.ingest([json.dumps(f.hospital("H001"))], origin="file:reg", backfill=True)
        result = screened_batch(store, [Inbound("t", 0, 0, None, _case("C1", "H001"))], [[]], None)
        assert result.accepted == 1 and not result.refused


def test_a_per_his_topic_carries_its_own_hospitals_events_only(database_url: str) -> None:
    """`drg.his.H001` is writable by H001's SASL principal only (deploy/README.md): an event
    of H002 or an operator's on it is refused `wrong_topic`, also after the topic was
    recreated (its log `drg.his.H001#2`), with or without signatures."""
    from streams.topics import TopicNames

    names = TopicNames("drg")
    own, other = _case("C1", "H001"), _case("C2", "H002")
    policy = json.dumps(f.policy("drg_table")).encode()
    messages = [Inbound("drg.his.H001", 0, 0, None, own), Inbound("drg.his.H001", 0, 1, None, other),
                Inbound("drg.his.H001#2", 0, 0, None, policy), Inbound("drg.events", 0, 0, None, other),
                Inbound("drg.his.H001", 0, 2, None, b"{not json")]
    with LedgerStore(database_url) as store:
        store.ingest([json.dumps(f.hospital("H001")), json.dumps(f.hospital("H002"))], origin="file:reg",
                     backfill=True)
        result = screened_batch(store, messages, [[]] * len(messages), None, names=names)
        assert result.accepted == 2  # H001's case on its topic, H002's on the shared events topic
        reasons = {r.message.origin: r.reason for r in result.refused}
        assert sorted(reasons) == ["kafka:drg.his.H001#2/0/0", "kafka:drg.his.H001/0/1", "kafka:drg.his.H001/0/2"]
        assert reasons["kafka:drg.his.H001/0/1"].startswith(
            "wrong_topic: topic drg.his.H001 takes the events of his:H001 only, not an event of source 'his:H002'")
        assert reasons["kafka:drg.his.H001#2/0/0"].startswith("wrong_topic: topic drg.his.H001 ")
        assert not reasons["kafka:drg.his.H001/0/2"].startswith("wrong_topic"), "not JSON: the ledger's own refusal"
        assert store.event("his-H001-C1-r1") is not None and store.event("his-H002-C2-r1") is not None
        signed = screened_batch(store, [Inbound("drg.his.H001", 0, 3, None, other)], [signature_headers(other, H002)],
                                RING, names=names)
        assert [r.reason.split(":")[0] for r in signed.refused] == ["wrong_topic"], "a good signature does not help"
