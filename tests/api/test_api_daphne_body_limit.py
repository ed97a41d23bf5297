"""Body size limit and chunked bodies through a real daphne process (the production server).

Twisted (under daphne) buffers a request body before the application sees it, so the
refusal cannot stop the upload itself; what we prove is that the application refuses it
before parsing or any database work, with the envelope, whether the size was declared
(Content-Length) or not (Transfer-Encoding: chunked), and that a small chunked body is
read for real rather than treated as empty.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TEN_MB = 10 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def daphne_url():
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"daphne exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("daphne did not start")
        yield ("127.0.0.1", port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _send(address, path: str, body_chunks, *, chunked: bool) -> tuple[int, dict, dict]:
    conn = http.client.HTTPConnection(*address, timeout=60)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", "application/json")
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        else:
            conn.putheader("Content-Length", str(sum(len(c) for c in body_chunks)))
        conn.endheaders()
        for chunk in body_chunks:
            if chunked:
                conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            else:
                conn.send(chunk)
        if chunked:
            conn.send(b"0\r\n\r\n")
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read())
    finally:
        conn.close()


def _big_body() -> list[bytes]:
    piece = b"A" * (1024 * 1024)
    return [b'{"chain": "stellar", "address": "'] + [piece] * 10 + [b'"}']


@pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
def test_ten_megabytes_refused_by_real_server(daphne_url, chunked):
    status, headers, body = _send(daphne_url, "/api/v1/auth/challenge", _big_body(), chunked=chunked)
    assert status == 413
    assert body["error_code"] == "PAYLOAD_TOO_LARGE"
    assert headers.get("x-request-id")


def test_small_chunked_body_is_parsed_not_dropped(daphne_url):
    payload = json.dumps({"chain": "bitcoin", "address": "x"}).encode()
    status, _, body = _send(daphne_url, "/api/v1/auth/challenge", [payload[:10], payload[10:]],
                            chunked=True)
    assert status == 400
    # "bitcoin" was read from the body: an empty body would say the field is required.
    assert "is not a valid choice" in json.dumps(body["details"]["fields"]["chain"])
