"""The committed JSON Schema files match the pydantic models (schemas/export.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from schemas.export import OUT, render, schemas

EXAMPLE = {
    "event_id": "his-H001-2020-000123-r1", "event_type": "CaseSubmitted", "schema_version": 1,
    "recorded_at": "2020-03-02T10:00:00+08:00", "source": "his:H001",
    "payload": {"case_id": "C1", "hospital_id": "H001", "revision": 1, "admission_date": "2020-02-20",
                "discharge_date": "2020-03-01", "drg_code": "BJ11", "total_cost": "23000.00",
                "procedure_codes": ["04.0200x005"]},
}


@pytest.mark.parametrize("name", sorted(schemas()))
def test_committed_schema_matches_the_model(name: str) -> None:
    path = OUT / name
    assert path.exists(), f"{name} missing: run python -m schemas.export"
    assert path.read_text(encoding="utf-8") == render(schemas()[name])


def test_exported_union_schema_accepts_the_contract_example_and_refuses_a_typo() -> None:
    schema = json.loads((OUT / "ledger-event.schema.json").read_text(encoding="utf-8"))
    validator = Draft202012Validator(schema)
    assert not list(validator.iter_errors(EXAMPLE))
    bad = json.loads(json.dumps(EXAMPLE))
    bad["payload"]["total_kost"] = "1"
    assert list(validator.iter_errors(bad))


def test_every_event_type_has_a_schema_file() -> None:
    names = {p.name.removesuffix(".schema.json") for p in Path(OUT / "events").glob("*.json")}
    assert names == {"HospitalRegistered", "PolicyVersionPublished", "CoefficientChanged", "BudgetSet", "CaseSubmitted",
                     "CaseWithdrawn", "ReviewVerdictRecorded", "PenaltyImposed", "PrepaymentMade", "ClearingCompleted",
                     "HistoryBackfilled"}
