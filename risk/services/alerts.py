"""Operator alerts: a row, an error-level log line, and an outgoing signed webhook.

The row is written in the caller's transaction; the log line and the webhook happen only
after commit, so an alert about something that rolled back is never sent. Delivery is at
least once (the periodic job re-sends undelivered alerts); receivers dedupe on `id`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import httpx2
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from config.webhooks import HEADER as SIGNATURE_HEADER
from config.webhooks import webhook_sign
from risk.models import Alert

logger = logging.getLogger(__name__)

ALERT_DELIVERY_TIMEOUT_SECONDS = 10.0
# The immediate task gets this long before the periodic job treats an alert as undelivered.
ALERT_REDELIVERY_GRACE = dt.timedelta(minutes=1)
ALERT_REDELIVERY_WINDOW = dt.timedelta(hours=24)


def jsonable(details: dict[str, Any] | None) -> dict[str, Any]:
    """Decimals, UUIDs and datetimes as JSON strings, so any details dict fits a JSONField."""
    return json.loads(json.dumps(details or {}, cls=DjangoJSONEncoder))


def alert_raise(*, kind: str, message: str, details: dict[str, Any] | None = None) -> Alert:
    alert = Alert.objects.create(kind=kind, message=message, details=jsonable(details))
    transaction.on_commit(lambda: _alert_dispatch(alert))
    return alert


def _alert_dispatch(alert: Alert) -> None:
    logger.error("ALERT %s: %s", alert.kind, alert.message,
                 extra={"alert_id": alert.pk, "alert_kind": alert.kind,
                        "alert_details": alert.details})
    if not settings.ALERT_WEBHOOK_URL:
        return
    from django_q.tasks import async_task

    try:
        async_task("risk.tasks.alert_deliver_task", alert.pk, task_name=f"alert-{alert.pk}")
    except Exception:  # the queue being down must not hide the alert; the periodic job retries
        logger.exception("alert enqueue failed", extra={"alert_id": alert.pk})


def alert_payload(alert: Alert) -> bytes:
    body = {"id": alert.pk, "kind": alert.kind, "message": alert.message,
            "details": alert.details, "created_at": alert.created_at.isoformat()}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def alert_deliver(*, alert_id: int) -> bool:
    """POST one alert to ALERT_WEBHOOK_URL, signed like our webhooks. True once delivered."""
    url = settings.ALERT_WEBHOOK_URL
    if not url:
        return False
    alert = Alert.objects.get(pk=alert_id)
    if alert.delivered_at is not None:
        return True
    body = alert_payload(alert)
    response = httpx2.post(url, content=body, timeout=ALERT_DELIVERY_TIMEOUT_SECONDS,
                           headers={"Content-Type": "application/json",
                                    SIGNATURE_HEADER: webhook_sign(body)})
    response.raise_for_status()
    Alert.objects.filter(pk=alert_id, delivered_at__isnull=True).update(delivered_at=timezone.now())
    return True


def alerts_redeliver() -> int:
    """Re-send recent alerts whose delivery failed; returns how many went out now."""
    if not settings.ALERT_WEBHOOK_URL:
        return 0
    now = timezone.now()
    pending = Alert.objects.filter(delivered_at__isnull=True,
                                   created_at__gte=now - ALERT_REDELIVERY_WINDOW,
                                   created_at__lte=now - ALERT_REDELIVERY_GRACE)
    delivered = 0
    for alert_id in pending.order_by("created_at").values_list("pk", flat=True)[:100]:
        try:
            delivered += alert_deliver(alert_id=alert_id)
        except httpx2.HTTPError:
            logger.warning("alert delivery failed", extra={"alert_id": alert_id})
    return delivered
