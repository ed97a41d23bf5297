"""Real-time events: published to Channels groups only after the transaction commits.

A rolled-back transition must never reach a client, so every publish goes through
`transaction.on_commit`. Groups: `quote.<quote_id>` and `user.<user_id>`. The channel
layer crosses processes (Redis or PostgreSQL), so a worker's transition reaches a socket
held by daphne. Consumers forward `{"type": "event.forward", "event": {...}}` messages.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

# Hooks run after commit for every published event (outgoing client webhooks, metrics).
_after_publish: list[Any] = []


def quote_group(quote_id: Any) -> str:
    return f"quote.{quote_id}"


def user_group(user_id: Any) -> str:
    return f"user.{user_id}"


def on_publish(hook: Any) -> None:
    _after_publish.append(hook)


def _send(groups: list[str], event: dict[str, Any], user_id: Any) -> None:
    layer = get_channel_layer()
    for group in groups:
        try:
            if layer is not None:
                async_to_sync(layer.group_send)(group, {"type": "event.forward", "event": event})
        except Exception:  # a dead layer must not break the write path; clients resync on connect
            logger.exception("event publish failed", extra={"group": group})
    from users.notifications import notify_enqueue

    for hook in (notify_enqueue, *_after_publish):
        try:
            hook(user_id, event)
        except Exception:
            logger.exception("after-publish hook failed")


def publish_after_commit(*, event: dict[str, Any], user_id: Any, quote_id: Any = None) -> None:
    groups = [user_group(user_id)]
    if quote_id is not None:
        groups.insert(0, quote_group(quote_id))
    transaction.on_commit(lambda: _send(groups, event, user_id))
