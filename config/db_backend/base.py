"""`django.db.backends.postgresql` whose pool takes `OPTIONS["pool"]["check"]`, and whose
health check skips its round trip on a quiet connection.

Django 5.2 builds its psycopg pool with `check=ConnectionPool.check_connection` (when
CONN_HEALTH_CHECKS) and then `**OPTIONS["pool"]`, so a `check` of one's own fails as a
duplicate keyword. Django fixed that upstream (ticket #37075: the setting's `check` wins,
through `setdefault`); `pool` below is that fix on 5.2, nothing else: delete it once
Django ships it.

Health checks (CONN_HEALTH_CHECKS) of persistent connections: Django runs `SELECT 1`
before the first statement of every request and of every django-q2 task (the worker
closes "old connections" before each), one round trip per payment in the executor. A
connection the server has not spoken on since is as good as that answer
(`pool_check.connection_is_quiet`, the reasoning in pool_check.py); one it has spoken on
gets the real `SELECT 1`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base

from config.db_backend.pool_check import connection_is_quiet


class DatabaseWrapper(base.DatabaseWrapper):
    # Django's, which its stubs leave out (annotations only: the class-wide dict of pools
    # stays the parent's).
    _connection_pools: dict[str, Any]
    _configure_connection: Callable[[Any], Any]

    @property
    def pool(self) -> Any:
        pool_options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == NO_DB_ALIAS or not pool_options:
            return None
        if self.alias not in self._connection_pools:
            if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
                raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
            pool_options = {} if pool_options is True else dict(pool_options)
            from psycopg_pool import ConnectionPool

            if self.settings_dict["CONN_HEALTH_CHECKS"]:
                pool_options.setdefault("check", ConnectionPool.check_connection)
            connect_kwargs = self.get_connection_params()
            connect_kwargs["autocommit"] = True  # as Django: it sets autocommit itself later
            pool = ConnectionPool(kwargs=connect_kwargs, open=False,
                                  configure=self._configure_connection, **pool_options)
            # As Django: threads racing here build several pools; the first one set wins.
            self._connection_pools.setdefault(self.alias, pool)
        return self._connection_pools[self.alias]

    def is_usable(self) -> bool:
        if self.connection is not None and connection_is_quiet(self.connection):
            return True
        return bool(super().is_usable())
