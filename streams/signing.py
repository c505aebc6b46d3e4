"""Signed producers: HMAC-SHA256 over the message value, per-principal keys (issue 12).

A HIS system signs each message it publishes with its hospital's key; an operator's tools
sign with an operator key. The signature travels in two Kafka headers:

- `drg-key-id`: the id of the key used (ASCII);
- `drg-signature`: hex HMAC-SHA256 of the message value (the exact bytes) under that key.

Key file (JSON, kept as a secret; the worker and each publisher get the keys they need):

    {"keys": [
      {"key_id": "H001-2026-01", "principal": "his:H001",      "secret": "<64+ hex digits>"},
      {"key_id": "H001-2026-07", "principal": "his:H001",      "secret": "<64+ hex digits>"},
      {"key_id": "ops-2026",     "principal": "operator:*",    "secret": "<64+ hex digits>"}
    ]}

`principal` is the `source` a key may sign for: `his:<hospital_id>`, `operator:<name>`, or
`operator:*` (any operator). At most two keys per principal are valid at once (rotation:
add the new key, move the publishers to it, remove the old one). A publisher signs with the
last key listed for the event's source.

`check` refuses (codes, STYLE.md 10): `unsigned` (no or malformed headers), `unknown_key`,
`bad_signature`, `wrong_signer` (a key of hospital A on an event whose source or
`payload.hospital_id` is hospital B, or a HIS key on an operator's event). A value that does
not parse passes the signature check when its signature is good: the ledger's own
validation then refuses it naming the field. The same check will guard the HTTP intake.

`topic_check` is the same rule for the broker's own proof of who wrote a message: a
per-HIS topic (`<prefix>.his.<hospital_id>`, streams/topics.py) that only that HIS's SASL
principal may write (deploy/README.md "Who may write") carries that hospital's events only;
anything else on it is refused `wrong_topic`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

KEY_ID_HEADER = "drg-key-id"
SIGNATURE_HEADER = "drg-signature"
KEY_FILE_ENV = "DRG_LEDGER_KEY_FILE"
MAX_KEYS_PER_PRINCIPAL = 2
MIN_SECRET_BYTES = 32

Headers = Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None


class KeyFileError(ValueError):
    """The key file is not as documented; the message names the entry and field."""


class SignatureRefusal(str, Enum):
    UNSIGNED = "unsigned"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    WRONG_SIGNER = "wrong_signer"
    WRONG_TOPIC = "wrong_topic"


@dataclass(frozen=True)
class Refusal:
    """Why a message's signature is refused: a code, the field, a sentence."""

    code: SignatureRefusal
    field: str
    reason: str
    event_id: str | None = None


@dataclass(frozen=True)
class Key:
    key_id: str
    principal: str
    secret: bytes

    def may_sign(self, source: str, hospital_id: str | None) -> bool:
        return may_speak_for(self.principal, source, hospital_id)


def may_speak_for(principal: str, source: str, hospital_id: str | None) -> bool:
    """A HIS principal speaks for its own hospital's events only; an operator principal
    for operators' events (`operator:*`: any operator)."""
    if principal == "operator:*":
        return source.startswith("operator:")
    if source != principal:
        return False
    if principal.startswith("his:"):
        return hospital_id is None or hospital_id == principal.removeprefix("his:")
    return True


def topic_check(value: bytes, principal: str, topic: str) -> Refusal | None:
    """Why a message on `topic`, which only `principal` may write, is refused (None: it is
    an event `principal` may speak for, or not an event at all: the ledger refuses that)."""
    event_id, source, hospital_id = _claims(value)
    if source is None or may_speak_for(principal, source, hospital_id):
        return None
    whose = f"source {source!r}" + (f", hospital {hospital_id!r}" if hospital_id else "")
    return Refusal(SignatureRefusal.WRONG_TOPIC, "source",
                   f"wrong_topic: topic {topic} takes the events of {principal} only, not an event of {whose}", event_id)


