"""The shipped policy files: built from the catalogue CSV, valid, and as committed."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from drg_ledger.policy_files import CATALOGUE_CSV, FILES, POLICIES, render
from ledger.events import Component, Grade, parse_event
from ledger.policy import PolicyBook

SHARED_CSV = Path(__file__).resolve().parents[3] / "shared" / "policy" / "high_tech_catalogue_2020.csv"
CHINA = timezone(timedelta(hours=8))


def book(pool: str, known_at: datetime) -> PolicyBook:
    events = [parse_event(line) for line in (POLICIES / f"{pool}.jsonl").read_text(encoding="utf-8").splitlines()]
    return PolicyBook.from_events(pool, events, known_at)


@pytest.mark.parametrize("name", sorted(FILES))
def test_committed_policy_file_is_what_the_builder_writes(name: str) -> None:
    assert (POLICIES / name).read_text(encoding="utf-8") == render(FILES[name]())


@pytest.mark.skipif(not SHARED_CSV.exists(), reason="../shared is not beside this checkout")
def test_shipped_catalogue_csv_is_the_shared_one() -> None:
    assert CATALOGUE_CSV.read_bytes() == SHARED_CSV.read_bytes()


def test_catalogue_is_known_from_its_issue_date_and_valid_from_2020() -> None:
    before = book("panzhihua", datetime(2021, 5, 10, 23, 59, tzinfo=CHINA))
    after = book("panzhihua", datetime(2021, 5, 11, 0, 0, tzinfo=CHINA))
    assert before.catalogue(date(2020, 6, 1)) is None
    found = after.catalogue(date(2020, 1, 1))
    assert found is not None and len(found.value.body.rows) == 63
    assert after.catalogue(date(2022, 5, 10)) is not None and after.catalogue(date(2022, 5, 11)) is None


def test_catalogue_rows_match_the_seed_as_digested() -> None:
    cat = book("panzhihua", datetime(2030, 1, 1, tzinfo=CHINA)).catalogue(date(2020, 6, 1))
    assert cat is not None
    c = cat.value
    # row 43 -> MC11, row 44 -> MC15 (POLICY.md gaps)
    assert c.match("MC11", ["60.2100x001"], Grade.G3A).row.seq == 43  # type: ignore[union-attr]
    assert c.match("MC15", ["40.5910"], Grade.G3B).coefficient == Decimal("1.07")  # type: ignore[union-attr]
    # row 37 printed 6.9501; row 48 needs one code of each set
    assert c.match("KD29", ["06.9501"], Grade.G3A).row.seq == 37  # type: ignore[union-attr]
    assert c.match("OB11", ["74.1x01"], Grade.G3A) is None
    assert c.match("OB11", ["74.1x01", "75.5100"], Grade.G3A).coefficient == Decimal("1.3")  # type: ignore[union-attr]
    # rows 14/15 print a capital X
    assert c.match("FD39", ["35.5200x001"], Grade.G3A).coefficient == Decimal("1.15")  # type: ignore[union-attr]


def test_every_component_is_in_force_for_the_years_the_pools_are_used() -> None:
    now = datetime(2030, 1, 1, tzinfo=CHINA)
    for pool, day in (("panzhihua", date(2020, 7, 1)), ("panzhihua", date(2024, 7, 1)), ("xuancheng", date(2024, 7, 1))):
        b = book(pool, now)
        for component in Component:
            if component is not Component.HIGH_TECH_CATALOGUE:
                assert b.version(component, day) is not None, (pool, component, day)


def test_xuancheng_applies_seed_001_from_2024() -> None:
    rules = book("xuancheng", datetime(2030, 1, 1, tzinfo=CHINA)).case_rules(date(2024, 3, 1)).value
    assert (rules.bilateral_factor, rules.multi_site_share) == (Decimal("1.5"), Decimal("0.5"))
    assert rules.low_ratio.by_level == {"1": Decimal("0.3")}
    assert rules.incentive_cap_per_mille == {"3": Decimal("6"), "2": Decimal("4"), "1": Decimal("4")}
