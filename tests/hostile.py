"""Hostile input lines: each a line a hostile or broken sender could send, and the field it is refused on.

EVENTS.md "Limits on input" and issue 10's probe list. Every line of `HOSTILE` must be
refused with `field` named (`""`: the line as a whole) and dead-lettered; none may crash a
command, lose its batch or leave the store unable to answer.

- `Hostile.store_only`: the line parses (`ledger.events.parse_event` accepts it); only the
  store refuses it, because the refusal needs the store's state or the intake's rules
  (unknown hospital, an event_id already recorded with other content, a `recorded_at` in
  the future, a ledger-written type from outside). Their context is `scenario_lines()`.
- `hostile_lines()`: the raw bytes of every line, in corpus order.
- `scenario_lines()`: a small valid scenario (one pool, two hospitals, the policies, cases,
  a verdict, a prepayment) the store-only lines are refused against.
- `spread(valid, hostile, seed)`: the hostile lines scattered through the valid ones.
- Hypothesis strategies: `mutated_lines()` (a valid envelope with one value replaced by a
  hostile one, anywhere in it), `corrupted_lines()` (bytes of a valid line flipped,
  dropped or repeated), `json_values()` (any JSON value, as text).

Ids of hostile lines start with `hostile-` so they never meet a valid event's id, except
the store-only line that reuses one on purpose.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Callable

from hypothesis import strategies as st

from drg_ledger.policy_files import POLICIES
from tests.factories import (
    DEFAULT_BODIES,
    OPERATOR,
    POOL,
    budget,
    case,
    envelope,
    hospital,
    penalty,
    policy,
    prepayment,
    verdict,
    withdrawal,
)

MIB = 1_048_576


@dataclass(frozen=True)
class Hostile:
    """One hostile line: `raw` bytes, refused on `field` (`""` = the whole line)."""

    name: str
    raw: bytes
    field: str
    store_only: bool = False
    reason: str = ""
    """A fragment the refusal's reason contains (empty: not checked)."""


def _dump(env: dict[str, Any]) -> bytes:
    return json.dumps(env, ensure_ascii=False).encode("utf-8")


def _ascii(env: dict[str, Any]) -> bytes:
    # ensure_ascii writes \uXXXX escapes: how a lone surrogate or a NUL travels in JSON.
    return json.dumps(env).encode("ascii")


def _case(n: str, **kw: Any) -> dict[str, Any]:
    return case(f"hostile-{n}", event_id=f"hostile-case-{n}", **kw)


def _with_payload(env: dict[str, Any], **fields: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(env))
    out["payload"].update(fields)
    return out


def _raw_number(env: dict[str, Any], field: str, literal: str) -> bytes:
    """The envelope with payload[field] written as the bare JSON token `literal` (1e400, NaN, ...)."""
    marker = "__HOSTILE_NUMBER__"
    text = json.dumps(_with_payload(env, **{field: marker}), ensure_ascii=False)
    return text.replace(f'"{marker}"', literal).encode("utf-8")


SHIPPED = POLICIES / f"{POOL}.jsonl"
"""The pool's shipped policy versions: in `scenario_lines()` and in every generated file."""
SHIPPED_CLEARING_RULES = "policy-panzhihua-clearing_rules-2018"


