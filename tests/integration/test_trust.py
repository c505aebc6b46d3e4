"""Issue 12, hash chain and immutability: on SQLite and on the real PostgreSQL.

A database owner can always lift the triggers and rewrite rows; these tests do exactly that
behind the ledger's back and watch `verify` (and `rebuild`) name what was touched.
"""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import psycopg
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from drg_ledger.cli import app
from drg_ledger.policy_files import POLICIES
from ledger.events import parse_event
from projections.chain import GENESIS, BrokenEntry, content_hash, link
from projections.store import LedgerStore, sqlite_path
from tests import factories as f
from tests.factories import lines
from tests.conftest import _libpq

runner = CliRunner()


def run(url: str, *args: str) -> Any:
    return runner.invoke(app, [*args, "--database-url", url, "--json"])


def data(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def story() -> list[dict[str, Any]]:
    return [
        f.hospital("H001", grade="3A"),
        f.hospital("H002", grade="2A"),
        f.budget("100000", year=2020),
        f.case("C1", hospital_id="H001", total_cost="21422.50", personal_paid="2000", procedure_codes=["04.0200x005"]),
        f.case("C2", hospital_id="H002", total_cost="8426.50", drg_code="ES23", personal_paid="1000",
               discharge_date="2020-08-01"),
        f.verdict("C1", outcome="violation", violation_type="upcoding", violating_points="20"),
    ]


@pytest.fixture
def loaded(database_url: str, tmp_path: Path) -> str:
    path = tmp_path / "story.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in story()), encoding="utf-8")
    assert data(run(database_url, "ingest", "--backfill", str(POLICIES / "panzhihua.jsonl")))["accepted"] == 7
    assert data(run(database_url, "ingest", "--backfill", str(path)))["accepted"] == 6
    return database_url


# --------------------------------------------------------------------------- an owner's hands


def _names(url: str) -> tuple[str, str, str]:
    """(journal table, chain table, position column) of the store at `url`."""
    if url.startswith("sqlite"):
        return "stored_events", "stored_events_chain", "rowid"
    return "journal_events", "journal_events_chain", "notification_id"


@contextmanager
def owner(url: str) -> Iterator[Any]:
    """A connection as the database owner, triggers lifted (as an owner could), committed at the end."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(sqlite_path(url))
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        try:
            yield conn
            conn.commit()
        finally:
            conn.close()
        return
    base, _, query = url.partition("?")
    schema = unquote(query).split("search_path=", 1)[1]
    with psycopg.connect(_libpq(base), autocommit=False) as conn:
        conn.execute(f"SET search_path = {schema}")
        conn.execute("SET session_replication_role = replica")  # superuser: user triggers do not fire
        yield conn


def _entry(conn: Any, url: str, event_id: str) -> tuple[int, dict[str, Any]]:
    events, _, pos = _names(url)
    rows = conn.execute(f"SELECT {pos}, state FROM {events}").fetchall()
    for position, state in rows:
        d = json.loads(bytes(state))
        if d["event_id"] == event_id:
            return int(position), d
    raise AssertionError(f"{event_id} not journalled")


def _set_state(conn: Any, url: str, position: int, state: dict[str, Any]) -> None:
    events, _, pos = _names(url)
    mark = "?" if url.startswith("sqlite") else "%s"
    conn.execute(f"UPDATE {events} SET state = {mark} WHERE {pos} = {mark}", (json.dumps(state).encode(), position))


def _alter_cost(url: str, event_id: str, cost: str) -> int:
    with owner(url) as conn:
        position, state = _entry(conn, url, event_id)
        envelope = json.loads(state["envelope"])
        envelope["payload"]["total_cost"] = cost
        state["envelope"] = json.dumps(envelope)
        _set_state(conn, url, position, state)
    return position


def _verify(url: str, *extra: str) -> Any:
    return run(url, "verify", *extra)


def _findings(result: Any) -> dict[str, Any]:
    assert result.exit_code == 1, result.output
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- the chain


def test_every_entry_is_chained_in_journal_order_and_an_untouched_store_verifies(loaded: str) -> None:
    with LedgerStore(loaded) as store:
        _, chain, _ = _names(loaded)
        with store.engine.connect() as conn:
            rows = conn.execute(text(f"SELECT position, content_hash, chain_hash FROM {chain} ORDER BY position")).all()
        notifications = store.journal.recorder.select_notifications(1, 1000)
    assert [r[0] for r in rows] == [n.id for n in notifications]
    previous = GENESIS
    for (position, h, c), n in zip(rows, notifications, strict=True):
        assert h.strip() == content_hash(n.topic, n.state)
        previous = link(previous, h.strip())
        assert c.strip() == previous
    report = data(_verify(loaded))
    assert report["ok"] and report["entries"] == len(rows) >= 13  # 7 policies + 6 story + backfills + penalty
    assert report["head_digest"] == f"{rows[-1][0]}:{previous}"
    assert data(run(loaded, "digest"))["digest"] == report["head_digest"]


def test_an_entry_altered_behind_the_ledgers_back_is_named_and_never_copied(loaded: str) -> None:
    before = data(run(loaded, "clear", "--pool", "panzhihua", "--year", "2020"))
    position = _alter_cost(loaded, "his-H001-C1-r1", "99999.00")

    report = _findings(_verify(loaded))
    first = report["first_broken"]
    assert (first["position"], first["event_id"], first["check"]) == (position, "his-H001-C1-r1", "journal")
    assert "payload.total_cost '21422.50' -> '99999.00'" in first["detail"]
    # rebuild refuses (the index keeps the true copy), the cold path refuses, the warm one is unchanged.
    rebuilt = run(loaded, "rebuild")
    assert rebuilt.exit_code == 1 and "his-H001-C1-r1" in rebuilt.output
    assert run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--cold").exit_code == 4
    assert data(run(loaded, "clear", "--pool", "panzhihua", "--year", "2020"))["point_value"] == before["point_value"]
    with LedgerStore(loaded) as store, pytest.raises(BrokenEntry, match="his-H001-C1-r1"):
        store.rebuild_index()


def test_an_entry_the_validators_now_refuse_is_read_by_the_store_and_named_by_verify(loaded: str) -> None:
    """The store's reads decode stored bodies without the Python validators (`decode_stored`);
    `verify` parses every entry in full. So a chained entry the validators refuse (here a
    decimal written "1E+2", as intake wrote a JSON number 1e2 before it wrote decimals
    plainly) is read as the ledger recorded it, and named by verify, never passed silently."""
    ev = parse_event(lines(f.penalty("C2", deducted_points="100", source="system"))[0])
    ev = ev.model_copy(update={"payload": ev.payload.model_copy(update={"deducted_points": Decimal("1E+2")})})
    with LedgerStore(loaded) as store:
        assert store.append_system_events([ev]) == 1
        assert store.event(ev.event_id).payload.deducted_points == Decimal(100)
    report = _findings(_verify(loaded))
    named = [x for x in report["findings"] if x["event_id"] == ev.event_id and x["check"] == "journal"]
    assert len(named) == 1 and "entry does not decode" in named[0]["detail"], report["findings"]
    assert "payload.deducted_points" in named[0]["detail"]


def test_a_deleted_entry_is_named(loaded: str) -> None:
    events, _, pos = _names(loaded)
    with owner(loaded) as conn:
        position, _ = _entry(conn, loaded, "his-H002-C2-r1")
        conn.execute(f"DELETE FROM {events} WHERE {pos} = {position}")
    first = _findings(_verify(loaded))["first_broken"]
    assert (first["position"], first["event_id"]) == (position, "his-H002-C2-r1")
    assert "deleted" in first["detail"]


def test_an_index_row_edited_or_deleted_is_named(loaded: str) -> None:
    with owner(loaded) as conn:
        conn.execute("UPDATE ledger_index SET body = replace(body, '8426.50', '9426.50') WHERE event_id = 'his-H002-C2-r1'")
        conn.execute("DELETE FROM ledger_index WHERE event_id = 'his-H001-C1-r1'")
    report = _findings(_verify(loaded))
    named = {(x["check"], x["event_id"]) for x in report["findings"]}
    assert ("index", "his-H002-C2-r1") in named and ("index", "his-H001-C1-r1") in named
    assert all(x["check"] == "index" for x in report["findings"]), report["findings"]


def test_a_rewritten_chain_is_caught_by_a_digest_kept_outside(loaded: str) -> None:
    kept = data(run(loaded, "digest"))["digest"]
    assert data(_verify(loaded, "--digest", kept))["ok"]
    position = _alter_cost(loaded, "his-H001-C1-r1", "99999.00")
    events, chain, pos = _names(loaded)
    with owner(loaded) as conn:  # the attacker rewrites the chain and the index to match
        rows = conn.execute(f"SELECT {pos}, topic, state FROM {events} ORDER BY {pos}").fetchall()
        previous = GENESIS
        mark = "?" if loaded.startswith("sqlite") else "%s"
        for p, topic, state in rows:
            h = content_hash(topic, bytes(state))
            previous = link(previous, h)
            conn.execute(f"UPDATE {chain} SET content_hash = {mark}, chain_hash = {mark} WHERE position = {mark}",
                         (h, previous, p))
        envelope = json.loads(json.loads(bytes(dict((r[0], r[2]) for r in rows)[position]))["envelope"])
        conn.execute(f"UPDATE ledger_index SET body = {mark} WHERE event_id = 'his-H001-C1-r1'",
                     (json.dumps(envelope),))
    caught = _findings(_verify(loaded, "--digest", kept))
    assert [x["check"] for x in caught["findings"]] == ["digest"]
    assert caught["first_broken"]["position"] == int(kept.split(":")[0])
    assert data(run(loaded, "digest"))["digest"] != kept


def test_a_recorded_clearing_carries_the_digest_of_the_log_it_read(loaded: str) -> None:
    recorded = data(run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--record"))
    log_digest = recorded["log_digest"]
    assert log_digest == f"{recorded['basis']['journal_position']}:{log_digest.split(':')[1]}"
    with LedgerStore(loaded) as store:
        (completed,) = [e for e in store.load(pool="panzhihua") if e.event_type == "ClearingCompleted"]
    assert completed.payload.log_digest == log_digest
    assert data(_verify(loaded, "--digest", log_digest))["checked"]["clearing digests"] == 1
    # Recording the same clearing again is one event, carrying the first digest.
    again = data(run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--record",
                     "--known-at", recorded["known_at"]))
    assert again["log_digest"] == log_digest
    _alter_cost(loaded, "his-H002-C2-r1", "1.00")
    report = _findings(_verify(loaded))
    assert any(x["check"] == "digest" and x["event_id"].startswith("clearing:") for x in report["findings"])


def test_bad_digest_is_a_bad_argument(loaded: str) -> None:
    assert run(loaded, "verify", "--digest", "12:nothex").exit_code == 2


# --------------------------------------------------------------------------- immutability


def test_the_ledgers_own_connection_cannot_update_or_delete_the_journal(loaded: str) -> None:
    events, chain, pos = _names(loaded)
    statements = [f"UPDATE {events} SET topic = topic", f"DELETE FROM {events}",
                  f"UPDATE {chain} SET chain_hash = chain_hash", f"DELETE FROM {chain}"]
    if not loaded.startswith("sqlite"):
        statements += [f"TRUNCATE {events}", f"TRUNCATE {chain}"]
    with LedgerStore(loaded) as store:
        for statement in statements:
            with pytest.raises(Exception, match="append-only"), store.engine.begin() as conn:
                conn.execute(text(statement))
    assert data(_verify(loaded))["ok"]


def test_the_application_role_may_only_read_and_append_the_journal(tmp_path: Path) -> None:
    """PostgreSQL: `migrate` as the owner, then the ledger runs as the application role; its
    own connection is refused UPDATE, DELETE, TRUNCATE and CREATE."""
    import uuid

    from tests.conftest import fresh_database

    role = f"drg_app_{uuid.uuid4().hex[:8]}"
    with fresh_database("postgresql", tmp_path) as owner_url:
        try:
            done = data(run_plain("migrate", "--owner-url", owner_url, "--app-role", role))
            assert "SELECT, INSERT ON " + done["schema"] + ".journal_events" in done["grants"]
            base, _, query = owner_url.partition("?")
            app_url = base.replace("postgres@", f"{role}@") + "?" + query
            story_file = tmp_path / "story.jsonl"
            story_file.write_text("".join(json.dumps(e) + "\n" for e in story()), encoding="utf-8")
            assert data(run(app_url, "ingest", "--backfill", str(POLICIES / "panzhihua.jsonl")))["accepted"] == 7
            assert data(run(app_url, "ingest", "--backfill", str(story_file)))["accepted"] == 6
            assert data(run(app_url, "clear", "--pool", "panzhihua", "--year", "2020", "--record"))["log_digest"]
            with LedgerStore(app_url) as store:
                from projections.offsets import log_of

                # The worker registers a broker log it has not seen as the application role.
                assert log_of(store, "drg.events", "id-1") == "drg.events"
                assert log_of(store, "drg.events", "id-2") == "drg.events#2"
                for statement in ("UPDATE kafka_logs SET log = 'x'", "DELETE FROM kafka_logs",
                                  "UPDATE journal_events SET topic = topic", "DELETE FROM journal_events",
                                  "TRUNCATE journal_events", "UPDATE journal_events_chain SET chain_hash = chain_hash",
                                  "DELETE FROM journal_events_chain", "TRUNCATE journal_events_chain",
                                  "DELETE FROM dead_letters", "UPDATE hospital_pools SET pool = 'x'",
                                  "CREATE TABLE sneaky (x int)", "ALTER TABLE journal_events DISABLE TRIGGER USER"):
                    with pytest.raises(Exception, match="permission denied|must be owner|append-only"), \
                            store.engine.begin() as conn:
                        conn.execute(text(statement))
            assert data(_verify(app_url))["ok"]
        finally:
            with psycopg.connect(_libpq(owner_url.partition("?")[0]), autocommit=True) as admin:
                admin.execute(f"DROP OWNED BY {role}")
                admin.execute(f"DROP ROLE IF EXISTS {role}")


def run_plain(*args: str) -> Any:
    return runner.invoke(app, [*args, "--json"])
