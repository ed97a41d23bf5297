"""JSON-RPC over HTTP/1.1 to a Solana node: `RpcTransport`, the one way this process
sends a request body to `SOLANA_RPC_URL` (the executor's `SolanaBackend` and the quote
engine's simulation both post through it).

Plain `http.client` connections, kept alive and shared by the process's threads. Measured
against the sandbox server on this machine, one getSignatureStatuses cost the caller
0.50 ms of CPU through solana-py's `AsyncClient` (httpx, an event-loop thread to hop to),
0.23 ms through a synchronous httpx client and 0.06 ms here: the executor makes six or
seven calls per batch and the quote engine one per quote.

Retrying is the caller's choice, per request: a read is asked again once on a new
connection when the node does not answer (or answers 5xx/429), as a kept connection the
node closed meanwhile fails at once and must not be mistaken for a node that is down. A
send is never repeated here: its outcome is then unknown and only the signature's status
can tell (`SolanaUnavailable`). So that a send is not lost to a connection the node has
already dropped, a kept connection is checked before use (a zero-timeout poll: readable
while idle means closed, or garbage).
"""

from __future__ import annotations

import functools
import http.client
import os
import select
import threading
from urllib.parse import urlsplit

from execution.solana.errors import SolanaRpcError, SolanaUnavailable


@functools.lru_cache(maxsize=8)
def rpc_transport(url: str, timeout: float) -> RpcTransport:
    """The process's transport to `url` (its connections outlive any one caller)."""
    return RpcTransport(url, timeout)


class RpcTransport:
    MAX_IDLE = 32  # kept-alive connections kept between requests

    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []
        self._pid = os.getpid()

    def post(self, body: bytes, *, retry: bool) -> bytes:
        """POST one JSON-RPC body (a request or a batch); the answer's raw bytes.
        `retry`: ask once more on a new connection when no answer came (reads only)."""
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            last = attempt + 1 == attempts
            conn = self._connection(fresh=attempt > 0)
            try:
                conn.request("POST", self._path, body=body,
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if last:
                    raise SolanaUnavailable(f"RPC node unreachable: {exc!r}") from None
                continue
            self._keep(conn)
            if response.status >= 500 or response.status == 429:
                if last:
                    raise SolanaUnavailable(f"HTTP {response.status} from RPC node")
                continue
            if response.status != 200:
                raise SolanaRpcError(f"HTTP {response.status} from RPC node", code=response.status)
            return payload
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _connection(self, *, fresh: bool) -> http.client.HTTPConnection:
        with self._lock:
            if self._pid != os.getpid():
                # A forked child: the parent's sockets are not ours to talk on.
                self._idle, self._pid = [], os.getpid()
            while self._idle and not fresh:
                conn = self._idle.pop()
                if _still_open(conn):
                    return conn
                conn.close()
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self.timeout)

    def _keep(self, conn: http.client.HTTPConnection) -> None:
        """Kept alive for the next caller, whichever thread it is."""
        with self._lock:
            kept = len(self._idle) < self.MAX_IDLE and self._pid == os.getpid()
            if kept:
                self._idle.append(conn)
        if not kept:
            conn.close()


def _still_open(conn: http.client.HTTPConnection) -> bool:
    """An idle connection has nothing to read: if it has, the node closed it (or sent
    something no request asked for). A closed one (`sock` None) reconnects by itself."""
    sock = conn.sock
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)
