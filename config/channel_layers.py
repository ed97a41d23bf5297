"""The no-extra-server channel layer: PostgreSQL LISTEN/NOTIFY via channels-postgres,
configured from the live `default` database connection at first use (not at settings
import), so it always talks to the database the process really uses — including the
test database pytest-django switches to."""

from __future__ import annotations

import asyncio
from typing import Any

from channels_postgres.core import PostgresChannelLayer


class DefaultDatabaseChannelLayer(PostgresChannelLayer):  # type: ignore[misc]
    _listener: asyncio.Task[None] | None = None

    def __init__(self, **config: Any) -> None:
        from django.db import connections

        database = dict(connections["default"].settings_dict)
        database.pop("TEST", None)
        # Each process holds a small pool: a LISTEN connection plus a few for sends.
        database["PSYCOPG_OPTIONS"] = config.pop("PSYCOPG_OPTIONS", {"min_size": 1,
                                                                     "max_size": 4})
        super().__init__(**database, **config)
        # Group removal goes through the Django ORM under an alias of the library's own
        # ('channels_postgres'), which we don't define: every socket disconnect failed.
        # Use the default connection, the database this layer already talks to.
        self.django_db.using = "default"

    def _get_or_create_listener_task(self) -> tuple[asyncio.Event, bool]:
        """One LISTEN task per event loop, restarted if it died.

        channels-postgres 1.1.4 only checks an Event its listener sets once LISTEN runs,
        so every receive() before that started another listener: 64 sockets connecting
        at once (a crowd reconnecting after a restart) gave 64 LISTEN connections and
        every message delivered 64 times per socket (measured by bench/ws.py).
        """
        loop = asyncio.get_running_loop()
        listener = self._listener
        if listener is None or listener.get_loop() is not loop or listener.done():
            self.listener_task_is_running = asyncio.Event()
            self.event_loop = loop
            self._listener = loop.create_task(self.listen_to_all_channels())
        return self.listener_task_is_running, False

    def group_send_statement(self, sends: list[tuple[str, dict[str, Any]]]) -> tuple[str, list[Any]]:
        """Several group sends as ONE INSERT and its parameters, for the caller to run on
        Django's connection inside its transaction (config.events runs it as a WITH clause
        of the notify-URL look-up). The message rows, and the NOTIFY their trigger raises,
        become visible at its commit and vanish with its rollback: no event of rolled-back
        work is ever delivered, and publishing costs neither a round trip after the commit
        nor a hop to an event loop. (The library's group_send reads the group and inserts
        per group, on a pool connection of its own.)"""
        from datetime import timedelta

        from django.utils import timezone

        keys, payloads = [], []
        serialized: dict[int, bytes] = {}  # one event goes to its quote's group and its user's
        for group, message in sends:
            keys.append(self._group_key(group))
            payload = serialized.get(id(message))
            if payload is None:
                payload = serialized[id(message)] = self.serialize(message)
            payloads.append(payload)
        expire = timezone.now() + timedelta(seconds=self.expiry)
        return _GROUP_SEND_SQL, [expire, keys, payloads]


# Each message to every channel of its group, in the order sent (message ids are the
# delivery order). Without a listening socket the join is empty and nothing is written.
_GROUP_SEND_SQL = """
INSERT INTO channels_postgres_message (channel, message, expire)
SELECT member.channel, sent.message, %s
FROM unnest(%s::text[], %s::bytea[]) WITH ORDINALITY AS sent (group_key, message, position)
CROSS JOIN LATERAL (SELECT DISTINCT channel FROM channels_postgres_groupchannel g
                    WHERE g.group_key = sent.group_key) member
ORDER BY sent.position
"""