class Keyring:
    """The keys of a key file, by id."""

    def __init__(self, keys: Iterable[Key]) -> None:
        self.keys: dict[str, Key] = {}
        per_principal: dict[str, int] = {}
        for k in keys:
            if k.key_id in self.keys:
                raise KeyFileError(f"key_id {k.key_id!r} appears twice")
            per_principal[k.principal] = per_principal.get(k.principal, 0) + 1
            if per_principal[k.principal] > MAX_KEYS_PER_PRINCIPAL:
                raise KeyFileError(f"principal {k.principal!r} has more than {MAX_KEYS_PER_PRINCIPAL} keys "
                                   "(two are valid at once, for rotation)")
            self.keys[k.key_id] = k

    @classmethod
    def load(cls, path: str | Path) -> Keyring:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise KeyFileError(f"{path}: cannot be read as JSON: {exc}") from None
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not entries:
            raise KeyFileError(f"{path}: expected {{\"keys\": [...]}} with at least one key")
        keys = []
        for i, e in enumerate(entries):
            where = f"{path}: keys[{i}]"
            if not isinstance(e, dict):
                raise KeyFileError(f"{where}: not an object")
            key_id, principal, secret = e.get("key_id"), e.get("principal"), e.get("secret")
            if not isinstance(key_id, str) or not 1 <= len(key_id) <= 128 or not key_id.isascii():
                raise KeyFileError(f"{where}.key_id: 1-128 ASCII characters")
            if not isinstance(principal, str) or not principal.startswith(("his:", "operator:")):
                raise KeyFileError(f"{where}.principal: his:<hospital_id>, operator:<name> or operator:*")
            try:
                raw = bytes.fromhex(secret) if isinstance(secret, str) else b""
            except ValueError:
                raw = b""
            if len(raw) < MIN_SECRET_BYTES:
                raise KeyFileError(f"{where}.secret: at least {MIN_SECRET_BYTES} bytes as hex "
                                   "(`openssl rand -hex 32`)")
            keys.append(Key(key_id, principal, raw))
        return cls(keys)

    def key_for(self, source: str, hospital_id: str | None = None) -> Key | None:
        """The key a publisher signs `source`'s events with: the last listed that may sign them."""
        found = [k for k in self.keys.values() if k.may_sign(source, hospital_id)]
        exact = [k for k in found if k.principal == source]
        return (exact or found or [None])[-1]

    def sign(self, value: bytes, source: str | None, hospital_id: str | None = None) -> list[tuple[str, bytes]]:
        """The headers carrying the signature of `value` for `source` (none when no key fits)."""
        key = self.key_for(source, hospital_id) if source else None
        if key is None:
            return []
        return signature_headers(value, key)

    def check(self, value: bytes, headers: Headers) -> Refusal | None:
        """Why the message is refused, or None when its signature is good and its signer may
        sign it (module docstring)."""
        found = _headers(headers)
        key_id, signature = found.get(KEY_ID_HEADER), found.get(SIGNATURE_HEADER)
        event_id, source, hospital_id = _claims(value)
        if not key_id or not signature:
            return Refusal(SignatureRefusal.UNSIGNED, f"headers.{SIGNATURE_HEADER}",
                           f"unsigned: the message has no {KEY_ID_HEADER} and {SIGNATURE_HEADER} headers", event_id)
        try:
            kid = key_id.decode("ascii")
            sig = signature.decode("ascii")
        except UnicodeDecodeError:
            return Refusal(SignatureRefusal.UNSIGNED, f"headers.{SIGNATURE_HEADER}",
                           "unsigned: the signature headers are not ASCII", event_id)
        key = self.keys.get(kid)
        if key is None:
            return Refusal(SignatureRefusal.UNKNOWN_KEY, f"headers.{KEY_ID_HEADER}",
                           f"unknown_key: no key {kid[:128]!r} in the ledger's key file", event_id)
        if not hmac.compare_digest(sig, mac(key.secret, value)):
            return Refusal(SignatureRefusal.BAD_SIGNATURE, f"headers.{SIGNATURE_HEADER}",
                           f"bad_signature: the value's HMAC-SHA256 under key {kid!r} differs", event_id)
        if source is not None and not key.may_sign(source, hospital_id):
            whose = f"source {source!r}" + (f", hospital {hospital_id!r}" if hospital_id else "")
            return Refusal(SignatureRefusal.WRONG_SIGNER, "source",
                           f"wrong_signer: key {kid!r} of {key.principal} may not sign an event of {whose}", event_id)
        return None


def mac(secret: bytes, value: bytes) -> str:
    """Hex HMAC-SHA256 of `value`."""
    return hmac.new(secret, value, hashlib.sha256).hexdigest()


def signature_headers(value: bytes, key: Key) -> list[tuple[str, bytes]]:
    return [(KEY_ID_HEADER, key.key_id.encode("ascii")), (SIGNATURE_HEADER, mac(key.secret, value).encode("ascii"))]


def _headers(headers: Headers) -> dict[str, bytes]:
    if not headers:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, bytes] = {}
    for k, v in items:
        name = k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)
        out[name.lower()] = bytes(v) if v is not None else b""
    return out


def _claims(value: bytes) -> tuple[str | None, str | None, str | None]:
    """(event_id, source, payload.hospital_id) as the value claims them, when it parses."""
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, None, None
    if not isinstance(obj, dict):
        return None, None, None
    payload = obj.get("payload")
    hospital = payload.get("hospital_id") if isinstance(payload, dict) else None

    def text(v: Any) -> str | None:
        return v if isinstance(v, str) else None

    source = obj.get("source")
    # A source that is not a string is "claimed" as its repr, so no key may sign it.
    claimed = text(source) if source is None or isinstance(source, str) else repr(source)
    return text(obj.get("event_id")), claimed, text(hospital) if hospital is not None else None


def load_keyring(path: str | Path | None) -> Keyring | None:
    """The keyring of `path` (None: signatures not required)."""
    return None if not path else Keyring.load(path)
