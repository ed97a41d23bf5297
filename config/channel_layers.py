"""The no-extra-server channel layer: PostgreSQL LISTEN/NOTIFY via channels-postgres,
configured from the live `default` database connection at first use (not at settings
import), so it always talks to the database the process really uses — including the
test database pytest-django switches to."""

from __future__ import annotations

from typing import Any

from channels_postgres.core import PostgresChannelLayer


class DefaultDatabaseChannelLayer(PostgresChannelLayer):  # type: ignore[misc]
    def __init__(self, **config: Any) -> None:
        from django.db import connections

        database = dict(connections["default"].settings_dict)
        database.pop("TEST", None)
        # Each process holds a small pool: a LISTEN connection plus a few for sends.
        database["PSYCOPG_OPTIONS"] = config.pop("PSYCOPG_OPTIONS", {"min_size": 1,
                                                                     "max_size": 4})
        super().__init__(**database, **config)
