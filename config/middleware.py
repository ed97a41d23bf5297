"""HTTP edge middleware, in settings.MIDDLEWARE order (outermost first):

- `RequestIdMiddleware`: request id on every request (from `X-Request-ID` when sane, else
  generated) in the log context and the response; binds `quote_id` when the URL has one.
- `HttpMetricsMiddleware`: request count/latency per route and one JSON access-log line.
- `CorsMiddleware`: CORS headers for `CORS_ALLOWED_ORIGINS`, preflight answered here.
- `JsonErrorMiddleware`: every error outside the admin leaves as the JSON envelope, even
  Django's own HTML pages (404 with DEBUG on, CSRF 403, 405 from `require_GET`, 500 with
  the debug traceback page): no stack trace or SQL reaches a client, DEBUG or not.
- `BodySizeLimitMiddleware`: bodies over `DATA_UPLOAD_MAX_MEMORY_SIZE` are refused with
  413 PAYLOAD_TOO_LARGE before anything reads them.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from config.admin_paths import is_admin_path
from config.errors import envelope_for, json_error
from config.logging import bind_log_context, log_context

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("config.access")

GetResponse = Callable[[HttpRequest], HttpResponse]

_SANE_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_UUID = re.compile(r"^[0-9a-fA-F-]{32,36}$")


# Headers are read from META (`HTTP_` + the name upper-cased, dashes as underscores: what
# `request.headers` itself is built from), not through `request.headers`: its first use
# builds the whole case-insensitive mapping of every header (~80,000 instructions per
# request), and nothing else on the API path needs it.
_REQUEST_ID_HEADER = "HTTP_X_REQUEST_ID"
_ORIGIN_HEADER = "HTTP_ORIGIN"
_PREFLIGHT_HEADER = "HTTP_ACCESS_CONTROL_REQUEST_METHOD"


def _new_request_id() -> str:
    """A random UUID4 in hex, as `uuid.uuid4().hex` prints it, without building the UUID
    object (its checks and bit arithmetic in Python: ~25,000 instructions a request)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


class RequestIdMiddleware:
    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.META.get(_REQUEST_ID_HEADER, "")
        request_id = incoming if _SANE_ID.match(incoming) else _new_request_id()
        request.request_id = request_id  # type: ignore[attr-defined]
        with log_context(request_id=request_id):
            response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response

    def process_view(self, request: HttpRequest, view_func: Callable[..., Any],
                     view_args: tuple[Any, ...], view_kwargs: dict[str, Any]) -> None:
        """Every log line of a request about a quote carries its id (`quote_id` URL kwarg).

        Views that learn the id later (quote creation) call
        `config.logging.bind_log_context(quote_id=...)` themselves.
        """
        quote_id = view_kwargs.get("quote_id")
        if quote_id is None and "quote" in request.path:
            candidate = view_kwargs.get("pk", view_kwargs.get("id"))
            if candidate is not None and _UUID.match(str(candidate)):
                quote_id = candidate
        if quote_id is not None:
            bind_log_context(quote_id=str(quote_id))


# (method, route, status) → that label set's request counter and latency histogram.
# `labels()` checks and converts its values and takes the metric's lock on every call
# (~11,000 instructions each); the children it returns are the same objects every time,
# so they are looked up once per label set. As many entries as prometheus keeps itself.
_http_metric_children: dict[tuple[str | None, str, int], tuple[Any, Any]] = {}


def _http_metrics(method: str | None, route: str, status: int) -> tuple[Any, Any]:
    children = _http_metric_children.get((method, route, status))
    if children is None:
        from config.metrics import HTTP_LATENCY, HTTP_REQUESTS

        children = (HTTP_REQUESTS.labels(method, route, str(status)),
                    HTTP_LATENCY.labels(method, route))
        _http_metric_children[(method, route, status)] = children  # a race stores the same
    return children


class HttpMetricsMiddleware:
    """Counts and times requests by route pattern (low cardinality) and logs one line each."""

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        match = getattr(request, "resolver_match", None)
        route = match.route if match is not None and match.route else "unmatched"
        requests, latency = _http_metrics(request.method, route, response.status_code)
        requests.inc()
        latency.observe(elapsed)
        if access_logger.isEnabledFor(logging.INFO):  # the line's fields cost even unlogged
            user: Any = getattr(request, "user", None)  # DRF sets it after authentication
            # The path only: query strings may carry tokens (WebSocket `?token=`).
            access_logger.info(
                "%s %s %s", request.method, request.path, response.status_code,
                extra={"method": request.method, "path": request.path, "route": route,
                       "status": response.status_code, "duration_ms": round(elapsed * 1000, 2),
                       "user_id": (str(user.pk) if getattr(user, "is_authenticated", False)
                                   else None)},
            )
        return response