def _other_content(event_id: str) -> dict[str, Any]:
    """The shipped policy version `event_id`, with its content changed: same id, other content."""
    (shipped,) = [e for e in map(json.loads, SHIPPED.read_text(encoding="utf-8").splitlines())
                  if e["event_id"] == event_id]
    return _with_payload(shipped, note="hostile: the same event_id with other content")


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _corpus() -> list[Hostile]:
    c = _case("base")
    h: list[Hostile] = []

    def add(name: str, raw: bytes | dict[str, Any], field: str, **kw: Any) -> None:
        h.append(Hostile(name, raw if isinstance(raw, bytes) else _dump(raw), field, **kw))

    # --- the line as a whole
    big = _with_payload(_case("big"), diagnosis_codes=["X" * 1000] * 1160)
    add("line_over_1_mib", _dump(big), "", reason="bytes, over the limit")
    add("procedure_codes_600k", _dump(_with_payload(_case("600k"), procedure_codes=["04.0200x005"] * 600_000)), "",
        reason="over the limit")
    add("nested_10000_deep", _nested(10_000).encode(), "", reason="nested deeper than 32")
    add("nested_33_deep_inside_an_envelope",
        _dump(_case("deep")).replace(b'"procedure_codes": []', f'"procedure_codes": {_nested(31)}'.encode()),
        "", reason="nested deeper than 32")
    add("not_utf8", b'{"event_id": "hostile-\xff\xfe", "event_type": "CaseSubmitted"}', "", reason="not UTF-8")
    add("utf8_bom", b"\xef\xbb\xbf" + _dump(_case("bom")), "")
    add("truncated_json", _dump(_case("cut"))[:-7], "", reason="malformed JSON")
    add("trailing_garbage", _dump(_case("tail")) + b" x", "", reason="malformed JSON")
    add("top_level_array", b"[1, 2]", "", reason="JSON object")
    add("top_level_string", b'"CaseSubmitted"', "", reason="JSON object")
    add("top_level_null", b"null", "", reason="JSON object")
    add("duplicate_top_level_key",
        _dump(c).replace(b'"event_id": "hostile-case-base"', b'"event_id": "hostile-a", "event_id": "hostile-b"'),
        "event_id", reason="duplicate key")
    add("duplicate_payload_key",
        _dump(c).replace(b'"total_cost": "21422.50"', b'"total_cost": "1.00", "total_cost": "99999.00"'),
        "payload.total_cost", reason="duplicate key")
    add("lone_surrogate_in_case_id", _ascii(c).replace(b'"hostile-base"', b'"hostile-base\\ud800"'),
        "payload.case_id", reason="lone surrogate")
    add("lone_low_surrogate_in_reason",
        _ascii(withdrawal("hostile-w", event_id="hostile-withdrawal-surrogate", reason="entered in error"))
        .replace(b"in error", b"in error \\udc00"), "payload.reason", reason="lone surrogate")

    # --- event_type and event_id
    add("event_type_list", b'{"event_id": "a", "event_type": ["x"]}', "event_type")
    add("event_type_object", b'{"event_id": "hostile-x", "event_type": {"CaseSubmitted": 1}, "payload": {}}',
        "event_type")
    add("event_type_number", b'{"event_id": "hostile-x", "event_type": 7}', "event_type")
    add("event_type_missing", b"{}", "event_type", reason="missing")
    add("unknown_event_type", envelope("CaseDeleted", {"case_id": "C1"}, event_id="hostile-unknown-type"),
        "event_type", reason="unknown event_type")
    add("event_id_number", {**c, "event_id": 123}, "event_id")
    add("event_id_empty", {**c, "event_id": ""}, "event_id")
    add("event_id_129_chars", {**c, "event_id": "h" * 129}, "event_id")
    add("event_id_sql", {**c, "event_id": "hostile'; DROP TABLE stored_events; --"}, "event_id")
    add("schema_version_2", {**c, "schema_version": 2}, "schema_version")

    # --- identifiers: charset and length, no look-alikes
    add("case_id_sql", _with_payload(c, case_id="C1' OR '1'='1"), "payload.case_id")
    add("case_id_zero_width_space", _with_payload(c, case_id="hostile-base\u200b"), "payload.case_id")
    add("case_id_rtl_override", _with_payload(c, case_id="hostile-\u202eesab"), "payload.case_id")
    add("case_id_129_chars", _with_payload(c, case_id="C" * 129), "payload.case_id")
    add("hospital_id_nul", _ascii(_with_payload(c, hospital_id="H001\u0000")), "payload.hospital_id")
    add("hospital_id_cyrillic_lookalike", _with_payload(c, hospital_id="\u041d001"), "payload.hospital_id")
    add("pool_with_space", hospital("H777", pool="pan zhihua", event_id="hostile-reg-space"), "payload.pool")
    add("drg_code_cyrillic", _with_payload(c, drg_code="BJ1\u0406"), "payload.drg_code")
    add("procedure_code_zero_width", _with_payload(c, procedure_codes=["04.0200x005", "39.74\u200b01"]),
        "payload.procedure_codes[1]")
    add("coefficient_hospital_key_lookalike",
        policy("coefficients", {**DEFAULT_BODIES["coefficients"], "hospitals": {"H00\u200b1": "1.05"}},
               event_id="hostile-coefficients-key", version="hostile"),
        "payload.body.hospitals.H00\\u200b1", reason="the key")
    add("related_case_ids_101",
        verdict("hostile-v", outcome="upheld", event_id="hostile-verdict-related",
                related_case_ids=[f"C{i}" for i in range(101)]), "payload.related_case_ids")

    # --- counts
    add("procedure_codes_101", _with_payload(c, procedure_codes=[f"P{i}" for i in range(101)]),
        "payload.procedure_codes")
    add("diagnosis_codes_101", _with_payload(c, diagnosis_codes=[f"D{i}" for i in range(101)]),
        "payload.diagnosis_codes")
    add("catalogue_10001_rows",
        policy("high_tech_catalogue", {"rows": [{"drg_code": "BJ11", "procedure_codes": ["1"], "coef_3a": "1",
                                                 "coef_3b": "1"}] * 10_001},
               event_id="hostile-catalogue-rows", version="hostile"), "payload.body.rows")

    # --- free text
    add("name_513_chars", hospital("H778", name="医" * 513, event_id="hostile-reg-long-name"), "payload.name")
    add("name_bell_control", hospital("H779", name="Hospital\u0007", event_id="hostile-reg-bell"), "payload.name")
    add("reason_nul", _ascii(withdrawal("hostile-w", event_id="hostile-withdrawal-nul", reason="a\u0000b")),
        "payload.reason")
    add("reviewer_c1_control", verdict("hostile-v", event_id="hostile-verdict-c1", reviewer="rev\u0085iewer"),
        "payload.reviewer")
    add("catalogue_source_513_chars",
        policy("high_tech_catalogue", {**DEFAULT_BODIES["high_tech_catalogue"], "source": "s" * 513},
               event_id="hostile-catalogue-source", version="hostile"), "payload.body.source")
    add("source_nul", _ascii({**c, "source": "operator:a\u0000b"}), "source")
    add("source_operator_200_chars", {**c, "source": "operator:" + "o" * 200}, "source")

    # --- money
    add("total_cost_1e400", _raw_number(c, "total_cost", "1e400"), "payload.total_cost")
    add("total_cost_nan_literal", _raw_number(c, "total_cost", "NaN"), "payload.total_cost", reason="finite")
    add("total_cost_infinity_string", _with_payload(c, total_cost="Infinity"), "payload.total_cost")
    add("total_cost_5000_digit_integer", _raw_number(c, "total_cost", "9" * 5000), "payload.total_cost")
    add("total_cost_over_100_million", _with_payload(c, total_cost="100000000.01"), "payload.total_cost")
    add("total_cost_negative", _with_payload(c, total_cost="-0.01"), "payload.total_cost")
    add("total_cost_3_decimals", _with_payload(c, total_cost="123.456"), "payload.total_cost",
        reason="2 decimal places")
    add("total_cost_float_3_decimals", _raw_number(c, "total_cost", "0.30000000000000004"), "payload.total_cost",
        reason="2 decimal places")
    add("total_cost_exponent_string", _with_payload(c, total_cost="1e5"), "payload.total_cost")
    add("total_cost_boolean", _with_payload(c, total_cost=True), "payload.total_cost")
    add("personal_paid_over_total_cost", _with_payload(c, total_cost="100.00", personal_paid="100.01"),
        "payload.personal_paid", reason="exceeds total_cost")
    pre = prepayment(event_id="hostile-prepay")
    add("prepayment_1e400", _raw_number(pre, "amount", "1e400"), "payload.amount")
    add("prepayment_infinity_literal", _raw_number(pre, "amount", "-Infinity"), "payload.amount", reason="finite")
    add("prepayment_zero", _with_payload(pre, amount="0"), "payload.amount")
    add("prepayment_negative", _with_payload(pre, amount="-500.00"), "payload.amount")
    add("prepayment_3_decimals", _with_payload(pre, amount="10.001"), "payload.amount")
    add("budget_over_10_to_12", budget("1000000000000.01", event_id="hostile-budget-big"), "payload.amount")
    add("budget_year_1999", budget(year=1999, event_id="hostile-budget-1999"), "payload.year")
    add("verdict_multiplier_1e400",
        _raw_number(verdict("hostile-v", outcome="violation", violation_type="fraud", event_id="hostile-verdict-k"),
                    "multiplier", "1e400"), "payload.multiplier")
    add("verdict_violating_points_negative",
        verdict("hostile-v", outcome="violation", violation_type="upcoding", violating_points="-10",
                event_id="hostile-verdict-negative"), "payload.violating_points")
    add("coefficient_1e400",
        _raw_number(envelope("CoefficientChanged", {"pool": POOL, "hospital_id": "H001", "effective_from": "2020-01-01",
                                                    "reason": "declared"}, event_id="hostile-coefficient"),
                    "coefficient", "1e400"), "payload.coefficient")
    drg = json.loads(json.dumps(DEFAULT_BODIES["drg_table"]))
    drg["groups"][0]["base_points"] = "__HOSTILE_NUMBER__"
    add("base_points_nan",
        _dump(policy("drg_table", drg, event_id="hostile-drg-nan", version="hostile"))
        .replace(b'"__HOSTILE_NUMBER__"', b"NaN"), "payload.body.groups[0].base_points")

    # --- revision
    add("revision_5000_digits", _raw_number(c, "revision", "1" * 5000), "payload.revision")
    add("revision_0", _with_payload(c, revision=0), "payload.revision")
    add("revision_10001", _with_payload(c, revision=10_001), "payload.revision")
    add("revision_boolean", _with_payload(c, revision=True), "payload.revision")

    # --- dates and timestamps
    add("recorded_at_year_1", {**c, "recorded_at": "0001-01-01T00:00:00+08:00"}, "recorded_at")
    add("recorded_at_year_9999", {**c, "recorded_at": "9999-12-31T23:59:59-08:00"}, "recorded_at")
    add("recorded_at_without_zone", {**c, "recorded_at": "2020-03-01T18:00:00"}, "recorded_at")
    add("recorded_at_unix_seconds", {**c, "recorded_at": 1583056800}, "recorded_at")
    add("admission_1999_12_31", _with_payload(c, admission_date="1999-12-31"), "payload.admission_date")
    add("discharge_2100_01_01", _with_payload(c, discharge_date="2100-01-01"), "payload.discharge_date")
    add("discharge_before_admission", _with_payload(c, admission_date="2020-03-02", discharge_date="2020-03-01"),
        "payload.discharge_date", reason="before admission_date")
    add("paid_on_year_3000", _with_payload(pre, paid_on="3000-01-01"), "payload.paid_on")
    add("effective_from_not_iso", policy("clearing_rules", event_id="hostile-policy-date", version="hostile",
                                         effective_from="01/01/2020"), "payload.effective_from")

    # --- who may say what
    add("ingested_at_from_sender", {**c, "ingested_at": "2020-03-01T18:00:00+08:00"}, "ingested_at",
        reason="written by the ledger")
    add("his_source_for_operator_only_event", budget(event_id="hostile-budget-his", source="his:H001"), "source",
        reason="operator-only")
    add("his_source_for_another_hospital", _case("other", hospital_id="H002", source="his:H001"), "source",
        reason="may only speak for hospital H001")
    add("unknown_payload_field", _with_payload(c, total_kost="1"), "payload.total_kost")

    # --- refused by the store only (they parse): context is scenario_lines()
    add("unknown_hospital", case("hostile-unknown", hospital_id="H404", event_id="hostile-case-unknown-hospital"),
        "payload.hospital_id", store_only=True, reason="unknown hospital")
    add("same_event_id_other_content", _other_content(SHIPPED_CLEARING_RULES), "event_id", store_only=True,
        reason="other content")
    add("recorded_at_in_the_future", {**_case("future"), "recorded_at": "2098-01-01T00:00:00+08:00"}, "recorded_at",
        store_only=True)
    add("ledger_written_type_from_an_operator",
        penalty("C1", source=OPERATOR, event_id="hostile-penalty-operator"), "event_type", store_only=True,
        reason="written by the ledger")
    add("ledger_written_type_claiming_system",
        envelope("HistoryBackfilled", {"run_by": "operator:mallory", "file_sha256": "0" * 64, "events": 1,
                                       "recorded_from": "2020-01-01T00:00:00+08:00",
                                       "recorded_to": "2020-01-02T00:00:00+08:00"},
                 event_id="hostile-backfilled", source="system"), "event_type", store_only=True,
        reason="written by the ledger")
    return h


