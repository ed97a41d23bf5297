"""Fake Pyth Hermes on a real socket: `GET /v2/updates/price/latest?ids[]=...&parsed=true`
answers in Hermes' shape, `{"binary": {"encoding", "data": [...]}, "parsed": [{"id",
"price": {"price", "conf", "expo", "publish_time"}, "ema_price": {...}, "metadata": {...}}]}`.
Prices and confidences are integer strings scaled by 10^expo; ids are lowercase hex without
0x (requests may use either). Unknown ids get 404 like Hermes. With `api_key` set, requests
need `Authorization: Bearer <key>` (401 otherwise).
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from dataclasses import dataclass
from decimal import Decimal

from tests.fakes._http import FakeHttpServer, Reply, Request

__all__ = ["FEED_IDS", "FakeHermes"]

FEED_IDS = {
    "SOL/USD": "ef0d8b6fda2ceba41da15d4095d1da392a0d2f8ed0c6c7bc0f4cfac8c280b56d",
    "XLM/USD": "b7a8eba68a997cd0210c2e1e4ee811ad2d174b3611c22d9ebf16f4cb7e9ba850",
    "NEAR/USD": "c415de8d2eba7db216527dff4b60e8f3a5311c740dadb233e13e12547e226750",
}


@dataclass
class _Feed:
    price: int
    conf: int
    expo: int
    publish_time: int | None  # None: "now" at request time


class FakeHermes(FakeHttpServer):
    def __init__(self, *, api_key: str | None = None, slot_start: int = 150_000_000) -> None:
        super().__init__()
        self.api_key = api_key
        self.request_count = 0
        self._state_lock = threading.Lock()
        self._feeds: dict[str, _Feed] = {}
        self._slot = slot_start

    @staticmethod
    def _norm(feed_id: str) -> str:
        feed_id = FEED_IDS.get(feed_id, feed_id)
        return feed_id.lower().removeprefix("0x")

    def set_price(
        self,
        feed: str,
        price: int | str | Decimal,
        *,
        conf: int | str | Decimal | None = None,
        expo: int = -8,
        publish_time: int | None = None,
    ) -> None:
        """`feed`: hex id or a name from FEED_IDS ('SOL/USD'). An int `price` is already
        scaled by 10^expo; a str/Decimal is a human price ('150.25') scaled here.
        `conf` defaults to 0.1% of the price. `publish_time=None` means "always fresh"."""

        def scaled(value: int | str | Decimal) -> int:
            if isinstance(value, int):
                return value
            return int(Decimal(value).scaleb(-expo).to_integral_value())

        raw_price = scaled(price)
        raw_conf = scaled(conf) if conf is not None else max(1, raw_price // 1000)
        with self._state_lock:
            self._feeds[self._norm(feed)] = _Feed(raw_price, raw_conf, expo, publish_time)

    def remove_price(self, feed: str) -> None:
        with self._state_lock:
            self._feeds.pop(self._norm(feed), None)

    def handle(self, request: Request) -> Reply:
        with self._state_lock:
            self.request_count += 1
        authorization = request.headers.get("authorization")
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            return Reply.json(401, {"message": "Unauthorized: missing or invalid API key"})
        if request.method != "GET" or request.path != "/v2/updates/price/latest":
            return Reply(404, b"Not Found", {"Content-Type": "text/plain"})
        ids = request.query.get("ids[]", []) + request.query.get("ids", [])
        if not ids:
            return Reply(
                400,
                b"Failed to deserialize query string: missing field `ids`",
                {"Content-Type": "text/plain; charset=utf-8"},
            )
        wanted = [self._norm(i) for i in ids]
        with self._state_lock:
            missing = [i for i in wanted if i not in self._feeds]
            feeds = {i: self._feeds[i] for i in wanted if i in self._feeds}
            self._slot += 1
            slot = self._slot
        if missing:
            return Reply(
                404,
                f"Price ids not found: {', '.join(missing)}".encode(),
                {"Content-Type": "text/plain; charset=utf-8"},
            )
        now = int(time.time())
        parsed = []
        for feed_id in wanted:
            feed = feeds[feed_id]
            publish_time = feed.publish_time if feed.publish_time is not None else now
            price = {
                "price": str(feed.price),
                "conf": str(feed.conf),
                "expo": feed.expo,
                "publish_time": publish_time,
            }
            parsed.append(
                {
                    "id": feed_id,
                    "price": price,
                    "ema_price": dict(price),
                    "metadata": {
                        "slot": slot,
                        "proof_available_time": publish_time + 1,
                        "prev_publish_time": publish_time - 1,
                    },
                }
            )
        # A stand-in for the signed accumulator update (starts with the real "PNAU" magic).
        blob = b"PNAU" + hashlib.sha256(repr(parsed).encode()).digest()
        encoding = (request.query.get("encoding") or ["hex"])[-1]
        data = blob.hex() if encoding == "hex" else base64.b64encode(blob).decode()
        body: dict[str, object] = {"binary": {"encoding": encoding, "data": [data]}}
        if (request.query.get("parsed") or ["true"])[-1] != "false":
            body["parsed"] = parsed
        return Reply.json(200, body)
