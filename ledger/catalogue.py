"""High-tech catalogue matching: which catalogue row, if any, raises a case's coefficient.

seed 000 三(三) and 附件; RULES.md 3 step 2; POLICY.md "Gaps and how we resolve them".
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Iterable

from ledger.events import CatalogueRow, Grade, HighTechCatalogueBody

if TYPE_CHECKING:
    from pathlib import Path

_CHAPTER = re.compile(r"^(\d)(?=\.)")


def normalise_code(code: str) -> str:
    """A procedure code as compared: trimmed, upper-cased, one-digit chapter zero-padded.

    RULES.md 3 step 2: `04.0200x005` = `04.0200X005` (seed 000 prints both) and
    `6.9501` = `06.9501` (catalogue row 37, a spreadsheet's dropped zero).
    """
    return _CHAPTER.sub(r"0\1", code.strip().upper())


@dataclass(frozen=True, slots=True)
class CatalogueMatch:
    """The catalogue row a case matched and the coefficient it gives the hospital's grade."""

    row: CatalogueRow
    coefficient: Decimal
    matched_code: str
    combined_code: str | None
    rows: tuple[int | None, ...] = ()
    """Every row the case matches: several technologies share a group and code (rows 17-19, 21-24)."""


@dataclass(frozen=True, slots=True)
class _IndexedRow:
    row: CatalogueRow
    codes: frozenset[str]
    combined: frozenset[str]
    position: int


class Catalogue:
    """A catalogue body indexed by DRG code, for fast matching of many cases."""

    def __init__(self, body: HighTechCatalogueBody) -> None:
        self.body = body
        self._by_drg: dict[str, list[_IndexedRow]] = {}
        for position, row in enumerate(body.rows):
            indexed = _IndexedRow(
                row,
                frozenset(normalise_code(c) for c in row.procedure_codes),
                frozenset(normalise_code(c) for c in row.combined_with_codes),
                position,
            )
            self._by_drg.setdefault(row.drg_code.strip().upper(), []).append(indexed)

    def may_match(self, drg_code: str) -> bool:
        """Whether a case of `drg_code` can match a row at all (a row matches its own DRG group only)."""
        return drg_code.strip().upper() in self._by_drg

    def match(self, drg_code: str, procedure_codes: Iterable[str], grade: Grade) -> CatalogueMatch | None:
        """The first row (catalogue order) that the case matches, for a 3A or 3B hospital.

        seed 000 二/三: the catalogue supports tertiary hospitals; its coefficients are given
        for 三甲 and 三乙 only, so other grades never match. A row with `combined_with_codes`
        needs one code of each list (rows 48, 51).
        """
        found = self._found(drg_code, procedure_codes, grade)
        if not found:
            return None
        # seed 000 三(三) 同病组、同级别、同等调整系数: rows sharing a group give one coefficient;
        # the first row (catalogue order) is cited, and every matching row is listed.
        first, code, combined = found[0]
        coefficient = first.row.coef_3a if grade is Grade.G3A else first.row.coef_3b
        return CatalogueMatch(first.row, coefficient, code, combined, tuple(f[0].row.seq for f in found))

    def rows_matched(self, drg_code: str, procedure_codes: Iterable[str], grade: Grade) -> tuple[int, ...]:
        """Positions in `body.rows` of every row the case matches (the same matching as `match`).

        RULES.md 7: each catalogue row's uplift is derived from the cases matching that row.
        """
        return tuple(indexed.position for indexed, _, _ in self._found(drg_code, procedure_codes, grade))

    def _found(
        self, drg_code: str, procedure_codes: Iterable[str], grade: Grade
    ) -> list[tuple[_IndexedRow, str, str | None]]:
        if grade not in (Grade.G3A, Grade.G3B):
            return []
        rows = self._by_drg.get(drg_code.strip().upper())
        if not rows:
            return []
        codes = {normalise_code(c) for c in procedure_codes}
        found: list[tuple[_IndexedRow, str, str | None]] = []
        for indexed in rows:
            hit = codes & indexed.codes
            if not hit:
                continue
            combined: str | None = None
            if indexed.combined:
                both = codes & indexed.combined
                if not both:
                    continue
                combined = min(both)
            found.append((indexed, min(hit), combined))
        return found


def catalogue_from_csv(path: Path, source: str) -> HighTechCatalogueBody:
    """Build a `high_tech_catalogue` body from the catalogue CSV (one row per technology x DRG group).

    Lists in the CSV are `;`-separated; codes are kept as printed (matching normalises them).
    """
    rows: list[CatalogueRow] = []
    with path.open(encoding="utf-8", newline="") as fh:
        for rec in csv.DictReader(fh):
            rows.append(
                CatalogueRow(
                    seq=int(rec["seq"]),
                    technology=rec["technology_zh"],
                    drg_code=rec["drg_code"],
                    procedure_codes=[c for c in rec["procedure_codes"].split(";") if c.strip()],
                    combined_with_codes=[c for c in rec["combined_with_codes"].split(";") if c.strip()],
                    coef_3a=Decimal(rec["coef_grade_3a"]),
                    coef_3b=Decimal(rec["coef_grade_3b"]),
                )
            )
    return HighTechCatalogueBody(source=source, rows=rows)
