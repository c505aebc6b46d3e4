"""Immutability in the database: the owner's migration and the application role (issue 12).

`migrate(owner_url, app_role)` runs as the owner of the ledger's schema (never the app):
it creates every table, the append-only triggers on the journal and its chain
(projections/chain.py), the journal's lock function, and a login role that may only
- SELECT and INSERT the journal and its chain (plus the notification-id sequence and the
  owner's SECURITY DEFINER lock function: PostgreSQL's LOCK TABLE ... IN EXCLUSIVE MODE
  would otherwise ask for UPDATE);
- SELECT and INSERT the dead letters, the pool claims and the Kafka logs seen
  (`kafka_logs`, projections/offsets.py) (never change or remove one);
- read and write the tables derived from the journal (index, tracking, running totals,
  case points): they are rebuilt from it, and `verify` checks them against it.
The application then connects as that role (`DRG_LEDGER_DATABASE_URL`); the owner URL
(`DRG_LEDGER_OWNER_URL`) is used for migrations only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from projections.store import LedgerStore

OWNER_URL_ENV = "DRG_LEDGER_OWNER_URL"
APPEND_ONLY = ("SELECT", "INSERT")
DERIVED = ("SELECT", "INSERT", "UPDATE", "DELETE")


@dataclass
class Migration:
    """What `migrate` did."""

    schema: str
    role: str | None
    tables: list[str] = field(default_factory=list)
    grants: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {"schema": self.schema, "role": self.role, "tables": self.tables, "grants": self.grants}


def migrate(owner_url: str, app_role: str | None = None, app_password: str | None = None) -> Migration:
    """Creates or updates the ledger's tables, triggers and functions as the owner, and (with
    `app_role`) the application role with the privileges in the module docstring. Idempotent."""
    with LedgerStore(owner_url) as store:
        _derived_tables(store)
        engine = store.engine
        if engine.dialect.name != "postgresql":
            # SQLite has no roles: the file's triggers are recreated on every open.
            return Migration(schema="main", role=None, tables=sorted(inspect(engine).get_table_names()))
        recorder = store.journal.recorder
        schema: str = recorder.datastore.schema  # type: ignore[attr-defined]
        journal_table: str = recorder.events_table_name  # type: ignore[attr-defined]
        chain_table: str = recorder.chain_table_name  # type: ignore[attr-defined]
        tables = sorted(inspect(engine).get_table_names())
    out = Migration(schema=schema, role=app_role, tables=tables)
    if app_role is None:
        return out
    url = make_url(owner_url).set(drivername="postgresql")
    libpq = url.render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        role = sql.Identifier(app_role)
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (app_role,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE").format(role))
        if app_password is not None:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal(app_password)))
        s = sql.Identifier(schema)

        def grant(privileges: tuple[str, ...], table: str) -> None:
            conn.execute(sql.SQL("REVOKE ALL ON {}.{} FROM {}").format(s, sql.Identifier(table), role))
            conn.execute(sql.SQL("GRANT {} ON {}.{} TO {}").format(
                sql.SQL(", ").join(sql.SQL(p) for p in privileges), s, sql.Identifier(table), role))
            out.grants.append(f"{', '.join(privileges)} ON {schema}.{table}")

        conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(s, role))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, role))
        append_only = (journal_table, chain_table, "dead_letters", "hospital_pools", "kafka_logs")
        for table in append_only:
            grant(APPEND_ONLY, table)
        for table in tables:
            if table not in append_only:
                grant(DERIVED, table)
        for (seq,) in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'S' AND n.nspname = %s", (schema,)
        ).fetchall():
            conn.execute(sql.SQL("GRANT USAGE ON SEQUENCE {}.{} TO {}").format(s, sql.Identifier(seq), role))
            out.grants.append(f"USAGE ON SEQUENCE {schema}.{seq}")
        lock_fn = sql.Identifier(f"{journal_table}_lock")
        conn.execute(sql.SQL("REVOKE ALL ON FUNCTION {}.{}() FROM PUBLIC").format(s, lock_fn))
        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {}.{}() TO {}").format(s, lock_fn, role))
        out.grants.append(f"EXECUTE ON FUNCTION {schema}.{journal_table}_lock()")
        # The composite type the library's insert casts to.
        for (typ,) in conn.execute(
            "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE n.nspname = %s AND t.typname LIKE 'stored_event_%%' AND t.typtype = 'c'", (schema,)
        ).fetchall():
            conn.execute(sql.SQL("GRANT USAGE ON TYPE {}.{} TO {}").format(s, sql.Identifier(typ), role))
    return out


def _derived_tables(store: LedgerStore) -> None:
    """Creates the derived tables the worker and the projections keep (and the worker's
    record of Kafka logs), so the app role never needs CREATE; the store has created its own
    (case_versions among them)."""
    from projections import offsets, running_totals

    offsets.create_log_table(store.engine)
    running_totals.create_tables(store.engine)


def triggers_present(store: LedgerStore) -> list[str]:
    """The append-only triggers missing or disabled on the journal and its chain (empty: all there)."""
    recorder = store.journal.recorder
    journal_table: str = recorder.events_table_name  # type: ignore[attr-defined]
    chain_table: str = recorder.chain_table_name  # type: ignore[attr-defined]
    ops = ("update", "delete") if store.engine.dialect.name == "sqlite" else ("update", "delete", "truncate")
    wanted = {f"{t}_refuse_{op}" for t in (journal_table, chain_table) for op in ops}
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "sqlite":
            have = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'"))}
        else:
            have = {r[0] for r in conn.execute(text(
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgenabled <> 'D' "
                "AND tgrelid IN (to_regclass(:a), to_regclass(:b))"), {"a": journal_table, "b": chain_table})}
    return sorted(wanted - have)
