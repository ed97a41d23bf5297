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

    async def group_send_many(self, sends: list[tuple[str, dict[str, Any]]]) -> None:
        """Several group sends in two statements: one read of every group's channels, one
        pipelined insert of every message (the library does two reads and an insert per
        group). The executor publishes a batch of status events this way."""
        from datetime import timedelta

        from channels_postgres.db import GROUP_CHANNEL_TABLE, MESSAGE_TABLE
        from django.utils import timezone
        from psycopg import sql

        keys = [self._group_key(group) for group, _ in sends]
        read = sql.SQL("SELECT DISTINCT group_key, channel FROM {} WHERE group_key = ANY(%s)").format(
            sql.Identifier(GROUP_CHANNEL_TABLE))
        insert = sql.SQL("INSERT INTO {} (channel, message, expire) VALUES (%s, %s, %s)").format(
            sql.Identifier(MESSAGE_TABLE))
        pool = await self.django_db.get_db_pool(db_params=self.django_db.db_params)
        async with pool.connection() as conn, conn.cursor() as cursor:
            await cursor.execute(read, (list(set(keys)),))
            channels: dict[str, list[str]] = {}
            for group_key, channel in await cursor.fetchall():
                channels.setdefault(group_key, []).append(channel)
            expire = timezone.now() + timedelta(seconds=self.expiry)
            rows = [(channel, self.serialize(message), expire)
                    for key, (_, message) in zip(keys, sends, strict=True)
                    for channel in channels.get(key, [])]
            if rows:
                await cursor.executemany(insert, rows)
