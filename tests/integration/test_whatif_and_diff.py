"""What-if drafts and diffs end to end on SQLite and on the real PostgreSQL (issue 14).

Every new command and option runs here through the CLI, on both databases; the property
test checks a what-if against the same draft really ingested into a copy of the store.
"""

from __future__ import annotations

import csv
import hashlib
import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, text
from typer.testing import CliRunner

from drg_ledger.cli import app
from drg_ledger.policy_files import POLICIES
from ledger.clearing import ClearingError
from ledger.events import parse_event
from projections.queries import clear_pool, explain_case, hospital_balance
from projections.store import LedgerStore
from projections.whatif import (
    DraftRejected,
    draft_from_events,
    load_draft,
    what_if_balance,
    what_if_clearing,
    what_if_explain,
)
from tests import factories as f
from tests.conftest import fresh_database

runner = CliRunner()
BEFORE = "2021-05-10T23:59:59+08:00"
AFTER = "2021-05-12T00:00:00+08:00"
LATER = "2022-01-01T00:00:00+08:00"
MOMENTS = (BEFORE, AFTER, LATER)


def run(url: str, *args: str, as_json: bool = True) -> Any:
    return runner.invoke(app, [*args, "--database-url", url, *(["--json"] if as_json else [])])


def data(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def jsonl(*envelopes: dict[str, Any]) -> bytes:
    return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in envelopes).encode("utf-8")


def story() -> list[dict[str, Any]]:
    """Three hospitals; C1 (H001, 3A) and C3 (H003, 3B) are catalogue operations (BJ11 04.0200x005,
    CB11 14.7401); C4 is a high-ratio case; C1 is caught upcoding."""
    return [
        f.hospital("H001", grade="3A"),
        f.hospital("H002", grade="2A"),
        f.hospital("H003", grade="3B"),
        f.budget("200000", year=2020),
        f.case("C1", hospital_id="H001", total_cost="21422.50", personal_paid="2000", procedure_codes=["04.0200x005"]),
        f.case("C2", hospital_id="H002", drg_code="BR23", total_cost="9063.00", personal_paid="1000",
               discharge_date="2020-08-01"),
        f.case("C3", hospital_id="H003", drg_code="CB11", total_cost="17702.30", procedure_codes=["14.7401"],
               discharge_date="2020-05-01"),
        f.case("C4", hospital_id="H001", drg_code="DC11", total_cost="40000.00", discharge_date="2020-10-01"),
        f.verdict("C1", outcome="violation", violation_type="upcoding", violating_points="20"),
        f.prepayment("30000", hospital_id="H001", paid_on="2020-06-30", recorded_at="2020-06-30T12:00:00+08:00"),
    ]


def load_story(store: LedgerStore) -> None:
    report = store.ingest((POLICIES / "panzhihua.jsonl").read_bytes().splitlines(), origin="test:policies", backfill=True)
    assert report.ok and report.accepted == 7
    report = store.ingest(jsonl(*story()).splitlines(), origin="test:story", backfill=True)
    assert report.ok and report.accepted == len(story())


@pytest.fixture
def loaded(database_url: str) -> str:
    with LedgerStore.open(database_url) as store:
        load_story(store)
    return database_url


def shipped_catalogue() -> dict[str, Any]:
    with (POLICIES / "panzhihua.jsonl").open(encoding="utf-8") as fh:
        return next(e for e in map(json.loads, fh) if e["payload"]["component"] == "high_tech_catalogue")


