"""Quotes through the web processes exactly as `make run` starts them (config.launcher:
daphne processes sharing one socket, serving config.serving): REST on the HTTP thread pool
and WebSocket through Channels on the same port, across processes."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import subprocess
import time
from collections.abc import Iterator

import pytest
import websockets
from django.conf import settings

from config.launcher import WEB_ENV_DEFAULTS, web_command, web_listener
from quotes.signing import service_public_key, verify_quote_signature
from tests.e2e import stack
from users.authentication import token_issue

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow,
              pytest.mark.usefixtures("fresh_channel_layers")]

PROCESSES = 2


@contextlib.contextmanager
def web_processes(quote_settings) -> Iterator[int]:
    port = stack.free_port()
    env = {**os.environ, "DATABASE_URL": stack.test_database_url(), "REDIS_URL": "",
           "SOLANA_RPC_URL": quote_settings.SOLANA_RPC_URL,
           "SOLANA_USDC_MINT": quote_settings.SOLANA_USDC_MINT, "PRICE_SOURCE": "fixed",
           "DATA_DIR": str(settings.DATA_DIR), "PYTHONPATH": str(stack.ROOT), **WEB_ENV_DEFAULTS}
    env.pop("TEST_DB_SUFFIX", None)
    with web_listener("127.0.0.1", port) as listener:
        processes = [subprocess.Popen(web_command(listener), cwd=stack.ROOT, env=env,  # noqa: S603
                                      pass_fds=(listener.fileno(),),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for _ in range(PROCESSES)]
    try:
        deadline = time.monotonic() + 30
        while True:
            assert all(p.poll() is None for p in processes), "a web process exited"
            try:
                if request(port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "web processes did not start"
            time.sleep(0.2)
        yield port
    finally:
        for proc in processes:
            proc.terminate()
        for proc in processes:
            proc.wait(timeout=15)


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, chunked: bool = False) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        if chunked:
            conn.request(method, path, body=iter([body or b""]), headers=headers or {},
                         encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        payload = response.read()
        return response.status, json.loads(payload) if payload else {}
    finally:
        conn.close()


def test_make_run_web_processes_serve_rest_and_websocket_on_one_port(quote_settings, work,
                                                                     stellar_user):
    token = token_issue(user=stellar_user)
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = json.dumps({"source_chain": "stellar",
                       "instructions": work.as_json(work.sol_transfer(1_000_000))}).encode()
    with web_processes(quote_settings) as port:
        status, quote = request(port, "POST", "/api/v1/quotes", body, auth)
        assert status == 201, quote
        assert verify_quote_signature(quote, quote["signature"], service_public_key())
        # A chunked body (no Content-Length) reaches the view whole.
        status, chunked = request(port, "POST", "/api/v1/quotes", body, auth, chunked=True)
        assert status == 201, chunked
        # Errors keep the API's envelope; the body limit still holds.
        status, refused = request(port, "POST", "/api/v1/quotes", b'{"source_chain": ', auth)
        assert status == 400 and refused["error"] and refused["error_code"], refused
        huge = b" " * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
        status, refused = request(port, "POST", "/api/v1/quotes", huge, auth, chunked=True)
        assert (status, refused["error_code"]) == (413, "PAYLOAD_TOO_LARGE")
        status, _ = request(port, "POST", "/api/v1/quotes", body,
                            {"Authorization": "Bearer nope", "Content-Type": "application/json"})
        assert status == 401

        async def watch_and_cancel() -> list[list[dict]]:
            url = f"ws://127.0.0.1:{port}/ws/quotes/{quote['quote_id']}/?token={token}"
            # Several sockets, so both processes hold some: the cancel is made by whichever
            # process takes the HTTP request, and every socket must see it.
            sockets = [await websockets.connect(url) for _ in range(2 * PROCESSES)]
            try:
                frames = [[json.loads(await asyncio.wait_for(ws.recv(), 10))] for ws in sockets]
                status, cancelled = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: request(port, "POST",
                                          f"/api/v1/quotes/{quote['quote_id']}/cancel", b"", auth))
                assert status == 200, cancelled
                for ws, seen in zip(sockets, frames, strict=True):
                    seen.append(json.loads(await asyncio.wait_for(ws.recv(), 15)))
                return frames
            finally:
                for ws in sockets:
                    await ws.close()

        frames = asyncio.run(watch_and_cancel())
    for seen in frames:
        assert [(f["previous"], f["status"]) for f in seen] == [(None, "pending"),
                                                                ("pending", "cancelled")]


def test_quotes_succeed_after_the_web_processes_pooled_connections_are_terminated(
        quote_settings, work, stellar_user):
    """The pool's check skips its round trip for a quiet connection; a connection the
    server has cut (pg_terminate_backend, as a failover or an operator would) must still
    never reach a request."""
    from django.db import connection

    token = token_issue(user=stellar_user)
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = json.dumps({"source_chain": "stellar",
                       "instructions": work.as_json(work.sol_transfer(1_000_000))}).encode()
    with web_processes(quote_settings) as port:
        for _ in range(2 * PROCESSES):
            status, quote = request(port, "POST", "/api/v1/quotes", body, auth)
            assert status == 201, quote
        with connection.cursor() as cursor:
            # Waiting (up to 5 s) for each backend to exit: the check of a quiet connection
            # sends nothing, so it sees the cut once the server's goodbye is on the socket.
            cursor.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                           "AND backend_type = 'client backend'")
            # Every pooled connection at this moment (how many the pools have opened in
            # the background varies): whichever serves next is dead.
            assert cursor.rowcount >= 1

        statuses = [request(port, "POST", "/api/v1/quotes", body, auth)[0]
                    for _ in range(4 * PROCESSES)]
    assert statuses == [201] * (4 * PROCESSES)
