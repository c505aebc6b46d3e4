"""`drg-ledger policy derive` on SQLite and the real PostgreSQL (RULES.md 7).

A three-year store is derived from, the draft is ingested as it is with a recorded_at in the
target year, and the target year is cleared with it. Every figure worked by hand below.

Policies (from 2021, recorded 2020-12-01): BJ11 BP 225.50 AC 21,422.50, GB21 BP 100 AC 9,500,
AC_all 9,500; grades 3A 1.00, 2A 0.85; catalogue row BJ11 04.0200x005 1.6 / 1.47.
Hospitals: H001 3A, H002 2A, H003 2A (registered, no case: new).

| year | H001 | H002 |
|---|---|---|
| 2021 | GB21 12,000; BJ11 30,000 (catalogue code) | GB21 10,000 |
| 2022 | GB21 10,000; BJ11 30,000 (catalogue code) | GB21 5,000 revised to 8,000 |
| 2023 | GB21 10,000; GB21 99,999 withdrawn | GB21 10,000; 0000 50,000 (ungrouped) |

Points, 2021 and 2022 alike: GB21 at H001 100 x 1.00 = 100, at H002 100 x 0.85 = 85; BJ11 with
the code 225.50 x 1.6 = 360.80 (r = 1.40 < H = 2): TP 545.80. Budget 2021 54,580 -> PV 100
(recorded by `clear --record`); 2022 43,664 -> PV 80 (no clearing recorded: as known).
"""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from drg_ledger.cli import app
from tests import factories as f

runner = CliRunner()
DRAFT_RECORDED = "2024-01-05T09:00:00+08:00"
POLICY_AT = "2020-12-01T09:00:00+08:00"


def run(url: str, *args: str, as_json: bool = True) -> Any:
    return runner.invoke(app, [*args, "--database-url", url, *(["--json"] if as_json else [])])


def data(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def write(path: Path, envelopes: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in envelopes), encoding="utf-8")
    return path


def history() -> list[dict[str, Any]]:
    policies = [f.policy(c, version="2021", effective_from="2021-01-01", recorded_at=POLICY_AT)
                for c in ("drg_table", "coefficients", "high_tech_catalogue", "case_rules", "penalty_rules",
                          "clearing_rules")]
    code = ["04.0200x005"]
    return [
        *policies,
        f.hospital("H001", grade="3A", recorded_at=POLICY_AT),
        f.hospital("H002", grade="2A", recorded_at=POLICY_AT),
        f.hospital("H003", grade="2A", recorded_at=POLICY_AT),
        f.budget("54580", year=2021, recorded_at="2021-01-05T09:00:00+08:00"),
        f.budget("43664", year=2022, recorded_at="2022-01-05T09:00:00+08:00"),
        f.case("a21", hospital_id="H001", drg_code="GB21", total_cost="12000", discharge_date="2021-03-01"),
        f.case("b21", hospital_id="H001", drg_code="BJ11", total_cost="30000", discharge_date="2021-04-01",
               procedure_codes=code),
        f.case("c21", hospital_id="H002", drg_code="GB21", total_cost="10000", discharge_date="2021-05-01"),
        f.case("a22", hospital_id="H001", drg_code="GB21", total_cost="10000", discharge_date="2022-03-01"),
        f.case("b22", hospital_id="H001", drg_code="BJ11", total_cost="30000", discharge_date="2022-04-01",
               procedure_codes=code),
        f.case("c22", hospital_id="H002", drg_code="GB21", total_cost="5000", discharge_date="2022-05-01"),
        f.case("c22", hospital_id="H002", drg_code="GB21", total_cost="8000", discharge_date="2022-05-01", revision=2,
               recorded_at="2022-05-20T10:00:00+08:00"),
        f.case("a23", hospital_id="H001", drg_code="GB21", total_cost="10000", discharge_date="2023-03-01"),
        f.case("w23", hospital_id="H001", drg_code="GB21", total_cost="99999", discharge_date="2023-03-02"),
        f.withdrawal("w23", hospital_id="H001", recorded_at="2023-03-10T09:00:00+08:00"),
        f.case("c23", hospital_id="H002", drg_code="GB21", total_cost="10000", discharge_date="2023-05-01"),
        f.case("u23", hospital_id="H002", drg_code="0000", total_cost="50000", discharge_date="2023-06-01"),
    ]


