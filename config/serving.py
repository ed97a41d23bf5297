"""The ASGI application `make run`'s web processes serve: `config.asgi` for WebSocket, and
plain HTTP run through Django's WSGI handler on a fixed pool of threads.

Why: under Django's ASGI handler every sync request costs ~3 ms of extra CPU (a fresh
thread and executor per request, async/sync hops around the middleware chain; measured
with bench/quotes.py: the trivial insert took 4.3 ms of server CPU under daphne or
uvicorn, 1.4 ms under gunicorn's threads). Running the same Django request path
(`WSGIHandler`: same middleware, views, errors) on long-lived threads removes that cost
while REST and WebSocket keep sharing one daphne port. Outside the admin's paths the
chain leaves out the middleware only a browser session uses (`BrowserScopedHandler`).
The thread count bounds how many requests run at once per process (`WEB_HTTP_THREADS`);
each thread takes its database connection from the process's psycopg pool, shared with
the WebSocket consumers.

The request body is read completely before the view runs (as Django's ASGI handler
does, into a spooled temporary file), so a slow client never holds a thread.

Importing this module also trims two things daphne's twisted layer does on every request
that nobody uses (`_raw_body_requests`, `_no_twisted_access_log`): parsing POST bodies as
HTML forms (~60 µs of CPU per POST) and formatting a second access-log line into a log
daphne discards (~2.5% of a request's CPU). It also spreads new connections over the web
processes (`_one_accept_per_wakeup`) and freezes what start-up allocated
(`_freeze_start_up_objects`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import inspect
import io
import os
import queue
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from tempfile import SpooledTemporaryFile
from typing import IO, Any

from asgiref.sync import SyncToAsync
from daphne import http_protocol
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from twisted.internet import tcp
from twisted.web import http

from config.admin_paths import is_admin_path
from config.asgi import application as asgi_application

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]

BODY_MEMORY_BYTES = 64 * 1024  # larger bodies spill to a temporary file


def _environ(scope: Scope, body: Any, body_size: int) -> dict[str, Any]:
    """The WSGI environ of an ASGI HTTP scope (PEP 3333; headers joined like asgiref's)."""
    script_name = scope.get("root_path", "").encode("utf8").decode("latin1")
    path_info = scope["path"].encode("utf8").decode("latin1")
    if script_name and path_info.startswith(script_name):
        path_info = path_info[len(script_name):]
    server = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path_info,
        "QUERY_STRING": scope.get("query_string", b"").decode("latin1"),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1] if server[1] is not None else 0),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": body,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if scope.get("client"):
        environ["REMOTE_ADDR"] = scope["client"][0]
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin1").upper().replace("-", "_")
        if name not in ("CONTENT_LENGTH", "CONTENT_TYPE"):
            name = f"HTTP_{name}"
        value = raw_value.decode("latin1")
        environ[name] = f"{environ[name]},{value}" if name in environ else value
    if "CONTENT_LENGTH" not in environ and body_size:
        # A chunked body was read whole: give Django its real length (the body size
        # limit middleware then judges it like a declared one).
        environ["CONTENT_LENGTH"] = str(body_size)
    return environ


Response = tuple[int, list[tuple[bytes, bytes]], bytes, bool]


class BrowserScopedHandler:
    """Django's WSGI handler, with the browser-only middleware (session, CSRF, the
    session's user, two-factor, messages: `settings.BROWSER_ONLY_MIDDLEWARE`) run only for
    the admin's paths (`config.admin_paths`), where a browser signs in.

    Everything else is the API, whose requests carry a bearer token: there those five
    found no session, checked no CSRF token (DRF's views are exempt, and no cookie can sign
    a request in without a session) and added nothing to the response, for ~200,000
    instructions a request. Both handlers share the rest of the chain in the same order.
    """

    def __init__(self) -> None:
        self.browser = WSGIHandler()
        self.api = _handler_without(settings.BROWSER_ONLY_MIDDLEWARE)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if is_admin_path(environ["PATH_INFO"]):
            return self.browser(environ, start_response)
        return self.api(environ, start_response)


def _handler_without(left_out: Iterable[str]) -> WSGIHandler:
    """A WSGI handler whose chain is settings.MIDDLEWARE less `left_out`. Django builds the
    chain from the setting when the handler is made, and has no other way to give it one:
    the setting is swapped only while this one is made (at start-up, before any thread
    serves)."""
    full, skipped = settings.MIDDLEWARE, set(left_out)
    settings.MIDDLEWARE = [path for path in full if path not in skipped]
    try:
        return WSGIHandler()
    finally:
        settings.MIDDLEWARE = full


