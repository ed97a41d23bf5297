"""One HTTP request as config.serving runs it, without a socket: the ASGI scope's raw
headers (as daphne delivers them) → the WSGI environ → the serving handler."""

from __future__ import annotations

import io
from typing import Any

from config.serving import BrowserScopedHandler, _environ


def serve_through(handler: BrowserScopedHandler, method: str, path: str,
                  raw_headers: list[tuple[bytes, bytes]],
                  body: bytes = b"") -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, response headers in order, body) of one request; a body gets its
    Content-Length header."""
    if body:
        raw_headers = [*raw_headers, (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "method": method, "path": path, "query_string": b"",
             "headers": raw_headers, "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 5000)}
    started: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Any:
        started["status"] = int(status.split(" ", 1)[0])
        started["headers"] = response_headers
        return lambda data: None

    result = handler(_environ(scope, io.BytesIO(body), len(body)), start_response)
    try:
        content = b"".join(result)
    finally:
        result.close()
    return started["status"], started["headers"], content
