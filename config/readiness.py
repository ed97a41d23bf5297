"""Readiness checks: database, task queue, chain backends. Each is cheap and time-boxed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connection

# Other apps add their checks here (chain backends) at import time via `register`.
_CHECKS: dict[str, Callable[[], Any]] = {}


def register(name: str, check: Callable[[], Any]) -> None:
    _CHECKS[name] = check


def _database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def _task_queue() -> str:
    from django_q.brokers import get_broker

    broker = get_broker()
    if not broker.ping():
        raise RuntimeError("broker did not answer")
    return settings.Q_CLUSTER.get("redis") and "redis" or "orm"


def run_checks() -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for name, check in {"database": _database, "task_queue": _task_queue, **_CHECKS}.items():
        started = time.monotonic()
        try:
            detail = check()
            results[name] = {"ok": True, "detail": detail}
        except Exception as exc:  # report, never raise: this is a status page
            results[name] = {"ok": False, "detail": type(exc).__name__}
        results[name]["ms"] = round((time.monotonic() - started) * 1000, 1)
    return results