@pytest.fixture
def three_years(database_url: str, tmp_path: Path) -> str:
    ingested = data(run(database_url, "ingest", "--backfill", str(write(tmp_path / "history.jsonl", history()))))
    assert ingested["rejected"] == []
    recorded = data(run(database_url, "clear", "--pool", "panzhihua", "--year", "2021", "--record"))
    assert recorded["point_value"] == "100.000000"
    return database_url


def test_derive_from_three_years_then_publish_and_clear_the_target_year(three_years: str, tmp_path: Path) -> None:
    url = three_years
    draft, report = tmp_path / "draft.jsonl", tmp_path / "report.csv"
    out = data(run(url, "policy", "derive", "--pool", "panzhihua", "--years", "2021-2023", "-o", str(draft),
                   "--csv", str(report), "--recorded-at", DRAFT_RECORDED))
    assert out["for_year"] == 2024 and out["parameters"]["level_share"] == "0.8"
    assert out["read"]["2023"] == {"read": 4, "withdrawn": 1, "ungrouped": 1, "revised": 0, "used": 2}
    assert out["read"]["2022"]["revised"] == 1
    # GB21: 12,000, 10,000, 10,000, 10,000, 8,000, 10,000 -> AC 10,000, n 6, CV 0.115470: stable.
    # BJ11: 30,000 x 2 -> n 2: unstable. AC_all = 120,000 / 8 = 15,000.
    # BP_GB21 = 10,000 / 15,000 x 100 = 66.67; BP_BJ11 = 200.00
    groups = {g["drg_code"]: g for g in out["groups"]}
    assert (groups["GB21"]["cases"], groups["GB21"]["cv"], groups["GB21"]["base_points"], groups["GB21"]["stable"]) == (
        6, "0.115470", "66.67", True)
    assert (groups["BJ11"]["base_points"], groups["BJ11"]["stable"]) == ("200.00", False)
    assert out["overall_average_cost"] == "15000.00"
    # H001: 92,000 against 3 x 10,000 + 2 x 30,000 = 90,000 -> 1.022222, also its level's: c 1.0222.
    # H002: 28,000 / 30,000 = 0.933333, its level's too: 0.9333. H003 (new): max(0.8 x 0.933333, 0.9333).
    coefficients = {h["hospital_id"]: h for h in out["hospitals"]}
    assert {h: c["coefficient"] for h, c in coefficients.items()} == {
        "H001": "1.0222", "H002": "0.9333", "H003": "0.9333"}
    assert coefficients["H003"]["kind"] == "new"
    # catalogue row 1, 3A: payment 225.50 x 1.00 x PV: 2021 22,550 (recorded PV 100), 2022 18,040 (PV 80 as
    # known); mean 20,295 - mean cost 30,000 = d -9,705 <= -5,500 -> 1.6; no 3B case -> 1.6 - 0.08 = 1.52
    row_3a, row_3b = out["catalogue"]
    assert (row_3a["cases"], row_3a["mean_payment"], row_3a["d"], row_3a["after"]) == (
        2, "20295.00", "-9705.00", "1.6000")
    assert (row_3b["cases"], row_3b["after"]) == (0, "1.5200")
    assert out["point_values"]["2021"]["source"] == "ClearingCompleted"
    assert out["point_values"]["2022"] == {"point_value": "80.000000", "source": "clearing as known", "event_id": None,
                                           "recorded_at": None}
    assert out["point_values"]["2023"] is None
    # nothing was written to the store: 2024 cannot be cleared yet, the draft is only a file
    lines = draft.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and all(json.loads(line)["recorded_at"] == DRAFT_RECORDED for line in lines)

    # the CSV opens in a spreadsheet: UTF-8 with BOM, Chinese headers intact
    raw = report.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(report.read_text(encoding="utf-8-sig").splitlines()))
    assert ["病组 DRG", "病例数 n"] == rows[rows.index(next(r for r in rows if r and r[0].startswith("病组 Groups"))) + 1][:2]
    assert any(r[:2] == ["level_share", "0.8"] for r in rows)
    assert any(r and r[0] == "H003" and "新增" in r[2] for r in rows)

    # published for real: ingested as it is, then 2024 cleared with it.
    ingested = data(run(url, "ingest", "--backfill", str(draft)))
    assert (ingested["accepted"], ingested["rejected"]) == (3, [])
    year_2024 = [
        f.budget("33037.32", year=2024, recorded_at="2024-01-06T09:00:00+08:00"),
        f.case("a24", hospital_id="H001", drg_code="GB21", total_cost="10000", discharge_date="2024-03-01"),
        f.case("n24", hospital_id="H003", drg_code="GB21", total_cost="9000", discharge_date="2024-03-02"),
        f.case("b24", hospital_id="H001", drg_code="BJ11", total_cost="30000", discharge_date="2024-04-01",
               procedure_codes=["04.0200x005"]),
    ]
    assert data(run(url, "ingest", "--backfill", str(write(tmp_path / "y2024.jsonl", year_2024))))["rejected"] == []
    cleared = data(run(url, "clear", "--pool", "panzhihua", "--year", "2024"))
    # a24: r = 1, 66.67 x 1.0222 = 68.1501; n24 (H003's derived 0.9333): 66.67 x 0.9333 = 62.2231;
    # b24: BJ11 unstable in the draft, paid by cost: 30,000 / 15,000 x 100 = 200. TP 330.3732 -> PV 100
    assert cleared["total_points"] == "330.3732" and cleared["point_value"] == "100.000000"
    net = {h["hospital_id"]: h["net_points"] for h in cleared["hospitals"]}
    assert net == {"H001": "268.1501", "H002": "0", "H003": "62.2231"}
    explained = data(run(url, "explain", "--case", "n24"))
    assert "workbench:panzhihua:2024:coefficients:" in json.dumps(explained)


