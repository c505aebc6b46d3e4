"""Pure helpers of the offsets audit: range intersection, holes below a client's position, key skew."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from projections.offsets import PartitionMark
from streams.audit import intersect
from streams.intake import FaultDrop, hole_ranges
from streams.topics import key_skew, partition_of


def ranges_of(offsets: set[int]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for o in sorted(offsets):
        if out and out[-1][1] == o - 1:
            out[-1] = (out[-1][0], o)
        else:
            out.append((o, o))
    return tuple(out)


@given(st.sets(st.integers(0, 60)), st.sets(st.integers(0, 60)))
def test_intersect_is_the_offsets_in_both(a: set[int], b: set[int]) -> None:
    assert intersect(ranges_of(a), ranges_of(b)) == ranges_of(a & b)


def test_mark_is_below_the_first_hole() -> None:
    m = PartitionMark("t", 0, 0, processed=8, highest=9, holes=((5, 6),))
    assert (m.mark, m.missing, m.missing_offsets()) == (4, 2, [5, 6])
    assert PartitionMark("t", 0, 0, processed=10, highest=9).mark == 9
    assert PartitionMark("t", 1, 3, processed=0, highest=2).mark == 2  # nothing since the log start 3


def test_holes_below_the_position_include_a_lost_tail() -> None:
    m = PartitionMark("t", 0, 0, processed=8, highest=9, holes=((5, 6),))
    # The client handed over up to 14 (position 15): 10..14 never reached the store.
    assert hole_ranges(m, 15) == [(5, 6), (10, 14)]
    assert hole_ranges(m, 10) == [(5, 6)]
    assert hole_ranges(m, 6) == [(5, 5)]
    assert hole_ranges(PartitionMark("t", 0, 0, processed=10, highest=9), 10) == []


class Rec:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class TP:
    def __init__(self, partition: int) -> None:
        self.topic, self.partition = "t", partition

    def __hash__(self) -> int:
        return self.partition


def test_fault_drop_loses_records_once_after_the_first() -> None:
    fault = FaultDrop("3:2")
    p3, p1 = TP(3), TP(1)
    small = {p3: [Rec(0), Rec(1), Rec(2)]}
    fault.apply(small)  # needs more than count + 1 records of the partition
    assert [r.offset for r in small[p3]] == [0, 1, 2]
    batch = {p1: [Rec(0), Rec(1), Rec(2), Rec(3)], p3: [Rec(3), Rec(4), Rec(5), Rec(6)]}
    fault.apply(batch)
    assert [r.offset for r in batch[p3]] == [3, 6] and len(batch[p1]) == 4
    again = {p3: [Rec(7), Rec(8), Rec(9), Rec(10)]}
    fault.apply(again)
    assert len(again[p3]) == 4, "once"


def test_key_skew_of_generator_hospital_ids_over_twelve_partitions() -> None:
    ids = [f"H{i:03d}" for i in range(1, 151)]
    skew = key_skew(ids, 12)
    assert sum(skew["load"]) == 150 and skew["mean"] == 12.5
    # Measured (murmur2, as Java and kafka-python partition): busiest partition 18 ids.
    assert skew["max"] == 18 and round(skew["max_over_mean"], 2) == 1.44 and skew["empty"] == 0
    assert partition_of(b"H001", 12) == partition_of(b"H001", 12) < 12
    # Weights: one hospital sending ten times as much moves the maximum.
    heavy = key_skew(ids, 12, {"H001": 10.0})
    assert heavy["max"] >= skew["max"]


def test_per_his_topics_name_their_principal_and_only_ids_kafka_can_spell() -> None:
    import re

    import pytest

    from streams.topics import TopicNames

    names = TopicNames("drg-ledger")
    assert names.his("H001") == "drg-ledger.his.H001"
    assert names.principal_of("drg-ledger.his.H001") == "his:H001"
    assert names.principal_of("drg-ledger.events") is None and names.principal_of("other.his.H001") is None
    pattern = re.compile(names.intake_pattern())
    assert [t for t in ["drg-ledger.events", "drg-ledger.his.H001", "drg-ledger.dead-letters", "drg-ledger.recompute",
                        "drg-ledgerXevents", "x.drg-ledger.events"] if pattern.match(t)] == [
        "drg-ledger.events", "drg-ledger.his.H001"]
    with pytest.raises(ValueError, match="cannot name a topic"):
        names.his("H:001/a")


def test_a_his_publisher_authenticates_from_the_environment_with_its_password_in_a_file(tmp_path: Path) -> None:
    from streams.topics import client_options

    assert client_options({}) == {}
    secret = tmp_path / "password"
    secret.write_text("s3cret\n", encoding="utf-8")
    env = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "KAFKA_SASL_USERNAME": "his-h001", "KAFKA_SASL_PASSWORD_FILE": str(secret), "KAFKA_SSL_CAFILE": "/ca.crt"}
    assert client_options(env) == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                                   "sasl_plain_username": "his-h001", "sasl_plain_password": "s3cret",
                                   "ssl_cafile": "/ca.crt"}
    from kafka import KafkaProducer

    # kafka-python takes exactly these settings (an unknown one raises at construction).
    assert set(client_options(env)) <= set(KafkaProducer.DEFAULT_CONFIG)