class ThreadPoolHttp:
    """ASGI HTTP → Django's WSGI handler on `threads` long-lived threads.

    Requests reach the threads through one SimpleQueue and each answer comes back as one
    `call_soon_threadsafe` resolving the request's asyncio future. That is the whole of what
    `loop.run_in_executor` did here, without its concurrent.futures Future (a Condition per
    request), `submit`'s lock and thread-count bookkeeping and the two futures chained
    through callbacks: ~165,000 instructions per request for the hop, ~62,000 now.

    As the executor did, a request whose client left while it was queued (its task
    cancelled) is not run, and at interpreter exit the threads finish what they hold.
    """

    def __init__(self, threads: int) -> None:
        self.handler: Callable[..., Iterable[bytes]] = BrowserScopedHandler()
        self.threads = threads
        self.requests: queue.SimpleQueue[
            tuple[asyncio.Future[Response], dict[str, Any], asyncio.AbstractEventLoop, Send]
            | None] = queue.SimpleQueue()
        self.workers: list[threading.Thread] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        if not self.workers:
            self._start()
        message = await receive()
        if message["type"] == "http.disconnect":
            return  # the client left before sending its request
        first = message.get("body", b"")
        body: IO[bytes]
        if not message.get("more_body") and len(first) <= BODY_MEMORY_BYTES:
            # The whole body came in one message (daphne sends up to 8 KB at once): read
            # from memory as it came, without a spooled file's Python wrapper around the
            # same in-memory buffer (~10,000 instructions a request).
            body, size = io.BytesIO(first), len(first)
        else:
            spooled = await _spooled_body(message, receive)
            if spooled is None:
                return  # the client left before sending its whole request
            body, size = spooled
        with body:
            answer: asyncio.Future[Response] = loop.create_future()
            self.requests.put((answer, _environ(scope, body, size), loop, send))
            status, headers, content, streamed = await answer
        if streamed:
            return  # sent from the worker thread, chunk by chunk
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    def _start(self) -> None:
        self.workers = [threading.Thread(target=self._serve, name=f"http_{n}", daemon=True)
                        for n in range(self.threads)]
        for worker in self.workers:
            worker.start()
        # Daemon threads, so a thread idle in get() never holds up exit; atexit callbacks
        # run before daemon threads are stopped, so this lets them finish their requests.
        atexit.register(self._stop)

    def _stop(self) -> None:
        for _ in self.workers:
            self.requests.put(None)
        for worker in self.workers:
            worker.join()

    def _serve(self) -> None:
        while (job := self.requests.get()) is not None:
            answer, environ, loop, send = job
            if answer.cancelled():
                continue  # the client left while the request waited for a thread
            try:
                response = self._respond(environ, loop, send)
            except BaseException as error:  # as the executor: the awaiting task gets it
                _answer(loop, answer, None, error)
            else:
                _answer(loop, answer, response, None)

    def _respond(self, environ: dict[str, Any], loop: asyncio.AbstractEventLoop,
                 send: Send) -> Response:
        # Mark this thread as serving `loop`, as Django's own ASGI path does (asgiref), so
        # what the view publishes after commit through the Redis channel layer runs on
        # daphne's loop, where that layer's connections live, not on a second loop of this
        # process. (The PostgreSQL layer publishes inside the view's transaction instead.)
        SyncToAsync.threadlocal.main_event_loop = loop
        SyncToAsync.threadlocal.main_event_loop_pid = os.getpid()
        started: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            started["status"] = int(status.split(" ", 1)[0])
            started["headers"] = [(name.lower().encode("latin1"), value.encode("latin1"))
                                  for name, value in headers]
            return lambda data: None  # the legacy write() callable; Django never uses it

        result: Iterable[bytes] = self.handler(environ, start_response)
        try:
            if not getattr(result, "streaming", False):
                return started["status"], started["headers"], b"".join(result), False

            def send_now(message: dict[str, Any]) -> None:
                asyncio.run_coroutine_threadsafe(send(message), loop).result()

            send_now({"type": "http.response.start", "status": started["status"],
                      "headers": started["headers"]})
            for chunk in result:
                if chunk:
                    send_now({"type": "http.response.body", "body": chunk, "more_body": True})
            send_now({"type": "http.response.body", "body": b""})
            return started["status"], started["headers"], b"", True
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()  # request_finished: the thread's DB connection goes back to the pool


async def _spooled_body(message: dict[str, Any], receive: Receive) -> tuple[IO[bytes], int] | None:
    """A body sent in several messages (or one larger than BODY_MEMORY_BYTES), from its
    first message on, spooled to a temporary file past BODY_MEMORY_BYTES and rewound;
    None if the client left before sending all of it."""
    body = SpooledTemporaryFile(max_size=BODY_MEMORY_BYTES)  # noqa: SIM115 - closed by the caller
    try:
        size = 0
        while True:
            chunk = message.get("body", b"")
            size += len(chunk)
            body.write(chunk)
            if not message.get("more_body"):
                break
            message = await receive()
            if message["type"] == "http.disconnect":
                body.close()
                return None
    except BaseException:
        body.close()
        raise
    body.seek(0)
    return body, size


