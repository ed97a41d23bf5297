"""Live-mode pricing against a fake Pyth Hermes speaking Hermes' JSON on a real socket:
freshness and confidence rules, TTL tiers, the 1 s shared cache, the API key, and the
observations behind the chart candles."""

from __future__ import annotations

import datetime as dt
import threading
import time
from decimal import Decimal

import pytest
from django.utils import timezone

from quotes.models import PriceObservation, Quote, QuoteTransition
from quotes.prices import PYTH_FEED_IDS, price_feed
from quotes.services.quotes import quote_create
from tests.fakes.hermes import FakeHermes

pytestmark = pytest.mark.django_db


@pytest.fixture
def hermes(quote_settings):
    with FakeHermes() as fake:
        for symbol, price in (("SOL", "150.25"), ("XLM", "0.1"), ("NEAR", "3"), ("USDC", "1")):
            fake.set_price(PYTH_FEED_IDS[symbol], price, conf=Decimal(price) / 1000)
        quote_settings.PRICE_SOURCE = "pyth"
        quote_settings.PYTH_HERMES_URL = fake.url
        quote_settings.PYTH_API_KEY = ""
        quote_settings.PRICE_CACHE_SECONDS = 1.0
        yield fake


def post(client, work):
    return client.post("/api/v1/quotes", {"source_chain": "stellar",
                                          "instructions": work.as_json(work.sol_transfer(10**7))},
                       format="json")


def test_quote_priced_with_pyth(hermes, client, work):
    response = post(client, work)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["price"]["source"] == "pyth"
    assert body["price"]["rate"] == "1502.5"
    quote = Quote.objects.get(pk=body["quote_id"])
    # 0.01 SOL at 150.25 / 0.1 = 15.025 XLM + 0.5% buffer.
    assert quote.source_amount == 150_250_000 + 751_250
    assert quote.price_snapshot["prices_usd"]["SOL"]["price"] == "150.25000000"
    request = hermes.requests[-1]
    assert request.path == "/v2/updates/price/latest"
    assert set(request.query["ids[]"]) == set(PYTH_FEED_IDS.values())


def test_a_stale_price_refuses_the_quote(hermes, client, work):
    hermes.set_price("SOL/USD", "150", publish_time=int(time.time()) - 61)
    before = (Quote.objects.count(), QuoteTransition.objects.count())

    response = post(client, work)

    assert response.status_code == 503
    assert response.json()["error_code"] == "PRICE_UNAVAILABLE"
    assert response.json()["details"]["pair"] == "SOL/USD"
    assert (Quote.objects.count(), QuoteTransition.objects.count()) == before


def test_a_price_close_to_the_limit_is_still_used(hermes, client, work):
    # 55 s old (5 s of slack for a slow machine between publishing and pricing).
    hermes.set_price("SOL/USD", "150", publish_time=int(time.time()) - 55)
    assert post(client, work).status_code == 201


def test_a_wide_confidence_band_refuses_the_quote(hermes, client, work):
    hermes.set_price("XLM/USD", "0.1", conf="0.0021")  # 2.1% > PRICE_MAX_CONFIDENCE_RATIO 2%
    response = post(client, work)
    assert response.status_code == 503
    assert response.json()["error_code"] == "PRICE_UNAVAILABLE"
    assert response.json()["details"]["pair"] == "XLM/USD"


@pytest.mark.parametrize(("conf_ratio", "max_ratio", "ttl"), [
    ("0.001", "0.02", 300),  # band ≈ 0.4%
    ("0.015", "0.02", 240),  # band ≈ 6.1% > 5%
    ("0.03", "0.05", 180),  # band ≈ 12.8% > 10%
    ("0.04", "0.05", 120),  # band ≈ 17.4% > 15%
])
def test_ttl_shortens_as_the_band_widens(hermes, client, work, quote_settings, conf_ratio,
                                         max_ratio, ttl):
    quote_settings.PRICE_MAX_CONFIDENCE_RATIO = float(max_ratio)
    hermes.set_price("SOL/USD", "150", conf=Decimal(150) * Decimal(conf_ratio))
    hermes.set_price("XLM/USD", "0.1", conf=Decimal("0.1") * Decimal(conf_ratio))
    response = post(client, work)
    assert response.status_code == 201, response.json()
    quote = Quote.objects.get(pk=response.json()["quote_id"])
    assert (quote.expires_at - quote.created_at).total_seconds() == ttl


