"""`make run`: the whole service in one command, embedded defaults, Ctrl-C stops it all.

Starts (or joins) the embedded PostgreSQL when DATABASE_URL is unset, migrates, starts the
Solana sandbox (sandbox mode with a local SOLANA_RPC_URL), seeds the demo treasury and the
operator account, then runs the web server (REST + WebSocket on one port: `web_serve`) and
the django-q2 worker. Children inherit DATABASE_URL so every process uses the same server;
the launcher keeps its handle on the embedded server so it stops only after the children
are gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

BASE_DIR = Path(__file__).resolve().parent.parent


def _log(message: str) -> None:
    print(f"[run] {message}", flush=True)


def _wait_http(url: str, timeout: float, body: bytes | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=2) as resp:  # noqa: S310 - local URL
                if resp.status < 500:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


# The web processes' environment: a psycopg pool per process, because ASGI runs each sync
# request in its own short-lived thread and per-thread persistent connections would pile
# up to "too many clients".
WEB_ENV_DEFAULTS = {"DB_POOL": "1"}


def web_listener(host: str, port: int) -> socket.socket:
    """The one listening socket every web process accepts on (HTTP and WebSocket share it)."""
    listener = socket.create_server((host, port), backlog=1024)
    listener.set_inheritable(True)
    return listener


def web_command(listener: socket.socket, app: str = "config.serving:application") -> list[str]:
    """One daphne process on the inherited listening socket, serving `config.serving`
    (HTTP on a thread pool, WebSocket through Channels: one port for both).

    No --proxy-headers: bound to loopback with no proxy in front, X-Forwarded-For would
    only let a client choose the address the throttles and /metrics allow-list see.
    `-v 0`: daphne's own access lines on stdout repeat the structured `config.access`
    log line of every request (and cost ~1% of a request's CPU); warnings still show.
    """
    return [sys.executable, "-m", "daphne", "-v", "0", "--fd", str(listener.fileno()), app]


def web_process_count(configured: int) -> int:
    """WEB_PROCESSES, or one per core when it is 0: one daphne process uses one core."""
    return configured if configured > 0 else max(1, os.cpu_count() or 1)


def main() -> int:
    os.chdir(BASE_DIR)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    started = time.monotonic()

    import django

    django.setup()  # starts or joins the embedded PostgreSQL when DATABASE_URL is unset
    from django.conf import settings
    from django.core.management import call_command

    os.environ["DATABASE_URL"] = settings.DATABASE_URL
    _log(f"database ready ({'embedded' if 'host=/' in settings.DATABASE_URL else 'DATABASE_URL'})")
    call_command("migrate", interactive=False, verbosity=0)
    _log("migrations applied")

    children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(name: str, args: list[str], env: dict[str, str] | None = None,
              pass_fds: tuple[int, ...] = ()) -> None:
        children.append((name, subprocess.Popen(args, cwd=BASE_DIR,  # noqa: S603
                                                env={**os.environ, **(env or {})},
                                                pass_fds=pass_fds)))

    rpc = urlparse(settings.SOLANA_RPC_URL)
    if not settings.IS_LIVE and rpc.hostname in ("127.0.0.1", "localhost"):
        spawn("solana-sandbox", [sys.executable, "manage.py", "solana_sandbox"])
        if not _wait_http(settings.SOLANA_RPC_URL, 30,
                          b'{"jsonrpc":"2.0","id":1,"method":"getHealth"}'):
            _log("solana sandbox did not start")
            return _stop(children, 1)
        _log(f"solana sandbox on {settings.SOLANA_RPC_URL}")

    call_command("seed_demo")
    call_command("ensure_schedules")

    port = str(settings.PORT)
    # Several daphne processes accept on one socket opened here: every core serves, and
    # REST and WebSocket stay on one port (a socket may land on any process; the channel
    # layer carries events across processes).
    listener = web_listener("127.0.0.1", settings.PORT)
    web_env = {key: os.environ.get(key, value) for key, value in WEB_ENV_DEFAULTS.items()}
    processes = web_process_count(settings.WEB_PROCESSES)
    for n in range(processes):
        spawn(f"web-{n}", web_command(listener), env=web_env, pass_fds=(listener.fileno(),))
    _log(f"{processes} web processes on port {port}")
    call_command("recover_executions")  # a crash may have left work half-sent
    spawn("worker", [sys.executable, "manage.py", "qcluster"])
    if _wait_http(f"http://127.0.0.1:{port}/health", 30):
        _log(f"serving http://127.0.0.1:{port}  (admin: /admin/, API docs: /api/docs/, "
             f"WebSocket: ws://127.0.0.1:{port}/ws/) after {time.monotonic() - started:.1f}s")
        _log("Ctrl-C stops everything")

    stopping = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stopping["signal"] = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stopping["signal"]:
        for name, proc in children:
            if proc.poll() is not None:
                _log(f"{name} exited with {proc.returncode}; stopping")
                return _stop(children, 1)
        time.sleep(0.5)
    return _stop(children, 0)


def _stop(children: list[tuple[str, subprocess.Popen[bytes]]], code: int) -> int:
    for _name, proc in reversed(children):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for name, proc in reversed(children):
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _log(f"{name} did not stop in time; killing it and its processes")
            _kill_tree(proc.pid)
            proc.wait()
    _log("stopped")
    return code


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every process under it: the worker cluster forks its
    workers, and killing only its parent would leave them running without it."""
    import psutil

    try:
        parent = psutil.Process(pid)
        family = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


if __name__ == "__main__":
    sys.exit(main())
