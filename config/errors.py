"""The API's one error envelope: `{"error", "error_code", "details"?}`.

Services raise `ServiceError` subclasses carrying a stable code and HTTP status; this
handler maps them, and DRF's own exceptions, to the envelope. Nothing else reaches a
client: unexpected exceptions become 500 INTERNAL_ERROR with the request id, and the
traceback goes to the log only.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import DatabaseError
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response
from rest_framework.views import set_rollback

from config.logging import current_request_id

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """A domain error with a stable machine-readable code."""

    code = "INTERNAL_ERROR"
    status = 500
    default_message = "Internal error"

    def __init__(self, message: str | None = None, *, code: str | None = None,
                 status: int | None = None, details: dict[str, Any] | None = None) -> None:
        self.message = message or self.default_message
        if code:
            self.code = code
        if status:
            self.status = status
        self.details = details or {}
        super().__init__(self.message)


class InvalidRequest(ServiceError):
    code, status, default_message = "INVALID_REQUEST", 400, "Invalid request"


class NotFound(ServiceError):
    code, status, default_message = "NOT_FOUND", 404, "Not found"


class Conflict(ServiceError):
    code, status, default_message = "CONFLICT", 409, "Conflict"


class Unauthorized(ServiceError):
    code, status, default_message = "UNAUTHORIZED", 401, "Authentication required"


class Forbidden(ServiceError):
    code, status, default_message = "FORBIDDEN", 403, "Forbidden"


class Unavailable(ServiceError):
    code, status, default_message = "SERVICE_UNAVAILABLE", 503, "Temporarily unavailable"


# The seed's codes and ours, with their HTTP status: the single source for docs and tests.
ERROR_CODES: dict[str, int] = {
    "QUOTE_NOT_FOUND": 404,
    "QUOTE_EXPIRED": 400,
    "QUOTE_ALREADY_EXECUTED": 409,
    "QUOTE_NOT_PENDING": 409,
    "INSUFFICIENT_FUNDS": 400,
    "INVALID_QUOTE_PARAMETERS": 400,
    "NONCE_REUSED": 409,
    "EXECUTION_FAILED": 500,
    "INSUFFICIENT_TREASURY": 503,
    "DUPLICATE_EXECUTION": 409,
    "DAILY_LIMIT_EXCEEDED": 429,
    "TRANSACTION_LIMIT_EXCEEDED": 400,
    "CIRCUIT_BREAKER_TRIGGERED": 503,
    "DATABASE_ERROR": 500,
    "INTERNAL_ERROR": 500,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "RATE_LIMITED": 429,
    "PRICE_UNAVAILABLE": 503,
    "PROGRAM_NOT_ALLOWED": 400,
    "INVALID_REQUEST": 400,
    "INVALID_ADDRESS": 400,
    "INVALID_SIGNATURE": 401,
    "CHALLENGE_EXPIRED": 401,
    "CHALLENGE_USED": 401,
    "CHALLENGE_INVALID": 401,
    "WALLET_ALREADY_CLAIMED": 409,
    "PAYMENT_INVALID": 400,
    "PAYMENT_NOT_FOUND": 404,
    "WEBHOOK_SIGNATURE_INVALID": 401,
    "IDEMPOTENCY_KEY_REUSED": 422,
    "IDEMPOTENCY_KEY_IN_USE": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "CHAIN_UNAVAILABLE": 503,
    "SERVICE_UNAVAILABLE": 503,
    "CONFLICT": 409,
}


def error_body(message: str, code: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message, "error_code": code}
    if details:
        body["details"] = details
    return body


def _drf_error(exc: drf.APIException) -> tuple[str, str, dict[str, Any] | None]:
    if isinstance(exc, drf.ValidationError):
        detail = exc.detail
        return "Invalid request parameters", "INVALID_REQUEST", {"fields": detail}
    if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed):
        return str(exc.detail), "UNAUTHORIZED", None
    if isinstance(exc, drf.PermissionDenied):
        return str(exc.detail), "FORBIDDEN", None
    if isinstance(exc, drf.NotFound):
        return "Not found", "NOT_FOUND", None
    if isinstance(exc, drf.MethodNotAllowed):
        return str(exc.detail), "METHOD_NOT_ALLOWED", None
    if isinstance(exc, drf.Throttled):
        return "Too many requests", "RATE_LIMITED", {"retry_after_seconds": exc.wait}
    if isinstance(exc, drf.ParseError):
        return "Malformed request body", "INVALID_REQUEST", None
    if isinstance(exc, drf.UnsupportedMediaType):
        return str(exc.detail), "UNSUPPORTED_MEDIA_TYPE", None
    return str(exc.detail), "INVALID_REQUEST", None


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    headers: dict[str, str] = {}
    if isinstance(exc, ServiceError):
        status, body = exc.status, error_body(exc.message, exc.code, exc.details)
    elif isinstance(exc, drf.APIException):
        message, code, details = _drf_error(exc)
        status, body = exc.status_code, error_body(message, code, details)
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
        if isinstance(exc, drf.Throttled) and exc.wait is not None:
            headers["Retry-After"] = str(int(exc.wait) + 1)
    elif isinstance(exc, Http404):
        status, body = 404, error_body("Not found", "NOT_FOUND")
    elif isinstance(exc, PermissionDenied):
        status, body = 403, error_body("Forbidden", "FORBIDDEN")
    elif isinstance(exc, RequestDataTooBig):
        status, body = 413, error_body("Request body too large", "PAYLOAD_TOO_LARGE")
    elif isinstance(exc, DatabaseError):
        logger.exception("database error")
        status = 503
        body = error_body("Database unavailable, retry later", "DATABASE_ERROR",
                          {"request_id": current_request_id()})
    else:
        logger.exception("unhandled error")
        status = 500
        body = error_body("Internal error", "INTERNAL_ERROR", {"request_id": current_request_id()})
    set_rollback()
    return Response(body, status=status, headers=headers)


def json_error(request: HttpRequest | None, status: int, message: str, code: str) -> JsonResponse:
    """The envelope for responses made outside DRF (404/500 handlers, middleware)."""
    details = {"request_id": current_request_id()} if status >= 500 else None
    return JsonResponse(error_body(message, code, details), status=status)