def test_a_burst_of_threads_makes_one_hermes_request(hermes):
    feed = price_feed()
    barrier = threading.Barrier(50)
    results = []

    def ask():
        barrier.wait()
        results.append(feed.prices(["SOL", "XLM"]))

    threads = [threading.Thread(target=ask) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 50
    assert hermes.request_count == 1


@pytest.mark.django_db(transaction=True)
def test_fifty_quotes_in_one_second_make_one_hermes_request(hermes, stellar_user, work):
    hermes.request_count = 0
    errors: list[Exception] = []
    created: list[Quote] = []
    lock = threading.Lock()

    def create_quotes(n: int) -> None:
        try:
            for _ in range(n):
                quote = quote_create(user=stellar_user, source_chain="stellar",
                                     instructions=work.as_json(work.sol_transfer(10**6)))
                with lock:
                    created.append(quote)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            from django.db import connection
            connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=create_quotes, args=(10,)) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started

    assert not errors, errors
    assert len(created) == 50
    # One request per cache window: exactly one when the burst fits in a second.
    assert hermes.request_count <= 1 + int(elapsed / 1.0)
    if elapsed < 1.0:
        assert hermes.request_count == 1


def test_the_api_key_is_sent_as_a_bearer_token(quote_settings, client, work):
    with FakeHermes(api_key="s3cret") as fake:
        for symbol, price in (("SOL", "150"), ("XLM", "0.1"), ("NEAR", "3"), ("USDC", "1")):
            fake.set_price(PYTH_FEED_IDS[symbol], price)
        quote_settings.PRICE_SOURCE = "pyth"
        quote_settings.PYTH_HERMES_URL = fake.url
        quote_settings.PYTH_API_KEY = "wrong"
        refused = post(client, work)
        assert refused.status_code == 503
        assert refused.json()["error_code"] == "PRICE_UNAVAILABLE"

        quote_settings.PYTH_API_KEY = "s3cret"
        assert post(client, work).status_code == 201
        assert fake.requests[-1].headers["authorization"] == "Bearer s3cret"


def test_oracle_outage_is_price_unavailable(hermes, client, work):
    hermes.set_fault("503")
    response = post(client, work)
    assert response.status_code == 503
    assert response.json()["error_code"] == "PRICE_UNAVAILABLE"
    assert "fault" not in response.json()["error"]  # nothing of the upstream body leaks


def test_observations_are_recorded_once_per_publish(hermes, client, work):
    publish = int(time.time()) - 5
    for symbol in ("SOL/USD", "XLM/USD"):
        hermes.set_price(symbol, "150" if symbol == "SOL/USD" else "0.1", publish_time=publish)
    assert post(client, work).status_code == 201
    assert post(client, work).status_code == 201

    rows = PriceObservation.objects.filter(source="pyth",
                                           publish_time=dt.datetime.fromtimestamp(publish, dt.UTC))
    assert sorted(rows.values_list("pair", flat=True)) == ["SOL/USD", "XLM/USD"]


def test_fixed_prices_are_labelled_and_recorded(quote_settings, client, work):
    assert post(client, work).status_code == 201
    observation = PriceObservation.objects.filter(pair="SOL/USD", source="fixed").latest("publish_time")
    assert observation.price == Decimal("150")
    assert observation.confidence == 0


def test_ohlc_candles_from_observations(db, anon_client):
    base = timezone.now().replace(second=0, microsecond=0) - dt.timedelta(minutes=3)
    prices = [(0, "150"), (10, "152"), (20, "149"), (50, "151"),  # first minute
              (65, "153"), (100, "154")]  # second minute
    PriceObservation.objects.bulk_create([
        PriceObservation(pair="SOL/USD", price=Decimal(p), confidence=Decimal("0.1"),
                         publish_time=base + dt.timedelta(seconds=s), source="pyth")
        for s, p in prices
    ])
    PriceObservation.objects.create(pair="XLM/USD", price=Decimal("0.1"), confidence=0,
                                    publish_time=base, source="pyth")

    response = anon_client.get("/api/v1/prices/SOL-USD/ohlc?interval=1m")
    assert response.status_code == 200
    body = response.json()
    assert body["pair"] == "SOL/USD"
    assert [(c["open"], c["high"], c["low"], c["close"], c["count"]) for c in body["candles"]] == [
        ("150", "152", "149", "151", 4), ("153", "154", "153", "154", 2)]
    assert body["candles"][0]["time"] == base.isoformat().replace("+00:00", "Z")

    hourly = anon_client.get("/api/v1/prices/sol_usd/ohlc?interval=1h").json()["candles"]
    assert sum(c["count"] for c in hourly) == 6

    for bad in ("/api/v1/prices/SOL-USD/ohlc?interval=2m", "/api/v1/prices/SOL-EUR/ohlc",
                "/api/v1/prices/SOL-USD/ohlc?limit=0"):
        refused = anon_client.get(bad)
        assert refused.status_code == 400, bad
        assert refused.json()["error_code"] == "INVALID_QUOTE_PARAMETERS"


def test_periodic_job_records_prices_without_quotes(hermes):
    from quotes.services.prices import prices_observe

    assert prices_observe() == 4
    assert prices_observe() == 0  # same publish second: nothing new
    assert set(PriceObservation.objects.filter(source="pyth").values_list("pair", flat=True)) == {
        "SOL/USD", "XLM/USD", "NEAR/USD", "USDC/USD"}
