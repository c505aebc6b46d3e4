"""Publish a JSON Lines event file to `drg-ledger.events` (the `drg-ledger publish` command).

Each line is validated with `ledger.events.parse_event` first; an invalid line is reported
(line, field, reason) and not sent, unless `send_invalid` asks to send it anyway (tests
use this to push malformed messages through the worker on purpose). The producer is
kafka-python's, idempotent with `acks=all`, so a retried batch is written once; every
delivery report is counted.

This module imports kafka-python only, never Faust: publishing needs no stream processor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ledger.events import LEDGER_WRITTEN, EventType, InvalidEvent, decode_line, parse_event
from streams.topics import EVENTS, client_options, ensure_topics, key_for

CASE_MEMORY = 1_000_000
"""Cases whose hospital the publisher remembers to key their verdicts (oldest forgotten first)."""


@dataclass(frozen=True)
class InvalidLine:
    """A line that failed validation: where, which field, why."""

    line: int
    event_id: str | None
    field: str
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"line": self.line, "event_id": self.event_id, "field": self.field, "reason": self.reason}


@dataclass
class PublishReport:
    """What one publish did: lines read, sent (delivery confirmed), failed, invalid."""

    topic: str
    lines: int = 0
    sent: int = 0
    failed: int = 0
    invalid: list[InvalidLine] = field(default_factory=list)
    invalid_sent: int = 0
    errors: list[str] = field(default_factory=list)  # the first delivery errors, for the report
    last_offsets: dict[int, int] = field(default_factory=dict)  # partition -> last offset written
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every line was valid and every message delivered."""
        return self.failed == 0 and not self.invalid

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "lines": self.lines,
            "sent": self.sent,
            "failed": self.failed,
            "invalid": [i.as_json() for i in self.invalid],
            "invalid_sent": self.invalid_sent,
            "errors": self.errors,
            "last_offsets": {str(p): o for p, o in sorted(self.last_offsets.items())},
            "seconds": round(self.seconds, 3),
            "messages_per_second": round(self.sent / self.seconds) if self.seconds > 0 else None,
        }


Delivered = Callable[[int, int, int], None]
"""on_delivered(line, partition, offset), called from the producer's I/O thread."""


def producer(bootstrap_servers: str, **overrides: Any) -> Any:
    """kafka-python producer: idempotent (works on Tansu), acks=all, a short linger to batch."""
    from kafka import KafkaProducer

    settings: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "client_id": "drg-ledger-publish",
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 5,
        "max_in_flight_requests_per_connection": 5,
        "retries": 2**31 - 1,
        "delivery_timeout_ms": 120_000,
        **client_options(),  # SASL/SCRAM as the HIS's principal, when configured
    }
    settings.update(overrides)
    return KafkaProducer(**settings)


def publish(
    lines: Iterable[bytes],
    bootstrap_servers: str,
    *,
    topic: str = EVENTS,
    send_invalid: bool = False,
    create_topics: bool = True,
    on_progress: Callable[[int], None] | None = None,
    on_sent: Callable[[int, float], None] | None = None,
    on_delivered: Delivered | None = None,
    progress_every: int = 1000,
    keyring: Any = None,
) -> PublishReport:
    """Validates and sends each non-blank line; waits for every delivery report.

    `on_sent(line, time.time())` is called as each message is handed to the producer
    (the benchmark's publish timestamp).
    """
    if create_topics:
        ensure_topics(bootstrap_servers, [topic])
    report = PublishReport(topic)
    case_hospitals: dict[str, str] = {}
    hospital_pools: dict[str, str] = {}
    started = time.perf_counter()
    kp = producer(bootstrap_servers)

    def delivered(line: int) -> Callable[[Any], None]:
        def ok(meta: Any) -> None:
            report.sent += 1
            if meta.offset > report.last_offsets.get(meta.partition, -1):
                report.last_offsets[meta.partition] = meta.offset
            if on_delivered is not None:
                on_delivered(line, meta.partition, meta.offset)

        return ok

    def failed(line: int) -> Callable[[Exception], None]:
        def err(exc: Exception) -> None:
            report.failed += 1
            if len(report.errors) < 20:
                report.errors.append(f"line {line}: {type(exc).__name__}: {exc}")

        return err

    try:
        n = 0
        for n, raw in enumerate(lines, start=1):
            report.lines = n
            data = raw.rstrip(b"\r\n")
            if not data.strip():
                continue
            decoded, problem = _validate(data)
            if problem is not None:
                report.invalid.append(InvalidLine(n, problem.event_id, problem.field, problem.reason))
                if not send_invalid:
                    continue
                report.invalid_sent += 1
            key = key_for(decoded, case_hospitals, hospital_pools) if decoded is not None else None
            if problem is None and decoded is not None:
                _remember(decoded, case_hospitals, hospital_pools)
            # Signed producers (streams/signing.py): the key of the event's source, when one fits.
            headers = _signature(keyring, data, decoded) if keyring is not None else None
            future = kp.send(topic, key=key.encode("utf-8") if key is not None else None, value=data, headers=headers)
            if on_sent is not None:
                on_sent(n, time.time())
            future.add_callback(delivered(n))
            future.add_errback(failed(n))
            if on_progress is not None and n % progress_every == 0:
                on_progress(n)
        kp.flush()
        if on_progress is not None:
            on_progress(n)
    finally:
        kp.close()
    report.seconds = time.perf_counter() - started
    return report


def _signature(keyring: Any, data: bytes, decoded: dict[str, Any] | None) -> list[tuple[str, bytes]] | None:
    source = decoded.get("source") if decoded is not None else None
    payload = decoded.get("payload") if decoded is not None else None
    hospital = payload.get("hospital_id") if isinstance(payload, dict) else None
    headers = keyring.sign(data, source if isinstance(source, str) else None,
                           hospital if isinstance(hospital, str) else None)
    return headers or None


def _validate(data: bytes) -> tuple[dict[str, Any] | None, InvalidEvent | None]:
    """The decoded object (when it is one) and the reason it is refused (None: valid)."""
    try:
        decoded = decode_line(data)  # within EVENTS.md "Limits on input": no recursion, no surrogates
    except InvalidEvent:
        decoded = None
    obj = decoded if isinstance(decoded, dict) else None
    try:
        ev = parse_event(obj if obj is not None else data)
    except InvalidEvent as exc:
        return obj, exc
    if ev.event_type in LEDGER_WRITTEN:
        return obj, InvalidEvent("event_type", f"{ev.event_type} is written by the ledger, refused from {ev.source}",
                                 ev.event_id)
    return obj, None


def _remember(event: dict[str, Any], case_hospitals: dict[str, str], hospital_pools: dict[str, str]) -> None:
    payload = event["payload"]
    if event["event_type"] == EventType.CASE_SUBMITTED:
        case_hospitals[payload["case_id"]] = payload["hospital_id"]
        if len(case_hospitals) > CASE_MEMORY:
            del case_hospitals[next(iter(case_hospitals))]
    elif event["event_type"] == EventType.HOSPITAL_REGISTERED:
        hospital_pools[payload["hospital_id"]] = payload["pool"]