HOSTILE: list[Hostile] = _corpus()
"""The corpus; names are unique, every line distinct."""

PARSE_REFUSED: list[Hostile] = [x for x in HOSTILE if not x.store_only]
STORE_ONLY: list[Hostile] = [x for x in HOSTILE if x.store_only]


def hostile_lines() -> list[bytes]:
    """The raw bytes of every hostile line, store-only ones included, in corpus order."""
    return [x.raw for x in HOSTILE]


def scenario_lines() -> list[bytes]:
    """A small valid scenario the store-only lines are refused against (load it with backfill=True).

    Pool `panzhihua` with its shipped policy versions (as every generated file holds them, so
    the store-only lines are refused against a generated file too), hospitals H001 (3A) and
    H002 (2A), the 2020 budget, two cases of H001 and one of H002, an upcoding verdict on C1
    and a prepayment.
    """
    shipped = SHIPPED.read_bytes().splitlines()
    envs = [hospital("H001"), hospital("H002", grade="2A"), budget()]
    envs += [case("C1"), case("C2", total_cost="9063.00", drg_code="BR23"),
             case("C3", hospital_id="H002", total_cost="12000.00", drg_code="BR23")]
    envs += [verdict("C1", outcome="violation", violation_type="upcoding", violating_points="10"),
             prepayment("5000.00")]
    return shipped + [_dump(e) for e in envs]


