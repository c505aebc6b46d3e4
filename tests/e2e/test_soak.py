"""The soak's 60-second variant (benchmarks/soak.py): steady rate, lag drains, memory bounded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import postgres_admin, postgres_url

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_a_sixty_second_soak_drains_its_lag_and_keeps_memory_bounded() -> None:
    postgres_admin(postgres_url()).close()  # skips (fails under CI) without PostgreSQL
    server = postgres_url().rsplit("/", 1)[0] + "/postgres"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--seconds", "60", "--rate", "50",
                           "--postgres", server, "--json"], capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ok"] and result["stored"] == result["sent"] >= 2900 and result["final_lag"] == 0
    assert result["rss_growth_mb"] <= result["max_growth_mb"]
    assert (Path(result["dir"]) / "soak.png").stat().st_size > 10_000
