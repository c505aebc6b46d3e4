"""Schemathesis against the service's own OpenAPI document: no 5xx, no response outside its schema.

Every operation gets generated requests, valid and invalid, sent as the operator (who may
call everything, so the requests reach the store: invalid events end as dead letters) and
checked: not a server error, status code and content type declared, body valid against the
declared schema, invalid input refused with a 4xx. Examples are bounded so the whole run
takes seconds. The store is a real SQLite file with the hand-worked story loaded.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from drg_ledger.service.app import create_app
from drg_ledger.service.auth import Principal, TokenBook, hash_token
from tests.integration.test_service_api import load_story

TOKEN = "schemathesis-operator-token"
SEEN: dict[str, set[int]] = {}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]


# The schema is read from the app at import (serving /openapi.json opens no store); the store
# itself is filled before the first test (schemathesis' lazy fixture loader predates this pytest).
_DIR = Path(tempfile.mkdtemp(prefix="drg-schemathesis-"))
_URL = f"sqlite:///{_DIR / 'ledger.db'}"
APP = create_app(_URL, TokenBook({hash_token(TOKEN): Principal("fuzzer", "operator")}), stores=2)
# 413 is a rejection too: a body over the service's 16 MiB is refused before it is parsed.
CONFIG = schemathesis.Config.from_dict({"auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}}}, "checks": {"negative_data_rejection": {"expected-statuses": [
    400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]}}})
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG)


@pytest.fixture(scope="module", autouse=True)
def story_store() -> Iterator[str]:
    load_story(_URL)
    yield _URL
    APP.state.store_pool.close()
    shutil.rmtree(_DIR, ignore_errors=True)


def test_the_openapi_document_is_3_1() -> None:
    assert schema.raw_schema["openapi"].startswith("3.1")
    assert {"/events", "/clearing", "/balance", "/balance-series", "/explain", "/cases", "/totals", "/dead-letters",
            "/policies", "/moments", "/hospitals", "/pools", "/healthz", "/metrics"} <= set(schema.raw_schema["paths"])


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
def test_no_server_error_and_every_response_matches_its_schema(case: Any) -> None:
    response = case.call_and_validate(checks=CHECKS)
    SEEN.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)


def test_the_generated_requests_were_answered_not_only_refused() -> None:
    """Authenticated as the operator, the fuzzer got real answers: computed figures and refused events."""
    assert 200 in SEEN["GET /clearing"] and 200 in SEEN["GET /balance-series"] and 200 in SEEN["GET /explain"]
    assert 422 in SEEN["POST /events"] and 201 in SEEN["POST /clearing"]
    assert all(statuses - {401} for statuses in SEEN.values()), SEEN
