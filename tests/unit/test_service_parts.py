"""The service's pure parts: the token file, the body splitter, moments as the CLI reads them,
and the `token` and `serve` commands' refusals."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, time, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from drg_ledger.cli import app
from drg_ledger.moments import CHINA, BadMoment, parse_day, parse_moment
from drg_ledger.service.app import split_body
from drg_ledger.service.auth import Principal, TokenBook, TokenFileError, add_token, hash_token

runner = CliRunner()


def flat(text: str) -> str:
    """The CLI's message with rich's line wrapping undone."""
    return " ".join(text.split())


def test_a_token_file_maps_hashed_tokens_to_roles(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    op = add_token(path, "bureau-ops", "operator")
    his = add_token(path, "H001-his", "his:H001")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert op not in text and his not in text and hash_token(op) in text  # only hashes are kept
    book = TokenBook.load(path)
    assert book.lookup(op) == Principal("bureau-ops", "operator")
    assert book.lookup(his) == Principal("H001-his", "his:H001") and book.lookup(his).hospital_id == "H001"
    assert book.lookup("drgl_not-issued") is None and len(book) == 2
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # SHA-256("abc")


@pytest.mark.parametrize(("content", "field"), [
    ({"version": 2, "tokens": []}, "version"),
    ({"version": 1}, "tokens"),
    ({"version": 1, "tokens": [], "extra": 1}, "extra"),
    ({"version": 1, "tokens": ["x"]}, "tokens[0]"),
    ({"version": 1, "tokens": [{"name": "a", "role": "admin", "sha256": "0" * 64}]}, "tokens[0].role"),
    ({"version": 1, "tokens": [{"name": "a", "role": "his:", "sha256": "0" * 64}]}, "tokens[0].role"),
    ({"version": 1, "tokens": [{"name": "a", "role": "auditor", "sha256": "ABC"}]}, "tokens[0].sha256"),
    ({"version": 1, "tokens": [{"name": "a b", "role": "auditor", "sha256": "0" * 64}]}, "tokens[0].name"),
    ({"version": 1, "tokens": [{"name": "a", "role": "auditor", "sha256": "0" * 64, "token": "x"}]},
     "tokens[0].token"),
    ({"version": 1, "tokens": [{"name": "a", "role": "auditor", "sha256": "0" * 64},
                               {"name": "a", "role": "operator", "sha256": "1" * 64}]}, "tokens[1].name"),
    ({"version": 1, "tokens": [{"name": "a", "role": "auditor", "sha256": "0" * 64},
                               {"name": "b", "role": "operator", "sha256": "0" * 64}]}, "tokens[1].sha256"),
])
def test_a_bad_token_file_is_refused_whole_naming_the_field(tmp_path: Path, content: object, field: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(content))
    with pytest.raises(TokenFileError) as caught:
        TokenBook.load(path)
    assert caught.value.field == field


def test_the_token_command_prints_a_token_once_and_refuses_a_bad_role(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    made = runner.invoke(app, ["token", "--tokens", str(path), "--role", "his:H001", "--name", "h1", "--json"])
    assert made.exit_code == 0, made.output
    out = json.loads(made.stdout)
    assert TokenBook.load(path).lookup(out["token"]) == Principal("h1", "his:H001")
    bad = runner.invoke(app, ["token", "--tokens", str(path), "--role", "superuser", "--name", "x"])
    assert bad.exit_code == 2 and "tokens[1].role" in flat(bad.output)
    again = runner.invoke(app, ["token", "--tokens", str(path), "--role", "auditor", "--name", "h1"])
    assert again.exit_code == 2 and "appears twice" in flat(again.output)
    assert len(json.loads(path.read_text())["tokens"]) == 1  # nothing written by a refusal


def test_serve_refuses_a_bad_token_file_before_listening(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("{not json")
    result = runner.invoke(app, ["serve", "--tokens", str(path), "--database-url", f"sqlite:///{tmp_path / 'x.db'}"])
    assert result.exit_code == 2 and "is not JSON" in flat(result.output)


def test_a_json_array_is_split_into_the_exact_bytes_of_each_element() -> None:
    body = b'[ {"a": 1.10, "b": "\xe6\x94\x80"} ,\n{"c": [1, {"d": 2}]}, 7 ]'
    lines, values, is_array = split_body(body)
    assert is_array and lines == [b'{"a": 1.10, "b": "\xe6\x94\x80"}', b'{"c": [1, {"d": 2}]}', b"7"]
    assert values[0]["b"] == "攀" and values[2] == 7
    assert split_body(b'{"x": 1}') == ([b'{"x": 1}'], [{"x": 1}], False)
    assert split_body(b"[1, 2") == ([b"[1, 2"], [None], False)  # not JSON: one line, refused by ingest
    assert split_body(b"[1] trailing") == ([b"[1] trailing"], [None], False)
    assert split_body(b"\xff\xfe") == ([b"\xff\xfe"], [None], False)
    assert split_body(b"[ ]") == ([], [], True)
    deep = b"[" * 100_000 + b"]" * 100_000
    assert split_body(deep) == ([deep], [None], False)


@given(st.lists(st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5),
                                                                 st.decimals(allow_nan=False, allow_infinity=False,
                                                                             places=2).map(str)),
                                max_size=3), min_size=1, max_size=8))
def test_splitting_an_array_gives_back_every_element(elements: list[dict[str, object]]) -> None:
    encoded = [json.dumps(e, ensure_ascii=False).encode("utf-8") for e in elements]
    lines, values, is_array = split_body(b"[" + b", ".join(encoded) + b"]")
    assert is_array and lines == encoded and values == elements


def test_moments_read_as_the_cli_reads_them() -> None:
    assert parse_moment("2021-05-11") == datetime.combine(datetime(2021, 5, 11).date(), time.max, CHINA)
    assert parse_moment("2021-05-11T10:00:00") == datetime(2021, 5, 11, 10, tzinfo=CHINA)
    assert parse_moment("2021-05-11T02:00:00Z") == datetime(2021, 5, 11, 10, tzinfo=CHINA)
    assert parse_moment("2021-05-11T10:00:00+00:00").utcoffset() == timedelta(0)
    assert parse_moment(None) is None
    with pytest.raises(BadMoment) as caught:
        parse_moment("yesterday", "known_at")
    assert caught.value.field == "known_at"
    assert parse_day("2020-06-30").isoformat() == "2020-06-30"
    with pytest.raises(BadMoment):
        parse_day("2020-6-30", "as_of")
    assert CHINA == timezone(timedelta(hours=8))
