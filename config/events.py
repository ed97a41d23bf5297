"""Real-time events: delivered only if, and after, the transaction that made them commits.

A rolled-back transition must never reach a client. Groups: `quote.<quote_id>` and
`user.<user_id>`. The channel layer crosses processes (Redis or PostgreSQL), so a worker's
transition reaches a socket held by daphne. Consumers forward
`{"type": "event.forward", "event": {...}}` messages.

With the PostgreSQL layer (the embedded setup) the messages are rows of this database,
written in the publishing transaction: PostgreSQL delivers their NOTIFY at its commit and
drops them on rollback. With Redis the send waits for `transaction.on_commit`. Either way
the users' webhook deliveries are recorded in the same transaction (users.notifications).
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

from config.channel_layers import DefaultDatabaseChannelLayer

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT_SECONDS = 5.0


class _PublisherLoop:
    """One long-lived event loop per process for publishing from plain sync code.

    Channel layers keep loop-bound state (Redis connections and the tasks that read them
    live on the loop that opened them). `async_to_sync` from a sync process (the django-q2
    worker) makes a new loop per call, so once a restart killed the layer's connections
    nothing could re-open them and every publish hung (seen with channels-postgres's pool
    when it published this way). Here the layer is only ever used from this one loop,
    which keeps running. Re-created after a fork (django-q2 forks its workers).
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


def _group_send_many(sends: list[tuple[str, dict[str, Any]]]) -> None:
    layer = get_channel_layer()
    if layer is None or not sends:
        return

    async def send_all() -> None:
        for group, message in sends:
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


Published = tuple[dict[str, Any], Any, Any]  # (event, user id, quote id or None)


def _group_sends(published: list[Published]) -> list[tuple[str, dict[str, Any]]]:
    sends = []
    for event, user_id, quote_id in published:
        message = {"type": "event.forward", "event": event}
        if quote_id is not None:
            sends.append((quote_group(quote_id), message))
        sends.append((user_group(user_id), message))
    return sends


def _send_after_commit(sends: list[tuple[str, dict[str, Any]]]) -> None:
    try:
        _group_send_many(sends)
    except Exception:  # a dead layer must not break the write path; clients resync on connect
        logger.exception("event publish failed", extra={"events": len(sends)})


def publish_after_commit(*, event: dict[str, Any], user_id: Any, quote_id: Any = None) -> None:
    publish_after_commit_many([(event, user_id, quote_id)])


def publish_after_commit_many(published: list[Published]) -> None:
    """Publish several events of the caller's transaction, delivered at its commit: one
    statement (PostgreSQL layer) or one layer round trip after commit (Redis) for all of
    them, and one look-up of the users' notify URLs. With the PostgreSQL layer those two
    are one statement: the message INSERT runs as a WITH clause of the look-up."""
    if not published:
        return
    from users.notifications import notify_enqueue_many

    sends = _group_sends(published)
    # The user's notify URL gets the same event (outgoing client webhooks).
    notifications = [(user_id, event) for event, user_id, _ in published]
    layer = get_channel_layer()
    if isinstance(layer, DefaultDatabaseChannelLayer):
        notify_enqueue_many(notifications, alongside=layer.group_send_statement(sends))
        return
    if layer is not None:
        transaction.on_commit(lambda: _send_after_commit(sends))
    notify_enqueue_many(notifications)
