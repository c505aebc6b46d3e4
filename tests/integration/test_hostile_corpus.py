"""The hostile corpus (`tests/hostile.py`) against the real store: each line refused on its own field.

The CLI-level test of the whole file (twice, every command afterwards) is in
test_hardening.py; this one pins, line by line, the field each refusal names, store-only
lines included, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from projections.store import LedgerStore
from tests.hostile import HOSTILE, scenario_lines, spread


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
