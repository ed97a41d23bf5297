"""Bearer-token authentication: `Authorization: Bearer <token>`.

Only the token's SHA-256 is stored, so a database leak does not leak usable tokens.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.utils import timezone
from psycopg import sql
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from config.prepared import django_connection, prepared_statements
from config.rows import RowReader
from users.models import ApiToken, User


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_issue(*, user: User) -> str:
    """Create a token for `user`; the raw value is returned once and never stored."""
    raw = secrets.token_urlsafe(32)
    ApiToken.objects.create(user=user, key_hash=hash_token(raw))
    return raw


class _TokenLookup:
    """`ApiToken.objects.select_related("user").filter(key_hash=..., revoked_at__isnull=True,
    user__is_active=True).first()` as one statement composed once per process: every API
    request authenticates, and compiling that queryset each time cost more CPU than a
    whole trivial insert's view. Rows become model instances as the ORM makes them
    (`config.rows`), the user cached on the token."""

    def __init__(self) -> None:
        self.tokens = RowReader(ApiToken, alias="t")
        self.users = RowReader(User, alias="u")

        def column(model: Any, name: str) -> sql.Identifier:
            return sql.Identifier(str(model._meta.get_field(name).column))

        self.statement = sql.SQL(
            "SELECT {token_columns}, {user_columns} FROM {tokens} t "
            "JOIN {users} u ON u.{user_pk} = t.{token_user} "
            "WHERE t.{key_hash} = %s AND t.{revoked_at} IS NULL AND u.{is_active} LIMIT 1"
        ).format(
            token_columns=sql.SQL(self.tokens.columns), user_columns=sql.SQL(self.users.columns),
            tokens=sql.Identifier(ApiToken._meta.db_table),
            users=sql.Identifier(User._meta.db_table),
            user_pk=column(User, "id"), token_user=column(ApiToken, "user"),
            key_hash=column(ApiToken, "key_hash"), revoked_at=column(ApiToken, "revoked_at"),
            is_active=column(User, "is_active"),
        ).as_string()

    def __call__(self, key_hash: str) -> tuple[User, ApiToken] | None:
        # Every authenticated request's first statement, a unique-index look-up: prepared
        # (config.prepared), its parse and plan paid once per connection. The thread's
        # connection itself, not the `django.db.connection` proxy, which looks it up again.
        with prepared_statements(), django_connection().cursor() as cursor:
            cursor.execute(self.statement, [key_hash])
            row = cursor.fetchone()
        if row is None:
            return None
        split = len(self.tokens.names)
        token, user = self.tokens.instance(row[:split]), self.users.instance(row[split:])
        ApiToken._meta.get_field("user").set_cached_value(token, user)  # type: ignore[union-attr]
        return user, token


_token_lookup: _TokenLookup | None = None


def user_for_token(raw: str) -> tuple[User, ApiToken] | None:
    """The active user and live token for a raw bearer token, else None."""
    global _token_lookup
    if _token_lookup is None:
        _token_lookup = _TokenLookup()
    return _token_lookup(hash_token(raw))


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
