"""The Kafka topics of drg-ledger, their keys, and how to create them (streams/README.md).

- `drg-ledger.events`: every inbound event envelope of EVENTS.md, one per message value
  (UTF-8 JSON bytes, exactly the line of a `.jsonl` file), keyed by `key_for`.
- `drg-ledger.dead-letters`: every refused message, value = the raw bytes as received,
  headers `reason`, `field`, `event_id`, `origin` (`kafka:topic/partition/offset`).
- `drg-ledger.recompute`: internal; one request per (pool, year, hospital) whose running
  totals must be recomputed, keyed by hospital, so one hospital's totals are always
  computed by the one consumer that owns its partition, in order.

`python -m streams.topics` writes `schemas/topics.json` from `TOPICS`.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_PREFIX = "drg-ledger"
PREFIX_ENV = "DRG_LEDGER_TOPIC_PREFIX"
"""Topic names are `<prefix>.events` etc.; the prefix is also the Faust app id, so the
consumer group and the changelog topic. One prefix per deployment (tests: one per test)."""

EVENTS = f"{DEFAULT_PREFIX}.events"
DEAD_LETTERS = f"{DEFAULT_PREFIX}.dead-letters"
RECOMPUTE = f"{DEFAULT_PREFIX}.recompute"
PARTITIONS = 12
"""Per topic. Keys hash to partitions (murmur2, as Java clients do), so changing the count
moves keys: repartitioning is a new topic, not an edit. 12 spreads a city's hospitals
evenly enough (`key_skew`: 150 generator ids H001..H150, max/mean 1.44; 4 partitions put 70% of a
feed on two) and lets 1, 2, 3, 4, 6 or 12 workers share the load equally."""

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


@dataclass(frozen=True)
class TopicSpec:
    """A topic as `schemas/topics.json` describes it."""

    name: str
    partitions: int
    key: str
    value: str
    headers: dict[str, str]
    produced_by: str
    consumed_by: str
    cleanup_policy: str = "delete"


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(
        EVENTS,
        PARTITIONS,
        key=(
            "UTF-8 string. hospital_id when the payload names one (HospitalRegistered, CaseSubmitted, "
            "CaseWithdrawn, PrepaymentMade, a hospital-scoped CoefficientChanged); for a "
            "ReviewVerdictRecorded the hospital of its case when the producer knows it, else the pool when the "
            "producer knows only one, else the case_id; otherwise the pool (PolicyVersionPublished, BudgetSet, "
            "a (drg_code, grade) CoefficientChanged); "
            "null when the producer could not parse the line (malformed input, sent on purpose)."
        ),
        value="One event envelope of spec/EVENTS.md as UTF-8 JSON (schemas/json/ledger-event.schema.json).",
        headers={},
        produced_by="drg-ledger publish (kafka-python, idempotent, acks=all); any HIS or operator client",
        consumed_by="drg-ledger worker, its events consumer (aiokafka, consumer group <prefix>.intake; "
                    "the store owns the offsets, the group's commits are advisory)",
    ),
    TopicSpec(
        DEAD_LETTERS,
        PARTITIONS,
        key="the refused message's own key (bytes, may be null)",
        value="the refused message's value, raw bytes exactly as received",
        headers={
            "reason": "UTF-8: why it was refused, naming the field (EVENTS.md 'Bad input')",
            "field": "UTF-8: the field at fault, empty when the whole message is (not JSON, not UTF-8)",
            "event_id": "UTF-8: the envelope's event_id when one could be read, else empty",
            "origin": "UTF-8: kafka:<topic>/<partition>/<offset> of the refused message",
        },
        produced_by="drg-ledger worker (at least once: dedupe on the origin header)",
        consumed_by="operators; the store's dead_letters table holds the same rows, once per origin",
    ),
    TopicSpec(
        RECOMPUTE,
        PARTITIONS,
        key="UTF-8 hospital_id",
        value='JSON {"pool": str, "year": int, "hospital_id": str, "cause": event_id of one triggering event}',
        headers={},
        produced_by="drg-ledger worker, agent ingest_events (fan-out of each batch's affected totals)",
        consumed_by="drg-ledger worker, agent recompute_totals (writes table running-totals and SQL running_totals)",
    ),
    TopicSpec(
        f"{DEFAULT_PREFIX}-running-totals-changelog",
        PARTITIONS,
        key="UTF-8 hospital_id (same hash, so same partition, as its recompute requests)",
        value='JSON {"<pool>/<year>": {"cases", "settled_points", "deducted_points", "net_points", '
              '"personal_paid", "position", "known_at", "computed_at", "error"}}',
        headers={},
        produced_by="Faust, for table running-totals (created by the worker)",
        consumed_by="Faust, restoring the table when a worker starts or takes over partitions",
        cleanup_policy="compact",
    ),
)


@dataclass(frozen=True)
class TopicNames:
    """The topic names of one deployment."""

    prefix: str = DEFAULT_PREFIX

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}.dead-letters"

    @property
    def recompute(self) -> str:
        return f"{self.prefix}.recompute"

    def all(self) -> tuple[str, str, str]:
        return (self.events, self.dead_letters, self.recompute)

    def his(self, hospital_id: str) -> str:
        """The topic only hospital `hospital_id`'s HIS may write (its SASL principal's ACL,
        deploy/README.md "Who may write"): `<prefix>.his.<hospital_id>`."""
        if not HIS_ID.fullmatch(hospital_id):
            raise ValueError(f"hospital id {hospital_id!r} cannot name a topic (letters, digits, '.', '_', '-')")
        return f"{self.prefix}{HIS_INFIX}{hospital_id}"

    def intake_pattern(self) -> str:
        """The topics the worker reads: the events topic and every per-HIS topic."""
        return rf"^{re.escape(self.prefix)}\.(events|his\.{HIS_ID.pattern})$"

    def principal_of(self, topic: str) -> str | None:
        """`his:<hospital_id>` for a per-HIS topic of this prefix, None for any other topic."""
        head = f"{self.prefix}{HIS_INFIX}"
        rest = topic.removeprefix(head)
        return f"his:{rest}" if topic.startswith(head) and HIS_ID.fullmatch(rest) else None


HIS_INFIX = ".his."
HIS_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
"""Hospital ids that can name a topic (Kafka's topic alphabet); others publish to the events topic."""


# --------------------------------------------------------------------------- keys


def key_for(event: dict[str, Any], case_hospitals: dict[str, str] | None = None,
            hospital_pools: dict[str, str] | None = None) -> str | None:
    """The partition key of an envelope (a decoded JSON object, valid or not).

    One hospital's events share a partition, so they arrive in the order sent: its
    registration before its cases, a revision or withdrawal after its case, a verdict
    after its case when the producer can name the case's hospital (`case_hospitals`).
    Pool-wide events (policy versions, budgets, grade-wide coefficients) are keyed by pool.
    A verdict on an unknown case goes by its pool when the producer knows it from the
    case's hospital (`hospital_pools`), else by its case id; the ledger keeps it either way
    (EVENTS.md "Order of arrival"), the key only decides which partition orders it.
    """
    payload = event.get("payload")
    if not isinstance(payload, dict):
        return None
    hospital = payload.get("hospital_id")
    if isinstance(hospital, str) and hospital:
        return hospital
    case_id = payload.get("case_id")
    if isinstance(case_id, str) and case_id:
        known = (case_hospitals or {}).get(case_id)
        if known is not None:
            return known
        pools = set((hospital_pools or {}).values())
        if len(pools) == 1:
            return pools.pop()
        return case_id
    pool = payload.get("pool")
    if isinstance(pool, str) and pool:
        return pool
    return None


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of `key` under the default partitioner (murmur2, positive, modulo)."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def key_skew(keys: Iterable[str], partitions: int = PARTITIONS,
             weights: dict[str, float] | None = None) -> dict[str, Any]:
    """How evenly `keys` (each with its weight, default 1) spread over `partitions`:
    the load per partition, and max/mean (1.0 is perfect)."""
    load = [0.0] * partitions
    for k in keys:
        load[partition_of(k.encode("utf-8"), partitions)] += (weights or {}).get(k, 1.0)
    mean = sum(load) / partitions
    return {"partitions": partitions, "load": load, "max": max(load), "mean": mean,
            "max_over_mean": max(load) / mean if mean else 0.0, "empty": sum(1 for x in load if not x)}