def spread(valid: list[bytes], hostile: list[bytes], seed: int = 0) -> list[bytes]:
    """`hostile` lines scattered through `valid` (whose order is kept), the same for the same seed."""
    rnd = random.Random(seed)
    out = list(valid)
    for line in hostile:
        out.insert(rnd.randint(0, len(out)), line)
    return out


# --------------------------------------------------------------------------- hypothesis

VALID_ENVELOPES: list[dict[str, Any]] = [json.loads(line) for line in scenario_lines()] + [
    policy(component) for component in DEFAULT_BODIES] + [
    withdrawal("C2"),
    verdict("C3", outcome="special_review_approved", unreasonable_cost="100.00"),
    case("C4", personal_paid="100.00", diagnosis_codes=["I10.x00", "E11.900"], bilateral=True,
         secondary_drg_code="GB21", procedure_codes=["04.0200x005"]),
]
"""Valid envelopes (as dicts) the strategies mutate."""

_TOKEN = "__HOSTILE_TOKEN__"

_HOSTILE_TEXT = st.sampled_from([
    "", " ", "\u0000", "a\u0000b", "\u200b", "H001\u200b", "\u202eC1", "\u041d001", "\ufeff", "x" * 129,
    "医" * 513, "'; DROP TABLE stored_events; --", "1e400", "NaN", "Infinity", "-0.001", "0.001",
    "100000000.01", "1000000000000.01", "0001-01-01T00:00:00+08:00", "9999-12-31T23:59:59-08:00",
    "1999-12-31", "2100-01-01", "2020-02-30", "2020-03-01T18:00:00", "his:H002", "system", "operator:",
    "CaseSubmitted", "PenaltyImposed",
])
_HOSTILE_TOKENS = st.sampled_from([
    "1e400", "-1e400", "1e-400", "NaN", "Infinity", "-Infinity", "9" * 5000, "-" + "9" * 4301, "0.30000000000000004",
    "123.456", "-1", "0", "10001", "100000000.01", "true", "null", "[]", "{}", _nested(40), '"\\ud800"',
    '"\\udfff x"', '"a\\u0000b"', "[" + ",".join(['"P"'] * 101) + "]", '{"a": 1, "a": 2}',
])


