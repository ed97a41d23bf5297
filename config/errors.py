"""The API's one error envelope: `{"error", "error_code", "details"?}`.

Services raise `ServiceError` subclasses carrying a stable code and HTTP status; this
handler maps them, and DRF's own exceptions, to the envelope. Nothing else reaches a
client: unexpected exceptions become 500 INTERNAL_ERROR with the request id, and the
traceback goes to the log only.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from django.core.exceptions import BadRequest, PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions as drf
from rest_framework.response import Response
from rest_framework.views import set_rollback

from config.admin_paths import is_admin_path
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
    "NOT_ACCEPTABLE": 406,
    "INVALID_STATE_TRANSITION": 409,
    "NO_VERIFIED_WALLET": 400,
    "USER_NOT_FOUND": 404,
    "WITHDRAWAL_NOT_FOUND": 404,
    "REFUND_NOT_FOUND": 404,
    "SETTLEMENT_NOT_FOUND": 404,
}


def error_body(message: str, code: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message, "error_code": code}
    if details:
        body["details"] = details
    return body


def _drf_error(exc: drf.APIException) -> tuple[str, str, dict[str, Any] | None]:
    if isinstance(exc, drf.ValidationError):
        detail = exc.detail
        fields = detail if isinstance(detail, dict) else {"non_field_errors": detail}
        return "Invalid request parameters", "INVALID_REQUEST", {"fields": fields}
    if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed):
        return str(exc.detail), "UNAUTHORIZED", None
    if isinstance(exc, drf.PermissionDenied):
        return str(exc.detail), "FORBIDDEN", None
    if isinstance(exc, drf.NotFound):
        return "Not found", "NOT_FOUND", None
    if isinstance(exc, drf.MethodNotAllowed):
        return str(exc.detail), "METHOD_NOT_ALLOWED", None
    if isinstance(exc, drf.Throttled):
        wait = math.ceil(exc.wait) if exc.wait is not None else None
        return "Too many requests", "RATE_LIMITED", {"retry_after_seconds": wait}
    if isinstance(exc, drf.ParseError):
        # Our StrictJSONParser's reasons are written for clients and never echo the body.
        return "Malformed request body", "INVALID_REQUEST", {"reason": str(exc.detail)}
    if isinstance(exc, drf.UnsupportedMediaType):
        return str(exc.detail), "UNSUPPORTED_MEDIA_TYPE", None
    if isinstance(exc, drf.NotAcceptable):
        return str(exc.detail), "NOT_ACCEPTABLE", None
    if exc.status_code >= 500:
        return "Internal error", "INTERNAL_ERROR", None
    return str(exc.detail), "INVALID_REQUEST", None


def _internal_error_details() -> dict[str, Any]:
    return {"request_id": current_request_id()}


def envelope_for(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) for any exception: the one mapping DRF and plain views share."""
    headers: dict[str, str] = {}
    if isinstance(exc, ServiceError):
        details = exc.details
        if exc.status >= 500:
            details = {**details, **_internal_error_details()}
            logger.error("service error %s: %s", exc.code, exc.message)
        return exc.status, error_body(exc.message, exc.code, details), headers
    if isinstance(exc, drf.APIException):
        message, code, drf_details = _drf_error(exc)
        if exc.status_code >= 500:
            logger.error("API exception %s", type(exc).__name__, exc_info=exc)
            drf_details = {**(drf_details or {}), **_internal_error_details()}
        auth_header = getattr(exc, "auth_header", None)
        if auth_header:
            headers["WWW-Authenticate"] = auth_header
        if isinstance(exc, drf.Throttled) and exc.wait is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.wait)))
        return exc.status_code, error_body(message, code, drf_details), headers
    if isinstance(exc, Http404):
        return 404, error_body("Not found", "NOT_FOUND"), headers
    if isinstance(exc, PermissionDenied):
        return 403, error_body("Forbidden", "FORBIDDEN"), headers
    if isinstance(exc, RequestDataTooBig):
        return 413, error_body("Request body too large", "PAYLOAD_TOO_LARGE"), headers
    if isinstance(exc, BadRequest | SuspiciousOperation):
        return 400, error_body("Bad request", "INVALID_REQUEST"), headers
    if isinstance(exc, DatabaseError):
        # The traceback (which may hold SQL) goes to the log only, under the request id.
        logger.error("database error", exc_info=exc)
        return (ERROR_CODES["DATABASE_ERROR"],
                error_body("Database error, retry later", "DATABASE_ERROR",
                           _internal_error_details()), headers)
    logger.error("unhandled error", exc_info=exc)
    return 500, error_body("Internal error", "INTERNAL_ERROR", _internal_error_details()), headers


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every error raised in an API view becomes the envelope."""
    status, body, headers = envelope_for(exc)
    set_rollback()
    return Response(body, status=status, headers=headers)


def json_error(request: HttpRequest | None, status: int, message: str, code: str,
               details: dict[str, Any] | None = None) -> JsonResponse:
    """The envelope for responses made outside DRF (404/500 handlers, middleware)."""
    if status >= 500:
        details = {**(details or {}), **_internal_error_details()}
    return JsonResponse(error_body(message, code, details), status=status)


# --- Django-level handlers (config/urls.py handler400/403/404/500) ---
# They run for errors outside DRF: unknown URLs, plain Django views, middleware. The admin
# keeps Django's HTML pages; everything else (API and seed routes) gets the envelope.

def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_admin_path(request.path):
        return defaults.bad_request(request, exception)  # type: ignore[arg-type]
    return json_error(request, 400, "Bad request", "INVALID_REQUEST")


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_admin_path(request.path):
        return defaults.permission_denied(request, exception)  # type: ignore[arg-type]
    return json_error(request, 403, "Forbidden", "FORBIDDEN")


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_admin_path(request.path):
        return defaults.page_not_found(request, exception)  # type: ignore[arg-type]
    return json_error(request, 404, "Not found", "NOT_FOUND")


def handler500(request: HttpRequest) -> HttpResponse:
    if is_admin_path(request.path):
        return defaults.server_error(request)
    return json_error(request, 500, "Internal error", "INTERNAL_ERROR")
