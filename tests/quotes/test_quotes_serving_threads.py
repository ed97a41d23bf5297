"""config.serving's hand-off between daphne's event loop and the HTTP threads: requests run
on the pool's threads, answers come back to the awaiting request, a request whose client
left while it waited is never run, and the threads finish their requests at exit.

The WSGI handler is replaced by a plain WSGI callable: these tests are about the hand-off,
the Django request path is covered by the web-process tests beside them."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings

from config.serving import BODY_MEMORY_BYTES, ThreadPoolHttp


def scope(path: str = "/") -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "query_string": b"",
            "headers": [], "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000)}


async def call(app: ThreadPoolHttp, path: str = "/") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope(path), receive, send)
    return sent


def pool_with(handler: Callable[[dict[str, Any]], bytes], threads: int) -> ThreadPoolHttp:
    app = ThreadPoolHttp(threads)

    def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = handler(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    app.handler = wsgi  # type: ignore[assignment]
    return app


def test_requests_run_on_the_pool_threads_and_each_gets_its_own_answer():
    release = threading.Barrier(3)

    def handler(environ: dict[str, Any]) -> bytes:
        release.wait(timeout=10)  # three at once: three threads
        return f"{environ['PATH_INFO']} {threading.current_thread().name}".encode()

    app = pool_with(handler, threads=3)

    async def main() -> list[list[dict[str, Any]]]:
        return await asyncio.gather(*(call(app, f"/{n}") for n in range(3)))

    answers = asyncio.run(main())
    bodies = [sent[1]["body"].decode().split() for sent in answers]
    assert [path for path, _ in bodies] == ["/0", "/1", "/2"]
    assert sorted(thread for _, thread in bodies) == ["http_0", "http_1", "http_2"]
    assert all(sent[0]["status"] == 200 for sent in answers)


def test_a_request_whose_client_left_while_queued_is_never_run():
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def handler(environ: dict[str, Any]) -> bytes:
        ran.append(environ["PATH_INFO"])
        started.set()
        release.wait(timeout=10)
        return b"ok"

    app = pool_with(handler, threads=1)

    async def main() -> None:
        first = asyncio.ensure_future(call(app, "/first"))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        queued = asyncio.ensure_future(call(app, "/left"))
        await asyncio.sleep(0.05)
        queued.cancel()  # what daphne does when the client disconnects
        await asyncio.sleep(0.05)
        release.set()
        assert (await first)[0]["status"] == 200
        with pytest.raises(asyncio.CancelledError):
            await queued
        ending = await call(app, "/after")  # the thread took the next request
        assert ending[0]["status"] == 200

    asyncio.run(main())
    assert ran == ["/first", "/after"]


def test_an_error_outside_djangos_handler_reaches_the_waiting_request():
    def handler(environ: dict[str, Any]) -> bytes:
        raise RuntimeError("broken handler")

    app = pool_with(handler, threads=1)
    with pytest.raises(RuntimeError, match="broken handler"):
        asyncio.run(call(app))


EXIT_DURING_REQUEST = """
import asyncio, sys, threading, time
import django
django.setup()
from config.serving import ThreadPoolHttp

app = ThreadPoolHttp(1)
started = threading.Event()
def wsgi(environ, start_response):
    started.set()
    time.sleep(0.5)
    print("request finished", flush=True)
    start_response("200 OK", [])
    return [b""]
app.handler = wsgi

async def main():
    async def receive():
        return {"type": "http.request", "body": b""}
    async def send(message):
        pass
    asyncio.ensure_future(app({"type": "http", "method": "GET", "path": "/", "headers": []},
                              receive, send))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)

asyncio.run(main())  # returns while the request runs: the loop closes, the process exits
print("exiting", flush=True)
"""


def test_the_threads_finish_their_requests_when_the_process_exits():
    out = subprocess.run([sys.executable, "-c", EXIT_DURING_REQUEST],  # noqa: S603
                         cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["exiting", "request finished"]


async def call_with_body(app: ThreadPoolHttp, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One request whose body arrives as `messages` (ASGI http.request / http.disconnect)."""
    sent: list[dict[str, Any]] = []
    pending = list(messages)

    async def receive() -> dict[str, Any]:
        return pending.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({**scope("/upload"), "method": "POST"}, receive, send)
    return sent


def echo_body(environ: dict[str, Any]) -> bytes:
    body = environ["wsgi.input"].read()
    stream = environ["wsgi.input"]
    kind = "memory" if isinstance(stream, io.BytesIO) or not stream._rolled else "file"
    return f"{len(body)} {environ.get('CONTENT_LENGTH')} {kind} ".encode() + body


@pytest.mark.parametrize(("chunks", "kind"), [
    ([b'{"one": "message"}'], "memory"),  # the usual request: read as it came
    ([b""], "memory"),
    ([b'{"in": ', b'"three', b' parts"}'], "memory"),  # spooled, small enough to stay in RAM
    ([b"x" * (BODY_MEMORY_BYTES + 1)], "file"),  # one message, too large to keep in memory
    ([b"y" * BODY_MEMORY_BYTES, b"z" * 10], "file"),
])
def test_the_handler_reads_the_whole_body_however_it_arrived(chunks, kind):
    app = pool_with(echo_body, threads=1)
    messages = [{"type": "http.request", "body": chunk, "more_body": n < len(chunks) - 1}
                for n, chunk in enumerate(chunks)]
    sent = asyncio.run(call_with_body(app, messages))
    whole = b"".join(chunks)
    size, declared, stored, body = sent[1]["body"].split(b" ", 3)
    assert body == whole and int(size) == len(whole)
    assert declared == (str(len(whole)).encode() if whole else b"None")
    assert stored.decode() == kind


def test_a_client_that_leaves_mid_body_is_never_run():
    ran: list[str] = []
    app = pool_with(lambda environ: ran.append("ran") or b"", threads=1)
    sent = asyncio.run(call_with_body(app, [
        {"type": "http.request", "body": b"part", "more_body": True},
        {"type": "http.disconnect"}]))
    assert sent == [] and ran == []
