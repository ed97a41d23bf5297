"""Shared fixtures. Tests run on real PostgreSQL: DATABASE_URL when set, else the embedded
server that config.settings starts in .data/ (never SQLite)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.factories import UserFactory


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def other_user(db):
    return UserFactory()


def client_for(user) -> APIClient:
    from users.authentication import token_issue

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=user)}")
    return client


@pytest.fixture
def api_client(user) -> APIClient:
    return client_for(user)


@pytest.fixture
def anon_client() -> APIClient:
    return APIClient()
