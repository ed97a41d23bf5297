"""The PostgreSQL channel layer under a crowd of concurrent receivers (sockets connecting
at once): one LISTEN connection per process, and each message delivered exactly once."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from config.channel_layers import DefaultDatabaseChannelLayer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

RECEIVERS = 30


@sync_to_async
def listen_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND query ILIKE 'LISTEN%%'")
        return int(cursor.fetchone()[0])


async def test_concurrent_receivers_share_one_listener_and_get_each_message_once():
    layer = DefaultDatabaseChannelLayer()
    channels = [await layer.new_channel() for _ in range(RECEIVERS)]
    for channel in channels:
        await layer.group_add("crowd", channel)

    async def drain(channel: str) -> list[dict]:
        received = [await layer.receive(channel)]
        with contextlib.suppress(TimeoutError):  # anything more soon would be a duplicate
            received.append(await asyncio.wait_for(layer.receive(channel), 0.5))
        return received

    receivers = [asyncio.create_task(drain(c)) for c in channels]
    await asyncio.sleep(1.0)  # every receive() is waiting before anything is sent
    assert await listen_connections() == 1
    await layer.group_send("crowd", {"type": "event.forward", "event": {"n": 1}})
    results = await asyncio.wait_for(asyncio.gather(*receivers), 15)
    assert [len(r) for r in results] == [1] * RECEIVERS
    assert all(r[0]["event"] == {"n": 1} for r in results)


async def test_leaving_a_group_works_and_stops_delivery():
    layer = DefaultDatabaseChannelLayer()
    channel = await layer.new_channel()
    await layer.group_add("leavers", channel)
    await layer.group_discard("leavers", channel)  # what every socket disconnect does
    await layer.group_send("leavers", {"type": "event.forward", "event": {"n": 2}})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(channel), 1.0)


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
async def test_an_event_and_its_webhook_delivery_go_in_one_statement_with_the_transaction(outcome):
    """publish_after_commit_many with this layer: the message rows and the user's notify-URL
    look-up are one statement; both commit or vanish with the publishing transaction."""
    from django.db import transaction
    from django.test.utils import CaptureQueriesContext

    from config.events import publish_after_commit_many, user_group
    from tests.factories import UserFactory
    from users.models import WebhookDelivery

    layer = DefaultDatabaseChannelLayer()
    user = await sync_to_async(UserFactory)(notify_url="https://client.example/hook")
    channel = await layer.new_channel()
    await layer.group_add(user_group(user.pk), channel)

    class Abandon(Exception):
        pass

    @sync_to_async
    def publish() -> list[str]:
        with contextlib.suppress(Abandon), transaction.atomic():
            with CaptureQueriesContext(connection) as statements:
                publish_after_commit_many([({"event": "test.published", "n": 3}, user.pk, None)])
            if outcome == "rollback":
                raise Abandon
        # Besides: the delivery row and its send task (a user with a notify URL).
        return [q["sql"] for q in statements.captured_queries
                if "channels_postgres_message" in q["sql"] or "notify_url" in q["sql"]]

    receiving = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0.5)  # listening before anything is sent
    [statement] = await publish()
    assert "channels_postgres_message" in statement and "notify_url" in statement
    deliveries = await sync_to_async(WebhookDelivery.objects.filter(user=user).count)()
    if outcome == "commit":
        message = await asyncio.wait_for(receiving, 10)
        assert message["event"] == {"event": "test.published", "n": 3}
        assert deliveries == 1
    else:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(receiving, 1.0)
        assert deliveries == 0
