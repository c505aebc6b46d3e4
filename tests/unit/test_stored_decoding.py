"""`decode_stored` (the store's reads, the replays) gives the envelope the full parse gives,
for every body the ledger writes: every event type, decimal edge cases, Chinese text,
optional fields absent, and any line intake accepts (hypothesis)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from ledger.clearing import clearing, settle
from ledger.events import (
    ENVELOPES,
    PAYLOADS,
    EventType,
    InvalidEvent,
    canonical_json,
    decode_stored,
    ingested_json,
    parse_event,
    unchecked_validator,
)
from tests.factories import budget, case, envelope, hospital, lines, penalty, policy, prepayment, verdict, withdrawal
from tests.hostile import STORE_ONLY, VALID_ENVELOPES, mutated_lines, scenario_lines

NOW = datetime(2021, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)


def shape(value: Any) -> Any:
    """`value` spelled out with every type and every decimal's digits and exponent: equal
    models may still differ by a str for an enum or `1.0` for `1.00`; equal shapes may not."""
    if isinstance(value, BaseModel):
        return (type(value), sorted(value.model_fields_set), {k: shape(v) for k, v in value.__dict__.items()})
    if isinstance(value, dict):
        return (type(value), [(shape(k), shape(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value), [shape(v) for v in value])
    if isinstance(value, Decimal):
        return (Decimal, value.as_tuple())
    if isinstance(value, datetime):
        return (datetime, value.isoformat(), value.utcoffset())
    if isinstance(value, (Enum, date, str, int, bool, type(None))):
        return (type(value), value)
    raise AssertionError(f"unexpected {type(value)} in an event")


def stored_body(ev: Any) -> str:
    """What the store writes for an accepted event (`LedgerStore.ingest`)."""
    return ingested_json(ev, canonical_json(ev), NOW)


def assert_decoded_alike(body: str, event_type: str) -> None:
    full = ENVELOPES[event_type].model_validate_json(body)
    fast = decode_stored(event_type, body)
    assert shape(fast) == shape(full)
    assert fast == full and canonical_json(fast) == canonical_json(full) == body
    assert decode_stored(event_type, body.encode("utf-8")) == full  # bytes as read from a bytea/BLOB alike


def a_clearing() -> Any:
    """The `ClearingCompleted` the ledger writes for the scenario (`queries.record_clearing`)."""
    events = [parse_event(line) for line in scenario_lines()]
    known_at = datetime(2021, 2, 1, tzinfo=UTC)
    payload = clearing(settle(events, "panzhihua", 2020, known_at)).completed()
    payload = payload.model_copy(update={"log_digest": "12:" + "ab" * 32})
    return ENVELOPES[EventType.CLEARING_COMPLETED](
        event_id="clearing:panzhihua:2020:" + "0" * 32, event_type=EventType.CLEARING_COMPLETED,
        recorded_at=known_at, source="system", payload=payload,
    )


EDGES: list[dict[str, Any]] = [
    hospital("H009", name="攀枝花市中心医院（东区）", grade="2A"),
    case("C10", total_cost="0", drg_code="GB21"),
    case("C11", total_cost="0.00", personal_paid="0"),
    case("C12", total_cost="100000000", personal_paid="100000000.00"),
    case("C13", total_cost="0.10", personal_paid="0.1"),
    case("C14", total_cost="00012.30"),
    case("C15", total_cost="12.3000000"),  # trailing zeros past the 2 places
    case("C16", total_cost=12345, recorded_at=None),  # a JSON integer; recorded_at stamped by the ledger
    case("C17", discharge_date="2099-12-31", admission_date="2000-01-01", diagnosis_codes=["I10.x00"],
         procedure_codes=["04.0200x005", "81.5100+"], bilateral=True, secondary_drg_code="GB21"),
    case("C18", recorded_at="2020-03-01T18:00:00.123456Z"),
    case("C19", recorded_at="2020-03-01 18:00:00-05:30"),
    withdrawal("C10", reason="重复提交 \"x\" \\ 换行\u2028 ☃ \U0001F600"),
    verdict("C11", outcome="violation", violation_type="fraud", reviewer="审核员 王五", related_case_ids=["C12", "C13"]),
    verdict("C12", outcome="violation", violation_type="upcoding", violating_points="0.0001", multiplier="4"),
    verdict("C13", outcome="special_review_approved", unreasonable_cost="0.01"),
    verdict("C14", outcome="upheld"),
    budget("1000000000000", year=2099),
    budget("0.01", year=2000),
    prepayment("999999999999.99"),
    policy("coefficients", {"grades": {"3A": "1.000000", "3B": "0.920", "2A": "0.85", "2B": "0.8", "1": "0.000001"}},
           version="2020-修订", effective_to="2020-12-31", event_id="policy-coefficients-2020-rev"),
    policy("coefficients", {"grades": {"3A": "1"}, "hospitals": {"H001": "1.05"}}, version="2021"),
    policy("case_rules", {"high_ratio": [{"max_base_points": None, "threshold": "2"}], "low_ratio": {"default": "0.4"}},
           version="2021"),
    policy("high_tech_catalogue", {"source": "附件 高新技术目录", "rows": [
        {"seq": 1, "technology": "达芬奇机器人手术", "drg_code": "BJ11", "procedure_codes": ["04.0200x005"],
         "combined_with_codes": ["00.3900"], "coef_3a": "1.6", "coef_3b": "1.47"}]}, version="2021"),
    envelope("CoefficientChanged", {"pool": "panzhihua", "hospital_id": "H002", "coefficient": "1.05",
                                    "effective_from": "2020-01-01", "effective_to": "2020-12-31",
                                    "reason": "back-dated 二级甲等"}, event_id="coef-H002"),
    envelope("CoefficientChanged", {"pool": "panzhihua", "drg_code": "BJ11", "grade": "3A", "coefficient": "100",
                                    "effective_from": "2020-01-01", "reason": "x"}, event_id="coef-BJ11-3A"),
    envelope("CoefficientChanged", {"pool": "panzhihua", "hospital_id": "H001", "drg_code": "GB21",
                                    "coefficient": "0.000001", "effective_from": "2020-06-01", "reason": "y"},
             event_id="coef-H001-GB21", recorded_at=None),
]
"""Envelopes past the factories' defaults (the scenario and `VALID_ENVELOPES` hold the rest)."""


