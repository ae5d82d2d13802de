"""RFC 9457 problem details: routes raise `Problem`; one set of handlers renders every error."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.validation import describe

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):  # noqa: N818 (RFC 9457 calls it a problem)
    """An error the client can act on: status, a short title, a detail that quotes the value."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


def not_found(kind: str, identifier: str) -> Problem:
    return Problem(404, "Not Found", f"no {kind} '{identifier}'")


def _response(request: Request, status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    body["instance"] = request.url.path
    body.update(extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def problem(request: Request, error: Problem) -> JSONResponse:
        return _response(request, error.status, error.title, error.detail, **error.extra)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [
            dict(zip(("field", "message"), describe(item), strict=True)) for item in error.errors()
        ]
        detail = errors[0]["message"] if errors else "invalid request"
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more in 'errors')"
        return _response(request, 422, "Invalid Request", detail, errors=errors)

    @app.exception_handler(HTTPException)
    async def http(request: Request, error: HTTPException) -> JSONResponse:
        return _response(request, error.status_code, str(error.detail), str(error.detail))
