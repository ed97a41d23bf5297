"""Funding doors over HTTP: the client's "I paid" and the chain webhooks. Thin: validate the
shape, call one service, render. Every door ends in `payment_submit`."""

from __future__ import annotations

import uuid
from typing import Any

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import status as http
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer
from rest_framework.views import APIView

from config.api_docs import error_responses
from config.errors import NotFound, ServiceError, Unauthorized
from config.idempotency import idempotent
from config.throttling import WebhookThrottle
from config.webhooks import HEADER, webhook_verify
from quotes.models import Quote, QuoteStatus
from settlement.serializers import (
    CommitSerializer,
    NearWebhookSerializer,
    PaymentReferenceSerializer,
    QuotePaymentResponseSerializer,
    StellarWebhookSerializer,
    WebhookQueuedSerializer,
    WebhookResponseSerializer,
    payment_outcome_data,
)
from settlement.services.funding import (
    PaymentOutcome,
    payment_hint_enqueue,
    payment_submit,
    webhook_rejected,
)
from settlement.verifiers import chain_mode_is_live


def _validated(serializer_class: type[Serializer], data: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _own_quote(request: Request, quote_id: Any) -> Quote:
    # Someone else's quote (or a malformed id) is indistinguishable from a missing one.
    try:
        quote = Quote.objects.filter(pk=uuid.UUID(str(quote_id)), user=request.user).first()
    except ValueError:
        quote = None
    if quote is None:
        raise NotFound("Quote not found", code="QUOTE_NOT_FOUND")
    return quote


def _submit_for_quote(request: Request, quote: Quote, reference: dict[str, Any]) -> PaymentOutcome:
    return payment_submit(
        chain=quote.source_chain, source="api", expected_quote=quote, user=request.user,
        tx_hash=reference.get("tx_hash"), sender=reference.get("sender"),
        envelope_xdr=reference.get("envelope_xdr"),
        signed_transaction_base64=reference.get("signed_transaction_base64"),
    )


def _quote_status(outcome: PaymentOutcome, quote: Quote) -> str:
    return outcome.quote.status if outcome.quote is not None else quote.status


_PAYMENT_EXAMPLES = [
    OpenApiExample("Live: a transaction hash",
                   value={"tx_hash": "3389e9f0f1a65f19736cacf544c2e825313e8447f569233bb8db39aa607c8889"}),
    OpenApiExample("Sandbox Stellar: the signed envelope", value={"envelope_xdr": "AAAAAgAAAAB..."}),
    OpenApiExample("Sandbox NEAR: the signed transaction",
                   value={"signed_transaction_base64": "EQAAAGFsaWNlLnRlc3QubmVhcgD..."}),
]


class QuotePaymentView(APIView):
    """`POST /api/v1/quotes/{id}/payment`: the client says it paid; we verify and commit."""

    @extend_schema(request=PaymentReferenceSerializer,
                   responses={200: QuotePaymentResponseSerializer, **error_responses(
                       "PAYMENT_INVALID", "INVALID_REQUEST", "UNAUTHORIZED", "QUOTE_NOT_FOUND",
                       "IDEMPOTENCY_KEY_IN_USE", "IDEMPOTENCY_KEY_REUSED", "CHAIN_UNAVAILABLE")},
                   examples=_PAYMENT_EXAMPLES, operation_id="quote_payment",
                   description="Verify the payment on chain (sandbox: the signed transaction) and "
                               "commit the quote. A replay returns the first outcome.")
    @idempotent("settlement.quote_payment")
    def post(self, request: Request, quote_id: Any) -> Response:
        reference = _validated(PaymentReferenceSerializer, request.data)
        quote = _own_quote(request, quote_id)
        outcome = _submit_for_quote(request, quote, reference)
        return Response({"quote_id": str(quote.pk), "status": _quote_status(outcome, quote),
                         "payment": payment_outcome_data(outcome)})


class CommitView(APIView):
    """Seed `POST /commit`: commits only with a verified payment that pays this quote."""

    @extend_schema(request=CommitSerializer,
                   responses={200: QuotePaymentResponseSerializer, **error_responses(
                       "PAYMENT_INVALID", "INVALID_REQUEST", "QUOTE_EXPIRED", "INSUFFICIENT_FUNDS",
                       "UNAUTHORIZED", "QUOTE_NOT_FOUND", "QUOTE_NOT_PENDING", "QUOTE_ALREADY_EXECUTED",
                       "IDEMPOTENCY_KEY_REUSED", "CHAIN_UNAVAILABLE")},
                   operation_id="seed_commit")
    @idempotent("settlement.commit")
    def post(self, request: Request) -> Response:
        data = _validated(CommitSerializer, request.data)
        quote = _own_quote(request, data["quote_id"])
        outcome = _submit_for_quote(request, quote, data)
        status = _quote_status(outcome, quote)
        payment = payment_outcome_data(outcome)
        if not outcome.committed:
            raise _not_committed(outcome, status, payment)
        return Response({"quote_id": str(quote.pk), "status": status,
                         "message": "Quote committed; execution queued", "payment": payment})


def _not_committed(outcome: PaymentOutcome, quote_status: str, payment: dict[str, Any]) -> ServiceError:
    details = {"quote_status": quote_status, "payment": payment}
    if outcome.status == "late":
        return ServiceError("Quote expired before the payment; the payment is owed back",
                            code="QUOTE_EXPIRED", status=400, details=details)
    if outcome.status == "underpaid":
        return ServiceError("Payment is less than the quoted total; it is owed back",
                            code="INSUFFICIENT_FUNDS", status=400, details=details)
    if quote_status == QuoteStatus.EXECUTED:
        return ServiceError("Quote already executed; this payment is owed back",
                            code="QUOTE_ALREADY_EXECUTED", status=409, details=details)
    return ServiceError("Quote is not pending; this payment is owed back",
                        code="QUOTE_NOT_PENDING", status=409, details=details)


class _PaymentWebhookView(APIView):
    """Chain webhooks: HMAC-signed (config.webhooks), no user. The body names a transaction;
    live mode answers 202 and a worker asks the chain, sandbox verifies the signed
    transaction it carries inline (CPU only) and answers with the outcome."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes = [WebhookThrottle]
    chain = ""
    serializer_class: type[Serializer] = Serializer

    def post(self, request: Request) -> Response:
        raw = request.body  # the MAC is over the exact bytes: read them before parsing
        header = request.headers.get(HEADER)
        if not webhook_verify(header, raw):
            webhook_rejected(chain=self.chain, reason="missing" if not header else "invalid_or_stale",
                             remote_addr=request.META.get("REMOTE_ADDR", ""), body=raw)
            raise Unauthorized("Webhook signature missing, invalid or stale",
                               code="WEBHOOK_SIGNATURE_INVALID")
        hint = _validated(self.serializer_class, request.data)
        sender = hint.get("signer_id") or None
        if chain_mode_is_live():
            task_id = payment_hint_enqueue(chain=self.chain, tx_hash=hint["transaction_hash"],
                                           sender=sender)
            return Response({"accepted": True, "status": "queued", "task_id": task_id,
                             "transaction_hash": hint["transaction_hash"],
                             "message": "Payment will be verified on chain"},
                            status=http.HTTP_202_ACCEPTED)
        outcome = payment_submit(chain=self.chain, source="webhook",
                                 tx_hash=hint["transaction_hash"], sender=sender,
                                 envelope_xdr=hint.get("envelope_xdr"),
                                 signed_transaction_base64=hint.get("signed_transaction_base64"))
        payment = payment_outcome_data(outcome)
        return Response({"accepted": True, "quote_id": payment["quote_id"],
                         "message": f"Payment {outcome.status}", "payment": payment})


_WEBHOOK_RESPONSES = {
    200: WebhookResponseSerializer, 202: WebhookQueuedSerializer,
    **error_responses("PAYMENT_INVALID", "INVALID_REQUEST", "WEBHOOK_SIGNATURE_INVALID",
                      "CHAIN_UNAVAILABLE"),
}


class StellarWebhookView(_PaymentWebhookView):
    chain = "stellar"
    serializer_class = StellarWebhookSerializer

    @extend_schema(request=StellarWebhookSerializer, auth=[], responses=_WEBHOOK_RESPONSES)
    def post(self, request: Request) -> Response:
        return super().post(request)


class NearWebhookView(_PaymentWebhookView):
    chain = "near"
    serializer_class = NearWebhookSerializer

    @extend_schema(request=NearWebhookSerializer, auth=[], responses=_WEBHOOK_RESPONSES)
    def post(self, request: Request) -> Response:
        return super().post(request)