def every_event() -> list[Any]:
    lines = [json.dumps(e, ensure_ascii=False).encode() for e in [*VALID_ENVELOPES, *EDGES]]
    events = [parse_event(line) for line in [*lines, *(h.raw for h in STORE_ONLY)]]
    return [*events, a_clearing()]


def test_every_event_type_the_ledger_writes_is_covered() -> None:
    assert {ev.event_type for ev in every_event()} == set(ENVELOPES)


@pytest.mark.parametrize("ev", every_event(), ids=lambda ev: ev.event_id)
def test_the_stored_decoding_equals_the_full_parse(ev: Any) -> None:
    assert_decoded_alike(stored_body(ev), ev.event_type)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=st.one_of(mutated_lines(), st.sampled_from([*scenario_lines(), *(h.raw for h in STORE_ONLY)])))
def test_any_accepted_line_is_decoded_from_its_stored_body_as_the_full_parse_decodes_it(raw: bytes) -> None:
    try:
        ev = parse_event(raw)
    except InvalidEvent:
        assume(False)
        return
    assert_decoded_alike(stored_body(ev), ev.event_type)


@pytest.mark.parametrize("body", [
    "{", '{"event_id":"x"}', json.dumps({"event_id": "a", "event_type": "CaseWithdrawn", "source": "his:H1",
                                         "payload": {"case_id": "C1", "hospital_id": "H1", "reason": "r", "x": 1}}),
])
def test_a_body_that_is_not_a_stored_event_is_still_refused(body: str) -> None:
    """Types and their constraints stay: broken JSON, a missing field, an unknown one."""
    with pytest.raises(ValidationError):
        decode_stored("CaseWithdrawn", body)


@pytest.mark.parametrize(("number", "stored"), [
    ("1e2", "100"), ("1E+2", "100"), ("0e5", "0"), ("1.5e3", "1500"), ("2.50E1", "25.0"), ("12345678e0", "12345678"),
])
def test_a_json_number_with_an_exponent_is_stored_without_it_and_reads_back(number: str, stored: str) -> None:
    """`1e2` decodes as `Decimal('1E+2')`, whose text "1E+2" a decimal field refuses: intake
    passes on the equal plain value, so the stored body reads back under the full parse too."""
    ev = parse_event(json.dumps(case("C1")).replace('"21422.50"', number))
    assert ev.payload.total_cost == Decimal(number)
    body = stored_body(ev)
    assert f'"total_cost":"{stored}"' in body
    assert_decoded_alike(body, EventType.CASE_SUBMITTED)


def test_a_zero_of_seven_places_is_stored_without_an_exponent() -> None:
    """`Decimal('0.0000000')` is written "0E-7"; a point value of 6 places keeps it as 0.000000."""
    ev = a_clearing()
    payload = type(ev.payload).model_validate({**ev.payload.model_dump(), "point_value": Decimal("0.0000000")})
    ev = ev.model_copy(update={"payload": payload})
    body = stored_body(ev)
    assert '"point_value":"0.000000"' in body
    assert_decoded_alike(body, EventType.CLEARING_COMPLETED)


def test_the_stored_decoding_skips_the_validators_of_a_model_class_already_built() -> None:
    """pydantic-core builds a nested model whose class is built with that class's own (full)
    validator ("prebuilt"): the stored decoder is made from the stripped schema all the same.
    A decimal stored as "4E+1" (before intake wrote decimals plainly) tells them apart."""
    body = stored_body(parse_event(lines(penalty("C1"))[0])).replace('"deducted_points":"40"', '"deducted_points":"4E+1"')
    PAYLOADS[EventType.PENALTY_IMPOSED].model_validate(json.loads(body)["payload"] | {"deducted_points": "40"})
    assert PAYLOADS[EventType.PENALTY_IMPOSED].__pydantic_complete__
    with pytest.raises(ValidationError, match="no exponent"):
        ENVELOPES[EventType.PENALTY_IMPOSED].model_validate_json(body)
    model = ENVELOPES[EventType.PENALTY_IMPOSED]
    decode = unchecked_validator(model.__pydantic_core_schema__).validate_json
    assert decode(body).payload.deducted_points == Decimal(40)
    assert model.__pydantic_complete__ and PAYLOADS[EventType.PENALTY_IMPOSED].__pydantic_complete__
