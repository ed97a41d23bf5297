"""Funding test helpers: real signed payments (stellar-sdk, py-near), quotes, signed
webhooks, and readers of the queue and the books."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from decimal import Decimal
from typing import Any

from django.utils import timezone
from stellar_sdk import Keypair, Network

from config.webhooks import webhook_sign
from tests.factories import QuoteFactory
from tests.fakes.horizon import make_stellar_payment
from tests.fakes.near_rpc import make_near_payment

TESTNET = Network.TESTNET_NETWORK_PASSPHRASE
NEAR_PAYMENT_ACCOUNT = "solpay-treasury.test.near"
NEAR = 10**24
IN_MEMORY_LAYER = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
EXECUTE_TASK = "execution.tasks.execute_quote"
WAKE_TASK = "execution.tasks.execute_waiting"

_sequence = itertools.count(10_000)
_nonce = itertools.count(1_000)


def stellar_envelope(payer: Keypair, destination: str, amount: int, *, memo_id: int | str | None = None,
                     **kwargs: Any) -> str:
    """A real signed payment envelope; a fresh sequence number makes every call a new tx."""
    kwargs.setdefault("sequence", next(_sequence))
    return make_stellar_payment(payer, destination, amount,
                                memo_id=int(memo_id) if memo_id is not None else None, **kwargs)


def near_signed(payer, amount: int, *, quote_id: str | None = None, memo: str | None = None,
                receiver: str = NEAR_PAYMENT_ACCOUNT, **kwargs: Any) -> str:
    signing_key, _, account = payer
    kwargs.setdefault("nonce", next(_nonce))
    return make_near_payment(account, signing_key, receiver, quote_id=quote_id, memo=memo,
                             deposit_yocto=amount, **kwargs)


def stellar_quote(user, treasury: str, **kwargs: Any):
    return QuoteFactory(user=user, payment_address=treasury, **kwargs)


def near_quote(user, **kwargs: Any):
    amounts = {"source_amount": Decimal(2 * NEAR), "service_fee": Decimal(2 * 10**21),
               "gas_estimate": Decimal(10**21)}
    amounts["total_cost"] = sum(amounts.values())
    return QuoteFactory(user=user, source_chain="near", source_asset="NEAR",
                        payment_address=NEAR_PAYMENT_ACCOUNT, refund_to="refund.test.near",
                        **{**amounts, **kwargs})


def expire(quote) -> None:
    """Move a quote's expiry into the past (created_at too, to keep its CHECK)."""
    from quotes.models import Quote

    past = timezone.now() - dt.timedelta(seconds=1)
    Quote.objects.filter(pk=quote.pk).update(created_at=past - dt.timedelta(minutes=5), expires_at=past)
    quote.refresh_from_db()


def webhook_body(chain: str, **fields: Any) -> bytes:
    if chain == "stellar":
        base = {"transaction_hash": "0" * 64, "from_address": "", "to_address": "",
                "amount": "0", "memo": None, "timestamp": timezone.now().isoformat()}
    else:
        base = {"transaction_hash": "11111111111111111111111111111111", "signer_id": "",
                "receiver_id": NEAR_PAYMENT_ACCOUNT, "amount": "0", "memo": None,
                "timestamp": timezone.now().isoformat()}
    return json.dumps({**base, **fields}).encode()


def post_webhook(client, chain: str, body: bytes, *, signature: str | None = "sign",
                 path: str | None = None, timestamp: int | None = None):
    headers = {}
    if signature == "sign":
        headers["HTTP_X_WEBHOOK_SIGNATURE"] = webhook_sign(body, timestamp=timestamp)
    elif signature is not None:
        headers["HTTP_X_WEBHOOK_SIGNATURE"] = signature
    return client.post(path or f"/api/v1/webhooks/{chain}", data=body,
                       content_type="application/json", **headers)


def execution_tasks(quote_id: Any = None) -> list[Any]:
    """Executor tasks waiting in the django-q2 ORM broker, `execute_quote` and the
    wake-up `execute_waiting` (optionally those asked for by one quote)."""
    from django_q.models import OrmQ

    tasks = [q for q in OrmQ.objects.all() if q.func() in (EXECUTE_TASK, WAKE_TASK)]
    if quote_id is not None:
        tasks = [q for q in tasks if q.args() == (str(quote_id),)]
    return tasks


def balances() -> dict[str, int]:
    from settlement.ledger import balances_by_account

    return balances_by_account()


def run_queued(func: str) -> list[Any]:
    """Run (and remove) the queued django-q2 tasks calling `func`, as a worker would:
    the function named in the signed payload, with the payload's args and kwargs."""
    from django.utils.module_loading import import_string
    from django_q.models import OrmQ

    results = []
    for queued in OrmQ.objects.order_by("id"):
        if queued.func() == func:
            results.append(import_string(func)(*queued.args(), **queued.kwargs()))
            queued.delete()
    return results


def run_scheduled(func: str) -> list[Any]:
    """Run (and remove) one-off django-q2 schedules calling `func`, ignoring next_run."""
    import ast

    from django.utils.module_loading import import_string
    from django_q.models import Schedule

    results = []
    for scheduled in Schedule.objects.filter(func=func, schedule_type=Schedule.ONCE).order_by("id"):
        args = ast.literal_eval(scheduled.args or "()")
        kwargs = ast.literal_eval(scheduled.kwargs or "{}")
        scheduled.delete()
        results.append(import_string(func)(*args, **kwargs))
    return results
