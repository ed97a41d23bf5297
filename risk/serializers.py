"""Shapes of the treasury document and the operator breaker endpoints."""

from __future__ import annotations

from rest_framework import serializers


class AmountSerializer(serializers.Serializer):
    amount = serializers.CharField(help_text="smallest unit (lamports, stroops, yoctoNEAR)")
    whole = serializers.CharField(help_text="whole units, exact (display only)")
    asset = serializers.CharField()


class ChainDailyLimitSerializer(serializers.Serializer):
    limit = AmountSerializer()
    spent_today = AmountSerializer()
    remaining_today = AmountSerializer()


class BreakerThresholdsSerializer(serializers.Serializer):
    enabled = serializers.BooleanField()
    hourly_outflow_threshold = serializers.CharField(help_text="fraction of the treasury balance")
    consecutive_failure_threshold = serializers.IntegerField()
    volume_spike_ratio = serializers.CharField(help_text="× the trailing 24 h hourly average")
    volume_spike_floor = serializers.IntegerField(help_text="quotes per hour below which no spike")


class LimitsSerializer(serializers.Serializer):
    day = serializers.DateField(help_text="the UTC day the daily limits count")
    chain_daily = serializers.DictField(child=ChainDailyLimitSerializer(),
                                        help_text="keyed by chain: solana, stellar, near")
    user_daily = AmountSerializer()
    per_transaction = AmountSerializer()
    circuit_breaker = BreakerThresholdsSerializer()


class BreakerStateSerializer(serializers.Serializer):
    open = serializers.BooleanField()
    reason = serializers.CharField(allow_blank=True)
    trigger = serializers.CharField(allow_blank=True)
    opened_at = serializers.DateTimeField(allow_null=True)


class SolanaTreasurySerializer(serializers.Serializer):
    treasury = serializers.CharField(allow_null=True)
    cluster = serializers.CharField()
    usdc_mint = serializers.CharField(allow_null=True, help_text="the SPL mint of the USDC the "
                                      "treasury holds and quotes can send")
    usdc_decimals = serializers.IntegerField()


class StellarTreasurySerializer(serializers.Serializer):
    address = serializers.CharField(allow_blank=True)
    network_passphrase = serializers.CharField()


class NearTreasurySerializer(serializers.Serializer):
    payment_account = serializers.CharField(allow_blank=True)
    network = serializers.CharField()


class TreasurySerializer(serializers.Serializer):
    solana = SolanaTreasurySerializer()
    stellar = StellarTreasurySerializer()
    near = NearTreasurySerializer()
    limits = LimitsSerializer()
    circuit_breaker = BreakerStateSerializer()
    mode = serializers.ChoiceField(choices=["sandbox", "live"])
    quote_signing_public_key = serializers.CharField(
        allow_null=True, help_text="base58 ed25519 key that signs quotes")


class BreakerActionSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000, trim_whitespace=True,
                                   help_text="why; recorded in the audit log")