def catalogue_draft(raise_3a: str = "0.1") -> dict[str, Any]:
    """The shipped catalogue with every 3A coefficient raised, under its own id and version."""
    shipped = shipped_catalogue()
    body = shipped["payload"]["body"]
    rows = [{**r, "coef_3a": str(Decimal(r["coef_3a"]) + Decimal(raise_3a))} for r in body["rows"]]
    payload = {**shipped["payload"], "version": "2020-draft", "body": {**body, "rows": rows}}
    return {**shipped, "event_id": "draft-catalogue-3a", "payload": payload}


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def snapshot(url: str) -> dict[str, Any]:
    """The journal head and every row of every table of the store's database."""
    with LedgerStore.open(url) as store:
        out: dict[str, Any] = {"head": store.journal.head()}
        engine = store.engine
        with engine.connect() as conn:
            for table in sorted(inspect(conn).get_table_names()):
                rows = conn.execute(text(f'SELECT * FROM "{table}"')).all()
                out[table] = sorted(tuple(str(v) for v in row) for row in rows)
    return out


def without_marker(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "what_if"}


def figures(d: dict[str, Any]) -> dict[str, Any]:
    """The answer without what it rests on: two stores ingest at different moments, so their
    `basis` and `ingested_at` differ while every figure must not."""
    return {k: v for k, v in without_marker(d).items() if k not in ("basis", "ingested_at")}


# --------------------------------------------------------------------------- what-if


