"""Signed producers (issue 12): HMAC-SHA256 over the value, per-principal keys, rotation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.signing import (
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    Key,
    KeyFileError,
    Keyring,
    SignatureRefusal,
    mac,
    signature_headers,
)

H001_OLD = Key("H001-2026-01", "his:H001", bytes(range(32)))
H001_NEW = Key("H001-2026-07", "his:H001", bytes(range(1, 33)))
H002 = Key("H002-2026-01", "his:H002", bytes(range(2, 34)))
OPS = Key("ops-2026", "operator:*", bytes(range(3, 35)))
RING = Keyring([H001_OLD, H001_NEW, H002, OPS])


def case(hospital: str = "H001", source: str | None = None) -> bytes:
    return json.dumps({"event_id": f"his-{hospital}-C1-r1", "event_type": "CaseSubmitted", "schema_version": 1,
                       "source": source or f"his:{hospital}", "payload": {"hospital_id": hospital}}).encode()


def budget() -> bytes:
    return json.dumps({"event_id": "b1", "event_type": "BudgetSet", "source": "operator:finance",
                       "payload": {"pool": "P"}}).encode()


def test_the_signature_is_the_hex_hmac_sha256_of_the_value() -> None:
    # RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
    assert mac(b"Jefe", b"what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    headers = dict(signature_headers(b"v", H002))
    assert headers == {KEY_ID_HEADER: b"H002-2026-01", SIGNATURE_HEADER: mac(H002.secret, b"v").encode()}


def test_both_keys_of_a_hospital_are_valid_during_rotation_and_publishers_sign_with_the_newest() -> None:
    v = case()
    assert RING.check(v, signature_headers(v, H001_OLD)) is None
    assert RING.check(v, signature_headers(v, H001_NEW)) is None
    assert dict(RING.sign(v, "his:H001", "H001"))[KEY_ID_HEADER] == b"H001-2026-07"


def test_operator_events_are_signed_with_operator_keys() -> None:
    v = budget()
    assert RING.check(v, RING.sign(v, "operator:finance")) is None
    refused = RING.check(v, signature_headers(v, H001_NEW))
    assert refused is not None and refused.code is SignatureRefusal.WRONG_SIGNER


@pytest.mark.parametrize(
    ("value", "headers", "code", "field"),
    [
        (case(), [], SignatureRefusal.UNSIGNED, f"headers.{SIGNATURE_HEADER}"),
        (case(), [(KEY_ID_HEADER, b"H001-2026-07")], SignatureRefusal.UNSIGNED, f"headers.{SIGNATURE_HEADER}"),
        (case(), signature_headers(case(), Key("H001-stolen", "his:H001", bytes(32))), SignatureRefusal.UNKNOWN_KEY,
         f"headers.{KEY_ID_HEADER}"),
        (case(), signature_headers(case("H002"), H001_NEW), SignatureRefusal.BAD_SIGNATURE,
         f"headers.{SIGNATURE_HEADER}"),
        # Hospital A's key on hospital B's event: by source, and by payload.hospital_id.
        (case("H002"), signature_headers(case("H002"), H001_NEW), SignatureRefusal.WRONG_SIGNER, "source"),
        (case("H002", source="his:H001"), signature_headers(case("H002", source="his:H001"), H001_NEW),
         SignatureRefusal.WRONG_SIGNER, "source"),
    ],
    ids=["unsigned", "no-signature", "unknown-key", "bad-signature", "other-hospital", "other-hospital-payload"],
)
def test_refusals_name_their_code_and_field(value: bytes, headers: list[tuple[str, bytes]], code: SignatureRefusal,
                                            field: str) -> None:
    refused = RING.check(value, headers)
    assert refused is not None
    assert (refused.code, refused.field) == (code, field)
    assert refused.reason.startswith(code.value)


@given(value=st.binary(min_size=1, max_size=300), at=st.integers(min_value=0), flip=st.integers(1, 255))
def test_any_changed_byte_breaks_the_signature(value: bytes, at: int, flip: int) -> None:
    headers = signature_headers(value, OPS)
    i = at % len(value)
    tampered = value[:i] + bytes([value[i] ^ flip]) + value[i + 1:]
    assert RING.check(value, headers) is None or RING.check(value, headers).code is SignatureRefusal.WRONG_SIGNER
    refused = RING.check(tampered, headers)
    assert refused is not None and refused.code is SignatureRefusal.BAD_SIGNATURE


def _file(tmp_path: Path, keys: list[dict[str, str]]) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": keys}), encoding="utf-8")
    return path


def test_a_key_file_loads_and_bad_ones_are_refused_naming_the_entry(tmp_path: Path) -> None:
    good = {"key_id": "k1", "principal": "his:H001", "secret": "ab" * 32}
    ring = Keyring.load(_file(tmp_path, [good]))
    assert ring.keys["k1"].secret == bytes.fromhex("ab" * 32)
    with pytest.raises(KeyFileError, match=r"keys\[0\]\.secret"):
        Keyring.load(_file(tmp_path, [{**good, "secret": "ab" * 8}]))
    with pytest.raises(KeyFileError, match=r"keys\[0\]\.principal"):
        Keyring.load(_file(tmp_path, [{**good, "principal": "system"}]))
    with pytest.raises(KeyFileError, match="more than 2 keys"):
        Keyring.load(_file(tmp_path, [{**good, "key_id": f"k{i}"} for i in range(3)]))
    with pytest.raises(KeyFileError, match="twice"):
        Keyring.load(_file(tmp_path, [good, good]))
