"""The hostile corpus (`tests/hostile.py`) against the real store: each line refused on its own field.

The CLI-level test of the whole file (twice, every command afterwards) is in
test_hardening.py; this one pins, line by line, the field each refusal names, store-only
lines included, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.store import LedgerStore
from tests.hostile import HOSTILE, corrupted_lines, json_values, mutated_lines, scenario_lines, spread


@pytest.fixture
def store(database_url: str) -> Iterator[LedgerStore]:
    with LedgerStore.open(database_url) as s:
        yield s


def test_every_hostile_line_is_refused_by_the_store_on_its_field_and_the_scenario_lands(store: LedgerStore) -> None:
    valid = scenario_lines()
    mixed = spread(valid, [h.raw for h in HOSTILE], seed=10)
    expected = {i: h for i, raw in enumerate(mixed, start=1) for h in HOSTILE if h.raw == raw}

    report = store.ingest(mixed, origin="file:hostile.jsonl", backfill=True)

    assert report.accepted == len(valid)
    got = {r.line: r.field for r in report.rejected}
    assert got == {i: h.field for i, h in expected.items()}, [
        (h.name, h.field, got.get(i)) for i, h in expected.items() if got.get(i) != h.field]
    assert len(store.dead_letters(limit=1000)) == len(HOSTILE)

    again = store.ingest(mixed, origin="file:hostile.jsonl", backfill=True)

    assert (again.accepted, again.duplicates, len(again.rejected)) == (0, len(valid), len(HOSTILE))
    assert len(store.dead_letters(limit=1000)) == len(HOSTILE)  # kept once per (origin, sha256)


def test_str_lines_with_a_lone_surrogate_are_refused_not_raised(store: LedgerStore) -> None:
    report = store.ingest(['{"event_id": "\ud800"}', "\udfff"], origin="python")

    assert [(r.line, r.field) for r in report.rejected] == [(1, ""), (2, "")]
    assert all("not UTF-8" in r.reason for r in report.rejected)


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sent=st.lists(st.one_of(mutated_lines(), corrupted_lines(), json_values()), min_size=3, max_size=12))
def test_hypothesis_generated_hostile_lines_are_refused_or_accepted_never_raised(store: LedgerStore, sent: list[bytes]) -> None:
    """Variants drawn by hypothesis, through the real store: each line is accounted for
    (accepted, duplicate or refused and dead-lettered), and the store still answers."""
    origin = f"file:drawn-{uuid.uuid4().hex[:8]}.jsonl"
    report = store.ingest([*scenario_lines()[:20], *sent], origin=origin, backfill=True)

    lines = [s for s in [*scenario_lines()[:20], *sent] if s.strip()]
    assert report.accepted + report.duplicates + len(report.rejected) == len(lines)
    letters = [d.origin for d in store.dead_letters(limit=100_000) if d.origin.startswith(f"{origin}:")]
    assert sorted(letters) == sorted(f"{origin}:{r.line}" for r in report.rejected)  # each refusal kept, once
    assert store.doctor(repair=False)[0].status == "ok"
