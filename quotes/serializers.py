"""Quote API shapes. Input serializers only check types; the rules live in the services.

Output is rendered by `quotes.services.quotes.quote_response` (the same dict that is
signed); the output serializers here describe it for the OpenAPI schema.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from config.serializers import StrictInputSerializer
from quotes.errors import InvalidQuoteParameters


def validated(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    """Validate a request body; any problem is 400 INVALID_QUOTE_PARAMETERS with the fields."""
    serializer = serializer_class(data=data)
    if not serializer.is_valid():
        raise InvalidQuoteParameters("Invalid quote parameters",
                                     details={"fields": serializer.errors})
    return dict(serializer.validated_data)


class AccountMetaInput(StrictInputSerializer):
    """Documentation of one account of an instruction (checked in `quotes.solana_tx`)."""

    pubkey = serializers.CharField(max_length=64)
    is_signer = serializers.BooleanField()
    is_writable = serializers.BooleanField()


class InstructionInput(StrictInputSerializer):
    """Documentation of one instruction (checked in `quotes.solana_tx`)."""

    program_id = serializers.CharField(max_length=64)
    accounts = AccountMetaInput(many=True, max_length=64)
    data_base64 = serializers.CharField(max_length=2048, allow_blank=True, trim_whitespace=False)


@extend_schema_field(InstructionInput(many=True))
class InstructionListField(serializers.JSONField):
    """The instruction list, passed through as JSON: `solana_tx.instructions_from_json`
    checks every field strictly once (DRF's nested serializers would parse it twice, on the
    hottest path of the API)."""


class QuoteCreateInput(StrictInputSerializer):
    source_chain = serializers.ChoiceField(choices=["stellar", "near"])
    refund_to = serializers.CharField(max_length=128, required=False, allow_blank=True)
    solana_transaction_base64 = serializers.CharField(max_length=4096, required=False,
                                                      trim_whitespace=False)
    instructions = InstructionListField(required=False)
    estimated_compute_units = serializers.IntegerField(required=False, min_value=-2**63,
                                                       max_value=2**63)
    priority_fee_micro_lamports = serializers.IntegerField(required=False, min_value=-2**63,
                                                           max_value=2**63)



class SeedQuoteInput(StrictInputSerializer):
    """The seed's `POST /quote` body. `user_id` is accepted for compatibility and ignored:
    the quote belongs to the token's user."""

    user_id = serializers.CharField(required=False, max_length=64)
    source_chain = serializers.ChoiceField(choices=["stellar", "near"])
    destination_chain = serializers.ChoiceField(choices=["solana"], required=False)
    solana_instructions_base64 = serializers.CharField(max_length=4096, trim_whitespace=False)
    estimated_compute_units = serializers.IntegerField(required=False, min_value=-2**63,
                                                       max_value=2**63)
    estimated_cu = serializers.IntegerField(required=False, min_value=-2**63, max_value=2**63)
    refund_to = serializers.CharField(max_length=128, required=False, allow_blank=True)


class QuoteListQuery(serializers.Serializer):
    status = serializers.CharField(required=False, max_length=16)


class OhlcQuery(serializers.Serializer):
    interval = serializers.ChoiceField(choices=["1m", "5m", "1h", "1d"], default="1m")
    start = serializers.DateTimeField(required=False)
    end = serializers.DateTimeField(required=False)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=1000, default=500)


# -- output (documentation) ---------------------------------------------------------------


class PriceOutput(serializers.Serializer):
    rate = serializers.CharField(help_text="source asset per SOL (decimal string)")
    source = serializers.CharField(help_text='"pyth" or "fixed" (sandbox)')
    publish_time = serializers.DateTimeField(help_text="oldest publish time of the prices used")
    confidence = serializers.CharField(
        help_text="relative width of the conversion's confidence band (0.004 = 0.4%)")


class PaymentOutput(serializers.Serializer):
    address = serializers.CharField(help_text="Stellar treasury account or NEAR payment account")
    memo_type = serializers.ChoiceField(choices=["id", "hash"])
    memo = serializers.CharField(help_text="MEMO_ID as a decimal string (uint64)")
    amount = serializers.CharField(help_text="stroops or yoctoNEAR to pay (= total_cost)")
    instructions = serializers.JSONField(
        help_text="Stellar: payment with MEMO_ID; NEAR: function call execute_payment"
                  '({"quote_id"}) on the payment account with `deposit` attached')


class QuoteOutput(serializers.Serializer):
    quote_id = serializers.UUIDField()
    status = serializers.CharField()
    source_chain = serializers.CharField()
    source_asset = serializers.CharField()
    total_cost = serializers.CharField(help_text="smallest unit of the source asset")
    service_fee = serializers.CharField()
    gas_estimate = serializers.CharField()
    treasury_outflow = serializers.CharField(help_text="lamports leaving the treasury (rent included)")
    price = PriceOutput()
    expires_at = serializers.DateTimeField()
    nonce = serializers.CharField()
    payment = PaymentOutput()
    signature = serializers.CharField(
        help_text="base58 ed25519 signature over the canonical JSON of this body without "
                  "`signature`, `status` and `execution` (sorted keys, no spaces, UTF-8); "
                  "public key at "
                  "GET /api/v1/treasury")


class ExecutionOutput(serializers.Serializer):
    status = serializers.CharField(help_text="pending | signed | submitted | confirmed | failed")
    signature = serializers.CharField(allow_null=True, help_text="Solana transaction signature")
    fail_reason = serializers.CharField(allow_null=True)
    error_message = serializers.CharField(allow_null=True)
    fee_lamports = serializers.CharField(allow_null=True, help_text="fee the chain charged")
    compute_units_consumed = serializers.IntegerField(allow_null=True)
    treasury_outflow_lamports = serializers.CharField(allow_null=True)
    attempts = serializers.IntegerField()
    slot = serializers.IntegerField(allow_null=True)
    submitted_at = serializers.DateTimeField(allow_null=True)
    executed_at = serializers.DateTimeField(allow_null=True)


class QuoteDetailOutput(QuoteOutput):
    execution = ExecutionOutput(allow_null=True, help_text="null until the quote is paid")


class SeedQuoteOutput(serializers.Serializer):
    quote_id = serializers.UUIDField()
    user_id = serializers.UUIDField()
    source_chain = serializers.CharField()
    source_amount = serializers.CharField()
    total_cost = serializers.CharField()
    service_fee = serializers.CharField()
    gas_estimate = serializers.CharField()
    expires_at = serializers.DateTimeField()
    payment_address = serializers.CharField()
    payment_memo_type = serializers.CharField()
    payment_memo = serializers.CharField()
    nonce = serializers.CharField()
    signature = serializers.CharField()


class SeedStatusOutput(serializers.Serializer):
    quote_id = serializers.UUIDField()
    status = serializers.CharField()
    solana_signature = serializers.CharField(allow_null=True)
    executed_at = serializers.DateTimeField(allow_null=True)
    error_message = serializers.CharField(allow_null=True)


class CandleOutput(serializers.Serializer):
    time = serializers.DateTimeField(help_text="bucket start (UTC)")
    open = serializers.CharField()
    high = serializers.CharField()
    low = serializers.CharField()
    close = serializers.CharField()
    count = serializers.IntegerField()
    source = serializers.CharField()
