"""Outgoing client webhooks: every event a user could see on `/ws/me/` is also POSTed to
their notify URL, signed with our webhook scheme, retried with backoff, and logged as a
`WebhookDelivery` row per event (the delivery log operators and clients can inspect).

First attempt right after the event's commit (a django-q2 task); failures are retried by
a periodic job at 10 s, 30 s, 2 min, 10 min, 1 h after the previous attempt, then the
delivery is marked failed. Receivers must treat deliveries as at-least-once: the payload
carries `delivery_id` for de-duplication.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import httpx2
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from config.tasks import enqueue_with_transaction
from config.webhooks import HEADER, webhook_sign
from users.models import WebhookDelivery

logger = logging.getLogger(__name__)

RETRY_DELAYS = [dt.timedelta(seconds=s) for s in (10, 30, 120, 600, 3600)]
TIMEOUT_SECONDS = 5.0


_NOTIFY_URLS = ("SELECT id, notify_url FROM users_user "
                "WHERE id = ANY(%s::uuid[]) AND notify_url <> ''")


def notify_enqueue_many(events: list[tuple[Any, dict[str, Any]]], *,
                        alongside: tuple[str, list[Any]] | None = None) -> list[WebhookDelivery]:
    """For published (user id, event) pairs, in the publishing transaction: one look-up of
    the notify URLs; a delivery row and a send task for each event of a user who set one.
    Both commit with the event or not at all (a crash after the commit loses nothing).

    `alongside`: a data-modifying statement and its parameters (the channel layer's message
    INSERT) to run in the same round trip, as a WITH clause of the look-up: PostgreSQL runs
    such a clause whether or not the query reads it."""
    statement, params = _NOTIFY_URLS, [list({str(user_id) for user_id, _ in events})]
    if alongside is not None:
        statement, params = f"WITH alongside AS ({alongside[0]}) {statement}", alongside[1] + params
    with connection.cursor() as cursor:  # raw: every published event asks this
        cursor.execute(statement, params)
        urls = {str(pk): url for pk, url in cursor.fetchall()}
    if not urls:
        return []
    now = timezone.now()
    deliveries = WebhookDelivery.objects.bulk_create([
        WebhookDelivery(user_id=user_id, url=urls[str(user_id)],
                        event=str(event.get("event", "")), payload=event, next_attempt_at=now)
        for user_id, event in events if str(user_id) in urls])
    for delivery in deliveries:
        enqueue_with_transaction("users.notifications.notify_deliver", delivery.pk,
                                 group="notify")
    return deliveries


def notify_deliver(delivery_id: int) -> str:
    """One attempt. Claims the row so two workers never send the same attempt twice."""
    now = timezone.now()
    with transaction.atomic():
        delivery = (WebhookDelivery.objects.select_for_update(skip_locked=True)
                    .filter(pk=delivery_id, state=WebhookDelivery.State.PENDING).first())
        if delivery is None:
            return "skipped"
        WebhookDelivery.objects.filter(pk=delivery.pk).update(attempts=F("attempts") + 1,
                                                              next_attempt_at=None)
    body = json.dumps({"delivery_id": delivery.pk, **delivery.payload},
                      separators=(",", ":")).encode()
    status_code: int | None = None
    error = ""
    try:
        response = httpx2.post(delivery.url, content=body, timeout=TIMEOUT_SECONDS,
                               headers={"Content-Type": "application/json",
                                        HEADER: webhook_sign(body)})
        status_code = response.status_code
        ok = 200 <= response.status_code < 300
        if not ok:
            error = f"HTTP {response.status_code}"
    except httpx2.HTTPError as exc:
        ok, error = False, type(exc).__name__
    attempts = delivery.attempts + 1
    update: dict[str, Any] = {"last_status_code": status_code, "last_error": error}
    if ok:
        update.update(state=WebhookDelivery.State.DELIVERED, delivered_at=now)
    elif attempts > len(RETRY_DELAYS):
        update.update(state=WebhookDelivery.State.FAILED)
    else:
        update.update(next_attempt_at=now + RETRY_DELAYS[attempts - 1])
    WebhookDelivery.objects.filter(pk=delivery.pk).update(**update)
    if not ok:
        logger.warning("client webhook delivery failed",
                       extra={"delivery_id": delivery.pk, "attempt": attempts, "error": error})
    return "delivered" if ok else "retry"


def notify_retry_due(limit: int = 200) -> int:
    """Periodic: send every pending delivery whose backoff has elapsed."""
    due = list(WebhookDelivery.objects.filter(state=WebhookDelivery.State.PENDING,
                                              next_attempt_at__lte=timezone.now())
               .values_list("pk", flat=True)[:limit])
    for delivery_id in due:
        notify_deliver(delivery_id)
    return len(due)


def notify_url_validate(url: str) -> str:
    """Only http(s); in live mode only https, so events never travel in clear text."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    allowed = ("https",) if settings.IS_LIVE else ("http", "https")
    if parsed.scheme not in allowed or not parsed.hostname:
        from config.errors import InvalidRequest

        raise InvalidRequest("notify_url must be an absolute https URL",
                             details={"notify_url": url})
    return url
