"""`drg-ledger worker` in a subprocess, for the end-to-end tests and the stream benchmarks.

One class, so the tests and the benchmarks start, wait for, kill and stop a worker the same
way; `descendants` and `alive` walk /proc (the worker's recompute process is its child).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READY_S = 90.0
"""How long a worker may take to say Faust is ready (partitions assigned, tables restored)."""


def worker_env(bootstrap: str, prefix: str, url: str) -> dict[str, str]:
    """The environment a `drg-ledger` subprocess of a test or benchmark runs with."""
    env = dict(os.environ)
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DRG_LEDGER_TOPIC_PREFIX": prefix,
        "DRG_LEDGER_DATABASE_URL": url,
        "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
        # The feeds are generated history (2020): the worker never backfills, so its
        # late-arrival window is configured to admit them (EVENTS.md "Transaction time").
        "DRG_LEDGER_LATE_WINDOW_DAYS": "36500",
    })
    return env


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def descendants(pid: int) -> list[int]:
    """Pids of every process below `pid` (children, their children...)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class WorkerProcess:
    """`drg-ledger worker ARGS` in `cwd` (where its RocksDB files live), its output in
    `cwd/worker-NAME.log`."""

    def __init__(self, env: dict[str, str], cwd: Path, name: int | str, args: tuple[str, ...] = ()) -> None:
        self.log = cwd / f"worker-{name}.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "drg_ledger.cli", "worker", "--loglevel", "INFO", *args],
            env=env, cwd=cwd, stdout=self._out, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = READY_S) -> float:
        """Seconds until Faust says the worker is ready."""
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
        return descendants(self.proc.pid)

    def kill(self) -> list[int]:
        """SIGKILL: no shutdown, no commit, no flush. Returns the pids it had started."""
        orphans = self.descendants()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        return orphans

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 20 s), then every process it had started."""
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

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.text().splitlines()[-n:])

    def errors(self) -> list[str]:
        """Log lines at ERROR or worse, and tracebacks."""
        return [ln for ln in self.text().splitlines()
                if "[ERROR]" in ln or "[CRITICAL]" in ln or ln.startswith("Traceback")]
