"""Real server processes for end-to-end tests: daphne (REST + WebSocket) and the django-q2
worker, started against the test database pytest-django created, so a test can watch a
socket on daphne while the worker process makes the changes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_database_url() -> str:
    """A URL for the database this test session runs on (the test_ database)."""
    params = connection.settings_dict
    host = params["HOST"] or ""
    name = params["NAME"]
    if host.startswith("/"):
        return f"postgresql://{params['USER']}:@/{name}?host={host}"
    port = params["PORT"] or "5432"
    return f"postgresql://{params['USER']}:{params['PASSWORD']}@{host}:{port}/{name}"


@dataclass
class Stack:
    base_url: str
    ws_url: str
    processes: list[subprocess.Popen[bytes]]


@contextlib.contextmanager
def running_stack(*, redis_url: str = "", extra_env: dict[str, str] | None = None,
                  worker: bool = True) -> Iterator[Stack]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": test_database_url(),
        "REDIS_URL": redis_url,
        "SOLANA_RPC_URL": settings.SOLANA_RPC_URL,
        "DATA_DIR": str(settings.DATA_DIR),
        "PYTHONPATH": str(ROOT),
        "DB_CONN_MAX_AGE": "0",
        **(extra_env or {}),
    }
    env.pop("TEST_DB_SUFFIX", None)
    logs = Path(settings.DATA_DIR) / "e2e-logs"
    logs.mkdir(parents=True, exist_ok=True)
    commands = [[sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                 "config.asgi:application"]]
    if worker:
        commands.append([sys.executable, "manage.py", "qcluster"])
    processes = []
    for i, command in enumerate(commands):
        log = open(logs / f"proc-{port}-{i}.log", "wb")  # noqa: SIM115 - closed with the process
        # The web process pools its connections as `make run` does; the forking worker doesn't.
        proc_env = {**env, "DB_POOL": "1"} if i == 0 else env
        processes.append(subprocess.Popen(command, cwd=ROOT, env=proc_env, stdout=log,  # noqa: S603
                                          stderr=subprocess.STDOUT, start_new_session=True))
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base_url, processes)
        yield Stack(base_url=base_url, ws_url=f"ws://127.0.0.1:{port}", processes=processes)
    finally:
        for proc in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_ready(base_url: str, processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for proc in processes:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=1):  # noqa: S310
                time.sleep(1.0)  # give the worker a moment to start its cluster
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("stack did not become ready")
