"""Headers as clients send them reach the code that reads them.

The middleware and `Idempotency-Key` read their headers straight from the WSGI environ
(`HTTP_X_REQUEST_ID`, ...) instead of `request.headers`; these requests go through
config.serving's ASGI → WSGI translation with the raw, lower-case header names daphne
delivers, so a wrong environ key shows here as a header silently ignored."""

from __future__ import annotations

import json

import pytest
from api_testviews import CALLS
from django.test import override_settings

from config.serving import BrowserScopedHandler
from tests.serving_requests import serve_through
from users.authentication import token_issue

pytestmark = [pytest.mark.urls("api_testviews"),
              pytest.mark.usefixtures("handler_keeps_the_test_connection")]

QUOTE_LOG = "/test/quotes/6f1c2a4e-0000-4000-8000-000000000001"  # a plain 200 GET


def serve(method: str, path: str, headers: dict[str, str],
          body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request as config.serving runs it (the API's chain for these paths), with the
    raw, lower-case header names daphne delivers."""
    raw_headers = [(name.lower().encode("latin1"), value.encode("latin1"))
                   for name, value in headers.items()]
    status, response_headers, content = serve_through(BrowserScopedHandler(), method, path,
                                                      raw_headers, body)
    return status, dict(response_headers), content


@pytest.mark.django_db
def test_the_clients_request_id_comes_back():
    status, headers, _ = serve("GET", QUOTE_LOG, {"X-Request-ID": "wire-request-0001"})
    assert status == 200
    assert headers["X-Request-ID"] == "wire-request-0001"


@pytest.mark.django_db
@override_settings(CORS_ALLOWED_ORIGINS=["https://app.example.com"])
def test_origin_and_preflight_headers_are_seen():
    status, headers, _ = serve("OPTIONS", "/api/v1/auth/challenge",
                               {"Origin": "https://app.example.com",
                                "Access-Control-Request-Method": "POST"})
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    status, headers, _ = serve("GET", QUOTE_LOG, {"Origin": "https://app.example.com"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://app.example.com"


@pytest.mark.django_db
def test_the_idempotency_key_header_replays_and_refuses_reuse(user):
    CALLS.update(count=0, fail_next_with=None)
    headers = {"Authorization": f"Bearer {token_issue(user=user)}",
               "Content-Type": "application/json", "Idempotency-Key": "wire-key-1"}
    body = json.dumps({"chain": "stellar", "amount": 7}).encode()
    first = serve("POST", "/test/items", headers, body)
    again = serve("POST", "/test/items", headers, body)
    other = serve("POST", "/test/items", headers,
                  json.dumps({"chain": "stellar", "amount": 8}).encode())
    assert first[0] == 201 and again[0] == 201
    assert again[1].get("Idempotent-Replayed") == "true"
    assert json.loads(again[2]) == json.loads(first[2])
    assert other[0] == 422 and json.loads(other[2])["error_code"] == "IDEMPOTENCY_KEY_REUSED"
    assert CALLS["count"] == 1
