"""EVENTS.md "Limits on input": every hostile line is refused with its field named, and nothing else escapes.

`parse_event` is total: any bytes either parse or raise InvalidEvent (never TypeError,
RecursionError, ValueError, OverflowError, UnicodeError, MemoryError). The limits sit in
the pydantic models, so the exported JSON Schema refuses the same lines.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from ledger.events import (
    ENVELOPES,
    ID_PATTERN,
    LEDGER_WRITTEN,
    MAX_DEPTH,
    MAX_LINE_BYTES,
    PAYLOADS,
    BudgetSet,
    InvalidEvent,
    canonical_json,
    canonical_text,
    content_hash,
    decode_line,
    ingested,
    ingested_json,
    parse_event,
    stamped,
)
from schemas.export import OUT
from tests.factories import budget, case, envelope, hospital, lines, penalty, prepayment, verdict, withdrawal
from tests.hostile import (
    HOSTILE,
    SHIPPED_CLEARING_RULES,
    PARSE_REFUSED,
    STORE_ONLY,
    VALID_ENVELOPES,
    corrupted_lines,
    hostile_lines,
    json_values,
    mutated_lines,
    scenario_lines,
    spread,
)

BEIJING = timezone(timedelta(hours=8))


def refusal(raw: Any) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as refused:
        parse_event(raw)
    return refused.value


def line(env: dict[str, Any]) -> bytes:
    return lines(env)[0]


def with_payload(env: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**env, "payload": {**env["payload"], **fields}}


def assert_total(raw: bytes) -> None:
    """`raw` parses or is refused; an accepted event is storable (canonical JSON round-trips, no NUL)."""
    try:
        ev = parse_event(raw)
    except InvalidEvent as exc:
        assert exc.field.isprintable() and exc.reason.isprintable() and len(exc.field) <= 200
        return
    body = canonical_json(ev)
    assert "\x00" not in body and "\\u0000" not in body
    body.encode("utf-8")
    assert parse_event(body) == ev


# --------------------------------------------------------------------------- the corpus


def test_the_corpus_holds_at_least_45_distinct_lines_refused_by_parsing() -> None:
    assert len(PARSE_REFUSED) >= 45
    assert len({x.name for x in HOSTILE}) == len(HOSTILE)
    assert len(set(hostile_lines())) == len(HOSTILE)


@pytest.mark.parametrize("hostile", PARSE_REFUSED, ids=[x.name for x in PARSE_REFUSED])
def test_every_hostile_line_is_refused_naming_its_field(hostile: Any) -> None:
    refused = refusal(hostile.raw)

    assert (refused.field, hostile.reason in refused.reason) == (hostile.field, True), refused.reason


@pytest.mark.parametrize("hostile", STORE_ONLY, ids=[x.name for x in STORE_ONLY])
def test_store_only_lines_parse_and_are_left_to_the_store(hostile: Any) -> None:
    ev = parse_event(hostile.raw)
    assert ev.event_id.startswith("hostile-") or ev.event_id == SHIPPED_CLEARING_RULES


def test_the_ledger_written_lines_of_the_corpus_are_ledger_written_types() -> None:
    written = {parse_event(x.raw).event_type for x in STORE_ONLY if x.name.startswith("ledger_written")}
    assert written <= LEDGER_WRITTEN and written == {"PenaltyImposed", "HistoryBackfilled"}


def test_the_scenario_is_valid_and_spread_keeps_its_order() -> None:
    valid = scenario_lines()
    ids = [parse_event(v).event_id for v in valid]
    assert SHIPPED_CLEARING_RULES in ids and "his-H001-C1-r1" in ids and len(set(ids)) == len(ids)
    other = next(x for x in STORE_ONLY if x.name == "same_event_id_other_content")
    assert canonical_json(parse_event(other.raw)) != canonical_json(
        parse_event(next(v for v in valid if SHIPPED_CLEARING_RULES.encode() in v)))
    mixed = spread(valid, hostile_lines(), seed=7)
    assert mixed == spread(valid, hostile_lines(), seed=7)
    assert [m for m in mixed if m in set(valid)] == valid and len(mixed) == len(valid) + len(HOSTILE)


def test_refusals_carry_the_event_id_only_when_it_is_an_id() -> None:
    assert refusal(line(with_payload(case("C1"), total_cost="-1"))).event_id == "his-H001-C1-r1"
    assert refusal(json.dumps({"event_id": "a\u0000b", "event_type": "Nope"})).event_id is None
    assert refusal(json.dumps({"event_id": "x" * 300, "event_type": "Nope"})).event_id is None


# --------------------------------------------------------------------------- totality


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_invalid_event(raw: bytes) -> None:
    assert_total(raw)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(raw=json_values())
def test_arbitrary_json_values_never_raise_anything_but_invalid_event(raw: bytes) -> None:
    assert_total(raw)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=mutated_lines())
def test_mutated_valid_envelopes_never_raise_anything_but_invalid_event(raw: bytes) -> None:
    assert_total(raw)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(raw=corrupted_lines())
def test_corrupted_valid_lines_never_raise_anything_but_invalid_event(raw: bytes) -> None:
    assert_total(raw)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=st.one_of(mutated_lines(), st.sampled_from([*scenario_lines(), *(h.raw for h in STORE_ONLY)])),
       now=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)))
def test_the_recorded_body_made_from_the_submitted_one_is_the_recorded_events_canonical_json(
    raw: bytes, now: datetime
) -> None:
    """The store splices `ingested_at` into the submitted body instead of dumping the event
    again: the result is exactly the canonical JSON of the event as recorded."""
    try:
        ev = parse_event(raw)
    except InvalidEvent:
        assume(False)
        return
    assert ingested_json(ev, canonical_json(ev), now) == canonical_json(ingested(ev, now))


def standard_canonical(data: Any) -> str:
    """The canonical form as the standard library writes it (what `canonical_text` must equal)."""
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


# Any text: every code point, lone surrogates and controls included (the default leaves surrogates out).
ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=12)
DUMPED = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**70), max_value=2**70) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=1000)
@given(data=DUMPED)
def test_the_canonical_text_is_the_standard_librarys_sorted_compact_json(data: Any) -> None:
    """orjson writes it where it can, the standard library the rest: the same text, whatever
    the keys, escapes, non-ASCII or integers (a dump of `model_dump(mode="json")` has no floats)."""
    assert canonical_text(data) == standard_canonical(data)


def test_the_canonical_text_escapes_controls_keeps_non_ascii_and_sorts_by_code_point() -> None:
    data = {"\u00e9": "\x00\x1f\x7f\u2028中\U0001F600", "z": [2**63 - 1, -1], "e": None, "\U0001F600": True}
    assert canonical_text(data) == ('{"e":null,"z":[9223372036854775807,-1],"\u00e9":"\\u0000\\u001f\x7f\u2028中\U0001F600",'
                                    '"\U0001F600":true}')


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=st.one_of(mutated_lines(), st.sampled_from([*scenario_lines(), *(h.raw for h in STORE_ONLY)])))
def test_the_canonical_json_of_any_accepted_event_is_its_sorted_model_dump(raw: bytes) -> None:
    """`canonical_json` is the standard library's sorted compact dump of the event's JSON-mode
    `model_dump` (as before orjson wrote it): hashes and stored bodies do not change."""
    try:
        ev = parse_event(raw)
    except InvalidEvent:
        assume(False)
        return
    assert canonical_json(ev) == standard_canonical(ev.model_dump(mode="json", exclude={"ingested_at"}))


@given(value=st.text(max_size=140))
def test_a_case_id_is_accepted_exactly_when_it_is_1_to_128_identifier_characters(value: str) -> None:
    import re

    assume(value == value.strip())  # leading/trailing whitespace is stripped (pydantic's Unicode rule)
    expected = re.fullmatch(ID_PATTERN, value) is not None and len(value) <= 128
    try:
        ev = parse_event(case("C1") | {"payload": {**case("C1")["payload"], "case_id": value}})
    except InvalidEvent as exc:
        assert not expected and exc.field == "payload.case_id"
    else:
        assert expected and ev.payload.case_id == value


@given(cost=st.decimals(min_value=0, max_value=100_000_000, places=2, allow_nan=False, allow_infinity=False))
def test_any_case_cost_within_limits_is_kept_exactly(cost: Decimal) -> None:
    as_number = line(with_payload(case("C1"), total_cost="__C__")).replace(b'"__C__"', str(cost).encode())
    assert parse_event(as_number).payload.total_cost == cost
    assert parse_event(line(with_payload(case("C1"), total_cost=str(cost)))).payload.total_cost == cost


def test_parse_event_accepts_bytes_str_and_dicts_alike() -> None:
    env = case("C1")
    assert parse_event(line(env)) == parse_event(line(env).decode()) == parse_event(env)
    assert parse_event(bytearray(line(env))) == parse_event(env)


# --------------------------------------------------------------------------- boundaries


def test_the_line_limit_is_exactly_one_mib() -> None:
    valid = line(case("C1"))
    at_limit = valid + b" " * (MAX_LINE_BYTES - len(valid))
    assert len(at_limit) == MAX_LINE_BYTES == 1_048_576
    assert parse_event(at_limit).event_id == "his-H001-C1-r1"
    over = refusal(at_limit + b" ")
    assert over.field == "" and "1,048,577 bytes" in over.reason


def test_nesting_is_refused_beyond_32_levels_even_inside_strings_it_is_not_counted() -> None:
    assert decode_line("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    assert refusal("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)).reason == "JSON nested deeper than 32"
    brackets_in_text = with_payload(withdrawal("C1"), reason="[" * 100 + '\\"{' * 50)
    assert parse_event(line(brackets_in_text)).payload.reason.startswith("[[[")


@pytest.mark.parametrize("field", ["case_id", "hospital_id"])
def test_identifiers_are_128_characters_at_most(field: str) -> None:
    ok, long = "H" * 128, "H" * 129
    source = {"source": f"his:{ok}"} if field == "hospital_id" else {}
    assert getattr(parse_event({**with_payload(case("C1"), **{field: ok}), **source}).payload, field) == ok
    refused = refusal({**with_payload(case("C1"), **{field: long}), **source})
    assert refused.field == f"payload.{field}"


def test_event_ids_are_128_characters_for_senders_and_256_for_the_ledger() -> None:
    assert parse_event(case("C1", event_id="e" * 128)).event_id == "e" * 128
    assert refusal(case("C1", event_id="e" * 129)).field == "event_id"
    verdict_id = "v" * 128
    imposed = parse_event(penalty("C1", event_id=f"penalty:{verdict_id}", verdict_event_id=verdict_id))
    assert imposed.event_id == f"penalty:{verdict_id}"
    assert parse_event(penalty("C1", event_id="p" * 256)).event_id == "p" * 256
    assert refusal(penalty("C1", event_id="p" * 257)).field == "event_id"


def test_codes_may_hold_the_dagger_and_asterisk_identifiers_may_not() -> None:
    ev = parse_event(case("C1", procedure_codes=["A17.0+", "G01*"], diagnosis_codes=["A17.0+G01*"]))
    assert ev.payload.procedure_codes == ["A17.0+", "G01*"]
    assert refusal(case("C1+", event_id="his-H001-C1plus-r1")).field == "payload.case_id"


def test_at_most_100_procedure_and_diagnosis_codes() -> None:
    hundred = [f"P{i}" for i in range(100)]
    assert len(parse_event(case("C1", procedure_codes=hundred, diagnosis_codes=hundred)).payload.procedure_codes) == 100
    assert refusal(case("C1", procedure_codes=[*hundred, "P100"])).field == "payload.procedure_codes"
    assert refusal(case("C1", diagnosis_codes=[*hundred, "P100"])).field == "payload.diagnosis_codes"


def test_free_text_is_512_characters_without_control_characters() -> None:
    assert parse_event(hospital("H001", name="医" * 512)).payload.name == "医" * 512
    assert refusal(hospital("H001", name="医" * 513)).field == "payload.name"
    assert parse_event(withdrawal("C1", reason="重复录入 (entered twice) — 已更正")).payload.reason.startswith("重复")
    for control in ("\u0000", "\u0007", "\u001b", "\u007f", "\u0085", "\u009f"):
        assert refusal(withdrawal("C1", reason=f"a{control}b")).field == "payload.reason", repr(control)


def test_case_money_is_0_to_100_million_yuan_with_2_decimal_places() -> None:
    for ok in ("0", "0.00", "100000000.00", "99999999.99", "1.10", "1.100", "21422.5000"):
        assert parse_event(case("C1", total_cost=ok)).payload.total_cost == Decimal(ok)
    for bad in ("100000000.01", "-0.01", "1.001", "1.005", "1e2", ".5", "NaN", "Infinity", "", "1,000.00"):
        assert refusal(case("C1", total_cost=bad)).field == "payload.total_cost", bad
    assert parse_event(case("C1", total_cost="100.00", personal_paid="100.00")).payload.personal_paid == 100
    assert refusal(case("C1", total_cost="100.00", personal_paid="100.01")).field == "payload.personal_paid"


def test_json_numbers_are_exact_decimals_within_the_same_limits() -> None:
    raw = line(with_payload(case("C1"), total_cost="__C__"))
    assert parse_event(raw.replace(b'"__C__"', b"0.30")).payload.total_cost == Decimal("0.30")
    assert parse_event(raw.replace(b'"__C__"', b"1E+2")).payload.total_cost == 100
    assert refusal(raw.replace(b'"__C__"', b"0.305")).field == "payload.total_cost"
    assert refusal(raw.replace(b'"__C__"', b"1e400")).field == "payload.total_cost"


def test_budgets_and_prepayments_are_above_0_up_to_10_to_the_12_yuan() -> None:
    assert parse_event(budget("1000000000000.00")).payload.amount == 10**12
    assert parse_event(budget("0.01")).payload.amount == Decimal("0.01")
    for bad in ("1000000000000.01", "0", "0.00", "-1", "0.001"):
        assert refusal(budget(bad)).field == "payload.amount", bad
        assert refusal(prepayment(bad)).field == "payload.amount", bad


def test_points_and_multipliers_have_bounds_and_4_decimal_places() -> None:
    def violation(**fields: Any) -> dict[str, Any]:
        return verdict("C1", outcome="violation", violation_type="other", **fields)

    assert parse_event(violation(violating_points="100000.0000", multiplier="100")).payload.multiplier == 100
    assert refusal(violation(violating_points="100000.0001")).field == "payload.violating_points"
    assert refusal(violation(violating_points="1.00001")).field == "payload.violating_points"
    assert refusal(violation(violating_points="1", multiplier="100.01")).field == "payload.multiplier"


def test_revision_is_1_to_10000() -> None:
    assert parse_event(case("C1", revision=1)).payload.revision == 1
    assert parse_event(case("C1", revision=10_000)).payload.revision == 10_000
    for bad in (0, 10_001, -1, True):
        assert refusal(case("C1", revision=bad)).field == "payload.revision", bad
    digits = line(with_payload(case("C1"), revision="__R__")).replace(b'"__R__"', b"7" * 5000)
    assert refusal(digits).field == "payload.revision"


def test_dates_are_2000_01_01_to_2099_12_31_and_discharge_is_not_before_admission() -> None:
    assert parse_event(case("C1", admission_date="2000-01-01", discharge_date="2000-01-01")).payload.discharge_date \
        .isoformat() == "2000-01-01"
    assert parse_event(case("C1", admission_date="2099-12-31", discharge_date="2099-12-31")).payload.admission_date \
        .isoformat() == "2099-12-31"
    assert refusal(case("C1", admission_date="1999-12-31")).field == "payload.admission_date"
    assert refusal(case("C1", admission_date="2020-01-01", discharge_date="2100-01-01", recorded_at=None)).field \
        == "payload.discharge_date"
    refused = refusal(case("C1", admission_date="2020-03-02", discharge_date="2020-03-01"))
    assert (refused.field, refused.reason) == ("payload.discharge_date", "is before admission_date")


def test_timestamps_are_dated_2000_to_2099_as_written_and_carry_a_zone() -> None:
    first = parse_event(case("C1", recorded_at="2000-01-01T00:00:00+08:00"))
    assert first.recorded_at == datetime(2000, 1, 1, tzinfo=BEIJING)
    last = parse_event(case("C1", recorded_at="2099-12-31T23:59:59-08:00"))
    assert last.recorded_at.astimezone(UTC) == datetime(2100, 1, 1, 7, 59, 59, tzinfo=UTC)
    for bad in ("1999-12-31T23:59:59+08:00", "2100-01-01T00:00:00+08:00", "0001-01-01T00:00:00+08:00",
                "9999-12-31T23:59:59-08:00", "2020-03-01T18:00:00", "2020-03-01", 1583056800):
        assert refusal(case("C1", recorded_at=bad)).field == "recorded_at", bad


# --------------------------------------------------------------------------- floats from Python


def test_a_python_float_never_reaches_a_decimal_field() -> None:
    with pytest.raises(ValidationError) as refused:
        BudgetSet(pool="panzhihua", year=2020, amount=0.1 + 0.2)  # type: ignore[arg-type]
    assert refused.value.errors()[0]["loc"] == ("amount",)
    assert BudgetSet(pool="panzhihua", year=2020, amount=Decimal("0.30")).amount == Decimal("0.30")
    assert BudgetSet(pool="panzhihua", year=2020, amount="0.30").amount == Decimal("0.30")  # type: ignore[arg-type]
    assert refusal(budget(0.1 + 0.2)).field == "payload.amount"  # type: ignore[arg-type]
    assert parse_event(line(budget("__A__")).replace(b'"__A__"', b"0.3")).payload.amount == Decimal("0.3")


# --------------------------------------------------------------------------- ingested_at, HistoryBackfilled


def test_ingested_at_is_refused_from_a_sender_and_kept_when_the_store_reads_it_back() -> None:
    sent = {**case("C1"), "ingested_at": "2020-03-01T18:00:00+08:00"}
    assert refusal(sent).field == "ingested_at"
    assert refusal({**case("C1"), "ingested_at": None}).field == "ingested_at"

    at = datetime(2020, 3, 1, 10, tzinfo=UTC)
    recorded = stamped(parse_event(case("C1", recorded_at=None)), at, ingested_at=at + timedelta(seconds=1))
    read_back = ENVELOPES["CaseSubmitted"].model_validate_json(canonical_json(recorded))
    assert (read_back.recorded_at, read_back.ingested_at) == (at, at + timedelta(seconds=1))
    assert read_back == recorded


def test_stamped_keeps_the_senders_recorded_at_and_always_sets_ingested_at() -> None:
    ev = parse_event(case("C1"))
    now = datetime(2020, 3, 5, tzinfo=UTC)
    out = stamped(ev, now, ingested_at=now)
    assert out.recorded_at == datetime(2020, 3, 1, 18, tzinfo=BEIJING) and out.ingested_at == now
    assert stamped(ev, now) is ev  # nothing to stamp: the sender gave recorded_at, no ingest clock given


def test_ingested_at_is_not_content_and_absent_from_the_canonical_form_while_unset() -> None:
    ev = parse_event(case("C1"))
    assert "ingested_at" not in canonical_json(ev)
    later = stamped(ev, datetime(2020, 3, 5, tzinfo=UTC), ingested_at=datetime(2020, 3, 5, tzinfo=UTC))
    assert '"ingested_at":"2020-03-05T00:00:00Z"' in canonical_json(later)
    assert content_hash(later) == content_hash(ev)


def backfilled(**fields: Any) -> dict[str, Any]:
    payload = {"run_by": "operator:panzhihua-mib", "file_sha256": "ab" * 32, "events": 639,
               "recorded_from": "2020-01-01T08:00:00+08:00", "recorded_to": "2021-01-20T09:00:00+08:00", **fields}
    return envelope("HistoryBackfilled", payload, event_id="backfill:" + "ab" * 32, source="system")


def test_history_backfilled_is_a_ledger_written_event_of_the_contract() -> None:
    assert "HistoryBackfilled" in PAYLOADS and "HistoryBackfilled" in ENVELOPES
    assert "HistoryBackfilled" in LEDGER_WRITTEN
    ev = parse_event(backfilled())
    assert (ev.payload.events, ev.payload.recorded_to.year) == (639, 2021)
    assert refusal(backfilled(file_sha256="AB" * 32)).field == "payload.file_sha256"
    assert refusal(backfilled(recorded_to="2019-12-31T00:00:00+08:00")).field == "payload.recorded_to"
    assert refusal(backfilled(events=0)).field == "payload.events"


# --------------------------------------------------------------------------- the exported JSON Schema


def union_schema() -> Draft202012Validator:
    return Draft202012Validator(json.loads((OUT / "ledger-event.schema.json").read_text(encoding="utf-8")))


SCHEMA_REFUSES = [
    "event_id_129_chars", "event_id_sql", "case_id_zero_width_space", "case_id_rtl_override",
    "hospital_id_nul", "hospital_id_cyrillic_lookalike", "procedure_codes_101", "name_513_chars", "reason_nul",
    "total_cost_1e400", "total_cost_over_100_million", "total_cost_3_decimals", "total_cost_exponent_string",
    "prepayment_negative", "prepayment_zero", "budget_over_10_to_12", "revision_10001", "recorded_at_year_1",
    "recorded_at_year_9999",
    "admission_1999_12_31", "source_operator_200_chars", "ingested_at_from_sender_schema",
]


@pytest.mark.parametrize("name", SCHEMA_REFUSES)
def test_the_exported_schema_refuses_hostile_lines_too(name: str) -> None:
    by_name = {x.name: x.raw for x in HOSTILE}
    if name == "ingested_at_from_sender_schema":
        # The schema describes stored envelopes too, so it accepts a well-formed ingested_at;
        # a malformed one it refuses.
        raw = json.dumps({**case("C1"), "ingested_at": "0001-01-01T00:00:00+08:00"}).encode()
    else:
        raw = by_name[name]
    assert list(union_schema().iter_errors(json.loads(raw))), name


def test_the_exported_schema_accepts_every_valid_envelope_the_models_accept() -> None:
    validator = union_schema()
    edges = [backfilled(), case("C1", total_cost=100_000_000, recorded_at="2099-12-31T23:59:59-08:00")]
    for env in VALID_ENVELOPES + edges:
        parse_event(env)
        assert not list(validator.iter_errors(env)), env["event_id"]


def test_the_publisher_reports_every_hostile_line_without_raising() -> None:
    from streams.publish import _validate

    for hostile in PARSE_REFUSED:
        decoded, problem = _validate(hostile.raw)
        assert problem is not None and problem.field == hostile.field, hostile.name
