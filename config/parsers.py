"""Strict JSON for request bodies: the default DRF parser (settings DEFAULT_PARSER_CLASSES).

The standard library's decoder is lenient in ways a payments API must not be:
- `NaN`, `Infinity` and `-Infinity` are accepted (not JSON at all);
- a duplicate key silently keeps the last value, so two components reading the "same"
  body could disagree about the amount;
- `1e400` becomes `inf` and a 10,000-digit integer costs quadratic time to convert
  (Python caps it at 4,300 digits with a ValueError, which we turn into a clear 400).
- `\u0000` and lone surrogates (`\ud800`) are valid JSON escapes but not storable text:
  PostgreSQL refuses NUL in text columns and UTF-8 cannot encode a lone surrogate, so a
  body carrying them would fail deep inside a service (a 500) instead of here (a 400).
Every API body is a JSON object, so any other top-level value is refused here too.

Each refusal is a `ParseError` whose detail says why; the exception handler maps it to
400 INVALID_REQUEST with `details.reason`.
"""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Mapping
from typing import IO, Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

# NUMERIC(78,0) holds 78 digits; anything longer cannot be an amount (a sign adds one).
MAX_NUMBER_CHARS = 80


class _Refused(ValueError):
    """A refusal with a message meant for the client (never echoes the body)."""


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"number too large (more than {MAX_NUMBER_CHARS} characters)")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"number too large (more than {MAX_NUMBER_CHARS} characters)")
    value = float(text)
    if not math.isfinite(value):
        raise _Refused("number out of range")
    return value


def _parse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not valid JSON")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # dict() builds it in C; only a size mismatch (a repeated key) needs the Python loop,
    # which names the first repeat in document order.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"duplicate key {key[:64]!r}")
            seen.add(key)
    return obj


def _check_text(value: str) -> None:
    if "\x00" in value:
        raise _Refused("strings must not contain NUL (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Refused("strings must not contain lone surrogates") from exc


def _check_strings(value: Any) -> None:
    """Every key and string value must be storable text (iterative: no recursion limit)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key)
                pending.append(child)
        elif isinstance(item, list):
            pending.extend(item)


def strict_json_loads(text: str) -> Any:
    """Decode JSON text strictly; raises ValueError with a client-safe message."""
    data = json.loads(text, parse_int=_parse_int, parse_float=_parse_float,
                      parse_constant=_parse_constant,
                      object_pairs_hook=_object_without_duplicates)
    # In ASCII text only a \u escape can make NUL or a lone surrogate (a raw control
    # character inside a string is itself invalid JSON), so without one every decoded
    # string is storable already and the walk over the whole value is skipped.
    if "\\u" in text or not text.isascii():
        _check_strings(data)
    return data


def _utf8_text(body: bytes) -> str:
    """`body` decoded exactly as `codecs.getreader("utf-8")(stream).read()` decodes it,
    without the stream reader's Python read loop: invalid UTF-8 raises, and a multi-byte
    sequence cut off at the very end is left out (the reader keeps it for a next read
    that never comes)."""
    return codecs.utf_8_decode(body, "strict", False)[0]


class StrictJSONParser(JSONParser):
    """DRF's JSONParser with the refusals above, and a JSON object required at the top."""

    def parse(self, stream: IO[bytes], media_type: str | None = None,
              parser_context: Mapping[str, Any] | None = None) -> Any:
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        try:
            if codecs.lookup(encoding).name == "utf-8":
                text = _utf8_text(stream.read())
            else:
                text = codecs.getreader(encoding)(stream).read()
        except UnicodeDecodeError as exc:
            raise ParseError(f"body is not valid {encoding}") from exc
        try:
            data = strict_json_loads(text)
        except _Refused as exc:
            raise ParseError(str(exc)) from exc
        except RecursionError as exc:
            raise ParseError("JSON nested too deeply") from exc
        except ValueError as exc:
            # json.JSONDecodeError gives a position only; int() overflow a digit count.
            message = (f"malformed JSON at line {exc.lineno} column {exc.colno}"
                       if isinstance(exc, json.JSONDecodeError) else "number too large")
            raise ParseError(message) from exc
        if not isinstance(data, dict):
            raise ParseError("the body must be a JSON object")
        return data
