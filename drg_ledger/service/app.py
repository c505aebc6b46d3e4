"""The HTTP service: the ledger's commands and queries for operators, auditors and HIS systems.

An adapter over the read side (`projections.queries`, `projections.timeline`,
`projections.running_totals`) and the store's `ingest` (STYLE.md 9): no settlement rule
lives here. Roles come from bearer tokens (`drg_ledger.service.auth`); errors are RFC 9457
problem documents naming the field (`drg_ledger.service.problems`). Dates and moments read as
the CLI reads them (`drg_ledger.moments`). The same process serves the web page and every
asset it needs, the OpenAPI document and its docs (no CDN).

Started by `drg-ledger serve`; `create_app(database_url, tokens)` builds it for tests.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import psycopg
from eventsourcing import persistence as es_persistence
from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from starlette.exceptions import HTTPException as StarletteHTTPException

from drg_ledger import moments
from drg_ledger.service import i18n
from drg_ledger.service.auth import Principal, TokenBook
from drg_ledger.service.metrics import Metrics
from drg_ledger.service.models import (
    BalanceOut,
    BalanceSeriesOut,
    CasesOut,
    ClearingOut,
    DeadLetterOut,
    ExplanationOut,
    HealthOut,
    HospitalOut,
    IngestOut,
    MomentsOut,
    PoliciesOut,
    PoolOut,
    TotalsRowOut,
    WhoAmIOut,
)
from drg_ledger.service.problems import (
    Code,
    Problem,
    ProblemDocument,
    configure_logging,
    forbidden,
    on_http,
    on_problem,
    on_unexpected,
    on_validation,
    unauthenticated,
)
from ledger.clearing import ClearingError
from ledger.events import EventType
from ledger.policy import PolicyMissing
from projections import timeline
from projections.queries import (
    NotFound,
    clear_pool,
    explain_case,
    hospital_balance,
    hospital_pool,
    now,
    record_clearing,
)
from projections.store import LedgerStore, index_table

HERE = Path(__file__).parent
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_EVENTS = 10_000
HIS_EVENT_TYPES = (EventType.CASE_SUBMITTED, EventType.CASE_WITHDRAWN)
"""What an HIS submits: its own cases (EVENTS.md "Payloads": the rest is operator-only or ledger-written)."""

STORE_DOWN = (sa_exc.OperationalError, sa_exc.InterfaceError, es_persistence.OperationalError,
              es_persistence.InterfaceError, psycopg.OperationalError, sqlite3.OperationalError)
"""The database did not answer (down, unreachable, locked past its timeout): 503, not 500."""

ID = r"^[A-Za-z0-9._:/\-]{1,128}$"
"""Identifiers as EVENTS.md "Limits on input" allows them."""

KnownAt = Annotated[str | None, Query(
    description="What the ledger knew at this moment: an ISO date (the end of that day, China time) or "
                "datetime (no zone means +08:00). Default: now. As the CLI's --known-at.",
    examples=["2021-05-11", "2021-05-12T00:00:00+08:00"], max_length=40)]
Year = Annotated[int, Query(ge=2000, le=2099, description="The clearing year (cases discharged in it).", examples=[2020])]
PoolId = Annotated[str, Query(alias="pool", pattern=ID, description="A pool (统筹区).", examples=["panzhihua"])]
HospitalId = Annotated[str, Query(pattern=ID, description="A hospital id.", examples=["H001"])]

PROBLEM = {"model": ProblemDocument, "content": {"application/problem+json": {}}}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The problem responses an operation may answer, for the OpenAPI document."""
    described = {401: "No bearer token, or one the token file does not list", 403: "The role may not do this",
                 404: "Hospital, case or pool not known", 409: "Cannot compute: no budget, a policy gap, no points",
                 413: "Body too large", 422: "A parameter or an event is invalid (the field is named)",
                 503: "The store does not answer"}
    return {s: {**PROBLEM, "description": described[s]} for s in (*statuses, 422, 503)}


