"""Input and output shapes of the funding endpoints. Validation of form only: whether a
payment is real is decided by the verifiers, never here."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from settlement.chains.near import MAX_SIGNED_TX_BYTES
from settlement.chains.stellar import MAX_ENVELOPE_XDR_CHARS
from settlement.services.funding import PaymentOutcome

_SIGNED_TX_CHARS = MAX_SIGNED_TX_BYTES * 4 // 3 + 4


class PaymentReferenceSerializer(serializers.Serializer):
    """What identifies a payment: a tx hash (live), or the signed transaction (sandbox)."""

    tx_hash = serializers.CharField(required=False, max_length=128, trim_whitespace=True)
    envelope_xdr = serializers.CharField(required=False, max_length=MAX_ENVELOPE_XDR_CHARS,
                                         trim_whitespace=True)
    signed_transaction_base64 = serializers.CharField(required=False, max_length=_SIGNED_TX_CHARS,
                                                      trim_whitespace=True)
    sender = serializers.CharField(required=False, max_length=64,
                                   help_text="NEAR live mode: the signer account of tx_hash")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not any(attrs.get(k) for k in ("tx_hash", "envelope_xdr", "signed_transaction_base64")):
            raise serializers.ValidationError(
                "A payment reference is required: tx_hash, envelope_xdr or signed_transaction_base64")
        return attrs


class CommitSerializer(PaymentReferenceSerializer):
    """Seed `POST /commit`: a quote id AND the payment that pays it."""

    quote_id = serializers.UUIDField()


class _WebhookSerializer(serializers.Serializer):
    """The seed's webhook shape. Everything but the transaction reference is a hint that
    is logged, never trusted: the chain says what was paid."""

    transaction_hash = serializers.CharField(max_length=128, trim_whitespace=True)
    amount = serializers.CharField(required=False, allow_blank=True, max_length=80)
    memo = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=256)
    timestamp = serializers.CharField(required=False, allow_blank=True, max_length=64)


class StellarWebhookSerializer(_WebhookSerializer):
    from_address = serializers.CharField(required=False, allow_blank=True, max_length=128)
    to_address = serializers.CharField(required=False, allow_blank=True, max_length=128)
    envelope_xdr = serializers.CharField(required=False, max_length=MAX_ENVELOPE_XDR_CHARS)


class NearWebhookSerializer(_WebhookSerializer):
    signer_id = serializers.CharField(required=False, allow_blank=True, max_length=64)
    receiver_id = serializers.CharField(required=False, allow_blank=True, max_length=64)
    signed_transaction_base64 = serializers.CharField(required=False, max_length=_SIGNED_TX_CHARS)


def payment_outcome_data(outcome: PaymentOutcome) -> dict[str, Any]:
    payment, refund = outcome.payment, outcome.refund
    return {
        "payment_id": str(payment.pk),
        "chain": payment.chain,
        "tx_hash": payment.tx_hash,
        "status": payment.status,
        "asset": payment.asset,
        "amount": str(int(payment.amount)),
        "from_address": payment.from_address,
        "memo_type": payment.memo_type or None,
        "memo": payment.memo or None,
        "quote_id": str(payment.quote_id) if payment.quote_id else None,
        "committed": outcome.committed,
        "replay": not outcome.created,
        "received_at": payment.received_at.isoformat(),
        "refund": None if refund is None else {
            "refund_id": str(refund.pk),
            "reason": refund.reason,
            "amount": str(int(refund.amount)),
            "asset": refund.asset,
            "destination": refund.destination,
            "status": refund.status,
        },
    }


class PaymentOutcomeSerializer(serializers.Serializer):
    """Documentation of the response shape (rendered by `payment_outcome_data`)."""

    payment_id = serializers.UUIDField()
    chain = serializers.CharField()
    tx_hash = serializers.CharField()
    status = serializers.ChoiceField(choices=["matched", "overpaid", "underpaid", "late",
                                              "duplicate", "unmatched", "credited"])
    asset = serializers.CharField()
    amount = serializers.CharField(help_text="smallest unit (stroops / yoctoNEAR)")
    from_address = serializers.CharField()
    memo_type = serializers.CharField(allow_null=True)
    memo = serializers.CharField(allow_null=True)
    quote_id = serializers.UUIDField(allow_null=True)
    committed = serializers.BooleanField()
    replay = serializers.BooleanField(help_text="true when this transaction was already booked")
    received_at = serializers.DateTimeField()
    refund = serializers.DictField(allow_null=True)


class QuotePaymentResponseSerializer(serializers.Serializer):
    quote_id = serializers.UUIDField()
    status = serializers.CharField(help_text="the quote's status after this payment")
    payment = PaymentOutcomeSerializer()


class WebhookResponseSerializer(serializers.Serializer):
    """Sandbox: the webhook was verified and booked inline (the seed's response shape)."""

    accepted = serializers.BooleanField()
    quote_id = serializers.UUIDField(allow_null=True)
    message = serializers.CharField()
    payment = PaymentOutcomeSerializer()


class WebhookQueuedSerializer(serializers.Serializer):
    """Live: the hint is queued; a worker reads the transaction from the chain."""

    accepted = serializers.BooleanField()
    status = serializers.CharField()
    task_id = serializers.CharField()
    transaction_hash = serializers.CharField()
    message = serializers.CharField()
