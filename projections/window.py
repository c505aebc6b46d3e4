"""The policy workbench's read side: several pool-years from the store (RULES.md 7).

Each year is one `LedgerStore.load(pool=, year=, known_at=)`, read into compact
`WindowCase`s by the pure `ledger.workbench.read_year` and dropped before the next year is
loaded, so a three-year window holds one year's parsed events at a time.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from ledger.clearing import gc_paused
from ledger.workbench import Derivation, DeriveParameters, YearCases, derive, read_year

if TYPE_CHECKING:
    from projections.store import LedgerStore


def pool_years(
    store: LedgerStore, pool: str, years: Iterable[int], known_at: datetime
) -> Iterator[tuple[int, list[Any]]]:
    """Each year's events needed to settle `pool` for it as known at `known_at`, one year at a time."""
    for year in years:
        yield year, store.load(pool=pool, year=year, known_at=known_at)


def read_window(
    store: LedgerStore, pool: str, years: Iterable[int], known_at: datetime,
    on_year: Callable[[int, str], None] | None = None,
) -> list[YearCases]:
    """The window's cases, year by year (RULES.md 7); `on_year(year, step)` reports progress."""
    years = sorted(set(years))
    end = date(max(years), 12, 31)
    out: list[YearCases] = []
    # The collector's passes over hundreds of thousands of parsed events double the read
    # (benchmarks/README.md); nothing read here is in a cycle.
    with gc_paused():
        for year, events in pool_years(store, pool, years, known_at):
            if on_year:
                on_year(year, "loaded")
            out.append(read_year(events, pool, year, known_at, end))
            del events
            if on_year:
                on_year(year, "read")
    return out


def derive_policy(
    store: LedgerStore, pool: str, years: Iterable[int], known_at: datetime, for_year: int,
    parameters: DeriveParameters | None = None, on_year: Callable[[int, str], None] | None = None,
) -> Derivation:
    """RULES.md 7 from the store: read the window, then derive the draft."""
    return derive(read_window(store, pool, years, known_at, on_year), pool, known_at, for_year, parameters)
