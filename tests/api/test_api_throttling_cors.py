"""Throttles answer 429 RATE_LIMITED with Retry-After, per user and per IP; CORS by setting."""

from __future__ import annotations

import pytest
from django.test import override_settings

from tests.conftest import client_for
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.urls("api_testviews")]

QUOTES = "/test/throttled-quotes"
AUTH = "/test/throttled-auth"


def _assert_rate_limited(response):
    assert response.status_code == 429
    body = response.json()
    assert body["error_code"] == "RATE_LIMITED"
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= 60
    assert body["details"]["retry_after_seconds"] == retry_after


def test_per_user_quote_throttle(api_client):
    for _ in range(2):
        assert api_client.post(QUOTES, {}, format="json").status_code == 201
    _assert_rate_limited(api_client.post(QUOTES, {}, format="json"))
    # Reads are not counted against the creation budget.
    assert api_client.get(QUOTES).status_code == 200


def test_per_ip_quote_throttle_spans_users(db):
    clients = [client_for(UserFactory()) for _ in range(4)]
    statuses = [c.post(QUOTES, {}, format="json").status_code for c in clients]
    assert statuses[:3] == [201, 201, 201]
    _assert_rate_limited(clients[3].post(QUOTES, {}, format="json"))
    # Another address still gets through (each user is under its own 2/min).
    other_ip = client_for(UserFactory())
    assert other_ip.post(QUOTES, {}, format="json", REMOTE_ADDR="10.9.8.7").status_code == 201


def test_forwarded_for_cannot_dodge_the_ip_throttle(anon_client):
    for i in range(2):
        assert anon_client.post(AUTH, {}, format="json", HTTP_X_FORWARDED_FOR=f"1.2.3.{i}").status_code == 200
    _assert_rate_limited(anon_client.post(AUTH, {}, format="json", HTTP_X_FORWARDED_FOR="9.9.9.9"))


def test_real_sign_in_endpoint_is_throttled(anon_client, settings):
    """The `auth` scope on /api/v1/auth/challenge: exhaust the configured rate."""
    from rest_framework.settings import api_settings

    limit = int(api_settings.DEFAULT_THROTTLE_RATES["auth"].split("/")[0])
    for _ in range(limit):
        response = anon_client.post("/api/v1/auth/challenge", {"chain": "solana", "address": "x"},
                                    format="json")
        assert response.status_code != 429
    _assert_rate_limited(anon_client.post("/api/v1/auth/challenge",
                                          {"chain": "solana", "address": "x"}, format="json"))


@override_settings(CORS_ALLOWED_ORIGINS=["https://app.example.com"])
def test_cors_allows_configured_origin_only(client):
    ok = client.get("/health", HTTP_ORIGIN="https://app.example.com")
    assert ok["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "X-Request-ID" in ok["Access-Control-Expose-Headers"]
    assert "Origin" in ok["Vary"]
    other = client.get("/health", HTTP_ORIGIN="https://evil.example.com")
    assert "Access-Control-Allow-Origin" not in other


@override_settings(CORS_ALLOWED_ORIGINS=["https://app.example.com"])
def test_cors_preflight(client):
    response = client.options("/api/v1/auth/challenge", HTTP_ORIGIN="https://app.example.com",
                              HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
                              HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, idempotency-key")
    assert response.status_code == 204
    assert "Idempotency-Key" in response["Access-Control-Allow-Headers"]
    assert "POST" in response["Access-Control-Allow-Methods"]
    refused = client.options("/api/v1/auth/challenge", HTTP_ORIGIN="https://evil.example.com",
                             HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST")
    assert refused.status_code == 403
    assert "Access-Control-Allow-Origin" not in refused


def test_cors_off_by_default(client):
    assert "Access-Control-Allow-Origin" not in client.get("/health", HTTP_ORIGIN="https://x.example")


def test_the_bucket_lets_a_full_burst_through_then_refills_evenly(settings):
    """GCRA: `4/min` is 4 requests at once, then one every 15 s; the state is one number."""
    from django.core.cache import cache
    from rest_framework.test import APIRequestFactory
    from rest_framework.views import APIView

    from config.throttling import QuoteIpThrottle

    clock = [1_000.0]

    class Throttle(QuoteIpThrottle):
        rate = "4/min"

        def timer(self):
            return clock[0]

    request = APIView().initialize_request(APIRequestFactory().post("/x", REMOTE_ADDR="10.1.2.3"))

    def attempt() -> tuple[bool, float]:
        throttle = Throttle()
        return throttle.allow_request(request, None), throttle.wait()

    assert [attempt()[0] for _ in range(4)] == [True] * 4
    allowed, wait = attempt()
    assert not allowed and wait == pytest.approx(15.0)
    clock[0] += 14.9
    assert not attempt()[0]
    clock[0] += 0.1
    assert [attempt()[0] for _ in range(2)] == [True, False]  # one 15 s share refilled
    clock[0] += 60
    assert [attempt()[0] for _ in range(5)] == [True] * 4 + [False]  # full again after idling
    assert isinstance(cache.get(Throttle().get_cache_key(request, None)), float)


def test_the_bucket_lives_in_the_threads_default_cache_or_the_throttles_own(settings):
    """The throttle looks the default cache up once per request (not through the proxy on
    each read): it must still be the backend the proxy would give, settings changes
    included, and a throttle naming its own cache keeps using that one."""
    from django.core.cache import cache, caches
    from django.core.cache.backends.locmem import LocMemCache
    from rest_framework.test import APIRequestFactory
    from rest_framework.views import APIView

    from config.throttling import QuoteIpThrottle

    request = APIView().initialize_request(APIRequestFactory().post("/x", REMOTE_ADDR="10.9.8.7"))

    class Throttle(QuoteIpThrottle):
        rate = "5/min"

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": "throttle-test-elsewhere"}}
    assert Throttle().allow_request(request, None)
    key = Throttle().get_cache_key(request, None)
    assert isinstance(cache.get(key), float) and caches["default"].get(key) == cache.get(key)

    own = LocMemCache("throttle-test-own", {})

    class OwnCache(QuoteIpThrottle):
        rate = "5/min"
        cache = own

    assert OwnCache().allow_request(request, None)
    assert isinstance(own.get(OwnCache().get_cache_key(request, None)), float)


def test_a_rate_parses_as_drf_parses_it():
    from rest_framework.throttling import SimpleRateThrottle

    from config.throttling import QuoteIpThrottle

    for rate in ("4/min", "12000/m", "30/s", "7/hour", "1/day", None):
        assert QuoteIpThrottle.parse_rate(QuoteIpThrottle, rate) == SimpleRateThrottle.parse_rate(
            SimpleRateThrottle, rate)
    with pytest.raises(ValueError):
        QuoteIpThrottle.parse_rate(QuoteIpThrottle, "four/min")