class StorePool:
    """At most `size` open stores, each used by one request at a time (a store is not thread-safe).

    `close` closes every store (at shutdown); a request after it opens a fresh one.
    """

    def __init__(self, database_url: str, size: int) -> None:
        assert size >= 1
        self.database_url = database_url
        self._free: list[LedgerStore] = []
        self._slots = threading.BoundedSemaphore(size)
        self._opened: set[int] = set()
        self._lock = threading.Lock()

    @contextmanager
    def store(self) -> Iterator[LedgerStore]:
        with self._slots:
            with self._lock:
                store = self._free.pop() if self._free else None
            if store is None:
                store = LedgerStore.open(self.database_url)
                with self._lock:
                    self._opened.add(id(store))
            try:
                yield store
            finally:
                with self._lock:
                    if id(store) in self._opened:
                        self._free.append(store)
                    else:  # closed while in use
                        store.close()

    def close(self) -> None:
        with self._lock:
            free, self._free = self._free, []
            self._opened.clear()
        for store in free:
            store.close()


def known_at_of(text: str | None) -> datetime | None:
    try:
        return moments.parse_moment(text, "known_at")
    except moments.BadMoment as exc:
        raise Problem(422, Code.INVALID_PARAMETER, f"known_at: {exc.reason}", field="known_at") from None


def day_of(text: str, field: str) -> date:
    try:
        return moments.parse_day(text, field)
    except moments.BadMoment as exc:
        raise Problem(422, Code.INVALID_PARAMETER, f"{field}: {exc.reason}", field=field) from None


@contextmanager
def answering() -> Iterator[None]:
    """The read side's refusals as problems: not found 404, cannot compute 409, store down 503."""
    try:
        yield
    except NotFound as exc:
        raise Problem(404, Code.NOT_FOUND, str(exc)) from None
    except (ClearingError, PolicyMissing) as exc:
        raise Problem(409, Code.CANNOT_COMPUTE, str(exc)) from None
    except STORE_DOWN as exc:
        raise Problem(503, Code.STORE_UNAVAILABLE, f"the store does not answer: {type(exc).__name__}") from None


def split_body(raw: bytes) -> tuple[list[bytes], list[Any], bool]:
    """The body's events, each as its exact bytes, with its decoded value for the role check.

    A JSON array gives one line per element (sliced, never re-serialised, so the dead-letter
    store keeps what was sent and decimals keep their digits); anything else is one line.
    A body that is not JSON stays one line, refused by `ingest` like a bad line of a file.
    """
    try:
        text = raw.decode("utf-8")
        start = len(text) - len(text.lstrip())
        if not text[start:].startswith("["):
            return [raw], [json.loads(text)], False
        decoder = json.JSONDecoder()
        lines: list[bytes] = []
        values: list[Any] = []
        i = _skip_ws(text, start + 1)
        if text[i : i + 1] == "]":
            return [], [], True
        while True:
            value, end = decoder.raw_decode(text, i)
            lines.append(text[i:end].encode("utf-8"))
            values.append(value)
            j = _skip_ws(text, end)
            if text[j : j + 1] == ",":
                i = _skip_ws(text, j + 1)
                continue
            if text[j : j + 1] == "]" and not text[j + 1 :].strip():
                return lines, values, True
            raise ValueError("not a JSON array")
    except (ValueError, RecursionError):
        return [raw], [None], False


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def check_his_events(principal: Principal, values: list[Any], is_array: bool) -> None:
    """An HIS submits only its own hospital's case events (EVENTS.md "Payloads"): refused whole,
    naming the first field at fault, before anything is ingested. Values that are not objects
    go on to `ingest`, which refuses them like any bad line."""
    hospital = principal.hospital_id
    assert hospital is not None
    for i, value in enumerate(values):
        if not isinstance(value, dict):
            continue
        at = f"[{i}]." if is_array else ""
        if value.get("source") != principal.role:
            raise forbidden(f"role {principal.role} submits only events with source {principal.role!r}, "
                            f"not {value.get('source')!r}", f"{at}source")
        if value.get("event_type") not in HIS_EVENT_TYPES:
            raise forbidden(f"role {principal.role} submits only {' and '.join(HIS_EVENT_TYPES)}, "
                            f"not {value.get('event_type')!r}", f"{at}event_type")
        payload = value.get("payload")
        named = payload.get("hospital_id") if isinstance(payload, dict) else None
        if named != hospital:
            raise forbidden(f"role {principal.role} submits only hospital {hospital}'s cases, not {named!r}",
                            f"{at}payload.hospital_id")


def known_event_ids(store: LedgerStore, event_ids: list[str]) -> set[str]:
    """The ids among `event_ids` the store already holds (to tell accepted from duplicate)."""
    t = index_table
    found: set[str] = set()
    with store.engine.connect() as conn:
        for i in range(0, len(event_ids), 900):
            chunk = event_ids[i : i + 900]
            found.update(conn.execute(select(t.c.event_id).where(t.c.event_id.in_(chunk))).scalars())
    return found