# --------------------------------------------------------------------------- connecting

SECURITY_ENV = {
    "security_protocol": "KAFKA_SECURITY_PROTOCOL",  # PLAINTEXT (default), SASL_SSL, SASL_PLAINTEXT, SSL
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",  # SCRAM-SHA-512 (deploy/README.md "Who may write")
    "sasl_plain_username": "KAFKA_SASL_USERNAME",
    "ssl_cafile": "KAFKA_SSL_CAFILE",
}
SASL_PASSWORD_FILE_ENV = "KAFKA_SASL_PASSWORD_FILE"


def client_options(env: dict[str, str] | None = None) -> dict[str, Any]:
    """kafka-python connection settings from the environment: how a HIS's `drg-ledger
    publish` authenticates as its SASL/SCRAM principal (the password read from a file,
    never given on a command line). Empty: plaintext, no authentication."""
    env = dict(os.environ) if env is None else env
    out: dict[str, Any] = {k: env[v] for k, v in SECURITY_ENV.items() if env.get(v)}
    if env.get(SASL_PASSWORD_FILE_ENV):
        out["sasl_plain_password"] = Path(env[SASL_PASSWORD_FILE_ENV]).read_text(encoding="utf-8").strip()
    return out


def admin_client(bootstrap_servers: str, client_id: str = "drg-ledger-admin") -> Any:
    from kafka.admin import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id=client_id, request_timeout_ms=10_000,
                            **client_options())


