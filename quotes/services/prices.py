"""Price observations: every oracle price we quote with, kept for chart candles.

Recording is cheap on the hot path: at most one row per pair and publish second per
process (an in-memory check), and a UNIQUE(pair, source, publish_time) index with
ON CONFLICT DO NOTHING drops the duplicates other processes already wrote.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence

from quotes.models import PriceObservation
from quotes.prices import PricePoint, price_feed

_seen_lock = threading.Lock()
_last_seen: dict[tuple[str, str], dt.datetime] = {}


def price_observations_record(points: Sequence[PricePoint]) -> int:
    """Store the points not stored yet by this process. Returns rows offered to the DB."""
    fresh = []
    with _seen_lock:
        for point in points:
            key = (point.pair, point.source)
            if _last_seen.get(key) != point.publish_time:
                _last_seen[key] = point.publish_time
                fresh.append(point)
    if not fresh:
        return 0
    PriceObservation.objects.bulk_create(
        [PriceObservation(pair=p.pair, price=p.price, confidence=p.confidence,
                          publish_time=p.publish_time, source=p.source) for p in fresh],
        ignore_conflicts=True,
    )
    return len(fresh)


def prices_observe(symbols: Sequence[str] = ("SOL", "XLM", "NEAR", "USDC")) -> int:
    """Periodic job: record the latest prices even when nobody is quoting (charts stay whole).

    Stale or wide prices are recorded too: they are what the oracle said, and the chart
    should show it; only quoting refuses them.
    """
    feed = price_feed()
    return price_observations_record(list(feed.latest(symbols).values()))
