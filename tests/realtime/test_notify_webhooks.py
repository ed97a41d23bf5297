"""Outgoing client webhooks: signed, logged, retried with backoff, after commit only."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.db import transaction
from django.utils import timezone
from django_q.models import OrmQ
from werkzeug import Response

from config.webhooks import HEADER, webhook_verify
from quotes.services.transitions import quote_transition
from tests.factories import QuoteFactory
from users.models import WebhookDelivery
from users.notifications import RETRY_DELAYS, notify_deliver, notify_retry_due

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def quote_with_notify_url(httpserver):
    quote = QuoteFactory()
    quote.user.notify_url = httpserver.url_for("/hook")
    quote.user.save(update_fields=["notify_url"])
    return quote


def commit_quote(quote):
    with transaction.atomic():
        quote_transition(quote_id=quote.pk, to_status="committed", actor="test")


def test_event_is_logged_and_posted_signed(httpserver, quote_with_notify_url):
    received = []

    def handler(request):
        received.append((request.headers.get(HEADER), request.get_data()))
        return Response("ok")

    httpserver.expect_request("/hook", method="POST").respond_with_handler(handler)
    commit_quote(quote_with_notify_url)

    delivery = WebhookDelivery.objects.get()
    assert delivery.event == "quote.status" and delivery.state == "pending"
    assert OrmQ.objects.count() >= 1  # the first attempt is queued after commit
    assert notify_deliver(delivery.pk) == "delivered"

    header, body = received[0]
    assert webhook_verify(header, body)
    payload = json.loads(body)
    assert (payload["quote_id"], payload["status"]) == (str(quote_with_notify_url.pk), "committed")
    assert payload["delivery_id"] == delivery.pk
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)


def test_failure_backs_off_then_gives_up(httpserver, quote_with_notify_url):
    httpserver.expect_request("/hook").respond_with_data("down", status=503)
    commit_quote(quote_with_notify_url)
    delivery = WebhookDelivery.objects.get()

    assert notify_deliver(delivery.pk) == "retry"
    delivery.refresh_from_db()
    assert delivery.last_status_code == 503
    assert delivery.next_attempt_at > timezone.now() + RETRY_DELAYS[0] - dt.timedelta(seconds=2)
    assert notify_retry_due() == 0  # not due yet

    for _ in RETRY_DELAYS:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
        notify_retry_due()
    delivery.refresh_from_db()
    assert delivery.state == "failed"
    assert delivery.attempts == len(RETRY_DELAYS) + 1


def test_rolled_back_transition_notifies_nobody(quote_with_notify_url):
    with pytest.raises(RuntimeError), transaction.atomic():
        quote_transition(quote_id=quote_with_notify_url.pk, to_status="committed", actor="t")
        raise RuntimeError("roll back")
    assert not WebhookDelivery.objects.exists()


def test_no_notify_url_no_delivery():
    quote = QuoteFactory()
    commit_quote(quote)
    assert not WebhookDelivery.objects.exists()