def test_a_what_if_of_an_empty_draft_is_the_clearing(loaded: str, tmp_path: Path) -> None:
    empty = write(tmp_path, "empty.jsonl", b"")
    for moment in MOMENTS:
        wi = data(run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--known-at", moment, "--what-if", str(empty)))
        plain = data(run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--known-at", moment))
        assert without_marker(wi) == plain
        assert wi["what_if"]["event_ids"] == [] and wi["what_if"]["sha256"] == hashlib.sha256(b"").hexdigest()
    table = run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--what-if", str(empty), as_json=False)
    assert table.exit_code == 0 and "WHAT-IF empty.jsonl" in table.stdout


def test_a_draft_catalogue_changes_clear_balance_and_explain_and_is_marked(loaded: str, tmp_path: Path) -> None:
    content = jsonl(catalogue_draft("0.1"))
    draft = write(tmp_path, "catalogue.jsonl", content)
    marker = {"draft": "catalogue.jsonl", "sha256": hashlib.sha256(content).hexdigest(),
              "event_ids": ["draft-catalogue-3a"], "recorded": False}

    wi = data(run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--known-at", LATER, "--what-if", str(draft)))
    plain = data(run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--known-at", LATER))
    assert {k: wi["what_if"][k] for k in marker} == marker and wi["what_if"]["known_at"] == "2022-01-01T00:00:00+08:00"
    # C1 (H001, 3A, BJ11 BP 225.50): 225.50 x 1.6 = 360.8 known; 225.50 x 1.7 = 383.35 in the draft: +22.55.
    # C3 is a 3B hospital's: its coef_3b is unchanged.
    net = {h["hospital_id"]: Decimal(h["net_points"]) for h in wi["hospitals"]}
    was = {h["hospital_id"]: Decimal(h["net_points"]) for h in plain["hospitals"]}
    assert net["H001"] - was["H001"] == Decimal("22.55") and net["H003"] == was["H003"] and net["H002"] == was["H002"]
    assert Decimal(wi["point_value"]) < Decimal(plain["point_value"])

    e = data(run(loaded, "explain", "--case", "C1", "--known-at", LATER, "--what-if", str(draft)))
    assert e["what_if"]["event_ids"] == ["draft-catalogue-3a"]
    assert e["coefficient"]["value"] == "1.7" and e["policy_versions"]["high_tech_catalogue"]["version"] == "2020-draft"
    assert e["coefficient"]["clause"].startswith("seed 000 三(三)")
    assert data(run(loaded, "explain", "--case", "C1", "--known-at", LATER))["coefficient"]["value"] == "1.6"

    b = data(run(loaded, "balance", "--hospital", "H001", "--as-of", "2020-06-30", "--known-at", LATER,
                 "--what-if", str(draft)))
    b0 = data(run(loaded, "balance", "--hospital", "H001", "--as-of", "2020-06-30", "--known-at", LATER))
    assert b["what_if"]["draft"] == "catalogue.jsonl" and b["point_value_kind"] == "provisional"
    assert Decimal(b["net_points"]) - Decimal(b0["net_points"]) == Decimal("22.55")

    for args in (["clear", "--pool", "panzhihua", "--year", "2020"], ["explain", "--case", "C1"],
                 ["balance", "--hospital", "H001", "--as-of", "2020-06-30"]):
        shown = run(loaded, *args, "--known-at", LATER, "--what-if", str(draft), as_json=False)
        assert shown.exit_code == 0 and "WHAT-IF catalogue.jsonl" in shown.stdout, shown.output
        flat = "".join(shown.stdout.split())  # the title may wrap
        assert marker["sha256"] in flat and "draft-catalogue-3a" in flat


def test_a_refused_draft_names_line_and_field_and_applies_nothing(loaded: str, tmp_path: Path) -> None:
    bad = [
        json.dumps(f.budget("250000", event_id="draft-budget")),  # line 1: fine
        "{not json",  # line 2
        json.dumps(f.case("C9", hospital_id="H001")),  # line 3: a case is not a draft
        json.dumps(f.budget("12,000", event_id="draft-budget-2")),  # line 4: not a decimal
        json.dumps(f.penalty("C1")),  # line 5: ledger-written
        json.dumps(f.budget("1", event_id="budget-panzhihua-2020")),  # line 6: a recorded id, other content
        json.dumps(f.budget("1", pool="xuancheng", event_id="draft-xc")),  # line 7: another pool
    ]
    draft = write(tmp_path, "bad.jsonl", ("\n".join(bad) + "\n").encode("utf-8"))
    before = snapshot(loaded)
    result = run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--what-if", str(draft))
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out["applied"] is False and out["accepted"] == 1
    reasons = {r["line"]: r["reason"] for r in out["rejected"]}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7]
    assert reasons[2].startswith("malformed JSON")
    assert reasons[3].startswith("event_type: CaseSubmitted cannot be drafted")
    assert reasons[4].startswith("payload.amount")
    assert reasons[5].startswith("event_type: PenaltyImposed is written by the ledger")
    assert reasons[6].startswith("event_id:") and "other content" in reasons[6]
    assert reasons[7].startswith("payload.pool")
    shown = run(loaded, "balance", "--hospital", "H001", "--as-of", "2020-06-30", "--what-if", str(draft), as_json=False)
    assert shown.exit_code == 1 and "nothing applied" in shown.output
    assert snapshot(loaded) == before  # no dead letter either: the draft is not input to the ledger


def test_a_draft_inside_a_seal_or_in_the_future_is_refused_like_a_late_event(loaded: str, tmp_path: Path) -> None:
    """A recorded clearing seals its pool-year up to its known_at (EVENTS.md): a draft asked as
    known at or before that moment would rewrite what the clearing relied on, as a backfill would."""
    recorded_clearing_id(loaded, AFTER)
    draft = write(tmp_path, "d.jsonl", jsonl(f.budget("250000", event_id="draft-budget")))
    sealed = run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--known-at", BEFORE, "--what-if", str(draft))
    assert sealed.exit_code == 1
    (reason,) = [r["reason"] for r in json.loads(sealed.stdout)["rejected"]]
    assert reason.startswith("recorded_at:") and "seal" in reason
    assert data(run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--known-at", LATER, "--what-if",
                    str(draft)))["budget"] == "250000"
    future = run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--known-at", "2099-01-01", "--what-if",
                 str(draft))
    assert future.exit_code == 1 and "in the future" in json.loads(future.stdout)["rejected"][0]["reason"]


def test_a_what_if_is_never_recorded_nor_warm(loaded: str, tmp_path: Path) -> None:
    draft = write(tmp_path, "d.jsonl", jsonl(f.budget("250000", event_id="draft-budget")))
    assert run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--what-if", str(draft), "--record").exit_code == 2
    assert run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--what-if", str(draft), "--warm").exit_code == 2
    assert run(loaded, "balance", "--hospital", "H001", "--as-of", "2020-06-30", "--what-if", str(draft),
               "--warm").exit_code == 2
    with LedgerStore.open(loaded) as store:
        d = load_draft(store, draft.read_bytes(), datetime.fromisoformat(LATER))
        with pytest.raises(ValueError, match="cannot be recorded"):
            clear_pool(store, "panzhihua", 2020, d.known_at, record=True, extra_events=d.events)


def test_what_ifs_leave_the_journal_and_every_table_unchanged(loaded: str, tmp_path: Path) -> None:
    draft = write(tmp_path, "d.jsonl", jsonl(
        catalogue_draft("0.3"),
        f.budget("260000", event_id="draft-budget"),
        f.verdict("C2", outcome="violation", violation_type="split_hospitalisation", violating_points="10",
                  event_id="draft-verdict"),
        {**f.envelope("CoefficientChanged", {"pool": "panzhihua", "hospital_id": "H002", "coefficient": "0.95",
                                             "effective_from": "2020-01-01", "reason": "draft"},
                      event_id="draft-coef")},
    ))
    before = snapshot(loaded)
    assert before["head"] > 0 and before["ledger_index"]
    data(run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--what-if", str(draft)))
    data(run(loaded, "clear", "--pool", "panzhihua", "--year", "2020", "--what-if", str(draft), "--cold"))
    data(run(loaded, "balance", "--hospital", "H002", "--as-of", "2020-12-31", "--what-if", str(draft)))
    data(run(loaded, "explain", "--case", "C2", "--what-if", str(draft)))
    data(run(loaded, "diff", "--pool", "panzhihua", "--year", "2020", "--from-known-at", LATER, "--to-what-if",
             str(draft), "--cases"))
    assert snapshot(loaded) == before


def test_a_draft_built_in_memory_is_screened_like_a_file(loaded: str) -> None:
    """A service or the policy workbench hands envelopes, not a file: same screening, same result."""
    envelopes = [catalogue_draft("0.2"), f.budget("210000", event_id="draft-budget")]
    known_at = datetime.fromisoformat(LATER)
    with LedgerStore.open(loaded) as store:
        from_file = load_draft(store, jsonl(*envelopes), known_at)
        in_memory = draft_from_events(store, [parse_event(e) for e in envelopes], known_at)
        assert in_memory.events == from_file.events and in_memory.event_ids == ["draft-catalogue-3a", "draft-budget"]
        assert (what_if_clearing(store, "panzhihua", 2020, in_memory).result
                == what_if_clearing(store, "panzhihua", 2020, from_file).result)
        with pytest.raises(DraftRejected) as refused:
            draft_from_events(store, [parse_event(f.case("C9", hospital_id="H001"))], known_at)
        assert refused.value.report.rejected[0].field == "event_type"


# --------------------------------------------------------------------------- the property

decimals = st.decimals(min_value="0.50", max_value="2.00", places=2)
draft_events = st.one_of(
    st.builds(lambda c, scope: ("CoefficientChanged", {"pool": "panzhihua", "coefficient": str(c), "reason": "draft",
                                                        "effective_from": "2020-01-01", **scope}),
              decimals, st.sampled_from([{"hospital_id": "H001"}, {"hospital_id": "H002", "drg_code": "BR23"},
                                         {"drg_code": "BJ11", "grade": "3A"}, {"drg_code": "CB11", "grade": "3B"}])),
    st.builds(lambda a: ("BudgetSet", {"pool": "panzhihua", "year": 2020, "amount": str(a)}),
              st.decimals(min_value="50000", max_value="900000", places=2)),
    st.builds(lambda case_id, outcome: ("ReviewVerdictRecorded", {"case_id": case_id, "reviewer": "draft", **outcome}),
              st.sampled_from(["C1", "C2", "C3", "C4", "C9"]),
              st.sampled_from([{"outcome": "upheld"}, {"outcome": "special_review_approved", "unreasonable_cost": "500"},
                               {"outcome": "violation", "violation_type": "bed_blocking"},
                               {"outcome": "violation", "violation_type": "cost_shifting", "violating_points": "15"}])),
    st.builds(lambda a, b: ("PolicyVersionPublished", {
        "pool": "panzhihua", "component": "high_tech_catalogue", "version": "draft", "effective_from": "2020-01-01",
        "effective_to": "2022-05-10", "body": {"rows": [
            {"drg_code": "BJ11", "procedure_codes": ["04.0200x005"], "coef_3a": str(a), "coef_3b": str(b)},
            {"drg_code": "CB11", "procedure_codes": ["14.7401"], "coef_3a": str(b), "coef_3b": str(a)}]}}),
        decimals, decimals),
    st.builds(lambda g: ("PolicyVersionPublished", {
        "pool": "panzhihua", "component": "coefficients", "version": "draft", "effective_from": "2020-01-01",
        "body": {"grades": {"3A": str(g), "3B": "0.92", "2A": "0.85", "2B": "0.80", "1": "0.75"}}}), decimals),
)


def outcome(compute: Any) -> Any:
    try:
        result = compute()
    except ClearingError as exc:
        return ("cannot compute", type(exc).__name__)
    return figures(result if isinstance(result, dict) else result.as_json())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drafted=st.lists(draft_events, max_size=6), moment=st.sampled_from(MOMENTS))
def test_a_what_if_equals_the_draft_ingested_into_a_copy_at_known_at(
    loaded: str, database_kind: str, tmp_path_factory: pytest.TempPathFactory, drafted: list[Any], moment: str
) -> None:
    known_at = datetime.fromisoformat(moment)
    envelopes = [f.envelope(event_type, payload, event_id=f"draft-{i}", recorded_at=moment)
                 for i, (event_type, payload) in enumerate(drafted)]
    with LedgerStore.open(loaded) as store:
        draft = load_draft(store, jsonl(*envelopes), known_at, pool="panzhihua")
        assert draft.event_ids == [e["event_id"] for e in envelopes]
        what_if = (outcome(lambda: what_if_clearing(store, "panzhihua", 2020, draft)),
                   outcome(lambda: what_if_balance(store, "H001", datetime(2020, 9, 30).date(), draft)),
                   outcome(lambda: what_if_explain(store, "C1", draft)))
    with fresh_database(database_kind, tmp_path_factory.mktemp("copy")) as copy_url, LedgerStore.open(copy_url) as copy:
        load_story(copy)
        assert copy.ingest(jsonl(*envelopes).splitlines(), origin="test:draft", backfill=True).ok
        ingested = (outcome(lambda: clear_pool(copy, "panzhihua", 2020, known_at)),
                    outcome(lambda: hospital_balance(copy, "H001", datetime(2020, 9, 30).date(), known_at)),
                    outcome(lambda: explain_case(copy, "C1", known_at)))
    assert what_if == ingested


# --------------------------------------------------------------------------- diff


def test_the_diff_of_two_moments_by_hospital_and_case(loaded: str) -> None:
    d = data(run(loaded, "diff", "--pool", "panzhihua", "--year", "2020", "--from-known-at", BEFORE,
                 "--to-known-at", AFTER, "--cases"))
    assert (d["from"]["kind"], d["to"]["kind"], d["empty"]) == ("moment", "moment", False)
    # The catalogue: C1 225.50 x 1.00 -> x 1.6 = +135.3 (before the upcoding deduction, unchanged);
    # C3 (3B, CB11 BP 186.34, coef_3b of row CB11) gains too; C2 and C4 do not change.
    cases = {c["case_id"]: c for c in d["cases"]}
    assert sorted(cases) == ["C1", "C3"]
    assert Decimal(cases["C1"]["net_points"]["change"]) == Decimal("135.3")
    assert [s["step"] for s in cases["C1"]["steps"]] == ["policy_versions", "catalogue", "coefficient"]
    assert cases["C1"]["steps"][1]["to"]["matched"] is True
    total = d["pool_figures"]["total_points"]
    assert sum(Decimal(h["net_points"]["change"]) for h in d["hospitals"]) == Decimal(total["change"])
    fund = sum(Decimal(h["fund_due"]["change"]) for h in d["hospitals"])
    rounding = sum(Decimal(d["pool_figures"][k]["change"]) for k in ("rounding_point_value", "rounding_cents"))
    assert fund + rounding == Decimal(d["pool_figures"]["budget"]["change"]) == 0
    money = [abs(Decimal(h["clearing_amount"]["change"])) for h in d["hospitals"]]
    assert money == sorted(money, reverse=True)
    only = data(run(loaded, "diff", "--pool", "panzhihua", "--year", "2020", "--from-known-at", BEFORE,
                    "--to-known-at", AFTER, "--cases", "--hospital", "H003"))
    assert [c["case_id"] for c in only["cases"]] == ["C3"] and only["cases_of_hospital"] == "H003"
    shown = run(loaded, "diff", "--pool", "panzhihua", "--year", "2020", "--from-known-at", BEFORE, "--to-known-at",
                AFTER, "--cases", as_json=False)
    assert shown.exit_code == 0 and "catalogue: no row -> row" in shown.stdout, shown.output
    short = run(loaded, "diff", "--pool", "panzhihua", "--year", "2020", "--from-known-at", BEFORE, "--to-known-at",
                AFTER, "--limit", "1", as_json=False)
    assert short.exit_code == 0 and "tables show 1 rows each" in short.stdout, short.output


def recorded_clearing_id(url: str, known_at: str) -> str:
    data(run(url, "clear", "--pool", "panzhihua", "--year", "2020", "--known-at", known_at, "--record"))
    with LedgerStore.open(url) as store:
        (completed,) = store.load(event_types=["ClearingCompleted"])
    return str(completed.event_id)


def test_a_recorded_clearing_diffs_empty_with_itself_and_its_moment(loaded: str) -> None:
    cid = recorded_clearing_id(loaded, AFTER)
    for other in (["--to-known-at", AFTER], ["--to-clearing", cid]):
        d = data(run(loaded, "diff", "--pool", "panzhihua", "--year", "2020", "--from-clearing", cid, *other, "--cases"))
        assert d["empty"] is True and d["hospitals"] == [] and d["cases"] == [], d
        assert d["from"]["clearing_id"] == cid and d["unchanged_hospitals"] == 3
    moved = data(run(loaded, "diff", "--pool", "panzhihua", "--year", "2020", "--from-known-at", BEFORE,
                     "--to-clearing", cid))
    assert moved["to"]["kind"] == "clearing" and {h["hospital_id"] for h in moved["hospitals"]} == {"H001", "H002", "H003"}
    shown = run(loaded, "diff", "--pool", "panzhihua", "--year", "2020", "--from-clearing", cid, "--to-clearing", cid,
                as_json=False)
    assert shown.exit_code == 0 and "no difference" in shown.stdout


def test_a_draft_against_a_recorded_clearing_exports_a_spreadsheet(loaded: str, tmp_path: Path) -> None:
    cid = recorded_clearing_id(loaded, AFTER)
    draft = write(tmp_path, "catalogue.jsonl", jsonl(catalogue_draft("0.1")))
    out = tmp_path / "差异.csv"
    d = data(run(loaded, "diff", "--pool", "panzhihua", "--year", "2020", "--from-clearing", cid, "--to-what-if",
                 str(draft), "--to-known-at", LATER, "--cases", "--hospital", "H001", "--csv", str(out)))
    assert d["to"]["kind"] == "what_if" and d["to"]["what_if"]["event_ids"] == ["draft-catalogue-3a"]
    assert [c["case_id"] for c in d["cases"]] == ["C1"]
    assert [s["step"] for s in d["cases"][0]["steps"]] == ["policy_versions", "catalogue", "coefficient"]
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    with out.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:4] == ["医院", "净点数(前)", "净点数(后)", "净点数变化"] and "清算金额变化" in rows[0]
    assert [r[0] for r in rows[1:]] == [h["hospital_id"] for h in d["hospitals"]]
    h001 = next(r for r in rows[1:] if r[0] == "H001")
    assert Decimal(h001[3]) == Decimal("22.55")  # C1: 225.50 x (1.7 - 1.6)
    cases_file = tmp_path / "差异.cases.csv"
    assert cases_file.read_bytes().startswith(b"\xef\xbb\xbf")
    with cases_file.open(encoding="utf-8-sig", newline="") as fh:
        case_rows = list(csv.reader(fh))
    assert case_rows[0][:3] == ["病例", "医院", "净点数(前)"] and case_rows[1][0] == "C1"
    assert "seed 000 三(三)" in case_rows[1][6]