def ingest_lines(store: LedgerStore, principal: Principal, lines: list[bytes], values: list[Any],
                 is_array: bool) -> dict[str, Any]:
    """`LedgerStore.ingest` of the body's lines, never with backfill; the fate of each event."""
    ids = [v.get("event_id") if isinstance(v, dict) and isinstance(v.get("event_id"), str) else None for v in values]
    before = known_event_ids(store, [i for i in ids if i is not None])
    report = store.ingest(lines, origin=f"http:{principal.role}:", backfill=False)
    refused = {r.line - 1: r for r in report.rejected}
    seen: set[str] = set()
    fates: list[dict[str, Any]] = []
    for index, event_id in enumerate(ids):
        r = refused.get(index)
        if r is not None:
            field = f"[{index}].{r.field}" if is_array and r.field else (f"[{index}]" if is_array else r.field)
            fates.append({"index": index, "event_id": r.event_id, "fate": "rejected", "field": field or None,
                          "reason": r.reason})
            continue
        duplicate = event_id in before or event_id in seen
        if event_id is not None:
            seen.add(event_id)
        fates.append({"index": index, "event_id": event_id, "fate": "duplicate" if duplicate else "accepted"})
    return {"accepted": report.accepted, "duplicates": report.duplicates, "rejected": len(report.rejected),
            "events": fates}


bearer = HTTPBearer(auto_error=False, description="A token listed (hashed) in the token file: drg-ledger token")