def test_derive_prints_rich_tables_and_takes_its_parameters_as_options(three_years: str, tmp_path: Path) -> None:
    draft = tmp_path / "draft.jsonl"
    shown = run(three_years, "policy", "derive", "--pool", "panzhihua", "--for", "2024", "-o", str(draft),
                as_json=False)
    assert shown.exit_code == 0, shown.output
    for text in ("Groups", "Hospitals", "catalogue", "66.67", "1.0222", "-9705.00", "H003", "nothing written"):
        assert text in shown.stdout
    assert "recorded_at" not in draft.read_text(encoding="utf-8")  # left for the ledger to stamp
    tuned = data(run(three_years, "policy", "derive", "--pool", "panzhihua", "--years", "2021,2022,2023",
                     "-o", str(draft), "--grade-3b-discount", "0.1", "--shortfall-floor=-10000",
                     "--year-weight", "2022=2", "--coefficient-cap", "none"))
    # 2022 weighted twice: payment (22,550 + 2 x 18,040) / 3 = 19,543.33, d = -10,456.67 <= -10,000 -> 1.6;
    # 3B without a case: 1.6 - 0.1 = 1.5
    row_3a, row_3b = tuned["catalogue"]
    assert (row_3a["d"], row_3a["after"], row_3b["after"]) == ("-10456.67", "1.6000", "1.5000")
    assert tuned["parameters"]["year_weights"] == {"2022": "2"} and tuned["parameters"]["coefficient_cap"] is None


def test_bad_options_exit_2_naming_the_option_and_an_empty_window_exits_4(three_years: str, tmp_path: Path) -> None:
    draft = str(tmp_path / "draft.jsonl")
    bad = run(three_years, "policy", "derive", "--pool", "panzhihua", "--years", "2021-2023", "-o", draft,
              "--middle-tier", "steep")
    assert bad.exit_code == 2 and "--middle-tier" in bad.output
    bad = run(three_years, "policy", "derive", "--pool", "panzhihua", "--years", "twenty", "-o", draft)
    assert bad.exit_code == 2 and "--years" in bad.output
    bad = run(three_years, "policy", "derive", "--pool", "panzhihua", "--years", "2021", "-o", draft,
              "--year-weight", "2021=0")
    assert bad.exit_code == 2 and "year_weights" in bad.output
    empty = run(three_years, "policy", "derive", "--pool", "panzhihua", "--years", "2015-2017", "-o", draft)
    assert empty.exit_code == 4 and "no grouped" in empty.output


def test_policy_file_still_prints_a_shipped_file_beside_the_policy_group(tmp_path: Path) -> None:
    shipped = runner.invoke(app, ["policy-file", "panzhihua"])
    assert shipped.exit_code == 0 and Path(shipped.stdout.strip()).is_file()
    assert runner.invoke(app, ["policy-file", "atlantis"]).exit_code == 3
    assert "derive" in runner.invoke(app, ["policy", "--help"]).stdout


