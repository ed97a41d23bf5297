"""Wallet sign-in and profile endpoints: validate, call one service, render."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.throttling import AuthThrottle
from users import selectors, services
from users.models import ApiToken, User
from users.serializers import (
    ChallengeRequestSerializer,
    ChallengeResponseSerializer,
    ErrorSerializer,
    MeSerializer,
    VerifyRequestSerializer,
    VerifyResponseSerializer,
    WalletSerializer,
)


class ChallengeView(APIView):
    # Sign-in shares the `auth` rate (THROTTLE_AUTH) per client address: brute force and
    # challenge flooding cost the attacker, not the database.
    throttle_classes = [AuthThrottle]
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="auth_challenge",
        summary="Get a single-use sign-in message for a wallet (valid 5 minutes)",
        request=ChallengeRequestSerializer,
        responses={201: ChallengeResponseSerializer, 400: ErrorSerializer, 429: ErrorSerializer},
        examples=[OpenApiExample(
            "Stellar", request_only=True,
            value={"chain": "stellar",
                   "address": "GBRPYHIL2CI3FNQ4BXLFMNDLFJUNPU2HY3ZMFSHONUCEOASW7QC7OX2H"}),
        ],
    )
    def post(self, request: Request) -> Response:
        params = ChallengeRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        challenge = services.challenge_create(**params.validated_data)
        return Response(ChallengeResponseSerializer(challenge).data, status=status.HTTP_201_CREATED)


class VerifyView(APIView):
    """Anonymous: sign in (the user is created on first sign-in). With a bearer token: attach
    the wallet to that user."""

    throttle_classes = [AuthThrottle]
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="auth_verify",
        summary="Prove wallet ownership with the signed challenge and get a bearer token",
        request=VerifyRequestSerializer,
        responses={200: VerifyResponseSerializer, 401: ErrorSerializer, 409: ErrorSerializer,
                   429: ErrorSerializer, 503: ErrorSerializer},
        examples=[OpenApiExample(
            "NEAR (NEP-413)", request_only=True,
            value={"challenge_id": "6f1c2a4e-3b8d-4c1e-9a57-0d2b7f6e8a10",
                   "signature": "<base64 64-byte ed25519 signature>",
                   "public_key": "ed25519:<base58 public key>"}),
        ],
    )
    def post(self, request: Request) -> Response:
        params = VerifyRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        acting_user = request.user if isinstance(request.user, User) else None
        sign_in = services.challenge_verify(**params.validated_data, acting_user=acting_user,
                                            client_ip=AuthThrottle().get_ident(request))
        body = {
            "token": sign_in.token,
            "user_id": sign_in.user.pk,
            "user_created": sign_in.user_created,
            "wallets": WalletSerializer(selectors.wallet_list(user=sign_in.user), many=True).data,
        }
        return Response(VerifyResponseSerializer(body).data)


class LogoutView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(operation_id="auth_logout", summary="Revoke the bearer token used for this call",
                   request=None, responses={204: None, 401: ErrorSerializer})
    def post(self, request: Request) -> Response:
        assert isinstance(request.auth, ApiToken)
        services.token_revoke(token=request.auth, actor=f"user:{request.auth.user_id}")
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(operation_id="me", summary="The caller and their verified wallets",
                   responses={200: MeSerializer, 401: ErrorSerializer})
    def get(self, request: Request) -> Response:
        user = request.user
        assert isinstance(user, User)
        body = {"id": user.pk, "deposit_memo": user.deposit_memo,
                "wallets": selectors.wallet_list(user=user)}
        return Response(MeSerializer(body).data)