def caller(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> Principal:
    """The principal of the request's bearer token (401 without one, or with one the file does not list)."""
    if credentials is None:
        raise unauthenticated("no bearer token: send Authorization: Bearer <token>")
    tokens: TokenBook = request.app.state.tokens
    principal = tokens.lookup(credentials.credentials)
    if principal is None:
        request.state.caller = "unknown-token"
        raise unauthenticated("the bearer token is not in the token file")
    request.state.principal = principal
    return principal


Caller = Annotated[Principal, Depends(caller)]


def _query_names(dependant: Any) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def reject_unknown_query(request: Request) -> None:
    """A query parameter the operation does not take is refused, named: `?knownat=` must not
    quietly answer as known now."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    allowed = _query_names(dependant)
    for name in request.query_params:
        if name not in allowed:
            raise Problem(422, Code.INVALID_PARAMETER,
                          f"{name}: unknown query parameter" + (f"; this operation takes {', '.join(sorted(allowed))}"
                                                                if allowed else "; this operation takes none"),
                          field=name or "query")


def create_app(database_url: str, tokens: TokenBook, *, stores: int = 4) -> FastAPI:
    """The service over the store at `database_url`, with the roles of `tokens`."""
    configure_logging()
    pool = StorePool(database_url, stores)
    metrics = Metrics()
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        yield
        pool.close()

    app = FastAPI(
        title="drg-ledger",
        version="1",
        summary="Event-sourced settlement ledger for DRG point-method hospital payment (按疾病诊断相关分组结合点数法付费)",
        description=(
            "Clearing, balances and explanations as of any date and as known at any moment. "
            "Send `Authorization: Bearer <token>`; roles: `operator`, `auditor`, `his:<hospital_id>`. "
            "Errors are RFC 9457 `application/problem+json` naming the field."
        ),
        docs_url=None, redoc_url=None, lifespan=lifespan, dependencies=[Depends(reject_unknown_query)],
    )
    app.state.store_pool = pool
    app.state.tokens = tokens
    app.state.metrics = metrics
    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
    app.middleware("http")(metrics.middleware)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")


    def reads_hospital(p: Principal, hospital_id: str, field: str = "hospital") -> None:
        if not p.reads_everything and p.hospital_id != hospital_id:
            raise forbidden(f"role {p.role} reads only hospital {p.hospital_id}, not {hospital_id}", field)

    def reads_pool(p: Principal, store: LedgerStore, pool_id: str) -> None:
        if p.reads_everything:
            return
        own = store.hospitals().get(p.hospital_id or "")
        if own is None or own.pool != pool_id:
            raise forbidden(f"role {p.role} reads only its own hospital's pool, not {pool_id}", "pool")

    def operates(p: Principal, what: str) -> None:
        if not p.is_operator:
            raise forbidden(f"role {p.role} may not {what}: operator only")

    # ------------------------------------------------------------------ writes

    @app.post("/events", response_model=IngestOut, tags=["events"], summary="Submit events",
              responses=problems(401, 403, 413), openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"oneOf": [
                      {"type": "object", "description": "one envelope (EVENTS.md; schemas/json/ledger-event.schema.json)"},
                      {"type": "array", "items": {"type": "object"}, "maxItems": MAX_EVENTS,
                       "description": "several envelopes"}]}}}}})
    async def post_events(request: Request, principal: Caller) -> Any:
        """Append one envelope or a JSON array of them, as `drg-ledger ingest` does: the same
        validation, idempotency and dead-letter store, never a backfill. Each event's fate is
        in the answer; any rejected event makes it a 422 problem that still lists every fate
        (the rest were ingested). `operator` submits any event; `his:H` only `CaseSubmitted`
        and `CaseWithdrawn` with `source` `his:H` and `payload.hospital_id` H (else 403, the
        field named, nothing ingested); `auditor` writes nothing."""
        if not (principal.is_operator or principal.hospital_id is not None):
            raise forbidden(f"role {principal.role} writes nothing")
        raw = bytearray()
        async for chunk in request.stream():
            raw.extend(chunk)
            if len(raw) > MAX_BODY_BYTES:
                raise Problem(413, Code.PAYLOAD_TOO_LARGE, f"the body is over {MAX_BODY_BYTES} bytes", field="body")
        if not bytes(raw).strip():
            raise Problem(422, Code.INVALID_PARAMETER, "body: empty; send one envelope or a JSON array", field="body")
        lines, values, is_array = split_body(bytes(raw))
        if is_array and not lines:
            raise Problem(422, Code.INVALID_PARAMETER, "body: an empty array", field="body")
        if len(lines) > MAX_EVENTS:
            raise Problem(422, Code.INVALID_PARAMETER, f"body: {len(lines)} events; at most {MAX_EVENTS} a request",
                          field="body")
        if principal.hospital_id is not None:
            check_his_events(principal, values, is_array)

        def run() -> dict[str, Any]:
            with answering(), pool.store() as store:
                return ingest_lines(store, principal, lines, values, is_array)

        out = await run_in_threadpool(run)
        for fate in out["events"]:
            metrics.events.labels(fate=fate["fate"]).inc()
        if out["rejected"]:
            first = next(f for f in out["events"] if f["fate"] == "rejected")
            raise Problem(422, Code.REJECTED_EVENTS,
                          f"{out['rejected']} of {len(out['events'])} events rejected and kept as dead letters; "
                          f"first: {first['field'] or 'event'}: {first['reason']}", field=first["field"], **out)
        return out

    @app.post("/clearing", response_model=ClearingOut, status_code=201, tags=["clearing"],
              summary="Record a clearing", responses=problems(401, 403, 404, 409))
    def post_clearing(principal: Caller, pool_id: PoolId, year: Year,
                        known_at: KnownAt = None) -> Any:
        """Clear the pool-year as known at `known_at` and append it as `ClearingCompleted`
        (`drg-ledger clear --record`; RULES.md 5, 6). Operator only."""
        operates(principal, "record a clearing")
        moment = known_at_of(known_at)
        with answering(), pool.store() as store:
            if not any(h.pool == pool_id for h in store.hospitals().values()):
                raise NotFound(f"pool {pool_id} has no registered hospital")
            result = clear_pool(store, pool_id, year, moment)
            event_id, new = record_clearing(store, result)
        return {**result.as_json(), "recorded": True, "recorded_event_id": event_id, "recorded_now": new}

    # ------------------------------------------------------------------ reads

    @app.get("/clearing", response_model=ClearingOut, tags=["clearing"], summary="Clearing of a pool-year",
             responses=problems(401, 403, 404, 409))
    def get_clearing(principal: Caller, pool_id: PoolId, year: Year,
                     known_at: KnownAt = None) -> Any:
        """Year-end clearing as known at `known_at` (RULES.md 5; `drg-ledger clear`), read-only.
        An HIS sees its own pool's point value and totals and its own line only."""
        moment = known_at_of(known_at)
        with answering(), pool.store() as store:
            reads_pool(principal, store, pool_id)
            if not any(h.pool == pool_id for h in store.hospitals().values()):
                raise NotFound(f"pool {pool_id} has no registered hospital")
            data = clear_pool(store, pool_id, year, moment).as_json()
        if not principal.reads_everything:
            data["hospitals"] = [h for h in data["hospitals"] if h["hospital_id"] == principal.hospital_id]
        return data

    @app.get("/balance", response_model=BalanceOut, tags=["balances"], summary="A hospital's balance",
             responses=problems(401, 403, 404, 409))
    def get_balance(principal: Caller, hospital: HospitalId, as_of: Annotated[str, Query(
            description="Balance date YYYY-MM-DD.", examples=["2020-06-30"], max_length=10)],
                    known_at: KnownAt = None) -> Any:
        """A hospital's balance at `as_of`, as known at `known_at` (RULES.md 6; `drg-ledger balance`)."""
        reads_hospital(principal, hospital)
        day = day_of(as_of, "as_of")
        moment = known_at_of(known_at)
        with answering(), pool.store() as store:
            return hospital_balance(store, hospital, day, moment).as_json()

    @app.get("/balance-series", response_model=BalanceSeriesOut, tags=["balances"],
             summary="A hospital's balance at every month end", responses=problems(401, 403, 404, 409))
    def get_balance_series(principal: Caller, hospital: HospitalId, year: Year, known_at: KnownAt = None) -> Any:
        """The balance at each of the year's 12 month ends, as known at `known_at` (RULES.md 6):
        what the web page draws. A month end that cannot be computed carries `error`."""
        reads_hospital(principal, hospital)
        moment = known_at_of(known_at)
        with answering(), pool.store() as store:
            at = moment or now()
            series = timeline.balance_series(store, hospital, year, at)
            pool_id = hospital_pool(store, hospital)
        return {"hospital_id": hospital, "pool": pool_id, "year": year, "known_at": at.isoformat(),
                "months": [m.as_json() for m in series]}

    @app.get("/explain", response_model=ExplanationOut, tags=["cases"], summary="A case's points step by step",
             responses=problems(401, 403, 404, 409))
    def get_explain(principal: Caller, case: Annotated[str, Query(pattern=ID, description="A case id.", examples=["C1"])],
                    known_at: KnownAt = None) -> Any:
        """Policy versions used, case type, coefficient and why, verdicts, penalty
        (`drg-ledger explain`). An HIS reads only its own hospital's cases."""
        moment = known_at_of(known_at)
        with answering(), pool.store() as store:
            data = explain_case(store, case, moment)
        reads_hospital(principal, data["hospital_id"], "case")
        return data

    @app.get("/cases", response_model=CasesOut, tags=["cases"], summary="A hospital's cases with their points",
             responses=problems(401, 403, 404, 409))
    def get_cases(principal: Caller, hospital: HospitalId, year: Year, known_at: KnownAt = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                  offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0) -> Any:
        """The hospital's live cases discharged in `year` as known at `known_at`, largest net
        points first (RULES.md 3, 4)."""
        reads_hospital(principal, hospital)
        moment = known_at_of(known_at)
        with answering(), pool.store() as store:
            return timeline.hospital_cases(store, hospital, year, moment, limit=limit, offset=offset)

    @app.get("/totals", response_model=list[TotalsRowOut], tags=["balances"],
             summary="Running point totals", responses=problems(401, 403))
    def get_totals(principal: Caller, pool_id: PoolId, year: Year,
                   hospital: Annotated[str | None, Query(pattern=ID)] = None) -> Any:
        """Running totals per hospital as the stream worker last computed them (`drg-ledger totals`).
        An HIS reads only its own row."""
        from projections.running_totals import create_tables, read_rows

        if not principal.reads_everything:
            if hospital is not None:
                reads_hospital(principal, hospital)
            hospital = principal.hospital_id
        with answering(), pool.store() as store:
            create_tables(store.engine)
            return [r.as_json() for r in read_rows(store.engine, pool_id, year, hospital)]

    @app.get("/dead-letters", response_model=list[DeadLetterOut], tags=["events"],
             summary="Rejected input", responses=problems(401, 403))
    def get_dead_letters(principal: Caller, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Any:
        """The latest refused lines, newest first, kept whole with reason and origin
        (`drg-ledger dead-letters`). Operators and auditors only: they hold other hospitals' bytes."""
        if not principal.reads_everything:
            raise forbidden(f"role {principal.role} may not read dead letters: operators and auditors only")
        with answering(), pool.store() as store:
            rows = store.dead_letters(limit=limit)
        return [{**r.as_json(raw=True), "raw_base64": base64.b64encode(r.raw).decode("ascii")} for r in rows]

    @app.get("/policies", response_model=PoliciesOut, tags=["policy"], summary="Policy in force",
             responses=problems(401, 403, 404))
    def get_policies(principal: Caller, pool_id: PoolId,
                     on: Annotated[str, Query(description="Valid-time date YYYY-MM-DD.", examples=["2020-06-30"],
                                              max_length=10)],
                     known_at: KnownAt = None, body: bool = False) -> Any:
        """The component versions and coefficient changes of the pool in force on `on`, as known
        at `known_at` (RULES.md 2, 3); `body=true` adds each version's data."""
        day = day_of(on, "on")
        moment = known_at_of(known_at)
        with answering(), pool.store() as store:
            reads_pool(principal, store, pool_id)
            timeline.pool_hospitals(store, pool_id)  # 404 for a pool nobody registered in
            return timeline.policies_in_force(store, pool_id, day, moment, with_body=body)

    @app.get("/moments", response_model=MomentsOut, tags=["policy"], summary="A pool-year's policy moments",
             responses=problems(401, 403, 404))
    def get_moments(principal: Caller, pool_id: PoolId, year: Year) -> Any:
        """The instants at which the pool-year's figures can change: policy versions and
        coefficient changes valid in the year, its budget, its recorded clearings."""
        with answering(), pool.store() as store:
            reads_pool(principal, store, pool_id)
            timeline.pool_hospitals(store, pool_id)
            return {"pool": pool_id, "year": year, "moments": timeline.policy_moments(store, pool_id, year)}

    @app.get("/hospitals", response_model=list[HospitalOut], tags=["pools"], summary="The hospitals of a pool",
             responses=problems(401, 403, 404))
    def get_hospitals(principal: Caller, pool_id: PoolId) -> Any:
        """The pool's registered hospitals (an HIS: its own)."""
        with answering(), pool.store() as store:
            reads_pool(principal, store, pool_id)
            rows = timeline.pool_hospitals(store, pool_id)
        return [h for h in rows if principal.reads_everything or h["hospital_id"] == principal.hospital_id]

    @app.get("/pools", response_model=list[PoolOut], tags=["pools"], summary="Pools and their years",
             responses=problems(401))
    def get_pools(principal: Caller) -> Any:
        """Every pool with a registered hospital, and the years with cases or a budget (an HIS: its own)."""
        with answering(), pool.store() as store:
            rows = timeline.pools(store)
            own = store.hospitals().get(principal.hospital_id or "")
        if principal.reads_everything:
            return rows
        return [{**r, "hospitals": 1} for r in rows if own is not None and r["pool"] == own.pool]

    @app.get("/whoami", response_model=WhoAmIOut, tags=["service"], summary="The caller's role",
             responses=problems(401))
    def whoami(principal: Caller) -> Any:
        return {"name": principal.name, "role": principal.role, "hospital_id": principal.hospital_id}

    @app.get("/healthz", response_model=HealthOut, tags=["service"], summary="Store reachable",
             responses={503: {**PROBLEM, "description": "The store does not answer"}})
    def healthz() -> Any:
        """`ok` when the store answers (no token needed)."""
        from projections.running_totals import store_position

        with answering(), pool.store() as store:
            with store.engine.connect() as conn:
                position = store_position(conn)
            return {"status": "ok", "database": store.engine.dialect.name, "position": position}

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition"}})
    def get_metrics() -> Response:
        """Requests, latency, events accepted/duplicate/rejected, refusals (no token needed)."""
        return metrics.render()

    # ------------------------------------------------------------------ page and docs

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request, lang: str = "zh", pool: str | None = None, year: str | None = None,
             hospital: str | None = None, known_at: str | None = None) -> Any:
        """The web page; `pool`, `year`, `hospital`, `known_at` are its state, read by its script."""
        language = lang if lang in i18n.TEXT else "zh"
        return templates.TemplateResponse(request, "index.html", {
            "t": i18n.TEXT[language], "lang": language, "other": "en" if language == "zh" else "zh",
            # "<" escaped: the JSON sits inside a <script> element.
            "i18n_json": json.dumps(i18n.TEXT[language], ensure_ascii=False).replace("<", "\\u003c"),
        })

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="drg-ledger API",
            swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False},
        )

    return app