class CorsMiddleware:
    """Minimal CORS for browser clients of the API (bearer tokens, no cookies).

    `CORS_ALLOWED_ORIGINS` lists exact origins (`https://app.example.com`); `*` allows any
    origin. Origins not listed get no CORS headers, so the browser refuses the response.
    """

    ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Request-ID"
    EXPOSE_HEADERS = "X-Request-ID, Retry-After, Idempotent-Replayed"
    ALLOW_METHODS = "GET, POST, OPTIONS"
    MAX_AGE = "600"

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response

    def _allowed_origin(self, origin: str) -> str | None:
        allowed = getattr(settings, "CORS_ALLOWED_ORIGINS", [])
        if "*" in allowed:
            return "*"
        return origin if origin in allowed else None

    def __call__(self, request: HttpRequest) -> HttpResponse:
        origin = request.META.get(_ORIGIN_HEADER)
        if not origin or is_admin_path(request.path):
            return self.get_response(request)
        allowed = self._allowed_origin(origin)
        preflight = (request.method == "OPTIONS"
                     and _PREFLIGHT_HEADER in request.META)
        response: HttpResponse
        if preflight and not allowed:
            response = json_error(request, 403, "Origin not allowed", "FORBIDDEN")
        elif preflight:
            response = HttpResponse(status=204)
            response["Access-Control-Allow-Methods"] = self.ALLOW_METHODS
            response["Access-Control-Allow-Headers"] = self.ALLOW_HEADERS
            response["Access-Control-Max-Age"] = self.MAX_AGE
        else:
            response = self.get_response(request)
        if allowed:
            response["Access-Control-Allow-Origin"] = allowed
            response["Access-Control-Expose-Headers"] = self.EXPOSE_HEADERS
        response["Vary"] = ", ".join(filter(None, [response.get("Vary"), "Origin"]))
        return response


_ERROR_CODE_BY_STATUS = {400: "INVALID_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN",
                         404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 406: "NOT_ACCEPTABLE",
                         413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE",
                         429: "RATE_LIMITED"}
_MESSAGE_BY_STATUS = {400: "Bad request", 401: "Authentication required", 403: "Forbidden",
                      404: "Not found", 405: "Method not allowed", 406: "Not acceptable",
                      413: "Request body too large", 415: "Unsupported media type",
                      429: "Too many requests"}


class JsonErrorMiddleware:
    """Turns any non-JSON error response, and any exception a plain view raises, into the
    envelope. Django's handlers (handler404/500 in urls.py) cover DEBUG off; this covers
    DEBUG on too, where Django would otherwise render its technical pages."""

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code < 400 or is_admin_path(request.path):
            return response
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        status = response.status_code
        if status >= 500:
            replacement = json_error(request, status, "Internal error", "INTERNAL_ERROR")
        else:
            replacement = json_error(request, status, _MESSAGE_BY_STATUS.get(status, "Request refused"),
                                     _ERROR_CODE_BY_STATUS.get(status, "INVALID_REQUEST"))
        for header in ("Allow", "Retry-After", "WWW-Authenticate"):
            if header in response:
                replacement[header] = response[header]
        return replacement

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """Exceptions from plain Django views (DRF views never get here: DRF handles its own)."""
        if is_admin_path(request.path):
            return None
        status, body, headers = envelope_for(exception)  # logs 5xx with the request id
        response = json_error(request, status, body["error"], body["error_code"], body.get("details"))
        for name, value in headers.items():
            response[name] = value
        return response


class BodySizeLimitMiddleware:
    """413 for bodies over DATA_UPLOAD_MAX_MEMORY_SIZE, decided before the body is read.

    A declared Content-Length is checked without reading. Without one (chunked uploads
    under ASGI, where Django has the body in a spooled file), the size is measured by
    seeking and the length recorded, so parsers see the real body instead of an empty one.
    WSGI without Content-Length gives Django an empty stream, so nothing can slip through.
    """

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is None:
            return self.get_response(request)
        declared = request.META.get("CONTENT_LENGTH") or ""
        if declared:
            try:
                size = int(declared)
            except ValueError:
                return json_error(request, 400, "Invalid Content-Length header", "INVALID_REQUEST")
            if size < 0:
                return json_error(request, 400, "Invalid Content-Length header", "INVALID_REQUEST")
        else:
            size = self._undeclared_size(request)
            if size:
                request.META["CONTENT_LENGTH"] = str(size)
        if size > limit:
            return json_error(request, 413, "Request body too large", "PAYLOAD_TOO_LARGE",
                              {"max_bytes": limit})
        return self.get_response(request)

    @staticmethod
    def _undeclared_size(request: HttpRequest) -> int:
        stream = getattr(request, "_stream", None)
        seek = getattr(stream, "seek", None)
        tell = getattr(stream, "tell", None)
        if seek is None or tell is None or getattr(stream, "seekable", lambda: False)() is False:
            return 0
        try:
            start = tell()
            end = seek(0, 2)
            seek(start)
        except (OSError, ValueError):
            return 0
        return max(0, int(end) - int(start))
