"""RFC 9457 problem details: every error the service answers, with a code and the field it is about.

A problem document is `application/problem+json`: `type` (`urn:drg-ledger:problem:<code>`),
`title`, `status`, `detail`, `instance` (the request path), and our members `code` (one of
`Code`, STYLE.md 10), `field` (the parameter or event field at fault, when there is one) and,
for validation, `errors` (every field with its reason). Refusals (401, 403) are logged as one
JSON line each: role, path, reason (`log_refusal`).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("drg_ledger.service")


class Code(StrEnum):
    """Why a request was not answered with what it asked for."""

    UNAUTHENTICATED = "unauthenticated"  # 401: no bearer token, or one the token file does not list
    FORBIDDEN = "forbidden"  # 403: the role may not do this
    INVALID_PARAMETER = "invalid_parameter"  # 422: a parameter is malformed
    REJECTED_EVENTS = "rejected_events"  # 422: POST /events refused some events (kept as dead letters)
    NOT_FOUND = "not_found"  # 404: hospital, case, pool or route unknown
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405
    CANNOT_COMPUTE = "cannot_compute"  # 409: no budget, a policy gap, no points (CLI exit 4)
    PAYLOAD_TOO_LARGE = "payload_too_large"  # 413
    STORE_UNAVAILABLE = "store_unavailable"  # 503: the database does not answer
    INTERNAL = "internal"  # 500


TITLES = {
    Code.UNAUTHENTICATED: "Authentication required",
    Code.FORBIDDEN: "Not allowed for this role",
    Code.INVALID_PARAMETER: "Invalid parameter",
    Code.REJECTED_EVENTS: "Events rejected",
    Code.NOT_FOUND: "Not found",
    Code.METHOD_NOT_ALLOWED: "Method not allowed",
    Code.CANNOT_COMPUTE: "Cannot compute",
    Code.PAYLOAD_TOO_LARGE: "Payload too large",
    Code.STORE_UNAVAILABLE: "Store unavailable",
    Code.INTERNAL: "Internal error",
}


class FieldError(BaseModel):
    field: str
    reason: str


class ProblemDocument(BaseModel):
    """RFC 9457 problem details, with the code and field of the refusal."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="urn:drg-ledger:problem:<code>")
    title: str
    status: int
    detail: str
    instance: str = Field(description="the request path")
    code: Code
    field: str | None = Field(None, description="the parameter or event field at fault")
    errors: list[FieldError] | None = None


class Problem(Exception):
    """An error answered as a problem document."""

    def __init__(self, status: int, code: Code, detail: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.field = status, code, detail, field
        self.headers = headers or {}
        self.extra = extra


def unauthenticated(detail: str) -> Problem:
    return Problem(401, Code.UNAUTHENTICATED, detail, headers={"WWW-Authenticate": 'Bearer realm="drg-ledger"'})


def forbidden(detail: str, field: str | None = None) -> Problem:
    return Problem(403, Code.FORBIDDEN, detail, field=field)


def document(request: Request, p: Problem) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"urn:drg-ledger:problem:{p.code.value}",
        "title": TITLES[p.code],
        "status": p.status,
        "detail": p.detail,
        "instance": request.url.path,
        "code": p.code.value,
    }
    if p.field is not None:
        body["field"] = p.field
    body.update(p.extra)
    return body


def respond(request: Request, p: Problem) -> JSONResponse:
    """The problem as a response; a 401 or 403 is also logged as one refusal line."""
    if p.status in (401, 403):
        log_refusal(request, p)
    return JSONResponse(document(request, p), status_code=p.status, headers=p.headers, media_type=PROBLEM_JSON)


def log_refusal(request: Request, p: Problem) -> None:
    """One structured (JSON) line per refusal: role, path, reason, status, code, field."""
    principal = getattr(request.state, "principal", None)
    role = principal.role if principal is not None else getattr(request.state, "caller", "anonymous")
    log.warning(json.dumps({
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "event": "refused",
        "status": p.status,
        "code": p.code.value,
        "role": role,
        "token_name": principal.name if principal is not None else None,
        "method": request.method,
        "path": request.url.path,
        "field": p.field,
        "reason": p.detail,
    }, ensure_ascii=False))


def _field(loc: tuple[Any, ...]) -> str:
    """`("query", "known_at")` -> `known_at`; `("body", 0, "x")` -> `body[0].x`."""
    parts = list(loc)
    if parts and parts[0] in ("query", "path", "header", "cookie"):
        parts = parts[1:]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "request"


async def on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return respond(request, exc)


async def on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": _field(tuple(e.get("loc", ()))), "reason": str(e.get("msg", "invalid"))} for e in exc.errors()]
    first = errors[0] if errors else {"field": "request", "reason": "invalid"}
    detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
    return respond(request, Problem(422, Code.INVALID_PARAMETER, detail, field=first["field"], errors=errors))


async def on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: Code.NOT_FOUND, 405: Code.METHOD_NOT_ALLOWED, 413: Code.PAYLOAD_TOO_LARGE}.get(exc.status_code)
    if code is None:
        code = Code.INVALID_PARAMETER if 400 <= exc.status_code < 500 else Code.INTERNAL
    return respond(request, Problem(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {})))


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return respond(request, Problem(500, Code.INTERNAL, f"{type(exc).__name__}: the error is logged"))


def configure_logging(level: int = logging.INFO) -> None:
    """Refusal lines go to stderr as they are (each already one JSON object)."""
    if any(getattr(h, "_drg_ledger", False) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._drg_ledger = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = True
