"""Bearer-token authentication: `Authorization: Bearer <token>`.

Only the token's SHA-256 is stored, so a database leak does not leak usable tokens.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.db.models import Q
from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from users.models import ApiToken, User


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_issue(*, user: User) -> str:
    """Create a token for `user`; the raw value is returned once and never stored."""
    raw = secrets.token_urlsafe(32)
    ApiToken.objects.create(user=user, key_hash=hash_token(raw))
    return raw


def user_for_token(raw: str) -> tuple[User, ApiToken] | None:
    token = (ApiToken.objects.select_related("user")
             .filter(Q(revoked_at__isnull=True), key_hash=hash_token(raw),
                     user__is_active=True)
             .first())
    if token is None:
        return None
    return token.user, token


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header")
        try:
            raw = header[1].decode()
        except UnicodeError as exc:
            raise exceptions.AuthenticationFailed("Malformed token") from exc
        found = user_for_token(raw)
        if found is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token")
        user, token = found
        # Touch at most once a minute: a write per request would cost the hot path.
        now = timezone.now()
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return user, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
