"""The web processes' connection pool (DB_POOL): its checkout check sends nothing to
PostgreSQL for a quiet connection, and still replaces one the server has terminated. The
same holds for the health check of the other processes' persistent connections
(CONN_HEALTH_CHECKS, run before every django-q2 task).

Each test builds the pool `config.settings` configures with DB_POOL on, on the test
database, under an alias of its own; `pg_stat_activity.query` (the last statement a backend
received, the empty one of psycopg's check included) shows what was sent."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.db.utils import load_backend
from psycopg_pool import ConnectionPool

from config.db_backend.pool_check import check_quiet_connection
from config.launcher import WEB_ENV_DEFAULTS

pytestmark = pytest.mark.django_db(transaction=True)

MARKER = "SELECT 'pool check marker'"


def backend_wrapper(**settings: Any) -> Any:
    """A DatabaseWrapper of config.db_backend on the test database, under an alias of its
    own, with health checks on and `settings` over the test database's."""
    settings_dict = {**connection.settings_dict, "CONN_HEALTH_CHECKS": True, **settings}
    settings_dict.pop("ENGINE", None)
    return load_backend("config.db_backend").DatabaseWrapper(
        settings_dict, alias=f"backend_{id(settings_dict)}")


def pooled_wrapper(check: Any | None) -> Iterator[Any]:
    """With a one-connection pool (`check`: as the settings set it; None: left to Django,
    i.e. psycopg's check_connection)."""
    pool: dict[str, Any] = {"min_size": 1, "max_size": 1, "timeout": 10}
    if check is not None:
        pool["check"] = check
    wrapper = backend_wrapper(CONN_MAX_AGE=0,
                              OPTIONS={**connection.settings_dict["OPTIONS"], "pool": pool})
    try:
        yield wrapper
    finally:
        wrapper.close()
        wrapper.close_pool()


@pytest.fixture
def settings_pool() -> Iterator[Any]:
    yield from pooled_wrapper(check_quiet_connection)


@pytest.fixture
def django_default_pool() -> Iterator[Any]:
    yield from pooled_wrapper(None)


def checkout(wrapper: Any) -> int:
    """Take the pool's connection (the check runs) and give it back; its backend pid."""
    wrapper.ensure_connection()
    pid = wrapper.connection.info.backend_pid
    wrapper.close()
    return int(pid)


def last_statement(pid: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    assert row is not None, f"backend {pid} is gone"
    return str(row[0])


def terminate(pid: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        deadline = time.monotonic() + 10
        while True:  # the backend is gone: its FATAL message and EOF are on the socket
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
            if cursor.fetchone()[0] == 0:
                return
            assert time.monotonic() < deadline
            time.sleep(0.05)


def run_marker(wrapper: Any) -> int:
    with wrapper.cursor() as cursor:
        cursor.execute(MARKER)
        pid = wrapper.connection.info.backend_pid
    wrapper.close()
    return int(pid)


def test_web_processes_settings_give_the_pool_the_quiet_connection_check():
    probe = ("import django; django.setup(); from django.db import connection; "
             "check = connection.pool._check; print(check.__module__, check.__qualname__)")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **WEB_ENV_DEFAULTS}
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=settings.BASE_DIR,
                         capture_output=True, text=True, check=True, timeout=60)  # noqa: S603
    assert out.stdout.split() == ["config.db_backend.pool_check", "check_quiet_connection"]


def test_a_quiet_connection_is_handed_out_without_a_statement(settings_pool):
    pid = run_marker(settings_pool)

    assert [checkout(settings_pool) for _ in range(3)] == [pid] * 3
    assert last_statement(pid) == MARKER


def test_djangos_own_check_sends_a_statement_per_checkout(django_default_pool):
    """The cost the settings' check removes (and proof the test above would see it)."""
    assert django_default_pool.pool._check is ConnectionPool.check_connection
    pid = run_marker(django_default_pool)

    assert checkout(django_default_pool) == pid
    assert last_statement(pid) == ""


def test_a_terminated_pooled_connection_is_replaced_before_the_request_uses_it(settings_pool):
    old_pid = run_marker(settings_pool)
    terminate(old_pid)

    with settings_pool.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
        assert settings_pool.connection.info.backend_pid != old_pid
    settings_pool.close()


@pytest.fixture
def persistent() -> Iterator[Any]:
    """As the worker processes have it: persistent, health-checked, no pool."""
    wrapper = backend_wrapper(CONN_MAX_AGE=60)
    try:
        yield wrapper
    finally:
        wrapper.close()


def next_task(wrapper: Any) -> None:
    """What django-q2's worker does between two tasks (close_old_connections)."""
    wrapper.close_if_unusable_or_obsolete()


def test_the_settings_use_the_backend_with_the_quiet_health_check():
    assert settings.DATABASES["default"]["ENGINE"] == "config.db_backend"
    assert settings.DATABASES["default"]["CONN_HEALTH_CHECKS"] is True


def test_a_quiet_persistent_connection_passes_its_health_check_without_a_statement(persistent):
    with persistent.cursor() as cursor:
        cursor.execute(MARKER)
    pid = persistent.connection.info.backend_pid
    for _ in range(3):
        next_task(persistent)
        with persistent.cursor():  # the health check runs here, before any statement
            pass
        assert persistent.health_check_done
    assert persistent.connection.info.backend_pid == pid
    assert last_statement(pid) == MARKER


def test_a_terminated_persistent_connection_is_replaced_before_the_next_task_uses_it(persistent):
    with persistent.cursor() as cursor:
        cursor.execute(MARKER)
    old_pid = persistent.connection.info.backend_pid
    terminate(old_pid)
    next_task(persistent)
    with persistent.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    assert persistent.connection.info.backend_pid != old_pid
