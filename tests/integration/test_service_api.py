"""The HTTP service on SQLite and on the real PostgreSQL: every endpoint, every role refusal.

The story is the one the CLI tests work by hand (tests/integration/test_ledger_commands.py):
H001 (3A) does a catalogue operation and is caught upcoding; H002 (2A) has an ordinary case.
Nothing is mocked: FastAPI's TestClient calls the app, the app calls the real store.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient

from drg_ledger.policy_files import POLICIES
from drg_ledger.service.app import create_app
from drg_ledger.service.auth import Principal, TokenBook, hash_token
from projections.running_totals import Key, create_tables, recompute, upsert
from projections.store import LedgerStore
from tests import factories as f
from tests.integration.test_ledger_commands import AFTER, BEFORE, story

TOKENS = {"operator": "op-token-1", "auditor": "audit-token-1", "his:H001": "his-h001-token", "his:H002": "his-h002-token"}
PROBLEM_JSON = "application/problem+json"


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


OP, AUDITOR, H1, H2 = bearer("operator"), bearer("auditor"), bearer("his:H001"), bearer("his:H002")


def load_story(url: str, *extra: dict[str, Any]) -> None:
    with LedgerStore.open(url) as store:
        with open(POLICIES / "panzhihua.jsonl", "rb") as fh:
            assert store.ingest(fh, origin="test:policies", backfill=True).ok
        report = store.ingest(f.lines(*story(), f.hospital("X001", pool="xuancheng"), *extra), origin="test:story",
                              backfill=True)
        assert report.ok, report.rejected


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    load_story(database_url)
    book = TokenBook({hash_token(t): Principal(f"{role}-holder", role) for role, t in TOKENS.items()})
    with TestClient(create_app(database_url, book, stores=2)) as c:
        c.database_url = database_url  # type: ignore[attr-defined]
        yield c


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def problem(response: Any, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["code"] == code and body["type"] == f"urn:drg-ledger:problem:{code}"
    assert body["title"] and body["detail"] and body["instance"] == response.request.url.path
    if field is not None:
        assert body.get("field") == field, body
    return body


def lines_of(client: TestClient, hospital: str) -> dict[str, Any]:
    return {h["hospital_id"]: h for h in client.get("/clearing", params={"pool": "panzhihua", "year": 2020,
                                                                          "known_at": AFTER}, headers=OP).json()["hospitals"]}[hospital]


# --------------------------------------------------------------------------- reads


def test_clearing_changes_when_the_back_dated_catalogue_becomes_known(client: TestClient) -> None:
    before = ok(client.get("/clearing", params={"pool": "panzhihua", "year": 2020, "known_at": BEFORE}, headers=AUDITOR))
    after = ok(client.get("/clearing", params={"pool": "panzhihua", "year": 2020, "known_at": AFTER}, headers=AUDITOR))
    # Worked by hand in test_ledger_commands: BJ11 225.50 x 1.00 - 20 - 4 x 20 = 125.5 before,
    # 225.50 x 1.6 - 100 = 260.8 after; PV = 103,000 / 200.895 and / 336.195.
    assert (before["point_value"], after["point_value"]) == ("512.705642", "306.369815")
    assert {h["hospital_id"]: h["net_points"] for h in before["hospitals"]} == {"H001": "125.5000", "H002": "75.3950"}
    assert {h["hospital_id"]: h["net_points"] for h in after["hospitals"]}["H001"] == "260.8000"
    assert before["known_at"] == BEFORE and after["recorded"] is False
    # a date means the end of that day, China time, as in the CLI
    by_date = ok(client.get("/clearing", params={"pool": "panzhihua", "year": 2020, "known_at": "2021-05-10"},
                            headers=AUDITOR))
    assert by_date["known_at"] == "2021-05-10T23:59:59.999999+08:00" and by_date["point_value"] == "512.705642"
    # an HIS sees the pool's point value and its own line only
    own = ok(client.get("/clearing", params={"pool": "panzhihua", "year": 2020, "known_at": AFTER}, headers=H1))
    assert own["point_value"] == "306.369815" and [h["hospital_id"] for h in own["hospitals"]] == ["H001"]


def test_balance_and_month_end_series_as_known_before_and_after(client: TestClient) -> None:
    mid = ok(client.get("/balance", params={"hospital": "H001", "as_of": "2020-06-30", "known_at": AFTER}, headers=H1))
    # window 1 Jan..30 Jun: 182/366 of 100,000 = 49,726.78; PV = (49,726.78 + 2,000) / 260.8
    assert (mid["point_value"], mid["point_value_kind"], mid["net_points"]) == ("198.338880", "provisional", "260.8000")
    series = ok(client.get("/balance-series", params={"hospital": "H001", "year": 2020, "known_at": AFTER}, headers=H1))
    months = series["months"]
    assert [m["as_of"] for m in months][:3] == ["2020-01-31", "2020-02-29", "2020-03-31"] and len(months) == 12
    # No case is discharged before 1 March: no points, no provisional point value.
    assert months[0]["balance"] is None and "total points are 0" in months[0]["error"]
    # 31 March: 91/366 of 100,000 = 24,863.39; PV = (24,863.39 + 2,000) / 260.8 = 103.003796
    assert months[2]["balance"]["point_value"] == "103.003796"
    assert months[5]["balance"] == mid
    # 31 December: every case, full budget: the clearing's PV 306.369815; fund due 260.8 x PV - 2,000
    december = months[11]["balance"]
    assert december["point_value"] == "306.369815"
    assert december["fund_due"] == str((Decimal("260.8") * Decimal("306.369815") - 2000).quantize(Decimal("0.01")))
    assert december["clearing_amount"] == lines_of(client, "H001")["clearing_amount"]
    was = ok(client.get("/balance-series", params={"hospital": "H001", "year": 2020, "known_at": BEFORE}, headers=H1))
    assert was["months"][11]["balance"]["net_points"] == "125.5000"
    assert was["months"][11]["balance"]["point_value"] == "512.705642"


def test_recording_a_clearing_makes_balances_final(client: TestClient) -> None:
    recorded = ok(client.post("/clearing", params={"pool": "panzhihua", "year": 2020, "known_at": AFTER}, headers=OP),
                  201)
    assert recorded["recorded"] is True and recorded["point_value"] == "306.369815" and recorded["recorded_now"]
    assert recorded["recorded_event_id"].startswith("clearing:panzhihua:2020:")
    again = ok(client.post("/clearing", params={"pool": "panzhihua", "year": 2020, "known_at": AFTER}, headers=OP), 201)
    assert again["recorded_event_id"] == recorded["recorded_event_id"] and again["recorded_now"] is False
    assert recorded["basis"]["journal_position"] > 0 and recorded["basis"]["events_read"] > 0
    final = ok(client.get("/balance", params={"hospital": "H002", "as_of": "2020-06-30"}, headers=AUDITOR))
    assert (final["point_value_kind"], final["point_value"]) == ("final", "306.369815")
    moments = ok(client.get("/moments", params={"pool": "panzhihua", "year": 2020}, headers=AUDITOR))["moments"]
    assert moments[-1]["events"][0]["event_type"] == "ClearingCompleted"


def test_explain_and_cases_of_a_hospital(client: TestClient) -> None:
    explained = ok(client.get("/explain", params={"case": "C1", "known_at": AFTER}, headers=H1))
    assert explained["coefficient"]["why"] == "high_tech_catalogue:3A" and explained["net_points"] == "260.8000"
    assert explained["penalty"]["deducted_points"] == "80.0000"
    earlier = ok(client.get("/explain", params={"case": "C1", "known_at": BEFORE}, headers=AUDITOR))
    assert earlier["coefficient"]["value"] == "1.00" and earlier["net_points"] == "125.5000"
    cases = ok(client.get("/cases", params={"hospital": "H001", "year": 2020, "known_at": AFTER}, headers=H1))
    assert cases["total"] == 1 and cases["cases"][0] == {
        "case_id": "C1", "discharge_date": "2020-03-01", "drg_code": "BJ11", "case_type": "normal",
        "coefficient": "1.6", "coefficient_why": "high_tech_catalogue:3A", "points_before_verdict": "360.8000",
        "settled_points": "340.8000", "deducted_points": "80.0000", "net_points": "260.8000"}
    assert ok(client.get("/cases", params={"hospital": "H002", "year": 2021}, headers=OP))["total"] == 0


def test_policy_in_force_and_the_years_moments(client: TestClient) -> None:
    before = ok(client.get("/policies", params={"pool": "panzhihua", "on": "2020-06-30", "known_at": BEFORE},
                           headers=H1))
    after = ok(client.get("/policies", params={"pool": "panzhihua", "on": "2020-06-30", "known_at": AFTER, "body": True},
                          headers=AUDITOR))
    assert "high_tech_catalogue" in before["missing"]
    versions = {v["component"]: v for v in after["versions"]}
    assert versions["high_tech_catalogue"]["recorded_at"] == "2021-05-11T00:00:00+08:00"
    assert versions["high_tech_catalogue"]["body"]["rows"][0]["drg_code"]
    assert versions["penalty_rules"]["version"] and after["missing"] == []
    moments = ok(client.get("/moments", params={"pool": "panzhihua", "year": 2020}, headers=H1))["moments"]
    at = [m["at"] for m in moments]
    assert at == sorted(at) and "2021-05-11T00:00:00+08:00" in at
    kinds = {e["event_type"] for m in moments for e in m["events"]}
    assert kinds == {"PolicyVersionPublished", "BudgetSet", "CoefficientChanged"} or kinds >= {"PolicyVersionPublished",
                                                                                              "BudgetSet"}
    # the 2024 penalty rules are not valid in 2020: not a moment of 2020
    assert all(e.get("version") != "2024.1" for m in moments for e in m["events"] if e.get("component") == "penalty_rules")


def test_pools_and_hospitals(client: TestClient) -> None:
    assert ok(client.get("/pools", headers=AUDITOR)) == [{"pool": "panzhihua", "hospitals": 2, "years": [2020]},
                                                        {"pool": "xuancheng", "hospitals": 1, "years": []}]
    assert ok(client.get("/pools", headers=H1)) == [{"pool": "panzhihua", "hospitals": 1, "years": [2020]}]
    assert [h["hospital_id"] for h in ok(client.get("/hospitals", params={"pool": "panzhihua"}, headers=OP))] == [
        "H001", "H002"]
    assert [h["hospital_id"] for h in ok(client.get("/hospitals", params={"pool": "panzhihua"}, headers=H2))] == ["H002"]
    assert ok(client.get("/whoami", headers=H2)) == {"name": "his:H002-holder", "role": "his:H002", "hospital_id": "H002"}


def test_running_totals(client: TestClient) -> None:
    assert ok(client.get("/totals", params={"pool": "panzhihua", "year": 2020}, headers=AUDITOR)) == []
    with LedgerStore.open(client.database_url) as store:  # type: ignore[attr-defined]
        create_tables(store.engine)
        upsert(store.engine, [recompute(store, Key("panzhihua", 2020, h)) for h in ("H001", "H002")])
    rows = ok(client.get("/totals", params={"pool": "panzhihua", "year": 2020}, headers=AUDITOR))
    assert [(r["hospital_id"], r["net_points"]) for r in rows] == [("H001", "260.8000"), ("H002", "75.3950")]
    own = ok(client.get("/totals", params={"pool": "panzhihua", "year": 2020}, headers=H2))
    assert [r["hospital_id"] for r in own] == ["H002"]


def test_not_found_cannot_compute_and_bad_parameters_name_the_field(client: TestClient) -> None:
    problem(client.get("/balance", params={"hospital": "H404", "as_of": "2020-06-30"}, headers=OP), 404, "not_found")
    problem(client.get("/explain", params={"case": "C404"}, headers=OP), 404, "not_found")
    problem(client.get("/clearing", params={"pool": "nowhere", "year": 2020}, headers=OP), 404, "not_found")
    problem(client.get("/hospitals", params={"pool": "nowhere"}, headers=OP), 404, "not_found")
    no_budget = problem(client.get("/clearing", params={"pool": "panzhihua", "year": 2021}, headers=OP), 409,
                        "cannot_compute")
    assert "no BudgetSet" in no_budget["detail"]
    problem(client.get("/clearing", params={"pool": "panzhihua", "year": 2020, "known_at": "yesterday"}, headers=OP),
            422, "invalid_parameter", "known_at")
    problem(client.get("/balance", params={"hospital": "H001", "as_of": "30/06/2020"}, headers=OP), 422,
            "invalid_parameter", "as_of")
    problem(client.get("/clearing", params={"pool": "panzhihua", "year": 1999}, headers=OP), 422, "invalid_parameter",
            "year")
    missing = problem(client.get("/balance", params={"hospital": "H001"}, headers=OP), 422, "invalid_parameter", "as_of")
    assert missing["errors"] == [{"field": "as_of", "reason": "Field required"}]
    problem(client.get("/explain", params={"case": "C1\u200b"}, headers=OP), 422, "invalid_parameter", "case")
    problem(client.get("/nowhere", headers=OP), 404, "not_found")
    problem(client.delete("/events", headers=OP), 405, "method_not_allowed")


# --------------------------------------------------------------------------- writes


def test_his_submits_its_own_cases_idempotently(client: TestClient) -> None:
    new_case = f.case("C3", hospital_id="H001", discharge_date="2020-10-01", recorded_at=None, drg_code="GB21",
                      total_cost="9500.00")
    first = ok(client.post("/events", json=new_case, headers=H1))
    assert first == {"accepted": 1, "duplicates": 0, "rejected": 0,
                     "events": [{"index": 0, "event_id": "his-H001-C3-r1", "fate": "accepted", "field": None,
                                 "reason": None}]}
    again = ok(client.post("/events", json=[new_case], headers=H1))
    assert again["duplicates"] == 1 and again["events"][0]["fate"] == "duplicate"
    assert ok(client.get("/cases", params={"hospital": "H001", "year": 2020}, headers=H1))["total"] == 2


def test_rejected_events_are_a_problem_listing_every_fate_and_kept_as_dead_letters(client: TestClient) -> None:
    good = f.case("C4", hospital_id="H002", discharge_date="2020-11-02", recorded_at=None, drg_code="GB21",
                  total_cost="9500.00")
    bad = f.case("C5", hospital_id="H002", recorded_at=None, total_cost="12,000")
    body = "[" + json.dumps(good) + ",\n " + json.dumps(bad) + "]"
    answer = problem(client.post("/events", content=body, headers={**OP, "Content-Type": "application/json"}), 422,
                     "rejected_events", "[1].payload.total_cost")
    assert (answer["accepted"], answer["duplicates"], answer["rejected"]) == (1, 0, 1)
    assert [e["fate"] for e in answer["events"]] == ["accepted", "rejected"]
    not_json = problem(client.post("/events", content=b"{not json", headers=OP), 422, "rejected_events")
    assert not_json["events"][0]["fate"] == "rejected"
    problem(client.post("/events", content=b"  ", headers=OP), 422, "invalid_parameter", "body")
    problem(client.post("/events", content=b"[]", headers=OP), 422, "invalid_parameter", "body")
    letters = ok(client.get("/dead-letters", headers=AUDITOR))
    assert [d["origin"] for d in letters] == ["http:operator:1", "http:operator:2"]
    assert letters[0]["raw"] == "{not json" and letters[0]["raw_length"] == 9
    # the array element is kept exactly as sent, sliced from the body, not re-serialised
    assert letters[1]["raw"] == json.dumps(bad) and letters[1]["field"] == "payload.total_cost"
    assert ok(client.get("/dead-letters", params={"limit": 1}, headers=OP))[0]["origin"] == "http:operator:1"


def test_operator_submits_any_event(client: TestClient) -> None:
    budget = f.budget("250000", year=2021, recorded_at=None)
    assert ok(client.post("/events", json=budget, headers=OP))["accepted"] == 1
    moments = ok(client.get("/moments", params={"pool": "panzhihua", "year": 2021}, headers=OP))["moments"]
    assert any(e["event_type"] == "BudgetSet" and e["amount"] == "250000" for m in moments for e in m["events"])
    # ledger-written events are refused from outside, over HTTP as from a file
    penalty = f.penalty("C1", recorded_at=None, source="operator:x")
    refused = problem(client.post("/events", json=penalty, headers=OP), 422, "rejected_events", "event_type")
    assert "written by the ledger" in refused["events"][0]["reason"]


# --------------------------------------------------------------------------- roles

ANON: dict[str, str] = {}
UNKNOWN = {"Authorization": "Bearer not-a-listed-token"}
BASIC = {"Authorization": "Basic b3A6b3A="}
CASE_H2 = f.case("C9", hospital_id="H002", recorded_at=None)
OWN_CASE = f.case("C9", hospital_id="H001", recorded_at=None)

REFUSALS: list[tuple[str, dict[str, str], str, str, dict[str, Any], Any, int, str | None]] = [
    # name, headers, method, path, params, json body, status, field
    ("anonymous write", ANON, "POST", "/events", {}, OWN_CASE, 401, None),
    ("anonymous clearing record", ANON, "POST", "/clearing", {"pool": "panzhihua", "year": 2020}, None, 401, None),
    ("anonymous read", ANON, "GET", "/clearing", {"pool": "panzhihua", "year": 2020}, None, 401, None),
    ("unknown token", UNKNOWN, "GET", "/balance", {"hospital": "H001", "as_of": "2020-06-30"}, None, 401, None),
    ("not a bearer token", BASIC, "POST", "/events", {}, OWN_CASE, 401, None),
    ("anonymous whoami", ANON, "GET", "/whoami", {}, None, 401, None),
    ("auditor writes events", AUDITOR, "POST", "/events", {}, OWN_CASE, 403, None),
    ("auditor records a clearing", AUDITOR, "POST", "/clearing", {"pool": "panzhihua", "year": 2020}, None, 403, None),
    ("his records a clearing", H1, "POST", "/clearing", {"pool": "panzhihua", "year": 2020}, None, 403, None),
    ("his submits another hospital's source", H1, "POST", "/events", {}, CASE_H2, 403, "source"),
    ("his submits another hospital's case", H1, "POST", "/events", {},
     {**CASE_H2, "source": "his:H001"}, 403, "payload.hospital_id"),
    ("his submits a budget", H1, "POST", "/events", {}, {**f.budget("1", year=2020), "source": "his:H001"}, 403,
     "event_type"),
    ("his submits a verdict", H1, "POST", "/events", {}, {**f.verdict("C1"), "source": "his:H001"}, 403, "event_type"),
    ("his array with another hospital's case second", H1, "POST", "/events", {},
     [OWN_CASE, {**CASE_H2, "source": "his:H001"}], 403, "[1].payload.hospital_id"),
    ("his withdraws another hospital's case", H1, "POST", "/events", {},
     {**f.withdrawal("C2", hospital_id="H002", recorded_at=None), "source": "his:H001"}, 403, "payload.hospital_id"),
    ("his reads another balance", H1, "GET", "/balance", {"hospital": "H002", "as_of": "2020-06-30"}, None, 403,
     "hospital"),
    ("his reads another series", H1, "GET", "/balance-series", {"hospital": "H002", "year": 2020}, None, 403, "hospital"),
    ("his reads another's cases", H1, "GET", "/cases", {"hospital": "H002", "year": 2020}, None, 403, "hospital"),
    ("his explains another's case", H1, "GET", "/explain", {"case": "C2"}, None, 403, "case"),
    ("his reads another's totals", H1, "GET", "/totals", {"pool": "panzhihua", "year": 2020, "hospital": "H002"}, None,
     403, "hospital"),
    ("his reads dead letters", H1, "GET", "/dead-letters", {}, None, 403, None),
    ("his reads another pool's clearing", H1, "GET", "/clearing", {"pool": "xuancheng", "year": 2020}, None, 403, "pool"),
    ("his reads another pool's policy", H1, "GET", "/policies", {"pool": "xuancheng", "on": "2020-06-30"}, None, 403,
     "pool"),
    ("his reads another pool's moments", H1, "GET", "/moments", {"pool": "xuancheng", "year": 2020}, None, 403, "pool"),
    ("his reads another pool's hospitals", H1, "GET", "/hospitals", {"pool": "xuancheng"}, None, 403, "pool"),
]


def test_every_role_refusal_is_a_problem_with_its_reason_and_one_log_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with LedgerStore.open(client.database_url) as store:  # type: ignore[attr-defined]
        events_before = store.counts()["events"]
    for name, headers, method, path, params, body, status, field in REFUSALS:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="drg_ledger.service"):
            response = client.request(method, path, params=params, json=body, headers=headers)
        code = "unauthenticated" if status == 401 else "forbidden"
        try:
            answer = problem(response, status, code, field)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None
        if status == 401:
            assert response.headers["www-authenticate"].startswith("Bearer"), name
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "drg_ledger.service"]
        assert len(lines) == 1, (name, lines)
        line = lines[0]
        expected_role = {id(H1): "his:H001", id(AUDITOR): "auditor"}.get(id(headers),
                                                                           "unknown-token" if headers is UNKNOWN else "anonymous")
        assert (line["event"], line["status"], line["path"], line["reason"]) == ("refused", status, path,
                                                                                answer["detail"]), name
        assert line["role"] == expected_role, (name, line)
        assert line["field"] == field, name
    with LedgerStore.open(client.database_url) as store:  # type: ignore[attr-defined]
        assert store.counts()["events"] == events_before  # nothing refused was ingested
        assert store.dead_letters() == []


def test_health_and_metrics_need_no_token_and_count_requests_events_and_refusals(client: TestClient) -> None:
    health = ok(client.get("/healthz"))
    assert health["status"] == "ok" and health["database"] in ("sqlite", "postgresql") and health["position"] > 0
    client.get("/clearing", params={"pool": "panzhihua", "year": 2020})  # 401
    client.post("/events", json=f.case("C7", hospital_id="H001", recorded_at=None, discharge_date="2020-12-01"),
                headers=H1)
    client.post("/events", content=b"nope", headers=OP)
    text = client.get("/metrics").text
    assert 'drg_ledger_events_total{fate="accepted"} 1.0' in text
    assert 'drg_ledger_events_total{fate="rejected"} 1.0' in text
    assert 'drg_ledger_http_requests_total{method="GET",route="/clearing",status="401"} 1.0' in text
    assert 'drg_ledger_http_refusals_total{role_kind="anonymous",status="401"} 1.0' in text
    assert 'drg_ledger_http_request_duration_seconds_count{method="GET",route="/healthz"} 1.0' in text


def test_an_unknown_query_parameter_is_refused_by_name(client: TestClient) -> None:
    typo = problem(client.get("/clearing", params={"pool": "panzhihua", "year": 2020, "knownat": BEFORE}, headers=OP),
                   422, "invalid_parameter", "knownat")
    assert "known_at" in typo["detail"]


def test_the_page_docs_and_openapi_are_served_with_every_asset(client: TestClient) -> None:
    import re

    for lang, title in (("zh", "DRG 点数法结算账本"), ("en", "DRG point-method settlement ledger")):
        page = client.get("/", params={"lang": lang, "pool": "panzhihua", "year": "2020", "hospital": "H001"})
        assert page.status_code == 200 and f"<title>{title}</title>" in page.text
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert "/static/vendor/uplot/uPlot.iife.min.js" in assets and "/static/app.js" in assets
        for asset in assets:
            assert asset.startswith("/"), asset  # nothing from outside the process
            if asset.startswith("/static/"):
                assert client.get(asset).status_code == 200, asset
    docs = client.get("/docs").text
    scripts = re.findall(r'(?:src|href)="([^"]+)"', docs)
    assert scripts and all(s.startswith("/") for s in scripts), scripts
    assert all(client.get(s).status_code == 200 for s in scripts if s.startswith("/static/"))
    assert '"validatorUrl": null' in docs
    spec = ok(client.get("/openapi.json"))
    assert spec["openapi"].startswith("3.1") and spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "application/problem+json" in spec["paths"]["/clearing"]["get"]["responses"]["403"]["content"]


def test_a_store_that_does_not_answer_is_a_503_problem() -> None:
    # Nothing listens on port 1 of loopback: the store cannot be opened.
    app = create_app("postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2", TokenBook.empty())
    with TestClient(app, raise_server_exceptions=False) as c:
        problem(c.get("/healthz"), 503, "store_unavailable")
