"""The synthetic year (drg_ledger.generate): deterministic, canonical, bounded, and telling the story."""

from __future__ import annotations

import io
import json
import os
import tracemalloc
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from drg_ledger.generate import GenerateSummary, expected_events, generate
from drg_ledger.policy_files import POLICIES
from ledger.catalogue import normalise_code
from ledger.cases import registry
from ledger.clearing import clearing, settle
from ledger.events import Grade, canonical_json, parse_event
from ledger.policy import PolicyBook

BEIJING = timezone(timedelta(hours=8))
BEFORE_CATALOGUE = datetime(2021, 5, 10, 23, 59, 59, tzinfo=BEIJING)
AFTER_CATALOGUE = datetime(2021, 5, 12, tzinfo=BEIJING)
VIOLATIONS = {
    "bed_blocking", "split_hospitalisation", "cost_shifting", "insufficient_service",
    "shirking_severe", "upcoding", "fraud", "other",
}  # fmt: skip
OUTCOMES = {"upheld", "violation", "special_review_approved", "incentive_approved"}


def _write(tmp: Path, name: str, **kw: Any) -> tuple[Path, GenerateSummary]:
    path = tmp / name
    summary = generate(path, **{"hospitals": 24, "year": 2020, "seed": 7, **kw})
    return path, summary


@pytest.fixture(scope="module")
def year_4000(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerateSummary, list[str], list[Any]]:
    """4,000 cases of Panzhihua 2020: the file, its summary, its lines and its parsed events."""
    path, summary = _write(tmp_path_factory.mktemp("gen"), "pzh-2020.jsonl", cases=4000)
    lines = path.read_text(encoding="utf-8").splitlines()
    return path, summary, lines, [parse_event(line) for line in lines]


