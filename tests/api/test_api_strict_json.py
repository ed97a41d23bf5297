"""StrictJSONParser's shortcuts read every body as its plain path did.

The parser decodes UTF-8 without codecs' stream reader, builds objects with dict() and
skips the NUL / lone-surrogate walk over ASCII text without a \\u escape. Each body below
is parsed by the parser and by the plain path (the stream reader, a key-by-key duplicate
check, the walk over every string): both must accept it with the same value or refuse it
with the same reason."""

from __future__ import annotations

import codecs
import io
import json
from typing import Any

import pytest
from rest_framework.exceptions import ParseError

from config import parsers
from config.parsers import StrictJSONParser


def _plain_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise parsers._Refused(f"duplicate key {key[:64]!r}")
        obj[key] = value
    return obj


def plain_parse(body: bytes, encoding: str) -> tuple[str, Any]:
    """("ok", value) or ("refused", reason) by the parser's plain path."""
    try:
        text = codecs.getreader(encoding)(io.BytesIO(body)).read()
    except UnicodeDecodeError:
        return "refused", f"body is not valid {encoding}"
    try:
        data = json.loads(text, parse_int=parsers._parse_int, parse_float=parsers._parse_float,
                          parse_constant=parsers._parse_constant, object_pairs_hook=_plain_object)
        parsers._check_strings(data)
    except parsers._Refused as exc:
        return "refused", str(exc)
    except ValueError as exc:
        return "refused", (f"malformed JSON at line {exc.lineno} column {exc.colno}"
                           if isinstance(exc, json.JSONDecodeError) else "number too large")
    if not isinstance(data, dict):
        return "refused", "the body must be a JSON object"
    return "ok", data


def parse(body: bytes, encoding: str) -> tuple[str, Any]:
    try:
        return "ok", StrictJSONParser().parse(io.BytesIO(body), "application/json",
                                              {"encoding": encoding})
    except ParseError as exc:
        return "refused", str(exc.detail)


BODIES = [
    b'{"source_chain": "stellar", "instructions": [{"program_id": "11111111111111111111111111111111",'
    b' "accounts": [{"pubkey": "A", "is_signer": true, "is_writable": true}],'
    b' "data_base64": "AgAAAEBCDwAAAAAA"}], "estimated_compute_units": 10000}',
    b'{"a": "caf\xc3\xa9", "b": ["\xe2\x82\xac", {"c": "\xf0\x9f\x98\x80"}]}',  # raw UTF-8
    b'{"a": "caf\\u00e9", "\\u0062": 1}',  # escapes that are fine
    b'{"a": "stel\\u0000lar"}',
    b'{"a\\u0000": 1}',
    b'{"a": ["x", {"b": "\\ud800"}]}',
    b'{"a": "\\ud83d\\ude00"}',  # a surrogate pair: one character
    b'{"a": "back\\\\u0000slash"}',  # an escaped backslash, then the letters u0000
    b'{"a": 1, "b": {"c": 2, "c": 3}}',
    b'{"a": 1, "b": 2, "a": 3, "b": 4}',
    b'{"a": {"x": 1, "x": 2}, "a": 5}',  # the inner object's repeat is met first
    b'{"a": "x"}\xe2\x82',  # a multi-byte sequence cut off at the end
    b'{"a": "\xe2\x82"}',
    b'{"a": "\xff"}',
    b'{"a": "tab\there"}',  # a raw control character inside a string
    b'{"a": NaN}',
    b'{"a": 1e400}',
    b'{"a": ' + b"9" * 100 + b"}",
    b'["not", "an", "object"]',
    b"{}",
]


@pytest.mark.parametrize("body", BODIES)
def test_utf8_bodies_read_as_the_plain_path_reads_them(body):
    assert parse(body, "utf-8") == plain_parse(body, "utf-8")


@pytest.mark.parametrize("body", [b'{"a": "caf\xe9"}', b'{"a": "\\u0000"}', b'{"a": 1, "a": 2}'])
def test_other_charsets_still_go_through_the_stream_reader(body):
    assert parse(body, "latin-1") == plain_parse(body, "latin-1")