@st.composite
def mutated_lines(draw: st.DrawFn) -> bytes:
    """A valid envelope with one value (at any depth) or one key replaced by a hostile one, as a line."""
    env = json.loads(json.dumps(draw(st.sampled_from(VALID_ENVELOPES))))
    slots: list[tuple[Any, Any]] = []
    stack: list[Any] = [env]
    while stack:
        node = stack.pop()
        items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        for k, v in items:
            slots.append((node, k))
            if isinstance(v, (dict, list)):
                stack.append(v)
    node, key = draw(st.sampled_from(slots))
    how = draw(st.sampled_from(["token", "text", "drop", "rename", "wrap"]))
    if how == "token":
        node[key] = _TOKEN
        token = draw(_HOSTILE_TOKENS)
    else:
        token = None
        if how == "text":
            node[key] = draw(_HOSTILE_TEXT)
        elif how == "drop":
            del node[key]
        elif how == "wrap":
            node[key] = [node[key]] if draw(st.booleans()) else {"value": node[key]}
        elif isinstance(node, dict):
            node[draw(_HOSTILE_TEXT)] = node.pop(key)
    text = json.dumps(env, ensure_ascii=draw(st.booleans()))
    if token is not None:
        text = text.replace(f'"{_TOKEN}"', token)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def corrupted_lines(draw: st.DrawFn) -> bytes:
    """A valid line with a few bytes flipped, dropped, duplicated or inserted."""
    data = bytearray(_dump(draw(st.sampled_from(VALID_ENVELOPES))))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        op: Callable[[], None] = draw(st.sampled_from([
            lambda: data.__setitem__(i, draw(st.integers(0, 255))),
            lambda: data.__delitem__(i),
            lambda: data.__setitem__(slice(i, i), data[i : i + draw(st.integers(1, 20))]),
            lambda: data.__setitem__(slice(i, i), draw(st.binary(min_size=1, max_size=8))),
        ]))
        op()
        if not data:
            data = bytearray(b"{")
    return bytes(data)


def json_values() -> st.SearchStrategy[bytes]:
    """Any JSON value (objects with envelope-like keys among them), as a line."""
    keys = st.sampled_from(["event_id", "event_type", "source", "payload", "recorded_at", "ingested_at",
                            "schema_version", "case_id", "total_cost"]) | st.text(max_size=8)
    scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
               | st.text(max_size=20) | st.sampled_from(["CaseSubmitted", "HospitalRegistered", "BudgetSet"]))
    values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(keys, kids, max_size=5),
                          max_leaves=30)
    return values.map(lambda v: json.dumps(v).encode("utf-8"))