# --------------------------------------------------------------------------- admin


def ensure_topics(bootstrap_servers: str, names: Iterable[str] = TopicNames().all(), *,
                  partitions: int = PARTITIONS, timeout_s: float = 30.0) -> list[str]:
    """Creates the topics `names` that do not exist yet (`partitions` each, replication 1);
    returns those created.

    Retries while the broker is not answering yet, up to `timeout_s`.
    """
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = admin_client(bootstrap_servers)
            break
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    created = []
    try:
        existing = set(admin.list_topics())
        for name in names:
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, partitions, 1)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass  # a concurrent worker or publisher created it
    finally:
        admin.close()
    return created


def partition_counts(bootstrap_servers: str, names: Iterable[str]) -> dict[str, int]:
    """The partition count of each existing topic among `names` (absent ones are left out)."""
    admin = admin_client(bootstrap_servers)
    try:
        wanted = [n for n in names if n in set(admin.list_topics())]
        return {d["name"]: len(d["partitions"]) for d in admin.describe_topics(wanted)} if wanted else {}
    finally:
        admin.close()


NO_TOPIC_ID = {None, "", "00000000-0000-0000-0000-000000000000", "AAAAAAAAAAAAAAAAAAAAAA"}


def topic_ids(bootstrap_servers: str, names: Iterable[str]) -> dict[str, str | None]:
    """The broker's topic id of each existing topic among `names` (absent ones are left out;
    None for a broker that gives no ids). A topic deleted and created again under the same
    name (a broker restarted with memory storage) has a new id: it is another log."""
    admin = admin_client(bootstrap_servers)
    try:
        wanted = [n for n in names if n in set(admin.list_topics())]
        found = admin.describe_topics(wanted) if wanted else []
        return {d["name"]: (None if d.get("topic_id") in NO_TOPIC_ID else str(d["topic_id"])) for d in found}
    finally:
        admin.close()


def delete_topics(bootstrap_servers: str, names: Iterable[str], timeout_s: float = 30.0) -> list[str]:
    """Deletes the topics among `names` that exist; returns those deleted, once the broker
    no longer lists them."""
    admin = admin_client(bootstrap_servers)
    try:
        wanted = [n for n in names if n in set(admin.list_topics())]
        if wanted:
            admin.delete_topics(wanted)
            deadline = time.monotonic() + timeout_s
            while set(wanted) & set(admin.list_topics()) and time.monotonic() < deadline:
                time.sleep(0.2)
        return wanted
    finally:
        admin.close()


def describe() -> dict[str, Any]:
    """The JSON description of the topics (schemas/topics.json)."""
    return {
        "$comment": "Generated by `python -m streams.topics` from streams/topics.py; see streams/README.md.",
        "prefix": f"names use the default prefix {DEFAULT_PREFIX!r}; ${PREFIX_ENV} or --topic-prefix changes it "
                  "(it is also the Faust app id, hence the consumer group)",
        "delivery": "at least once; the ledger is idempotent on event_id, running totals are recomputed, never incremented",
        "partitioner": "murmur2 of the key bytes, positive, modulo partitions (Java client default)",
        "topics": [asdict(t) for t in TOPICS],
    }


SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "topics.json"


def main(argv: list[str] | None = None) -> None:
    text = json.dumps(describe(), ensure_ascii=False, indent=2) + "\n"
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--check"]:
        if SCHEMA_FILE.read_text(encoding="utf-8") != text:
            sys.exit(f"{SCHEMA_FILE} is stale: run python -m streams.topics")
        return
    SCHEMA_FILE.write_text(text, encoding="utf-8")
    print(SCHEMA_FILE)


if __name__ == "__main__":
    main()
