"""Bad input gets the documented 4xx with the envelope and writes nothing.

Each case is sent to the real sign-in endpoint (anonymous) and to a test-only creating
endpoint (authenticated, Idempotency-Key aware); row counts across the main tables are
compared before and after.
"""

from __future__ import annotations

import json

import pytest
from api_helpers import row_counts
from api_testviews import CALLS

pytestmark = [pytest.mark.django_db, pytest.mark.urls("api_testviews")]

TEN_MB = 10 * 1024 * 1024

CHALLENGE = "/api/v1/auth/challenge"
ITEMS = "/test/items"


def _post_raw(client, url, body: bytes | str, content_type="application/json", **extra):
    return client.generic("POST", url, body, content_type=content_type, **extra)


def _assert_envelope(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error_code"] == code
    assert isinstance(body["error"], str) and body["error"]
    assert set(body) <= {"error", "error_code", "details"}
    text = response.content.decode()
    assert "Traceback" not in text and "File \"" not in text
    return body


BAD_BODIES = {
    "malformed": b'{"chain": "stellar", "address": ',
    "not_utf8": b'{"chain": "\xff\xfe"}',
    "nan": b'{"chain": "stellar", "amount": NaN}',
    "infinity": b'{"chain": "stellar", "amount": -Infinity}',
    "float_overflow": b'{"chain": "stellar", "amount": 1e400}',
    "duplicate_keys": b'{"chain": "stellar", "chain": "near", "amount": 1}',
    "top_level_list": b'[{"chain": "stellar"}]',
    "top_level_string": b'"stellar"',
    "top_level_null": b"null",
    "googol": json.dumps({"chain": "stellar", "amount": 10**100}).encode(),
    "ten_thousand_digits": b'{"chain": "stellar", "amount": ' + b"9" * 10_000 + b"}",
    "ten_thousand_digit_float": b'{"chain": "stellar", "amount": 0.' + b"1" * 10_000 + b"}",
    "nul_in_string": b'{"chain": "stel\\u0000lar", "amount": 1}',
    "nul_in_key": b'{"cha\\u0000in": "stellar", "amount": 1}',
    "lone_surrogate": b'{"chain": "\\ud800", "amount": 1}',
    "deep_nesting": b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
@pytest.mark.parametrize("url", [CHALLENGE, ITEMS])
def test_unparseable_body_is_400_and_writes_nothing(case, url, api_client):
    before = row_counts()
    response = _post_raw(api_client, url, BAD_BODIES[case], HTTP_IDEMPOTENCY_KEY=f"k-{case}")
    body = _assert_envelope(response, 400, "INVALID_REQUEST")
    assert body["details"]["reason"]
    assert "9999999999" not in body["details"]["reason"]  # the body is never echoed
    assert row_counts() == before


WRONG_TYPES = [
    {"chain": 5, "address": ["GABC"]},
    {"chain": {"x": 1}, "address": None},
    {"chain": True, "address": 1.5},
]


@pytest.mark.parametrize("payload", WRONG_TYPES)
def test_wrong_types_on_challenge_are_400_with_field_errors(payload, anon_client):
    before = row_counts()
    response = anon_client.post(CHALLENGE, payload, format="json")
    body = _assert_envelope(response, 400, "INVALID_REQUEST")
    assert "chain" in body["details"]["fields"]
    assert row_counts() == before


@pytest.mark.parametrize("payload, field", [
    ({"chain": "stellar", "amount": "12abc"}, "amount"),
    ({"chain": "stellar", "amount": [1]}, "amount"),
    ({"chain": ["stellar"], "amount": 1}, "chain"),
    ({"chain": "solana", "amount": 1}, "chain"),
    ({"chain": "stellar", "amount": -1}, "amount"),
    ({"chain": "stellar", "amount": 10**70}, "amount"),  # parses, but above the field maximum
    ({"chain": "stellar", "amount": 1.5}, "amount"),
    ({"chain": "stellar", "amount": 5.0}, "amount"),  # DRF alone would take 5.0 as 5
    ({"chain": "stellar", "amount": True}, "amount"),  # ... and true as 1
    ({"chain": "stellar", "amount": "5"}, "amount"),  # ... and "5" as 5
    ({"chain": "stellar", "amount": 5, "note": 12}, "note"),  # ... and 12 as "12"
    ({"chain": "stellar", "amount": 5, "note": False}, "note"),
    ({"chain": "stellar"}, "amount"),
])
def test_wrong_types_and_out_of_range_on_creating_endpoint(payload, field, api_client):
    before = row_counts()
    response = api_client.post(ITEMS, payload, format="json")
    body = _assert_envelope(response, 400, "INVALID_REQUEST")
    assert field in body["details"]["fields"]
    assert row_counts() == before


def test_unknown_fields_are_400_and_write_nothing(api_client):
    before = row_counts()
    response = api_client.post(ITEMS, {"chain": "stellar", "amount": 5, "amout": 5,
                                       "is_admin": True}, format="json")
    body = _assert_envelope(response, 400, "INVALID_REQUEST")
    assert body["details"]["fields"] == {"amout": ["Unknown field."], "is_admin": ["Unknown field."]}
    assert row_counts() == before


def test_unknown_fields_on_challenge_are_400(anon_client):
    before = row_counts()
    response = anon_client.post(CHALLENGE, {"chain": "stellar", "address": "G" * 56, "admin": 1},
                                format="json")
    _assert_envelope(response, 400, "INVALID_REQUEST")
    assert row_counts() == before


@pytest.mark.parametrize("url", [CHALLENGE, ITEMS])
def test_ten_megabyte_body_is_413_before_parsing(url, api_client):
    before = row_counts()
    payload = b'{"chain": "stellar", "address": "' + b"A" * TEN_MB + b'"}'
    response = _post_raw(api_client, url, payload)
    body = _assert_envelope(response, 413, "PAYLOAD_TOO_LARGE")
    assert body["details"]["max_bytes"] < TEN_MB
    assert row_counts() == before


def test_lying_content_length_is_refused(api_client):
    response = _post_raw(api_client, ITEMS, b"{}", CONTENT_LENGTH="-5")
    _assert_envelope(response, 400, "INVALID_REQUEST")
    response = _post_raw(api_client, ITEMS, b"{}", CONTENT_LENGTH="12x")
    _assert_envelope(response, 400, "INVALID_REQUEST")


def test_form_encoded_body_is_415(api_client):
    before = row_counts()
    response = _post_raw(api_client, ITEMS, "chain=stellar&amount=5",
                         content_type="application/x-www-form-urlencoded")
    _assert_envelope(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert row_counts() == before


def test_valid_body_is_accepted_so_the_refusals_above_mean_something(api_client):
    before = row_counts()
    response = api_client.post(ITEMS, {"chain": "near", "amount": 10**30}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["amount"] == str(10**30)
    assert row_counts()["risk.Alert"] == before["risk.Alert"] + 1
    CALLS["count"] = 0


def test_pagination_is_bounded(rf):
    from rest_framework.exceptions import ValidationError
    from rest_framework.request import Request

    from config.pagination import MAX_OFFSET, ApiPagination

    items = list(range(500))
    paginator = ApiPagination()
    page = paginator.paginate_queryset(items, Request(rf.get("/x", {"limit": "100000"})))
    assert len(page) == ApiPagination.max_limit
    for offset in (str(MAX_OFFSET + 1), "9" * 5000):
        with pytest.raises(ValidationError):
            ApiPagination().paginate_queryset(items, Request(rf.get("/x", {"offset": offset})))
    assert ApiPagination().paginate_queryset(items, Request(rf.get("/x", {"offset": "499"}))) == [499]
