"""quote_create builds its Quote through Model.__init__'s positional path
(`_new_quote`): the instance must be the one `Quote(user=user, **values)` makes."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from django.utils import timezone

from quotes.models import MemoType, Quote, QuoteStatus
from quotes.services.quotes import _new_quote
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def values() -> dict:
    now = timezone.now()
    return dict(
        id=uuid.uuid4(), status=QuoteStatus.PENDING, source_chain="stellar",
        source_asset="XLM", source_amount=Decimal(150_750_000), service_fee=Decimal(150_826),
        gas_estimate=Decimal(75_375), total_cost=Decimal(150_976_201),
        destination_amount=Decimal(10_005_000), treasury_outflow_lamports=Decimal(10**7),
        fee_lamports=Decimal(5000), token_outflows={}, max_lamports_spend=Decimal(10_005_000),
        instructions=[{"program_id": "11111111111111111111111111111111", "accounts": [],
                       "data_base64": ""}],
        estimated_compute_units=10_000, priority_fee_micro_lamports=1000,
        price_snapshot={"rate": "1500"}, nonce="ab" * 16, created_at=now,
        expires_at=now + dt.timedelta(seconds=300), payment_address="GABC",
        payment_memo_type=MemoType.ID, refund_to="GDEF", payment_memo="1000000000000001",
    )


def state(quote: Quote) -> dict:
    fields = {f.attname: getattr(quote, f.attname) for f in Quote._meta.concrete_fields}
    return {**fields, "db": quote._state.db, "adding": quote._state.adding,
            "cached": dict(quote._state.fields_cache), "dict_keys": list(vars(quote))}


def test_the_same_instance_as_keywords_make():
    user = UserFactory()
    given = values()
    by_keywords = Quote(user=user, **given)
    positional = _new_quote(user=user, **given)
    assert state(positional) == state(by_keywords)
    assert positional.user is user and positional.user_id == user.pk
    # Defaults for what quote_create leaves out, as __init__ gives them.
    assert positional.destination_chain == "solana" and positional.pay_from_balance is False
    assert positional.committed_at is None and positional.service_signature == ""


def test_an_unknown_field_is_refused():
    with pytest.raises(TypeError, match="no_such_field"):
        _new_quote(user=UserFactory(), no_such_field=1, **values())
