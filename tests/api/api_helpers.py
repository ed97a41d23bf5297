"""Helpers shared by the API edge tests (importable as `api_helpers`)."""

from __future__ import annotations

import io
import json
import logging

from django.apps import apps

from config.logging import ContextFilter, JsonFormatter

# Every table a creating endpoint could write to.
MAIN_TABLES = [
    "users.User", "users.Wallet", "users.WalletChallenge", "users.ApiToken",
    "users.IdempotencyKey", "quotes.Quote", "quotes.QuoteTransition", "execution.Execution",
    "risk.AuditEvent", "risk.Alert", "settlement.FundingPayment", "settlement.JournalEntry",
    "settlement.Withdrawal", "settlement.Refund",
]


def row_counts() -> dict[str, int]:
    return {label: apps.get_model(label).objects.count() for label in MAIN_TABLES}


class CapturedLog:
    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter())
        self.handler.addFilter(ContextFilter())
        self.handler.setLevel(logging.DEBUG)

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]
