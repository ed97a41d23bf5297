"""Input and output shapes of the sign-in and profile endpoints (no rules live here)."""

from __future__ import annotations

from rest_framework import serializers

from config.chains import Chain
from config.serializers import StrictInputSerializer


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField()
    error_code = serializers.CharField()
    details = serializers.DictField(required=False)


class ChallengeRequestSerializer(StrictInputSerializer):
    chain = serializers.ChoiceField(choices=Chain.choices)
    address = serializers.CharField(max_length=128, trim_whitespace=True)


class ChallengeResponseSerializer(serializers.Serializer):
    challenge_id = serializers.UUIDField(source="id")
    chain = serializers.CharField()
    address = serializers.CharField()
    message = serializers.CharField(help_text="Sign these exact UTF-8 bytes with the wallet.")
    expires_at = serializers.DateTimeField()

    def to_representation(self, instance):  # type: ignore[no-untyped-def]
        data = super().to_representation(instance)
        if instance.chain == Chain.NEAR:
            # NEP-413 signMessage takes these separately from the message text.
            data["nonce"] = instance.nonce
            data["recipient"] = instance.recipient
        return data


class VerifyRequestSerializer(StrictInputSerializer):
    challenge_id = serializers.UUIDField()
    signature = serializers.CharField(
        max_length=512, trim_whitespace=True,
        help_text="Solana: base58 or base64; Stellar: base64 (SEP-53); NEAR: base64 (NEP-413).",
    )
    public_key = serializers.CharField(max_length=128, required=False, trim_whitespace=True,
                                       help_text="NEAR only: the signing key, 'ed25519:<base58>'.")
    chain = serializers.ChoiceField(choices=Chain.choices, required=False,
                                    help_text="Optional; must match the challenge.")
    address = serializers.CharField(max_length=128, required=False,
                                    help_text="Optional; must match the challenge.")


class WalletSerializer(serializers.Serializer):
    chain = serializers.CharField()
    address = serializers.CharField()
    public_key = serializers.CharField()
    verified_at = serializers.DateTimeField()


class VerifyResponseSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Send as `Authorization: Bearer <token>`.")
    user_id = serializers.UUIDField()
    user_created = serializers.BooleanField()
    wallets = WalletSerializer(many=True)


class MeSerializer(serializers.Serializer):
    user_id = serializers.UUIDField(source="id")
    deposit_memo = serializers.CharField(
        allow_null=True, help_text="Stellar MEMO_ID / NEAR memo that credits your prepaid balance.")
    wallets = WalletSerializer(many=True)
