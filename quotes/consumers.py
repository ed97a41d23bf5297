"""WebSocket streams of quote status (`/ws/quotes/<id>/`) and of everything a user owns
(`/ws/me/`), on Channels.

Authentication: the API bearer token, as `?token=<token>` or as the subprotocol pair
`["bearer", "<token>"]` (browsers cannot set headers on WebSockets). A refused socket is
accepted and then closed with a 4xxx code, so clients can tell why:
4401 no/invalid token, 4404 not your quote (or no such quote: the same answer).

Reconnect story: on connect the server sends the current state first (`previous: null`),
then one frame per transition. The socket joins its groups BEFORE reading that state, so
no transition can fall between the snapshot and the stream; a queued event that the
snapshot already reflects (older `at`) is dropped, so status never moves backwards.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from config.events import quote_group, user_group

CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404
ME_SNAPSHOT_QUOTES = 20


def _token_from_scope(scope: dict[str, Any]) -> tuple[str | None, str | None]:
    """(token, subprotocol to echo back)."""
    protocols = scope.get("subprotocols") or []
    if len(protocols) >= 2 and protocols[0].lower() == "bearer":
        return protocols[1], protocols[0]
    query = parse_qs(scope.get("query_string", b"").decode(errors="replace"))
    tokens = query.get("token")
    return (tokens[0] if tokens else None), None


@database_sync_to_async
def _user_for(token: str | None) -> Any:
    from users.authentication import user_for_token

    if not token:
        return None
    found = user_for_token(token)
    return found[0] if found else None


@database_sync_to_async
def _quote_snapshot(user_id: Any, quote_id: Any) -> dict[str, Any] | None:
    from quotes.models import Quote
    from quotes.services.transitions import quote_status_event

    quote = Quote.objects.filter(pk=quote_id, user_id=user_id).first()
    if quote is None:
        return None
    return quote_status_event(quote, previous=None, at=quote.updated_at)


@database_sync_to_async
def _me_snapshot(user_id: Any) -> list[dict[str, Any]]:
    from quotes.models import Quote
    from quotes.services.transitions import FINAL, quote_status_event
    from settlement.models import UserBalance

    frames = [quote_status_event(q, previous=None, at=q.updated_at)
              for q in Quote.objects.filter(user_id=user_id).exclude(status__in=FINAL)
              .order_by("-created_at")[:ME_SNAPSHOT_QUOTES]]
    for balance in UserBalance.objects.filter(user_id=user_id):
        frames.append({
            "event": "balance.updated", "chain": balance.chain, "asset": balance.asset,
            "total": str(balance.amount), "locked": str(balance.locked),
            "available": str(balance.available), "at": balance.updated_at.isoformat(),
        })
    return frames


class _AuthenticatedConsumer(AsyncWebsocketConsumer):
    user: Any = None
    subprotocol: str | None = None

    async def _authenticate(self) -> bool:
        token, self.subprotocol = _token_from_scope(self.scope)
        self.user = await _user_for(token)
        if self.user is None:
            await self.accept(self.subprotocol)
            await self.close(code=CLOSE_UNAUTHORIZED)
            return False
        return True

    async def _join(self, *groups: str) -> None:
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups.append(group)

    async def _send_event(self, event: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(event, separators=(",", ":")))

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels hops to the one sync thread (close_old_connections) before EVERY handler;
        # a forwarded event touches no database, and that hop per frame dominated bursts
        # of 1,000 frames (bench/ws.py: p95 490 ms → 68 ms on the Redis layer).
        if message["type"] == "event.forward":
            await self.event_forward(message)
            return
        await super().dispatch(message)

    async def event_forward(self, message: dict[str, Any]) -> None:
        await self._send_event(message["event"])

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # Clients may ping with any frame; the stream is server → client only.
        if text_data and text_data.strip().lower() in ("ping", '{"type":"ping"}'):
            await self.send(text_data='{"event":"pong"}')


class QuoteConsumer(_AuthenticatedConsumer):
    snapshot_at: datetime | None = None

    async def connect(self) -> None:
        if not await self._authenticate():
            return
        quote_id = self.scope["url_route"]["kwargs"]["quote_id"]
        await self._join(quote_group(quote_id))
        snapshot = await _quote_snapshot(self.user.pk, quote_id)
        if snapshot is None:
            await self.accept(self.subprotocol)
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.accept(self.subprotocol)
        self.snapshot_at = datetime.fromisoformat(snapshot["at"])
        await self._send_event(snapshot)

    async def event_forward(self, message: dict[str, Any]) -> None:
        event = message["event"]
        if (event.get("event") == "quote.status" and self.snapshot_at is not None
                and datetime.fromisoformat(event["at"]) < self.snapshot_at):
            return  # already reflected in the snapshot this client received
        await self._send_event(event)


class MeConsumer(_AuthenticatedConsumer):
    async def connect(self) -> None:
        if not await self._authenticate():
            return
        await self._join(user_group(self.user.pk))
        await self.accept(self.subprotocol)
        for frame in await _me_snapshot(self.user.pk):
            await self._send_event(frame)
