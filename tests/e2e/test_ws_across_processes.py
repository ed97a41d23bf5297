"""A client connected to a real daphne sees transitions made by a real django-q2 worker
process, on both cross-process channel layers (PostgreSQL LISTEN/NOTIFY and Redis)."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
import websockets
from django.db import transaction
from django_q.tasks import async_task

from quotes.services.transitions import quote_transition
from tests.e2e.stack import running_stack
from tests.factories import QuoteFactory
from users.authentication import token_issue

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow,
              pytest.mark.usefixtures("fresh_channel_layers")]


def redis_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


async def collect(url: str, count: int, trigger, timeout: float = 30.0) -> list[dict]:
    frames: list[dict] = []
    async with websockets.connect(url) as ws:
        frames.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
        await asyncio.get_running_loop().run_in_executor(None, trigger)
        while len(frames) < count:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
    return frames


@pytest.mark.parametrize("layer", ["postgres", "redis"])
def test_worker_transitions_reach_a_daphne_socket(layer, settings):
    if layer == "redis" and not redis_available():
        pytest.fail("Redis is not running on 127.0.0.1:6379 (CI machines have it)")
    redis_url = "redis://127.0.0.1:6379/3" if layer == "redis" else ""
    if layer == "redis":  # this process publishes the web-side transition: same layer
        settings.CHANNEL_LAYERS = {"default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [redis_url]}}}
    quote = QuoteFactory()
    token = token_issue(user=quote.user)

    def pay_and_hand_to_worker():
        with transaction.atomic():  # the web side commits the payment
            quote_transition(quote_id=quote.pk, to_status="committed", actor="e2e-web")
        async_task("tests.e2e.worker_tasks.walk_quote_to_executed", str(quote.pk))

    # Tasks stay on the ORM broker in both cases, so this process can enqueue them.
    with running_stack(redis_url=redis_url, extra_env={"Q_BROKER": "orm"}) as stack:
        url = f"{stack.ws_url}/ws/quotes/{quote.pk}/?token={token}"
        frames = asyncio.run(collect(url, 4, pay_and_hand_to_worker))
    assert [f["status"] for f in frames] == ["pending", "committed", "executing", "executed"]
    assert [f["previous"] for f in frames] == [None, "pending", "committed", "executing"]
