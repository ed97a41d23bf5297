"""Fixtures for the chaos suite: the session's Solana sandbox with no fault pending, books
opened at the chain's balances (so reconciliation can prove books = chain), and the
settings the server processes and this process must share."""

from __future__ import annotations

import logging

import pytest

from tests.chaos.invariants import open_books_at_chain


@pytest.fixture(autouse=True)
def _quiet_queue_logs():
    # django-q2 logs every enqueue at INFO under "django-q" (settings tune "django_q").
    logging.getLogger("django-q").setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
def _fresh_channel_layers(fresh_channel_layers):
    """Every chaos test: transitions made here publish through a layer built for it."""


@pytest.fixture
def chain(solana_sandbox, settings):
    """The session sandbox, no fault left pending before or after; this process enqueues
    into the same ORM broker the worker processes read."""
    assert "orm" in settings.Q_CLUSTER, "the chaos suite needs the django-q2 ORM broker here"
    settings.CHAIN_MODE, settings.IS_LIVE = "sandbox", False
    solana_sandbox.admin.clear_faults()
    yield solana_sandbox
    solana_sandbox.admin.clear_faults()


@pytest.fixture
def opened_books(chain, transactional_db):
    """The treasury's chain balances booked as inventory: books = chain from the start."""
    return open_books_at_chain()


def chain_transaction_count(chain) -> int:
    return int(chain.admin.call("getTransactionCount"))
