"""One error envelope for every error, DRF's and Django's, with DEBUG off and on; nothing
internal (traceback, SQL, secrets) in any response; 500s carry a request id that is in the log."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import override_settings

pytestmark = [pytest.mark.django_db, pytest.mark.urls("api_testviews")]

FORBIDDEN_IN_RESPONSES = ["Traceback", "File \"", "SELECT", "users_user", "password",
                          "hunter2", "<html", "<!DOCTYPE"]


def _secrets() -> list[str]:
    return [settings.SOLANA_TREASURY_KEY, settings.STELLAR_TREASURY_SECRET,
            settings.WEBHOOK_SECRET, settings.SECRET_KEY]


def _envelope(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert body["error_code"] == code and body["error"]
    text = response.content.decode()
    for needle in FORBIDDEN_IN_RESPONSES + _secrets():
        assert needle not in text, needle
    return body


@pytest.fixture(params=[False, True], ids=["debug_off", "debug_on"])
def debug(request):
    with override_settings(DEBUG=request.param):
        yield request.param


def test_unknown_url_is_404_envelope(client, debug):
    _envelope(client.get("/api/v1/nope"), 404, "NOT_FOUND")
    _envelope(client.post("/nope", data="{}", content_type="application/json"), 404, "NOT_FOUND")


def test_wrong_method_is_405_envelope(api_client, client, debug):
    body = _envelope(api_client.delete("/api/v1/auth/challenge"), 405, "METHOD_NOT_ALLOWED")
    assert body["error"]
    # A plain Django view with require_GET too, and its Allow header survives.
    response = client.post("/health")
    _envelope(response, 405, "METHOD_NOT_ALLOWED")
    assert response["Allow"] == "GET"


def test_missing_and_bad_token_are_401_envelope(anon_client, debug):
    _envelope(anon_client.get("/api/v1/me"), 401, "UNAUTHORIZED")
    anon_client.credentials(HTTP_AUTHORIZATION="Bearer not-a-real-token")
    _envelope(anon_client.get("/api/v1/me"), 401, "UNAUTHORIZED")
    anon_client.credentials(HTTP_AUTHORIZATION="Bearer a b c")
    _envelope(anon_client.get("/api/v1/me"), 401, "UNAUTHORIZED")


def test_service_error_keeps_its_code(client, debug):
    _envelope(client.get("/test/service-error"), 400, "QUOTE_EXPIRED")


def test_unexpected_exception_in_api_view_is_500_with_request_id_in_log(client, json_log, debug):
    response = client.get("/test/boom", HTTP_X_REQUEST_ID="req-boom-12345")
    body = _envelope(response, 500, "INTERNAL_ERROR")
    assert body["details"] == {"request_id": "req-boom-12345"}
    assert response["X-Request-ID"] == "req-boom-12345"
    failures = [r for r in json_log.records() if r["msg"] == "unhandled error"]
    assert len(failures) == 1
    assert failures[0]["request_id"] == "req-boom-12345"
    assert "RuntimeError" in failures[0]["exc"]  # the traceback is in the log, not the response


def test_unexpected_exception_in_plain_view_is_500_envelope(client, json_log, debug):
    response = client.get("/test/plain-boom")
    body = _envelope(response, 500, "INTERNAL_ERROR")
    request_id = body["details"]["request_id"]
    assert request_id == response["X-Request-ID"]
    logged = [r for r in json_log.records() if r.get("request_id") == request_id and "exc" in r]
    assert logged and "ValueError" in logged[0]["exc"]


def test_database_error_hides_sql(client, json_log, debug):
    body = _envelope(client.get("/test/db-boom"), 500, "DATABASE_ERROR")
    assert body["details"]["request_id"]
    assert any("users_user" in r.get("exc", "") for r in json_log.records())


def test_django_500_handler_outside_middleware_is_envelope(rf):
    """handler500 itself (used by Django when DEBUG is off and a middleware fails)."""
    from config.errors import handler400, handler403, handler404, handler500

    request = rf.get("/api/v1/quotes")
    assert handler500(request).status_code == 500
    assert handler404(request, Exception("x")).status_code == 404
    assert handler403(request, Exception("x")).status_code == 403
    assert handler400(request, Exception("x")).status_code == 400
    for handler, code in ((handler404, "NOT_FOUND"), (handler403, "FORBIDDEN"),
                          (handler400, "INVALID_REQUEST")):
        import json

        assert json.loads(handler(request, Exception("x")).content)["error_code"] == code
    admin_request = rf.get("/admin/nope")
    assert handler404(admin_request, Exception("x"))["Content-Type"].startswith("text/html")


def test_suspicious_host_is_400_envelope(client, debug):
    _envelope(client.get("/health", HTTP_HOST="evil.example.com"), 400, "INVALID_REQUEST")


def test_admin_keeps_html_pages(client):
    response = client.get("/admin/definitely-not-here/")
    assert response["Content-Type"].startswith("text/html")


def test_request_id_from_client_is_echoed_only_when_sane(client):
    assert client.get("/health", HTTP_X_REQUEST_ID="abc-12345678")["X-Request-ID"] == "abc-12345678"
    generated = client.get("/health", HTTP_X_REQUEST_ID="bad id\n<script>")["X-Request-ID"]
    assert len(generated) == 32 and generated.isalnum()
