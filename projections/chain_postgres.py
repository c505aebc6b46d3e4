"""The journal's hash chain on PostgreSQL: the recorder of `projections/chain.py`'s chain
(COPY under the journal's EXCLUSIVE lock, triggers, the owner's lock function), in its own
module so that only a PostgreSQL store imports psycopg and the library's PostgreSQL module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Composed, Identifier, Literal
from psycopg.types.string import ByteaBinaryLoader

from projections.chain import CHAIN_SUFFIX, GENESIS, REFUSED, ChainRow, Entry, chain_rows


class ChainedPostgresRecorder(PostgresApplicationRecorder):
    """The library's PostgreSQL application recorder, plus the chain, append-only triggers
    and the journal lock taken through the owner's SECURITY DEFINER function."""

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events") -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        assert not datastore.enable_db_functions, "the chain is written by insert_events below"
        self.chain_table_name = events_table_name + CHAIN_SUFFIX
        self.check_identifier_length(self.chain_table_name)
        schema = Identifier(datastore.schema)
        events = Identifier(events_table_name)
        chain = Identifier(self.chain_table_name)
        lock_fn = Identifier(f"{events_table_name}_lock")
        refuse_fn = Identifier(f"{events_table_name}_refuse")
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{chain} (position bigint PRIMARY KEY, event_id text NOT NULL, "
                "content_hash char(64) NOT NULL, chain_hash char(64) NOT NULL)"
            ).format(schema=schema, chain=chain)
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{lock_fn}() RETURNS void LANGUAGE plpgsql SECURITY DEFINER "
                "SET search_path = pg_catalog AS $BODY$ BEGIN "
                "LOCK TABLE {schema}.{events} IN EXCLUSIVE MODE; END; $BODY$"
            ).format(schema=schema, lock_fn=lock_fn, events=events)
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{refuse_fn}() RETURNS trigger LANGUAGE plpgsql AS $BODY$ BEGIN "
                "RAISE EXCEPTION '%: % on %', {refused}, TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege'; "
                "END; $BODY$"
            ).format(schema=schema, refuse_fn=refuse_fn, refused=SQL("'" + REFUSED.replace("'", "''") + "'"))
        )
        for table in (events_table_name, self.chain_table_name):
            for op, each in (("UPDATE", "ROW"), ("DELETE", "ROW"), ("TRUNCATE", "STATEMENT")):
                self.sql_create_statements.append(self._trigger(schema, table, refuse_fn, op, each))
        self.lock_table_statements = [
            SQL("SET LOCAL lock_timeout = '{0}s'").format(datastore.lock_timeout),
            SQL("SELECT {0}.{1}()").format(schema, lock_fn),
        ]
        self.select_previous_statement = SQL(
            "SELECT chain_hash FROM {schema}.{chain} ORDER BY position DESC LIMIT 1"
        ).format(schema=schema, chain=chain)
        self.copy_chain_statement = SQL(
            "COPY {schema}.{chain} (position, event_id, content_hash, chain_hash) FROM STDIN (FORMAT BINARY)"
        ).format(schema=schema, chain=chain)
        self.copy_events_statement = SQL(
            "COPY {schema}.{events} (originator_id, originator_version, topic, state, notification_id) "
            "FROM STDIN (FORMAT BINARY)"
        ).format(schema=schema, events=events)
        qualified = f'"{datastore.schema}"."{events_table_name}"'
        self.select_ids_statement = SQL(
            "SELECT nextval(pg_get_serial_sequence({table}, 'notification_id')) AS id FROM generate_series(1, %s)"
        ).format(table=Literal(qualified))
        self.select_entries_statement = SQL(
            "SELECT notification_id, originator_id, topic, state FROM {schema}.{events} "
            "WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
        ).format(schema=schema, events=events)
        self.select_previous_link_statement = SQL(
            "SELECT chain_hash FROM {schema}.{chain} WHERE position < %s ORDER BY position DESC LIMIT 1"
        ).format(schema=schema, chain=chain)
        self.select_chain_statement = SQL(
            "SELECT position, event_id, content_hash, chain_hash FROM {schema}.{chain} "
            "WHERE position >= %s AND position <= %s ORDER BY position"
        ).format(schema=schema, chain=chain)

    @staticmethod
    def _trigger(schema: Identifier, table: str, fn: Identifier, op: str, each: str) -> Composed:
        name = Identifier(f"{table}_refuse_{op.lower()}")
        return SQL(
            "CREATE OR REPLACE TRIGGER {name} BEFORE {op} ON {schema}.{table} FOR EACH {each} "
            "EXECUTE FUNCTION {schema}.{fn}()"
        ).format(name=name, op=SQL(op), schema=schema, table=Identifier(table), each=SQL(each), fn=fn)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """The library's insert, done with COPY in one plain transaction (no pipeline): under the
        journal's EXCLUSIVE lock, take the notification ids from the table's sequence, COPY the
        entries with them, then COPY their chain rows. A taken event id raises IntegrityError
        (the COPY fails as a whole) and nothing is recorded. COPY streams rows, so no size
        limit per transaction is needed (psycopg's pipeline hung on large inserts)."""
        if not stored_events:
            return []
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            self._lock_table(curs)
            self._notify_channel(curs)
            curs.execute(self.select_ids_statement, (len(stored_events),))
            ids = sorted(int(row["id"]) for row in curs.fetchall())
            with curs.copy(self.copy_events_statement) as copy:
                copy.set_types([self.datastore.originator_id_type, "int8", "text", "bytea", "int8"])
                for s, nid in zip(stored_events, ids, strict=True):
                    copy.write_row((s.originator_id, s.originator_version, s.topic, s.state, nid))
            curs.execute(self.select_previous_statement)
            row = curs.fetchone()
            rows = chain_rows(row["chain_hash"] if row else GENESIS, ids, stored_events, kwargs.get("event_ids"))
            with curs.copy(self.copy_chain_statement) as copy:
                copy.set_types(["int8", "text", "text", "text"])  # char(64) reads text's binary form
                for r in rows:
                    copy.write_row(r)
        return ids

    def select_entries(self, after: int, limit: int) -> list[Entry]:
        """Up to `limit` entries after position `after`, in order, as plain tuples (`Entry`),
        read in binary (no hex text of each state to decode), each originator id as its 16 bytes
        made hex (no `UUID` object built and thrown away: a third of the read's CPU)."""
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row, binary=True) as curs:
            curs.adapters.register_loader("uuid", ByteaBinaryLoader)
            curs.execute(self.select_entries_statement, (after, limit), prepare=True)
            return [(nid, oid.hex(), topic, state) for nid, oid, topic, state in curs.fetchall()]

    def select_chain(self, first: int, last: int) -> tuple[str, list[ChainRow]]:
        """The chain hash before position `first` (GENESIS when none) and the chain rows of
        positions `first`..`last`, in order, read in binary on one connection (`read_chain`,
        `previous_link`)."""
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row, binary=True) as curs:
            curs.execute(self.select_previous_link_statement, (first,), prepare=True)
            row = curs.fetchone()
            curs.execute(self.select_chain_statement, (first, last), prepare=True)
            rows = [ChainRow(p, e, h.strip(), ch.strip()) for p, e, h, ch in curs.fetchall()]
        return (GENESIS if row is None else row[0].strip()), rows
