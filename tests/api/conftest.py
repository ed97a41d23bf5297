"""Fixtures for the API edge tests: captured JSON log lines, fresh throttle counters."""

from __future__ import annotations

import logging

import pytest
from api_helpers import CapturedLog
from django.core.cache import cache


@pytest.fixture
def json_log():
    """Everything logged during the test, formatted exactly as production does (JSON lines)."""
    captured = CapturedLog()
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(captured.handler)
    root.setLevel(logging.DEBUG)
    try:
        yield captured
    finally:
        root.removeHandler(captured.handler)
        root.setLevel(previous_level)


@pytest.fixture(autouse=True)
def _fresh_throttle_counts():
    cache.clear()
    yield
    cache.clear()
