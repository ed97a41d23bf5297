"""A small threaded HTTP server on a real socket for the chain fakes.

Each fake subclasses `FakeHttpServer` and implements `handle(request) -> Reply`. Faults
(`timeout`, `500`, ...) are injected here so every fake gets them the same way.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, content_type: str = "application/json") -> Reply:
        return cls(status, json.dumps(payload).encode(), {"Content-Type": content_type})


class FakeHttpServer:
    """Start with `start()` (or as a context manager); `url` is the base URL.

    `set_fault(kind, times=None)`: "timeout" sleeps `fault_delay` seconds before answering,
    "500"/"502"/"503" answer that status with a plain body, "reset" closes the connection.
    `times=None` keeps the fault until `set_fault(None)`.
    """

    fault_delay = 3.0

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._fault: str | None = None
        self._fault_times: int | None = None
        self.requests: list[Request] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Request(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                fault = fake._take_fault()
                with fake._lock:
                    fake.requests.append(request)
                if fault == "reset":
                    self.close_connection = True
                    return
                if fault == "timeout":
                    time.sleep(fake.fault_delay)
                if fault and fault.isdigit():
                    reply = Reply(int(fault), b"fault injected", {"Content-Type": "text/plain"})
                else:
                    try:
                        reply = fake.handle(request)
                    except Exception as exc:  # noqa: BLE001 - a fake must answer, not hang
                        reply = Reply(500, f"fake crashed: {exc!r}".encode())
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(reply.body)

            do_GET = _serve  # noqa: N815
            do_POST = _serve  # noqa: N815

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHttpServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FakeHttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ----------------------------------------------------------------------
    def set_fault(self, kind: str | None, times: int | None = None) -> None:
        with self._lock:
            self._fault = kind
            self._fault_times = times

    def _take_fault(self) -> str | None:
        with self._lock:
            fault = self._fault
            if fault is not None and self._fault_times is not None:
                self._fault_times -= 1
                if self._fault_times <= 0:
                    self._fault = None
            return fault

    def handle(self, request: Request) -> Reply:
        raise NotImplementedError
