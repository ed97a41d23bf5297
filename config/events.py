"""Real-time events: published to Channels groups only after the transaction commits.

A rolled-back transition must never reach a client, so every publish goes through
`transaction.on_commit`. Groups: `quote.<quote_id>` and `user.<user_id>`. The channel
layer crosses processes (Redis or PostgreSQL), so a worker's transition reaches a socket
held by daphne. Consumers forward `{"type": "event.forward", "event": {...}}` messages.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any

from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT_SECONDS = 5.0


class _PublisherLoop:
    """One long-lived event loop per process for publishing from plain sync code.

    Channel layers keep loop-bound state (channels-postgres holds a psycopg async pool
    whose refill tasks live on the loop that opened it). `async_to_sync` from a sync
    process (the django-q2 worker) makes a new loop per call, so once a database restart
    kills the pool's connections nothing could refill them and every publish hung. Here
    the layer is only ever used from this one loop, which keeps running. Re-created
    after a fork (django-q2 forks its workers).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                self._loop = asyncio.new_event_loop()
                self._pid = os.getpid()
                threading.Thread(target=self._loop.run_forever, name="event-publisher",
                                 daemon=True).start()
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result(PUBLISH_TIMEOUT_SECONDS)


_publisher = _PublisherLoop()


def _group_send_all(groups: list[str], message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return

    async def send_all() -> None:
        for group in groups:
            await layer.group_send(group, message)

    if getattr(SyncToAsync.threadlocal, "main_event_loop", None) is not None:
        # A sync view under daphne: publish on the server's own loop, where the layer lives.
        async_to_sync(send_all)()
    else:
        _publisher.run(send_all())


def quote_group(quote_id: Any) -> str:
    return f"quote.{quote_id}"


def user_group(user_id: Any) -> str:
    return f"user.{user_id}"


def _send(groups: list[str], event: dict[str, Any], user_id: Any) -> None:
    try:
        _group_send_all(groups, {"type": "event.forward", "event": event})
    except Exception:  # a dead layer must not break the write path; clients resync on connect
        logger.exception("event publish failed", extra={"groups": groups})
    from users.notifications import notify_enqueue

    try:  # the user's notify URL gets the same event (outgoing client webhooks)
        notify_enqueue(user_id, event)
    except Exception:
        logger.exception("client notification enqueue failed")


def publish_after_commit(*, event: dict[str, Any], user_id: Any, quote_id: Any = None) -> None:
    groups = [user_group(user_id)]
    if quote_id is not None:
        groups.insert(0, quote_group(quote_id))
    transaction.on_commit(lambda: _send(groups, event, user_id))
