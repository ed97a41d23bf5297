"""OpenAPI schema at /api/schema/, interactive docs served from our own static files."""

from __future__ import annotations

import re

import pytest

from config.api_docs import ERROR_DESCRIPTIONS, error_responses
from config.errors import ERROR_CODES

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def schema(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()


def test_schema_is_openapi_3_with_the_error_envelope(schema):
    assert schema["openapi"].startswith("3.")
    envelope = schema["components"]["schemas"]["ErrorResponse"]
    assert envelope["required"] == ["error", "error_code"]
    code_schema = envelope["properties"]["error_code"]
    ref = code_schema.get("$ref") or next((s["$ref"] for s in code_schema.get("allOf", [])), None)
    if ref:  # drf-spectacular moves enums into their own component
        code_schema = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(code_schema["enum"]) == set(ERROR_CODES)
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_every_error_code_is_documented_with_its_status(schema):
    description = schema["info"]["description"]
    for code, status in ERROR_CODES.items():
        assert re.search(rf"\| `{code}` \| {status} \|", description), code
    assert set(ERROR_DESCRIPTIONS) == set(ERROR_CODES)


def test_every_operation_documents_standard_errors_with_examples(schema):
    operations = [(path, method, op) for path, item in schema["paths"].items()
                  for method, op in item.items() if method in ("get", "post", "put", "patch", "delete")]
    assert operations, "no API operations in the schema"
    for path, method, op in operations:
        for status in ("400", "429", "500"):
            assert status in op["responses"], (path, method, status)
        assert "Retry-After" in op["responses"]["429"].get("headers", {}), (path, method)
        if method == "post":
            assert "413" in op["responses"], (path, method)


def test_error_responses_helper_groups_codes_by_status():
    responses = error_responses("QUOTE_EXPIRED", "INVALID_QUOTE_PARAMETERS", "QUOTE_NOT_FOUND")
    assert sorted(responses) == [400, 404]
    assert {e.name for e in responses[400].examples} == {"QUOTE_EXPIRED", "INVALID_QUOTE_PARAMETERS"}
    with pytest.raises(ValueError):
        error_responses("NOT_A_CODE")


@pytest.mark.parametrize("page", ["/api/docs/", "/api/redoc/"])
def test_docs_pages_load_assets_locally(client, page):
    response = client.get(page)
    assert response.status_code == 200
    html = response.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any("drf_spectacular_sidecar" in a for a in assets), assets
    for asset in assets:
        assert not asset.startswith(("http://", "https://", "//")), asset
    for asset in (a for a in assets if a.startswith("/static/")):
        assert client.get(asset).status_code == 200, asset


def test_admin_static_is_served_too(client):
    assert client.get("/static/admin/css/base.css").status_code == 200


def test_every_error_code_raised_in_the_code_base_is_registered():
    """A code missing from ERROR_CODES is missing from the documented envelope enum, so every
    response carrying it breaks the schema (schemathesis finds it, this finds it sooner)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    pattern = re.compile(r'code(?:=| = |, status(?:, default_message)? = )"([A-Z][A-Z_]+)"')
    used: dict[str, str] = {}
    for app in ("users", "quotes", "execution", "risk", "settlement", "config"):
        for source in (root / app).rglob("*.py"):
            if "migrations" in source.parts:
                continue
            for code in pattern.findall(source.read_text()):
                used.setdefault(code, str(source.relative_to(root)))
    missing = {code: where for code, where in used.items() if code not in ERROR_CODES}
    assert not missing, f"add these to config.errors.ERROR_CODES (and api_docs.ERROR_DESCRIPTIONS): {missing}"
