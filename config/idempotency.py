"""`Idempotency-Key` for creating POSTs (IETF draft-ietf-httpapi-idempotency-key, Stripe semantics).

Usage, on a DRF view method (put it outermost, above any `transaction.atomic`):

    class QuoteCreateView(APIView):
        @idempotent("quotes.create")
        def post(self, request): ...

or on a function view under `@api_view(["POST"])`.

Semantics, per authenticated user (a key means nothing across users):
- no header: the handler just runs;
- a key not seen before: claimed, the handler runs, its response (2xx AND 4xx: a refused
  request refused again is the truth) is stored and returned;
- the same key and the same request (method, path, canonical JSON body): the stored
  response is replayed, with `Idempotent-Replayed: true`; the handler does not run;
- the same key with a different request: 422 IDEMPOTENCY_KEY_REUSED;
- the same key while the first request is still running: 409 IDEMPOTENCY_KEY_IN_USE;
- the handler fails with a 5xx or raises: the claim is deleted so the client can retry.
Keys are 1..255 printable ASCII characters (else 400 INVALID_REQUEST) and are kept at least
`IDEMPOTENCY_KEY_RETENTION_HOURS` (24 h); `idempotency_keys_purge` deletes older ones.

Race safety: the claim is an INSERT into `users.IdempotencyKey`, whose UNIQUE(user, key)
constraint decides the winner, committed in its own transaction BEFORE the handler runs,
so a concurrent request with the same key blocks on the index, then sees `in_progress`.
This needs autocommit around the view (no ATOMIC_REQUESTS, decorator outside any atomic
block); inside an outer transaction the claim is not visible to others until it commits.
A process that dies mid-request leaves its claim `in_progress`: the key answers 409 until
purged, on purpose, because the handler may have done its work (never run it twice).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.http import HttpResponse
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings

from config.errors import Conflict, InvalidRequest, ServiceError

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
# Read from META, as `request.headers` would find it, without building that mapping of
# every header on each request (config.middleware reads its headers the same way).
_HEADER_META = "HTTP_IDEMPOTENCY_KEY"
REPLAYED_HEADER = "Idempotent-Replayed"
_VALID_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")

View = TypeVar("View", bound=Callable[..., Any])


class IdempotencyKeyReused(ServiceError):
    code, status = "IDEMPOTENCY_KEY_REUSED", 422
    default_message = "This Idempotency-Key was used with a different request"


class IdempotencyKeyInUse(Conflict):
    code = "IDEMPOTENCY_KEY_IN_USE"
    default_message = "A request with this Idempotency-Key is still being processed"


def request_fingerprint(*, method: str, path: str, body: Any) -> str:
    """sha256 of method, path and the body as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), cls=DjangoJSONEncoder,
                           ensure_ascii=False)
    return hashlib.sha256(f"{method.upper()}\n{path}\n{canonical}".encode()).hexdigest()


def idempotency_key_from(request: Request) -> str | None:
    key = request.META.get(_HEADER_META)
    if key is None:
        return None
    if not _VALID_KEY.match(key):
        raise InvalidRequest("Idempotency-Key must be 1 to 255 printable ASCII characters",
                             details={"header": HEADER})
    return key


def _claim(*, user: Any, key: str, endpoint: str, fingerprint: str) -> tuple[bool, Any]:
    """Insert the claim (committed at once). Returns (claimed, row)."""
    from users.models import IdempotencyKey

    for _ in range(3):
        try:
            with transaction.atomic():
                row = IdempotencyKey.objects.create(user=user, key=key, endpoint=endpoint,
                                                    request_fingerprint=fingerprint)
            return True, row
        except IntegrityError:
            existing = IdempotencyKey.objects.filter(user=user, key=key).first()
            if existing is not None:
                return False, existing
            # The holder failed and released the key between our INSERT and SELECT: retry.
    raise IdempotencyKeyInUse()


def _stored_response(row: Any) -> Response:
    response = Response(row.response_body, status=row.response_status)
    response[REPLAYED_HEADER] = "true"
    return response


def _response_json(response: HttpResponse) -> Any:
    """The response body as JSON-ready data, exactly as the client would have received it."""
    data = getattr(response, "data", None)
    if data is not None:
        return json.loads(json.dumps(data, cls=DjangoJSONEncoder))
    content = getattr(response, "content", b"")
    return json.loads(content) if content else None


def _run_handler(view: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 request: Request, view_instance: Any) -> HttpResponse:
    """Run the handler, turning a raised exception into the response DRF would send."""
    try:
        return view(*args, **kwargs)
    except Exception as exc:
        handler = api_settings.EXCEPTION_HANDLER
        response = handler(exc, {"view": view_instance, "request": request,
                                 "args": args, "kwargs": kwargs})
        if response is None:
            raise
        return response


def _release(row: Any) -> None:
    from users.models import IdempotencyKey

    IdempotencyKey.objects.filter(pk=row.pk, state=IdempotencyKey.State.IN_PROGRESS).delete()


def idempotent(endpoint: str) -> Callable[[View], View]:
    """Decorate a DRF view's `post` (method or function view) with Idempotency-Key handling."""

    def decorator(view: View) -> View:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if isinstance(args[0], Request):
                view_instance, request = None, args[0]
            else:
                view_instance, request = args[0], args[1]
            key = idempotency_key_from(request)
            user = getattr(request, "user", None)
            if key is None or user is None or not getattr(user, "is_authenticated", False):
                return view(*args, **kwargs)
            return _idempotent_call(view, args, kwargs, request=request, view_instance=view_instance,
                                    user=user, key=key, endpoint=endpoint)

        return wrapper  # type: ignore[return-value]

    return decorator


def _idempotent_call(view: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
                     request: Request, view_instance: Any, user: Any, key: str,
                     endpoint: str) -> Any:
    from users.models import IdempotencyKey

    fingerprint = request_fingerprint(method=request.method or "POST", path=request.path,
                                      body=request.data)
    claimed, row = _claim(user=user, key=key, endpoint=endpoint, fingerprint=fingerprint)
    if not claimed:
        if row.request_fingerprint != fingerprint:
            raise IdempotencyKeyReused(details={"endpoint": row.endpoint})
        if row.state == IdempotencyKey.State.IN_PROGRESS:
            raise IdempotencyKeyInUse()
        return _stored_response(row)

    try:
        response = _run_handler(view, args, kwargs, request, view_instance)
    except BaseException:
        _release(row)
        raise
    if response.status_code >= 500:
        _release(row)
        return response
    try:
        body = _response_json(response)
        updated = IdempotencyKey.objects.filter(
            pk=row.pk, state=IdempotencyKey.State.IN_PROGRESS,
        ).update(state=IdempotencyKey.State.COMPLETED, response_status=response.status_code,
                 response_body=body, completed_at=timezone.now())
        if not updated:
            logger.warning("idempotency claim vanished before its response was stored",
                           extra={"endpoint": endpoint})
    except Exception:
        # The work is done; the client gets its answer. The key stays in_progress (409 on
        # retry), which is safe: never run a handler twice for one key.
        logger.exception("could not store the idempotent response", extra={"endpoint": endpoint})
    return response


def idempotency_keys_purge() -> int:
    """Delete keys older than the retention (django-q2 schedule). Returns rows deleted."""
    from users.models import IdempotencyKey

    hours = getattr(settings, "IDEMPOTENCY_KEY_RETENTION_HOURS", 24)
    cutoff = timezone.now() - timedelta(hours=max(24, hours))
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()
    return deleted