@pytest.fixture(scope="module")
def year_2000(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    path, _ = _write(tmp_path_factory.mktemp("gen"), "pzh-2020-small.jsonl", cases=2000, hospitals=20, seed=11)
    return [parse_event(line) for line in path.read_bytes().splitlines()]


# --------------------------------------------------------------------------- the file


def test_the_same_seed_writes_identical_bytes_and_another_seed_other_bytes() -> None:
    def run(seed: int) -> bytes:
        out = io.BytesIO()
        generate(out, cases=300, hospitals=8, year=2020, seed=seed)
        return out.getvalue()

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_a_text_stream_gets_the_same_lines_as_a_file(tmp_path: Path) -> None:
    text = io.StringIO()
    generate(text, cases=200, hospitals=6, year=2020, seed=3)
    path = tmp_path / "f.jsonl"
    generate(path, cases=200, hospitals=6, year=2020, seed=3)
    assert text.getvalue() == path.read_text(encoding="utf-8")


def test_every_line_is_one_canonical_event(year_4000: Any) -> None:
    _, _, lines, events = year_4000
    assert len(lines) == len(events)
    for line, event in zip(lines, events):
        assert canonical_json(event) == line
    assert len({e.event_id for e in events}) == len(events)


def test_counts_bytes_and_progress_match_the_file(year_4000: Any, tmp_path: Path) -> None:
    path, summary, lines, events = year_4000
    assert summary.counts == dict(Counter(e.event_type for e in events))
    assert summary.events == len(lines)
    assert summary.bytes == path.stat().st_size
    assert abs(expected_events(4000, 24) - summary.events) < 0.05 * summary.events
    assert summary.counts["HospitalRegistered"] == 24
    assert summary.counts["BudgetSet"] == 1
    assert summary.counts["CoefficientChanged"] == 2
    seen: list[int] = []
    small = generate(tmp_path / "p.jsonl", cases=5000, hospitals=10, year=2020, seed=1, on_progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == small.events and len(seen) > 1


def test_the_event_mix_is_a_city_pool_year(year_4000: Any) -> None:
    _, summary, _, events = year_4000
    by_type: dict[str, list[Any]] = defaultdict(list)
    for e in events:
        by_type[e.event_type].append(e)
    grades = Counter(e.payload.grade.value for e in by_type["HospitalRegistered"])
    assert set(grades) == {"3A", "3B", "2A", "2B", "1"} and grades["1"] > grades["3A"]
    assert all(e.source == "operator:registry" for e in by_type["HospitalRegistered"])
    cases = by_type["CaseSubmitted"]
    firsts = [e for e in cases if e.payload.revision == 1]
    assert len(firsts) == 4000
    for e in cases:
        p = e.payload
        assert e.source == f"his:{p.hospital_id}"
        assert e.event_id == f"his-{p.case_id}-r{p.revision}"
        assert p.discharge_date.year == 2020
        assert 1 <= (p.discharge_date - p.admission_date).days <= 30
        assert e.recorded_at.date() > p.discharge_date and e.recorded_at.utcoffset() == timedelta(hours=8)
        assert Decimal("0.10") <= p.personal_paid / p.total_cost <= Decimal("0.35")
        assert p.total_cost == p.total_cost.quantize(Decimal("0.01"))
    revisions = Counter(e.payload.revision for e in cases)
    assert 0.02 * 4000 < revisions[2] < 0.04 * 4000 and revisions[3] > 0
    assert 0.005 * 4000 < summary.counts["CaseWithdrawn"] < 0.02 * 4000
    assert sum(e.payload.bilateral for e in firsts) > 0.003 * 4000
    assert sum(e.payload.secondary_drg_code is not None for e in firsts) > 0.003 * 4000
    assert any(e.payload.drg_code == "0000" for e in firsts)
    assert {"XJ19", "YR19", "ZZ19"} & {e.payload.drg_code for e in firsts}
    ratios = [float(e.payload.total_cost) for e in firsts]
    assert min(ratios) > 0 and max(ratios) > 50_000
    # Prepayments: monthly, within the year, about 80% of the budget in all.
    prepaid = sum(e.payload.amount for e in by_type["PrepaymentMade"])
    (budget,) = by_type["BudgetSet"]
    assert all(e.payload.paid_on.year == 2020 for e in by_type["PrepaymentMade"])
    assert Decimal("0.75") < prepaid / budget.payload.amount <= Decimal("0.80")
    # The January declaration of seed 000 四, for last year's clearing.
    for e in by_type["CoefficientChanged"]:
        assert e.recorded_at == datetime(2021, 1, 20, 10, tzinfo=BEIJING)
        assert (e.payload.effective_from.isoformat(), e.payload.effective_to.isoformat()) == ("2020-01-01", "2020-12-31")
    assert {(e.payload.hospital_id is None, e.payload.grade is None) for e in by_type["CoefficientChanged"]} == {
        (False, True),
        (True, False),
    }
    # The story: of what concerns 2020, everything but the catalogue is known by 10 May 2021.
    late = [
        e
        for e in events
        if e.recorded_at > BEFORE_CATALOGUE
        and not (e.event_type == "PolicyVersionPublished" and e.payload.effective_from.year > 2020)
    ]
    assert [getattr(e.payload, "component", None) for e in late] == ["high_tech_catalogue"]


def test_the_catalogue_sits_mid_file_with_its_real_recording_date(year_4000: Any) -> None:
    _, summary, _, events = year_4000
    assert summary.catalogue == "shipped"
    positions = [i for i, e in enumerate(events) if getattr(e.payload, "component", None) == "high_tech_catalogue"]
    assert len(positions) == 1
    assert 0.3 < positions[0] / len(events) < 0.7
    catalogue = events[positions[0]]
    assert catalogue.recorded_at == datetime(2021, 5, 11, tzinfo=BEIJING)
    shipped = [json.loads(line) for line in (POLICIES / "panzhihua.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {e.event_id for e in events if e.event_type == "PolicyVersionPublished"} == {d["event_id"] for d in shipped}


def test_every_violation_type_and_outcome_appears_in_4000_cases(year_4000: Any) -> None:
    _, _, _, events = year_4000
    verdicts = [e for e in events if e.event_type == "ReviewVerdictRecorded"]
    assert all(e.source == "operator:review" for e in verdicts)
    assert {e.payload.outcome.value for e in verdicts} == OUTCOMES
    violations = [e.payload for e in verdicts if e.payload.violation_type is not None]
    assert {v.violation_type.value for v in violations} == VIOLATIONS
    fraud = [v for v in violations if v.violation_type == "fraud"]
    assert any(v.violating_points is None for v in fraud) and any(v.violating_points is not None for v in fraud)
    others = [v for v in violations if v.violation_type == "other"]
    assert any(v.multiplier is not None for v in others)
    assert all(v.multiplier is None or v.multiplier <= 2 for v in others)
    assert any(v.related_case_ids for v in violations if v.violation_type == "shirking_severe")


def test_some_verdicts_come_before_their_case_and_some_after_the_verdict_superseding_them(year_4000: Any) -> None:
    _, _, _, events = year_4000
    first_case: dict[str, int] = {}
    verdicts: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    for i, e in enumerate(events):
        if e.event_type == "CaseSubmitted":
            first_case.setdefault(e.payload.case_id, i)
        elif e.event_type == "ReviewVerdictRecorded":
            verdicts[e.payload.case_id].append((i, e))
    assert set(verdicts) <= set(first_case)
    assert any(i < first_case[cid] for cid, vs in verdicts.items() for i, _ in vs)
    superseded = [vs for vs in verdicts.values() if len(vs) == 2]
    assert superseded
    # Arrival order reversed: the verdict written first was recorded last.
    assert any(vs[0][1].recorded_at > vs[1][1].recorded_at for vs in superseded)
    assert any(vs[0][1].recorded_at < vs[1][1].recorded_at for vs in superseded)
    # Revisions and withdrawals are recorded after the submission they follow.
    recorded = {(e.payload.case_id, e.payload.revision): e.recorded_at for e in events if e.event_type == "CaseSubmitted"}
    for (cid, rev), at in recorded.items():
        if rev > 1:
            assert at > recorded[(cid, rev - 1)]
    for e in events:
        if e.event_type == "CaseWithdrawn":
            assert e.source == f"his:{e.payload.hospital_id}"
            assert e.recorded_at > max(at for (cid, _), at in recorded.items() if cid == e.payload.case_id)


def test_catalogue_rows_match_cases_of_3a_and_3b_hospitals_only(year_4000: Any) -> None:
    _, _, _, events = year_4000
    book = PolicyBook.from_events("panzhihua", events, AFTER_CATALOGUE)
    hospitals = registry(events)
    catalogue = book.catalogue(date(2020, 6, 1))
    assert catalogue is not None
    rows = catalogue.value.body.rows
    # Rows a case can reach: some rows repeat an earlier row's DRG and code (17-19, 21-24,
    # 14/15, 6/7, 45/46), and the first row in catalogue order wins (ledger.catalogue).
    reachable = set()
    for row in rows:
        for code in row.procedure_codes:
            hit = catalogue.value.match(row.drg_code, [code, *row.combined_with_codes[:1]], Grade.G3A)
            assert hit is not None
            reachable.add(hit.row.seq)
    matched_rows: Counter[int] = Counter()
    non_tertiary_coded = incomplete_combination = 0
    combination_firsts = {
        normalise_code(c) for row in rows if row.combined_with_codes for c in row.procedure_codes
    }
    for e in events:
        if e.event_type != "CaseSubmitted":
            continue
        p = e.payload
        grade = hospitals[p.hospital_id].grade
        hit = catalogue.value.match(p.drg_code, p.procedure_codes, grade)
        if hit is not None:
            matched_rows[hit.row.seq] += 1
        tertiary = grade in (Grade.G3A, Grade.G3B)
        if not tertiary and catalogue.value.match(p.drg_code, p.procedure_codes, Grade.G3A):
            non_tertiary_coded += 1  # codes that would match, at a hospital the catalogue does not cover
            assert hit is None
        if tertiary and hit is None and p.drg_code in ("OB11", "VB15"):
            incomplete_combination += any(normalise_code(c) in combination_firsts for c in p.procedure_codes)
    # Every reachable row, row 37's `6.9501` and the combination rows 48 and 51 included.
    assert set(matched_rows) == reachable and {37, 48, 51} <= reachable
    assert non_tertiary_coded > 0
    assert incomplete_combination > 0  # rows 48/51 without the combined code do not match
    codes = [c for e in events if e.event_type == "CaseSubmitted" for c in e.payload.procedure_codes]
    assert "6.9501" in codes or "06.9501" in codes
    assert any(c != c.upper() for c in codes) and any("X" in c for c in codes)


def test_memory_does_not_grow_with_the_number_of_cases() -> None:
    def peak(cases: int) -> int:
        with open(os.devnull, "wb") as sink:
            tracemalloc.start()
            try:
                generate(sink, cases=cases, hospitals=24, year=2020, seed=5)
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()

    small, large = peak(2_000), peak(20_000)
    assert large < 2 * small, (small, large)


def test_years_the_catalogue_does_not_cover_get_a_redated_copy_and_uncovered_years_are_refused() -> None:
    out = io.StringIO()
    summary = generate(out, cases=50, hospitals=5, year=2023, seed=1)
    assert summary.catalogue == "redated"
    (copy,) = [
        parse_event(line)
        for line in out.getvalue().splitlines()
        if '"component":"high_tech_catalogue"' in line
    ]
    assert (copy.payload.effective_from.isoformat(), copy.payload.effective_to.isoformat()) == ("2023-01-01", "2023-12-31")
    assert copy.recorded_at == datetime(2024, 5, 11, tzinfo=BEIJING)
    assert generate(io.StringIO(), cases=50, hospitals=5, year=2021, seed=1).catalogue == "shipped"
    assert generate(io.StringIO(), cases=50, hospitals=5, year=2024, seed=1, pool="xuancheng").catalogue == "none"
    with pytest.raises(ValueError, match="do not cover 2019"):
        generate(io.StringIO(), cases=10, hospitals=5, year=2019, seed=1)


# --------------------------------------------------------------------------- the story


def test_a_generated_year_clears_at_a_plausible_point_value_and_the_catalogue_helps_3a_3b(year_2000: list[Any]) -> None:
    before = clearing(settle(year_2000, "panzhihua", 2020, BEFORE_CATALOGUE))
    after_py = settle(year_2000, "panzhihua", 2020, AFTER_CATALOGUE)
    after = clearing(after_py)
    # Personal payments are inside the point value (seed 004): yuan per point.
    assert Decimal(50) < before.point_value < Decimal(200)
    assert Decimal(50) < after.point_value < Decimal(200)
    assert after.point_value < before.point_value
    grades = {hid: h.grade.value for hid, h in after_py.hospitals.items()}
    was = {h.hospital_id: h for h in before.hospitals}
    tertiary_gain = Decimal(0)
    for h in after.hospitals:
        if grades[h.hospital_id] in ("3A", "3B"):
            assert h.net_points >= was[h.hospital_id].net_points
            tertiary_gain += h.net_points - was[h.hospital_id].net_points
        else:
            assert h.net_points == was[h.hospital_id].net_points
            assert h.clearing_amount <= was[h.hospital_id].clearing_amount
    assert tertiary_gain > 0
    for grade in ("3A", "3B"):
        assert sum(h.net_points for h in after.hospitals if grades[h.hospital_id] == grade) > sum(
            h.net_points for h in before.hospitals if grades[h.hospital_id] == grade
        )
    sources = Counter(c.priced.coefficient.source.split(":")[0] for c in after_py.cases.values() if c.priced.coefficient)
    assert sources["high_tech_catalogue"] > 0 and sources["coefficient_change"] > 0


def test_the_demo_tells_the_catalogue_story_the_same_way_twice(tmp_path: Path) -> None:
    from rich.console import Console

    from drg_ledger.demo import run_demo
    from projections.store import LedgerStore

    console = Console(file=io.StringIO(), width=200, color_system=None)
    with LedgerStore.open(f"sqlite:///{tmp_path / 'demo.db'}") as store:
        first = run_demo(store, seed=3, cases=800, hospitals=10, console=console)
        again = run_demo(store, seed=3, cases=800, hospitals=10, console=console)
        printed = console.file.getvalue()
        quiet = run_demo(store, seed=3, cases=800, hospitals=10, console=console, as_json=True)
        assert console.file.getvalue() == printed  # --json: nothing but the returned data
        assert store.counts()["ClearingCompleted"] == 1
    assert first == again == quiet
    json.dumps(first)
    before, after = first["before"], first["after"]
    assert Decimal(after["point_value"]) < Decimal(before["point_value"])
    tertiary = [row for row in first["by_grade"] if row["grade"] in ("3A", "3B")]
    assert tertiary and all(Decimal(r["net_points_after"]) > Decimal(r["net_points_before"]) for r in tertiary)
    assert first["balance"]["before"]["point_value_kind"] == "provisional"
    text = console.file.getvalue()
    assert "point value" in text and "ClearingCompleted" in text and "0 duplicates" in text
    assert "0 accepted" in text  # the second run found every event already recorded


def test_the_command_writes_what_the_function_writes(tmp_path: Path) -> None:
    """`drg-ledger generate` as a user types it: the same file as `generate`, its summary as
    JSON, and as a table of counts without `--json`."""
    from typer.testing import CliRunner

    from drg_ledger.cli import app

    runner = CliRunner()
    args = ["generate", "--cases", "200", "--hospitals", "6", "--year", "2020", "--seed", "3"]
    done = runner.invoke(app, [*args, "-o", str(tmp_path / "cli.jsonl"), "--json"])
    assert done.exit_code == 0, done.output
    expected = generate(tmp_path / "fn.jsonl", cases=200, hospitals=6, year=2020, seed=3)
    assert (tmp_path / "cli.jsonl").read_bytes() == (tmp_path / "fn.jsonl").read_bytes()
    said = json.loads(done.stdout)
    assert said["counts"] == expected.counts and said["events"] == expected.events == sum(expected.counts.values())
    shown = runner.invoke(app, [*args, "-o", str(tmp_path / "again.jsonl")])
    assert shown.exit_code == 0, shown.output
    assert "CaseSubmitted" in shown.stdout and f"{expected.events:,}" in shown.stdout
    assert runner.invoke(app, [*args[:3], "-o", str(tmp_path / "x.jsonl")]).exit_code == 2  # --hospitals missing