def test_derive_as_known_at_a_past_moment(three_years: str, tmp_path: Path) -> None:
    # as known at the end of 2022: 2021's clearing (recorded just now) is not known yet, so its PV is its
    # clearing as known then (100, the same budget and points); c22's revision 2 (recorded 2022-05-20) is
    out = data(run(three_years, "policy", "derive", "--pool", "panzhihua", "--years", "2021-2022", "--known-at",
                   "2022-12-31", "-o", str(tmp_path / "draft.jsonl")))
    assert out["known_at"] == "2022-12-31T23:59:59.999999+08:00" and out["for_year"] == 2023
    assert out["point_values"]["2021"] == {"point_value": "100.000000", "source": "clearing as known",
                                           "event_id": None, "recorded_at": None}
    assert out["read"]["2022"] == {"read": 3, "withdrawn": 0, "ungrouped": 0, "revised": 1, "used": 3}
    note = json.loads((tmp_path / "draft.jsonl").read_text(encoding="utf-8").splitlines()[0])["payload"]["note"]
    assert "discharged 2021-2022, as known at 2022-12-31T23:59:59.999999+08:00" in note


def test_a_derived_draft_published_for_real_and_cleared_gives_exactly_the_what_if_figures(
    three_years: str, tmp_path: Path
) -> None:
    url = three_years
    draft = tmp_path / "draft.jsonl"
    data(run(url, "policy", "derive", "--pool", "panzhihua", "--years", "2021-2023", "-o", str(draft),
             "--recorded-at", DRAFT_RECORDED))
    year_2024 = [
        f.budget("50000", year=2024, recorded_at="2024-01-06T09:00:00+08:00"),
        f.case("a24", hospital_id="H001", drg_code="GB21", total_cost="10000", discharge_date="2024-03-01"),
        f.case("c24", hospital_id="H002", drg_code="GB21", total_cost="12500", discharge_date="2024-03-05"),
        f.case("n24", hospital_id="H003", drg_code="GB21", total_cost="9000", discharge_date="2024-03-02"),
        f.case("b24", hospital_id="H001", drg_code="BJ11", total_cost="30000", discharge_date="2024-04-01",
               procedure_codes=["04.0200x005"]),
    ]
    assert data(run(url, "ingest", "--backfill", str(write(tmp_path / "y2024.jsonl", year_2024))))["rejected"] == []
    unpublished = data(run(url, "clear", "--pool", "panzhihua", "--year", "2024"))
    what_if = data(run(url, "clear", "--pool", "panzhihua", "--year", "2024", "--what-if", str(draft)))
    assert what_if["what_if"]["recorded"] is False and len(what_if["what_if"]["event_ids"]) == 3
    assert data(run(url, "clear", "--pool", "panzhihua", "--year", "2024")) | {"known_at": ""} == unpublished | {
        "known_at": ""}  # the what-if wrote nothing
    # the diff of the clearing as known now against the what-if: the pool figures and who moved
    moved = data(run(url, "diff", "--pool", "panzhihua", "--year", "2024", "--from-known-at",
                     unpublished["known_at"], "--to-what-if", str(draft)))
    assert moved["to"]["kind"] == "what_if" and moved["hospitals"]
    assert moved["pool_figures"]["point_value"]["to"] == what_if["point_value"]
    # published for real, with its recorded_at in the target year, and cleared
    ingested = data(run(url, "ingest", "--backfill", str(draft)))
    assert (ingested["accepted"], ingested["rejected"]) == (3, [])
    published = data(run(url, "clear", "--pool", "panzhihua", "--year", "2024"))
    figures = ("point_value", "total_points", "budget", "hospitals")
    assert {k: published[k] for k in figures} == {k: what_if[k] for k in figures}
    assert {k: published[k] for k in figures} != {k: unpublished[k] for k in figures}


def test_the_demo_ends_deriving_its_own_year_and_what_ifs_it_by_grade(database_url: str) -> None:
    out = data(run(database_url, "demo", "--cases", "400", "--hospitals", "6", "--seed", "5"))
    bench = out["workbench"]
    assert bench["draft"]["recorded"] is False and len(bench["draft"]["event_ids"]) == 3
    assert all(e.startswith("workbench:panzhihua:2020:") for e in bench["draft"]["event_ids"])
    rows = bench["by_grade"]
    assert {r["grade"] for r in rows} <= {"3A", "3B", "2A", "2B", "1"} and sum(r["hospitals"] for r in rows) == 6
    # the budget is fixed: what one grade gains the others lose, to the rounding of cents
    assert abs(sum(Decimal(r["money_change"]) for r in rows)) < Decimal("1.00")
    shown = run(database_url, "demo", "--cases", "400", "--hospitals", "6", "--seed", "5", as_json=False)
    assert shown.exit_code == 0 and "The policy workbench" in shown.stdout and "by grade" in shown.stdout
