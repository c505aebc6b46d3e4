"""Shared fixtures: `database_url` runs a test on SQLite and on PostgreSQL.

PostgreSQL: `$DRG_LEDGER_TEST_POSTGRES_URL` (default `postgresql://postgres@127.0.0.1:5432/test`).
Each test gets its own fresh schema (unique name, selected through the URL's libpq
`options=-csearch_path=...`), dropped afterwards, so no table outlives its test and tests
running in parallel never see each other's rows. An unreachable server skips the
PostgreSQL runs, except under CI (`$CI` set), where it fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

POSTGRES_URL_ENV = "DRG_LEDGER_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_url() -> str:
    return os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL


def _libpq(url: str) -> str:
    """The URL as libpq reads it (no SQLAlchemy driver suffix)."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else url


def _with_schema(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}', safe='')}"


def postgres_admin(base: str) -> psycopg.Connection[Any]:
    """An autocommit connection to the test server; skips when unreachable, fails under CI."""
    try:
        return psycopg.connect(_libpq(base), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {base} is unreachable under CI: {exc}")
        pytest.skip(f"PostgreSQL at {base} is unreachable: {exc}")


@contextmanager
def fresh_database(kind: str, directory: Path) -> Iterator[str]:
    """An empty ledger's URL: a SQLite file in `directory`, or a new PostgreSQL schema dropped after."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / f'ledger-{uuid.uuid4().hex[:8]}.db'}"
        return
    base = postgres_url()
    admin = postgres_admin(base)
    schema = f"drg_test_{uuid.uuid4().hex[:16]}"
    with admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield _with_schema(base, schema)
    finally:
        with psycopg.connect(_libpq(base), autocommit=True, connect_timeout=3) as admin:
            admin.execute("SET lock_timeout = '10s'")
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_kind(request: pytest.FixtureRequest) -> str:
    """Which back-end a test runs on; every store test runs on both."""
    return str(request.param)


@pytest.fixture
def database_url(database_kind: str, tmp_path: Path) -> Iterator[str]:
    """A database URL for an empty ledger: a SQLite file, or a fresh PostgreSQL schema."""
    with fresh_database(database_kind, tmp_path) as url:
        yield url
