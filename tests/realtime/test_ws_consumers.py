"""WebSocket consumers through Channels' WebsocketCommunicator: auth, snapshot first,
ordering, and the after-commit rule. The in-memory layer is used here only (unit tests);
the cross-process layers are exercised by the end-to-end daphne tests."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import transaction
from django.test import override_settings

from config.asgi import application
from quotes.services.transitions import quote_transition
from tests.factories import QuoteFactory, UserFactory
from users.authentication import token_issue

IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture(autouse=True)
def in_memory_layer():
    from channels.layers import channel_layers

    with override_settings(CHANNEL_LAYERS=IN_MEMORY):
        channel_layers.backends.clear()
        yield
        channel_layers.backends.clear()


@sync_to_async
def make_quote_and_token(status="pending"):
    quote = QuoteFactory(status=status)
    return quote, token_issue(user=quote.user)


@sync_to_async
def transition(quote_id, to_status, *, fail=False):
    with transaction.atomic():
        quote_transition(quote_id=quote_id, to_status=to_status, actor="test")
        if fail:
            raise RuntimeError("roll back")


async def connect(path, subprotocols=None):
    communicator = WebsocketCommunicator(application, path, subprotocols=subprotocols)
    connected, _ = await communicator.connect()
    return communicator, connected


async def test_no_token_is_closed_with_4401():
    quote, _ = await make_quote_and_token()
    communicator, _ = await connect(f"/ws/quotes/{quote.id}/")
    assert await communicator.receive_output(timeout=2) == {"type": "websocket.close", "code": 4401}


async def test_bad_token_is_closed_with_4401():
    quote, _ = await make_quote_and_token()
    communicator, _ = await connect(f"/ws/quotes/{quote.id}/?token=not-a-token")
    assert (await communicator.receive_output(timeout=2))["code"] == 4401


async def test_someone_elses_quote_is_closed_with_4404():
    quote, _ = await make_quote_and_token()
    stranger_token = await sync_to_async(lambda: token_issue(user=UserFactory()))()
    communicator, _ = await connect(f"/ws/quotes/{quote.id}/?token={stranger_token}")
    assert (await communicator.receive_output(timeout=2))["code"] == 4404


async def test_snapshot_first_then_each_transition_in_order():
    quote, token = await make_quote_and_token()
    communicator, connected = await connect(f"/ws/quotes/{quote.id}/?token={token}")
    assert connected
    first = await communicator.receive_json_from(timeout=2)
    assert first["event"] == "quote.status"
    assert (first["status"], first["previous"]) == ("pending", None)

    for to_status in ("committed", "executing", "executed"):
        await transition(quote.id, to_status)
    frames = [await communicator.receive_json_from(timeout=2) for _ in range(3)]
    assert [(f["previous"], f["status"]) for f in frames] == [
        ("pending", "committed"), ("committed", "executing"), ("executing", "executed")]
    assert all(f["quote_id"] == str(quote.id) for f in frames)
    assert set(frames[0]) == {"event", "quote_id", "status", "previous", "execution", "at"}
    await communicator.disconnect()


async def test_subprotocol_token_is_accepted():
    quote, token = await make_quote_and_token()
    communicator, connected = await connect(f"/ws/quotes/{quote.id}/", ["bearer", token])
    assert connected
    assert (await communicator.receive_json_from(timeout=2))["status"] == "pending"
    await communicator.disconnect()


async def test_rolled_back_transition_sends_nothing():
    quote, token = await make_quote_and_token()
    communicator, _ = await connect(f"/ws/quotes/{quote.id}/?token={token}")
    await communicator.receive_json_from(timeout=2)
    with pytest.raises(RuntimeError):
        await transition(quote.id, "committed", fail=True)
    assert await communicator.receive_nothing(timeout=0.5)
    await transition(quote.id, "cancelled")
    frame = await communicator.receive_json_from(timeout=2)
    assert (frame["previous"], frame["status"]) == ("pending", "cancelled")
    await communicator.disconnect()


async def test_me_stream_gets_snapshot_and_events_for_all_my_quotes():
    quote, token = await make_quote_and_token()
    communicator, connected = await connect(f"/ws/me/?token={token}")
    assert connected
    snapshot = await communicator.receive_json_from(timeout=2)
    assert (snapshot["quote_id"], snapshot["previous"]) == (str(quote.id), None)
    await transition(quote.id, "committed")
    frame = await communicator.receive_json_from(timeout=2)
    assert (frame["quote_id"], frame["status"]) == (str(quote.id), "committed")
    await communicator.disconnect()


async def test_reconnect_receives_current_state_first():
    quote, token = await make_quote_and_token()
    communicator, _ = await connect(f"/ws/quotes/{quote.id}/?token={token}")
    await communicator.receive_json_from(timeout=2)
    await communicator.disconnect()
    await transition(quote.id, "committed")  # missed while disconnected
    communicator, _ = await connect(f"/ws/quotes/{quote.id}/?token={token}")
    snapshot = await communicator.receive_json_from(timeout=2)
    assert (snapshot["status"], snapshot["previous"]) == ("committed", None)
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()
    await asyncio.sleep(0)
