"""Who is calling: bearer tokens mapped to roles by a token file that stores only their hashes.

Roles (issue 13, EVENTS.md "Envelope" `source`):
- `operator`: submits any event and records clearings; reads everything.
- `auditor`: reads everything, writes nothing.
- `his:<hospital_id>`: submits only its own hospital's case events, reads only its own hospital.

The token file is JSON (`drg-ledger token` writes it):

    {"version": 1,
     "tokens": [{"name": "bureau-operations", "role": "operator", "sha256": "<64 hex digits>"},
                {"name": "H001-his", "role": "his:H001", "sha256": "..."}]}

`sha256` is the SHA-256 of the token's UTF-8 bytes, in hex. Tokens are random (32 bytes,
URL-safe base64, prefixed `drgl_`): with that much entropy an unsalted fast hash is what
GitHub and PyPI use for API tokens; the file gives away no token, and a lookup costs one hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLE_RE = re.compile(r"^(operator|auditor|his:[A-Za-z0-9._:/-]{1,128})$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
NAME_RE = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")
TOKEN_PREFIX = "drgl_"
FILE_VERSION = 1


class TokenFileError(ValueError):
    """The token file cannot be used; `field` names the entry and field (`tokens[2].role`)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


@dataclass(frozen=True, slots=True)
class Principal:
    """A caller the token file knows: the entry's `name` and its `role`."""

    name: str
    role: str

    @property
    def hospital_id(self) -> str | None:
        """The hospital of an `his:<hospital_id>` role, else None."""
        return self.role[4:] if self.role.startswith("his:") else None

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"

    @property
    def reads_everything(self) -> bool:
        """Operators and auditors read every pool and hospital; an HIS only its own."""
        return self.role in ("operator", "auditor")


def hash_token(token: str) -> str:
    """The SHA-256 of a token, in hex, as the token file stores it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random bearer token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class TokenBook:
    """The token file, loaded: hash -> principal."""

    by_hash: dict[str, Principal]
    path: str | None = None

    @classmethod
    def empty(cls) -> TokenBook:
        return cls({})

    @classmethod
    def load(cls, path: str | Path) -> TokenBook:
        """Reads and checks a token file; a bad file is refused whole, naming the field."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenFileError("", f"cannot read token file {path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise TokenFileError("", f"token file {path} is not JSON: {exc}") from None
        return cls(_entries(data), str(path))

    def lookup(self, token: str) -> Principal | None:
        """The principal of `token`, or None when the file does not list it."""
        # Looked up by hash: what the lookup's timing could reveal is the hash, not the token.
        return self.by_hash.get(hash_token(token))

    def __len__(self) -> int:
        return len(self.by_hash)


def _entries(data: Any) -> dict[str, Principal]:
    if not isinstance(data, dict):
        raise TokenFileError("", "the token file is a JSON object {\"version\": 1, \"tokens\": [...]}")
    if data.get("version") != FILE_VERSION:
        raise TokenFileError("version", f"must be {FILE_VERSION}")
    tokens = data.get("tokens")
    if not isinstance(tokens, list):
        raise TokenFileError("tokens", "must be a list of {name, role, sha256}")
    unknown = set(data) - {"version", "tokens"}
    if unknown:
        raise TokenFileError(sorted(unknown)[0], "unknown field")
    out: dict[str, Principal] = {}
    names: set[str] = set()
    for i, entry in enumerate(tokens):
        where = f"tokens[{i}]"
        if not isinstance(entry, dict):
            raise TokenFileError(where, "must be an object {name, role, sha256}")
        extra = set(entry) - {"name", "role", "sha256"}
        if extra:
            raise TokenFileError(f"{where}.{sorted(extra)[0]}", "unknown field")
        name, role, digest = entry.get("name"), entry.get("role"), entry.get("sha256")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise TokenFileError(f"{where}.name", "must be 1-128 characters of A-Z a-z 0-9 . _ : / -")
        if name in names:
            raise TokenFileError(f"{where}.name", f"{name!r} appears twice")
        if not isinstance(role, str) or not ROLE_RE.match(role):
            raise TokenFileError(f"{where}.role", "must be operator, auditor or his:<hospital_id>")
        if not isinstance(digest, str) or not HEX64.match(digest):
            raise TokenFileError(f"{where}.sha256", "must be the token's SHA-256 in lower-case hex (64 digits)")
        if digest in out:
            raise TokenFileError(f"{where}.sha256", "the same token is listed twice")
        names.add(name)
        out[digest] = Principal(name, role)
    return out


def add_token(path: str | Path, name: str, role: str) -> str:
    """Creates a token for `role`, adds its hash to the token file (created, mode 0600, when
    missing) and returns the token: the only time it is ever shown."""
    path = Path(path)
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        _entries(data)  # refuse to extend a broken file
    else:
        data = {"version": FILE_VERSION, "tokens": []}
    token = new_token()
    data["tokens"].append({"name": name, "role": role, "sha256": hash_token(token)})
    _entries(data)  # the new entry obeys the same rules
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=False, indent=2)
        fh.write("\n")
    os.replace(tmp, path)
    return token
