"""Structured JSON logs: request id and quote id on every line of a request; no secret ever
logged, across a run of requests including failing ones and careless log calls."""

from __future__ import annotations

import json
import uuid

import pytest
from django.conf import settings

from config.logging import log_context, scrub_text

pytestmark = [pytest.mark.django_db, pytest.mark.urls("api_testviews")]


def test_every_line_of_a_request_has_its_request_id(client, json_log):
    client.get("/health", HTTP_X_REQUEST_ID="req-health-0001")
    lines = [r for r in json_log.records() if r.get("request_id") == "req-health-0001"]
    access = [r for r in lines if r["logger"] == "config.access"]
    assert access and access[0]["status"] == 200 and access[0]["route"] == "health"
    assert isinstance(access[0]["duration_ms"], float)


def test_quote_id_from_the_url_is_on_the_log_lines(client, json_log):
    quote_id = str(uuid.uuid4())
    client.get(f"/test/quotes/{quote_id}", HTTP_X_REQUEST_ID="req-quote-0001")
    view_line = next(r for r in json_log.records() if r["msg"] == "looking at the quote")
    assert view_line["quote_id"] == quote_id
    assert view_line["request_id"] == "req-quote-0001"
    access = next(r for r in json_log.records() if r["logger"] == "config.access")
    assert access["quote_id"] == quote_id
    # ... and does not leak into the next request.
    client.get("/health", HTTP_X_REQUEST_ID="req-after-0001")
    after = [r for r in json_log.records() if r.get("request_id") == "req-after-0001"]
    assert after and all("quote_id" not in r for r in after)


def test_lines_are_json_objects(client, json_log):
    client.get("/test/boom")
    for line in json_log.text.splitlines():
        assert isinstance(json.loads(line), dict)


def test_no_secret_reaches_the_log(client, api_client, json_log, user):
    secrets = {
        "SOLANA_TREASURY_KEY": settings.SOLANA_TREASURY_KEY,
        "STELLAR_TREASURY_SECRET": settings.STELLAR_TREASURY_SECRET,
        "WEBHOOK_SECRET": settings.WEBHOOK_SECRET,
        "NEAR_TREASURY_KEY": settings.NEAR_TREASURY_KEY,
        "SECRET_KEY": settings.SECRET_KEY,
    }
    assert all(len(v) >= 16 for v in secrets.values()), "sandbox identity must provide every secret"
    bearer = api_client._credentials["HTTP_AUTHORIZATION"].split()[1]
    password = "correct-horse-battery-staple-42"

    # A run of requests, failing ones included, with secrets in headers and bodies.
    client.get("/test/boom", HTTP_AUTHORIZATION=f"Bearer {bearer}")
    client.get("/test/plain-boom")
    api_client.get("/api/v1/me")
    api_client.post("/test/items", {"chain": "stellar", "amount": 1, "password": password},
                    format="json")
    client.post("/api/v1/auth/verify", {"challenge_id": str(uuid.uuid4()), "signature": password},
                format="json", HTTP_AUTHORIZATION=f"Bearer {bearer}")
    client.post("/api/v1/auth/challenge", data=b"{bad json " + password.encode(),
                content_type="application/json")
    client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {bearer}")
    # Careless direct log calls, by value and by key, in messages, extras and exceptions.
    import logging

    log = logging.getLogger("tests.api.careless")
    with log_context(authorization=f"Bearer {bearer}"):
        log.error("treasury %s stellar %s", secrets["SOLANA_TREASURY_KEY"],
                  secrets["STELLAR_TREASURY_SECRET"],
                  extra={"payload": {"password": password, "token": bearer,
                                     "nested": [{"api_key": "k" * 20}]}})
    try:
        raise ValueError(f"signing failed for {secrets['NEAR_TREASURY_KEY']} / "
                         f"X-Webhook-Signature: t=1,v1={'ab' * 32}")
    except ValueError:
        log.exception("oops with Authorization: Bearer %s", bearer)

    text = json_log.text
    assert "boom" in text and "oops" in text  # the lines were captured
    for name, value in {**secrets, "bearer": bearer, "password": password,
                        "api_key": "k" * 20, "signature": "ab" * 32}.items():
        assert value not in text, f"{name} leaked into the log"
    assert "[redacted]" in text


def test_scrub_text_catches_secret_shapes():
    stellar_seed = "S" + "A" * 55
    line = f'"msg": "Authorization: Bearer abcdefgh12345678 seed {stellar_seed}"'
    scrubbed = scrub_text(line)
    assert "abcdefgh12345678" not in scrubbed and stellar_seed not in scrubbed
    assert "Bearer [redacted]" in scrubbed


def test_a_generated_request_id_is_a_uuid4_in_hex(client):
    """Without a usable X-Request-ID the middleware makes one, shaped as uuid4().hex."""
    ids = {client.get("/health", HTTP_X_REQUEST_ID="no")["X-Request-ID"] for _ in range(64)}
    assert len(ids) == 64
    for request_id in ids:
        parsed = uuid.UUID(hex=request_id)
        assert parsed.hex == request_id
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