def _answer(loop: asyncio.AbstractEventLoop, answer: asyncio.Future[Response],
            response: Response | None, error: BaseException | None) -> None:
    """From a worker thread: resolve `answer` on its loop."""
    with contextlib.suppress(RuntimeError):  # a closed loop (exiting): nobody is waiting
        loop.call_soon_threadsafe(_resolve, answer, response, error)


def _resolve(answer: asyncio.Future[Response], response: Response | None,
             error: BaseException | None) -> None:
    if answer.done():
        return  # its task was cancelled: the client left
    if error is not None:
        answer.set_exception(error)
    elif response is not None:
        answer.set_result(response)


def _raw_body_requests() -> None:
    """Make daphne's requests skip twisted's form parsing of POST bodies.

    twisted's `Request(parsePOSTFormSubmission=True)`, the default daphne keeps, decodes
    urlencoded and multipart bodies into `request.args`, which daphne never reads: it
    hands the raw body to the application. Just deciding whether a body is a form parses
    its Content-Type with the email package, ~60 µs per POST (1-3% of a request's CPU
    here). daphne builds its requests from the `WebRequest` name of its module, so that
    name gets a subclass with the flag off. Skipped if a twisted release drops the flag.
    """
    if "parsePOSTFormSubmission" not in inspect.signature(http.Request.__init__).parameters:
        return
    if getattr(http_protocol.WebRequest, "raw_body", False):
        return  # already done in this process

    class RawBodyWebRequest(http_protocol.WebRequest):  # type: ignore[misc]
        raw_body = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("parsePOSTFormSubmission", False)
            super().__init__(*args, **kwargs)

    http_protocol.WebRequest = RawBodyWebRequest


def _no_twisted_access_log() -> None:
    """Stop twisted's HTTPFactory from writing its combined-log line per request.

    daphne logs each request itself (its access log, on the command line's terms), and
    Django's middleware writes ours (`config.access`); twisted's own line goes to the
    twisted log, which daphne points at nothing unless run with -v 2 or more. Formatting
    and discarding it cost ~2.5% of a request's CPU in the web processes. Skipped if daphne
    ever defines its own `log`.
    """
    if http_protocol.HTTPFactory.log is not http.HTTPFactory.log:
        return

    def log(self: http.HTTPFactory, request: http.Request) -> None:
        return None

    http_protocol.HTTPFactory.log = log


class WebApplication:
    """HTTP on the thread pool; everything else (WebSocket, lifespan) to `config.asgi`."""

    def __init__(self, threads: int) -> None:
        self.http = ThreadPoolHttp(threads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        else:
            await asgi_application(scope, receive, send)


def _one_accept_per_wakeup() -> None:
    """Make each web process accept one new connection per wake-up of its event loop.

    Every web process accepts on the one listening socket, and twisted accepts up to
    `numberAccepts` connections per readiness event (100 at first, 20 more each time it
    used them all). A burst of new keep-alive connections (a load balancer's, a client's
    pool) then lands on whichever process woke first: bench/quotes.py's 16 clients
    settled 13/3, 14/2 or 10/6, and the crowded process's GIL bounded the rate while the
    other idled. One per wake-up lets each idle process take its share, and a busy one,
    slower to wake, takes fewer (8/8 to 6/10 in the same runs). The cost is a wake-up
    per new connection, not per request.
    """
    if getattr(tcp.Port, "one_accept_per_wakeup", False):
        return  # already done in this process
    accept_connections = tcp.Port.doRead

    def doRead(self: tcp.Port) -> None:  # noqa: N802 - twisted's name
        self.numberAccepts = 1
        accept_connections(self)

    tcp.Port.doRead = doRead  # type: ignore[method-assign]
    tcp.Port.one_accept_per_wakeup = True  # type: ignore[attr-defined]


def _freeze_start_up_objects() -> None:
    """Move everything start-up allocated out of the garbage collector's sight.

    Modules, settings, models, the handlers and their middleware live as long as the
    process (~220,000 objects once Django and the chain SDKs are loaded), yet every full
    collection walks them all: one per ~2,000 requests here, ~0.07 ms of CPU per quote
    (gc.callbacks over 2,000 in-process quotes). `gc.freeze()` is the interpreter's own
    tool for this; the collection before it keeps start-up's garbage out of the frozen set.
    Objects made later are collected as before.
    """
    gc.collect()
    gc.freeze()


_raw_body_requests()
_no_twisted_access_log()
_one_accept_per_wakeup()
application = WebApplication(threads=settings.WEB_HTTP_THREADS)
_freeze_start_up_objects()

