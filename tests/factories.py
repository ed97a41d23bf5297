"""factory_boy factories for rows tests need as background (not for the thing under test)."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import factory
from django.utils import timezone

from quotes.models import Quote
from users.models import User, Wallet


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User

    username = factory.Sequence(lambda n: f"user{n}-{uuid.uuid4().hex[:6]}")


class WalletFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Wallet

    user = factory.SubFactory(UserFactory)
    chain = "stellar"
    address = factory.Sequence(lambda n: f"GADDRESS{n:048d}")
    verified_at = factory.LazyFunction(timezone.now)


_memo = iter(range(10**15 + 10**12, 10**16))


class QuoteFactory(factory.django.DjangoModelFactory):
    """A pending Stellar quote paying 0.01 SOL; amounts satisfy every CHECK."""

    class Meta:
        model = Quote

    user = factory.SubFactory(UserFactory)
    source_chain = "stellar"
    source_asset = "XLM"
    source_amount = Decimal(150_000_000)
    service_fee = Decimal(150_000)
    gas_estimate = Decimal(75_000)
    total_cost = factory.LazyAttribute(lambda q: q.source_amount + q.service_fee + q.gas_estimate)
    destination_amount = Decimal(10_005_000)
    treasury_outflow_lamports = Decimal(10_000_000)
    fee_lamports = Decimal(5_000)
    max_lamports_spend = Decimal(10_005_000)
    instructions = factory.LazyFunction(list)
    estimated_compute_units = 200_000
    nonce = factory.LazyFunction(lambda: uuid.uuid4().hex)
    expires_at = factory.LazyFunction(lambda: timezone.now() + dt.timedelta(minutes=5))
    payment_address = "GTREASURY"
    payment_memo_type = "id"
    payment_memo = factory.LazyFunction(lambda: str(next(_memo)))
    refund_to = "GREFUND"
