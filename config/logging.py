"""Structured JSON logs with request id and quote id, and a scrubber for secrets.

`log_context(quote_id=...)` attaches fields to every record logged inside it (contextvars,
so it follows async code and threads started with copied context).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "log_context", default=None)

# Values that must never appear in a log line, whatever a caller passes.
_SECRET_KEYS = re.compile(r"(secret|password|private|token|authorization|api_key|seed)", re.I)


def current_request_id() -> str | None:
    return (_context.get() or {}).get("request_id")


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def bind_log_context(**fields: Any) -> None:
    """Add fields to the current context until the enclosing `log_context` exits.

    For values learnt mid-request, e.g. a view that has just created a quote:
    `bind_log_context(quote_id=str(quote.id))`. Outside any `log_context` the fields stay
    bound for the rest of the current context (thread or task), so prefer `log_context`.
    """
    _context.set({**(_context.get() or {}), **fields})


def scrub(value: Any) -> Any:
    """Replace the values of secret-looking keys, recursively."""
    if isinstance(value, dict):
        return {k: ("[redacted]" if _SECRET_KEYS.search(str(k)) else scrub(v))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


# Secrets recognisable by shape, wherever they appear in a line (messages, exceptions).
_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\bS[A-Z2-7]{55}\b"),  # Stellar secret seed (StrKey 'S...')
    re.compile(r"\bed25519:[1-9A-HJ-NP-Za-km-z]{80,90}\b"),  # NEAR full secret key
    re.compile(r"(?i)(v1=)[0-9a-f]{64}"),  # webhook HMAC signature values
]
_MIN_SECRET_LEN = 8


def _configured_secrets() -> list[str]:
    """The secret values from settings, longest first, so none is ever logged verbatim."""
    try:
        from django.conf import settings

        names = ("SECRET_KEY", "SOLANA_TREASURY_KEY", "STELLAR_TREASURY_SECRET",
                 "NEAR_TREASURY_KEY", "QUOTE_SIGNING_KEY", "WEBHOOK_SECRET", "METRICS_TOKEN",
                 "PYTH_API_KEY", "DJANGO_SUPERUSER_PASSWORD")
        values = {str(getattr(settings, name, "") or "") for name in names}
    except Exception:  # settings not configured yet (early start-up): shapes still apply
        return []
    # Also their JSON-escaped spelling: lines are matched after json.dumps.
    values |= {json.dumps(v)[1:-1] for v in values}
    return sorted((v for v in values if len(v) >= _MIN_SECRET_LEN), key=len, reverse=True)


def scrub_text(text: str) -> str:
    """Redact known secret values and secret-shaped substrings from a finished line."""
    for secret in _configured_secrets():
        if secret in text:
            text = text.replace(secret, "[redacted]")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", text)
    return text


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, val in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, val)
        return True


_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, val in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = val
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return scrub_text(json.dumps(scrub(entry), default=str))
