"""Test-only views and URLconf (`@pytest.mark.urls("api_testviews")`): the real URL map plus a
few endpoints that exercise the API edge pieces (idempotency, throttles, errors, logging)
independently of the product endpoints."""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import ServiceError
from config.idempotency import idempotent
from config.serializers import StrictInputSerializer
from config.throttling import AuthThrottle, QuoteIpThrottle, QuoteUserThrottle
from risk.models import Alert

logger = logging.getLogger("tests.api")

# Set by tests that need a handler to block while a second request arrives.
GATE = {"entered": threading.Event(), "release": threading.Event(), "block": False}
CALLS = {"count": 0, "fail_next_with": None}


class ItemInput(StrictInputSerializer):
    chain = serializers.ChoiceField(choices=["stellar", "near"])
    amount = serializers.IntegerField(min_value=1, max_value=10**30)
    note = serializers.CharField(max_length=64, required=False)


class ItemCreateView(APIView):
    """Creates an Alert row: a stand-in for any creating POST."""

    @idempotent("test.items")
    def post(self, request: Request) -> Response:
        CALLS["count"] += 1
        if GATE["block"]:
            GATE["entered"].set()
            GATE["release"].wait(10)
        failure = CALLS["fail_next_with"]
        if failure is not None:
            CALLS["fail_next_with"] = None
            raise failure
        params = ItemInput(data=request.data)
        params.is_valid(raise_exception=True)
        alert = Alert.objects.create(kind="test.item", message="item",
                                     details={"chain": params.validated_data["chain"],
                                              "amount": str(params.validated_data["amount"])})
        return Response({"id": alert.pk, "chain": params.validated_data["chain"],
                         "amount": str(params.validated_data["amount"])},
                        status=status.HTTP_201_CREATED)


class ThrottledQuoteUser(QuoteUserThrottle):
    rate = "2/min"


class ThrottledQuoteIp(QuoteIpThrottle):
    rate = "3/min"


class ThrottledAuth(AuthThrottle):
    rate = "2/min"


class ThrottledQuoteView(APIView):
    throttle_classes = [ThrottledQuoteUser, ThrottledQuoteIp]

    def get(self, request: Request) -> Response:
        return Response({"ok": True})

    def post(self, request: Request) -> Response:
        return Response({"ok": True}, status=201)


class ThrottledAuthView(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list[type] = []
    throttle_classes = [ThrottledAuth]

    def post(self, request: Request) -> Response:
        return Response({"ok": True})


class BoomView(APIView):
    """Logs secrets the way a careless developer might, then fails unexpectedly."""

    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        logger.warning("about to sign with %s and %s", settings.SOLANA_TREASURY_KEY,
                       settings.STELLAR_TREASURY_SECRET)
        logger.info("webhook secret", extra={"webhook_secret": settings.WEBHOOK_SECRET,
                                             "header": request.headers.get("Authorization")})
        raise RuntimeError(f"boom with {settings.WEBHOOK_SECRET} in SELECT * FROM users_user")


class DatabaseBoomView(APIView):
    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        raise DatabaseError('relation "users_user" does not exist LINE 1: SELECT "users_user"."password"')


class ServiceErrorView(APIView):
    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        raise ServiceError("Quote expired", code="QUOTE_EXPIRED", status=400)


def plain_boom(request: HttpRequest) -> JsonResponse:
    raise ValueError("plain view failure with password=hunter2hunter2")


class QuoteLogView(APIView):
    permission_classes = [AllowAny]

    def get(self, request: Request, quote_id: str) -> Response:
        logger.info("looking at the quote")
        return Response({"quote_id": quote_id})


urlpatterns = [
    path("test/items", ItemCreateView.as_view()),
    path("test/throttled-quotes", ThrottledQuoteView.as_view()),
    path("test/throttled-auth", ThrottledAuthView.as_view()),
    path("test/boom", BoomView.as_view()),
    path("test/db-boom", DatabaseBoomView.as_view()),
    path("test/service-error", ServiceErrorView.as_view()),
    path("test/plain-boom", plain_boom),
    path("test/quotes/<uuid:quote_id>", QuoteLogView.as_view()),
    path("", include("config.urls")),
]

handler400 = "config.errors.handler400"
handler403 = "config.errors.handler403"
handler404 = "config.errors.handler404"
handler500 = "config.errors.handler500"
