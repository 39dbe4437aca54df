"""Errors on the wire, in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``,
with the status codes the official client maps to its exception classes."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from genq.api.responses import ApiResponse
from genq.errors import (
    BrokerUnavailableError,
    IdempotencyConflictError,
    InvalidIdError,
    InvalidJobError,
    JobNotFoundError,
    QuotaExceededError,
    RedisAccessError,
    WebhookTargetError,
)
from genq.settings import RETRY_AFTER_S

log = logging.getLogger(__name__)

# OpenAI's error types, by status (the client picks its exception class by status alone).
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An answer other than success: status, one-line message, and OpenAI's ``param``/``code``.

    ``retry`` is whether the client should retry: the official client retries 409 and 5xx
    unless told not to (``x-should-retry: false``), and waits ``retry_after_s`` when given.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: int | None = None,
        retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s
        self.retry = retry

    def response(self) -> ApiResponse:
        headers: dict[str, str] = {}
        if self.retry_after_s is not None:
            headers["retry-after"] = str(self.retry_after_s)
        if self.retry is not None:
            headers["x-should-retry"] = "true" if self.retry else "false"
        return ApiResponse(
            error_body(self.status, self.message, self.code, self.param), self.status, headers
        )


def error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> dict[str, object]:
    """The error object OpenAI sends (also inside a batch's output lines)."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def not_found(what: str, ident: str, param: str | None = None) -> ApiError:
    """404 for a missing object, and for another tenant's: the two cannot be told apart."""
    return ApiError(404, f"No {what} found with id {ident[:80]!r}.", code="not_found", param=param)


def install_handlers(app: FastAPI) -> None:
    """Answer every error in OpenAI's shape, whatever raised it."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> ApiResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> ApiResponse:
        problems = e.errors()
        first = problems[0] if problems else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        message = "; ".join(problem_line(p) for p in problems[:5]) or "invalid request"
        return ApiError(400, message, code="invalid_value", param=".".join(loc) or None).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> ApiResponse:
        response = ApiError(e.status_code, str(e.detail)).response()
        response.headers.update(e.headers or {})  # e.g. Allow on a 405
        return response

    @app.exception_handler(JobNotFoundError)
    async def _missing(_: Request, e: JobNotFoundError) -> ApiResponse:
        return ApiError(404, str(e), code="not_found").response()

    @app.exception_handler(QuotaExceededError)
    async def _quota(_: Request, e: QuotaExceededError) -> ApiResponse:
        response = ApiError(429, str(e), code="quota_exceeded").response()
        response.headers["retry-after"] = str(e.retry_after_s)
        return response

    @app.exception_handler(IdempotencyConflictError)
    async def _conflict(_: Request, e: IdempotencyConflictError) -> ApiResponse:
        return ApiError(409, str(e), code="idempotency_conflict", retry=False).response()

    @app.exception_handler(InvalidJobError)
    @app.exception_handler(InvalidIdError)
    @app.exception_handler(WebhookTargetError)
    async def _bad(_: Request, e: Exception) -> ApiResponse:
        return ApiError(400, str(e), code="invalid_value").response()

    @app.exception_handler(RedisAccessError)
    async def _refused(_: Request, e: RedisAccessError) -> ApiResponse:
        log.error("Redis refused the API: %s", e)
        return ApiError(500, "the service's store refused it; an operator must look").response()

    @app.exception_handler(BrokerUnavailableError)
    async def _away(_: Request, e: BrokerUnavailableError) -> ApiResponse:
        log.warning("Redis unreachable: %s", e)
        return _unavailable()

    @app.exception_handler(redis.exceptions.RedisError)
    async def _redis(request: Request, e: redis.exceptions.RedisError) -> ApiResponse:
        # Outside the client's own calls (which say which Redis failed), the API's reads and
        # writes are the results store's: files, batches, jobs, idempotency keys, webhooks.
        problem = request.app.state.genq.client.results_endpoint.explain(e)
        if isinstance(problem, RedisAccessError) or problem is None:
            log.error("Redis error: %s", problem or f"{type(e).__name__}: {e}")
            return ApiError(500, "the service's store failed the request").response()
        log.warning("Redis unreachable: %s", problem)
        return _unavailable()

    @app.exception_handler(Exception)
    async def _bug(_: Request, e: Exception) -> ApiResponse:
        log.exception("unexpected error", exc_info=e)
        return ApiError(500, "the server failed the request (a bug: it is logged)").response()


def _unavailable() -> ApiResponse:
    return ApiError(
        503, "the service's store is unreachable; retry shortly", retry_after_s=RETRY_AFTER_S
    ).response()


def where_and_message(problem: Mapping[str, Any]) -> tuple[str, str]:
    """One pydantic problem as (dotted location, message), without FastAPI's body/query/path
    prefix and pydantic's "Value error, "."""
    loc: Sequence[object] = problem.get("loc", ())
    where = ".".join(str(p) for p in loc if p not in ("body", "query", "path"))
    return where, str(problem.get("msg", "invalid")).removeprefix("Value error, ")


def first_problem(error: ValidationError) -> tuple[str, str]:
    """The first problem of ``error`` (see :func:`where_and_message`)."""
    return where_and_message(error.errors(include_url=False)[0])


def problem_line(problem: Mapping[str, Any]) -> str:
    """A pydantic problem as one line: "where: message"."""
    where, message = where_and_message(problem)
    return f"{where}: {message}" if where else message