def test_a_draft_can_be_either_side(loaded: str, tmp_path: Path) -> None:
    draft = write(tmp_path, "budget.jsonl", jsonl(f.budget("250000", event_id="draft-budget")))
    d = data(run(loaded, "diff", "--pool", "panzhihua", "--year", "2020", "--from-what-if", str(draft),
                 "--from-known-at", LATER, "--to-known-at", LATER))
    assert d["from"]["kind"] == "what_if" and Decimal(d["pool_figures"]["budget"]["change"]) == Decimal("-50000")
    fund = sum(Decimal(h["fund_due"]["change"]) for h in d["hospitals"])
    rounding = sum(Decimal(d["pool_figures"][k]["change"]) for k in ("rounding_point_value", "rounding_cents"))
    assert fund + rounding == Decimal("-50000")


def test_diff_refuses_sides_it_cannot_compare(loaded: str, tmp_path: Path) -> None:
    draft = write(tmp_path, "budget.jsonl", jsonl(f.budget("250000", event_id="draft-budget")))
    base = ["diff", "--pool", "panzhihua", "--year", "2020"]
    assert run(loaded, *base).exit_code == 2  # no first side
    assert run(loaded, *base, "--from-clearing", "x", "--from-known-at", AFTER).exit_code == 2
    assert run(loaded, *base, "--from-known-at", AFTER, "--hospital", "H001").exit_code == 2
    assert run(loaded, *base, "--from-clearing", "no-such-clearing").exit_code == 3
    assert run(loaded, *base, "--from-clearing", "budget-panzhihua-2020").exit_code == 3  # not a clearing
    bad = write(tmp_path, "bad.jsonl", b"{oops\n")
    assert run(loaded, *base, "--from-known-at", AFTER, "--to-what-if", str(bad)).exit_code == 1
    assert run(loaded, *base, "--from-known-at", AFTER, "--to-what-if", str(draft)).exit_code == 0


def test_the_demo_ends_with_the_diff_and_a_what_if(database_url: str) -> None:
    out = data(run(database_url, "demo", "--cases", "400", "--hospitals", "6", "--seed", "5"))
    diff, what_if = out["diff"], out["what_if"]
    assert diff["from"]["known_at"] == out["before"]["known_at"] and diff["to"]["known_at"] == out["after"]["known_at"]
    assert sum(Decimal(h["net_points"]["change"]) for h in diff["hospitals"]) == (
        Decimal(out["after"]["total_points"]) - Decimal(out["before"]["total_points"]))
    assert what_if["from"]["kind"] == "clearing" and what_if["from"]["clearing_id"] == out["recorded"]
    assert what_if["to"]["what_if"]["event_ids"] == ["draft:policy-panzhihua-high_tech_catalogue-2020:3A-plus-0.1"]
    grades = {h["hospital_id"]: None for h in out["after"]["hospitals"]}
    assert grades and Decimal(what_if["pool_figures"]["total_points"]["change"]) > 0  # 3A catalogue cases earn more
    shown = run(database_url, "demo", "--cases", "400", "--hospitals", "6", "--seed", "5", as_json=False)
    assert shown.exit_code == 0 and "What if" in shown.stdout and "What moved" in shown.stdout
