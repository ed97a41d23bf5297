"""Quote endpoints (DESIGN.md §6) and the seed's `POST /quote` / `GET /status/{id}`.

Thin: validate the body, call one service, render `quote_response` (the signed dict).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api_docs import (
    IDEMPOTENCY_KEY_PARAMETER,
    PAGINATION_PARAMETERS,
    error_responses,
    paginated,
)
from config.idempotency import idempotent
from config.throttling import QuoteIpThrottle, QuoteUserThrottle
from execution.selectors import execution_summary
from quotes import selectors
from quotes.serializers import (
    CandleOutput,
    OhlcQuery,
    QuoteCreateInput,
    QuoteDetailOutput,
    QuoteListQuery,
    QuoteOutput,
    SeedQuoteInput,
    SeedQuoteOutput,
    SeedStatusOutput,
    validated,
)
from quotes.services.quotes import quote_cancel, quote_create, quote_get_for_user, quote_response

QUOTE_ERRORS = ("INVALID_QUOTE_PARAMETERS", "PROGRAM_NOT_ALLOWED", "PRICE_UNAVAILABLE",
                "INSUFFICIENT_TREASURY", "TRANSACTION_LIMIT_EXCEEDED", "DAILY_LIMIT_EXCEEDED",
                "CIRCUIT_BREAKER_TRIGGERED", "CHAIN_UNAVAILABLE")

SIGNATURE_DOC = (
    "The response carries `signature`: base58 ed25519 by the service key (public key, base58, "
    "at `GET /api/v1/treasury`) over the UTF-8 bytes of "
    '`json.dumps(body_without_signature_and_status, sort_keys=True, separators=(",", ":"), '
    "ensure_ascii=False)`. Amounts are strings in the source chain's smallest unit "
    "(stroops, yoctoNEAR). Pay `payment.amount` to `payment.address` with `payment.memo` "
    "(Stellar MEMO_ID) or call `execute_payment` on the NEAR payment account before "
    "`expires_at`."
)

EXAMPLE_BODY = {
    "source_chain": "stellar",
    "instructions": [{
        "program_id": "11111111111111111111111111111111",
        "accounts": [
            {"pubkey": "<treasury>", "is_signer": True, "is_writable": True},
            {"pubkey": "<recipient>", "is_signer": False, "is_writable": True},
        ],
        "data_base64": "AgAAAEBCDwAAAAAA",
    }],
    "estimated_compute_units": 10000,
    "priority_fee_micro_lamports": 1000,
}


class PlainAcceptNegotiation(DefaultContentNegotiation):
    """DRF's content negotiation, answering the usual request without parsing media types.

    With no format suffix, no query string (so no `?format=`) and an Accept header that is
    absent, `*/*` or exactly the first renderer's media type, and that type concrete and
    without parameters, DRF's loop always returns the first renderer with its own media
    type: it matches `*/*` and, being more specific, is returned as is. Anything else goes
    through DRF. Its media-type parsing was ~90,000 instructions of every quote request.
    """

    def select_renderer(self, request: Request, renderers: list[BaseRenderer],
                        format_suffix: str | None = None) -> tuple[BaseRenderer, str]:
        if renderers and format_suffix is None and not request.META.get("QUERY_STRING"):
            media_type = renderers[0].media_type
            accept = request.META.get("HTTP_ACCEPT", "*/*").strip()
            if "*" not in media_type and ";" not in media_type and accept in ("*/*", media_type):
                return renderers[0], media_type
        return super().select_renderer(request, renderers, format_suffix)


class QuotesView(APIView):
    throttle_classes = [QuoteUserThrottle, QuoteIpThrottle]
    content_negotiation_class = PlainAcceptNegotiation

    @extend_schema(
        operation_id="quotes_create",
        summary="Quote a piece of Solana work, payable on Stellar or NEAR",
        description=SIGNATURE_DOC,
        request=QuoteCreateInput,
        responses={201: QuoteOutput, **error_responses(*QUOTE_ERRORS)},
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        examples=[OpenApiExample("SOL transfer from the treasury", request_only=True,
                                 value=EXAMPLE_BODY)],
    )
    @idempotent("quotes.create")
    def post(self, request: Request) -> Response:
        params = validated(QuoteCreateInput, request.data)
        quote = quote_create(user=request.user, **params)
        return Response(quote_response(quote), status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="quotes_list",
        summary="The caller's quotes, newest first (filter with ?status=)",
        parameters=[OpenApiParameter("status", str, required=False,
                                     enum=["pending", "committed", "executing", "executed",
                                           "expired", "cancelled", "failed", "refund_due",
                                           "refunded"]),
                    *PAGINATION_PARAMETERS],
        responses={200: paginated(QuoteOutput)},
    )
    def get(self, request: Request) -> Response:
        query = validated(QuoteListQuery, request.query_params)
        queryset = selectors.quotes_for_user(user=request.user, status=query.get("status"))
        paginator = LimitOffsetPagination()
        page = paginator.paginate_queryset(queryset, request, view=self) or []
        return paginator.get_paginated_response([quote_response(q) for q in page])


class QuoteDetailView(APIView):
    @extend_schema(operation_id="quotes_retrieve", summary="One of the caller's quotes",
                   responses={200: QuoteDetailOutput, **error_responses("QUOTE_NOT_FOUND")})
    def get(self, request: Request, quote_id: Any) -> Response:
        quote = quote_get_for_user(user=request.user, quote_id=quote_id)
        return Response({**quote_response(quote), "execution": execution_summary(quote)})


class QuoteCancelView(APIView):
    @extend_schema(operation_id="quotes_cancel", summary="Cancel a pending (unpaid) quote",
                   request=None,
                   responses={200: QuoteOutput,
                              **error_responses("QUOTE_NOT_FOUND", "QUOTE_NOT_PENDING")})
    def post(self, request: Request, quote_id: Any) -> Response:
        return Response(quote_response(quote_cancel(user=request.user, quote_id=quote_id)))


class PriceCandlesView(APIView):
    """Public: chart data is what the oracle published, nothing private."""

    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []
    throttle_classes = [QuoteIpThrottle]

    @extend_schema(
        operation_id="prices_ohlc",
        summary="OHLC candles of observed oracle prices (e.g. /api/v1/prices/SOL-USD/ohlc)",
        parameters=[OpenApiParameter("interval", str, enum=["1m", "5m", "1h", "1d"]),
                    OpenApiParameter("start", str, description="ISO 8601"),
                    OpenApiParameter("end", str, description="ISO 8601"),
                    OpenApiParameter("limit", int, description="1..1000 candles")],
        responses={200: CandleOutput(many=True), **error_responses("INVALID_QUOTE_PARAMETERS")},
    )
    def get(self, request: Request, pair: str) -> Response:
        query = validated(OhlcQuery, request.query_params)
        stored_pair = selectors.pair_from_path(pair)
        candles = selectors.price_candles(pair=stored_pair, interval=query["interval"],
                                          start=query.get("start"), end=query.get("end"),
                                          limit=query["limit"])
        return Response({"pair": stored_pair, "interval": query["interval"], "candles": candles})


# -- seed-compatible routes -----------------------------------------------------------------


class SeedQuoteView(APIView):
    throttle_classes = [QuoteUserThrottle, QuoteIpThrottle]
    content_negotiation_class = PlainAcceptNegotiation

    @extend_schema(
        operation_id="seed_quote_create",
        summary="Seed route: POST /quote (same rules as POST /api/v1/quotes)",
        description="`solana_instructions_base64` is a serialized Solana message (or "
                    "transaction) paid and signed only by the treasury. " + SIGNATURE_DOC,
        request=SeedQuoteInput,
        responses={200: SeedQuoteOutput, **error_responses(*QUOTE_ERRORS)},
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @idempotent("quotes.create.seed")
    def post(self, request: Request) -> Response:
        params = validated(SeedQuoteInput, request.data)
        compute_units = params.get("estimated_compute_units", params.get("estimated_cu"))
        quote = quote_create(user=request.user, source_chain=params["source_chain"],
                             solana_transaction_base64=params["solana_instructions_base64"],
                             estimated_compute_units=compute_units,
                             refund_to=params.get("refund_to") or None)
        body = quote_response(quote)
        return Response({
            "quote_id": body["quote_id"],
            "user_id": str(quote.user_id),
            "source_chain": body["source_chain"],
            "source_amount": str(int(quote.source_amount)),
            "total_cost": body["total_cost"],
            "service_fee": body["service_fee"],
            "gas_estimate": body["gas_estimate"],
            "expires_at": body["expires_at"],
            "payment_address": body["payment"]["address"],
            "payment_memo_type": body["payment"]["memo_type"],
            "payment_memo": body["payment"]["memo"],
            "nonce": body["nonce"],
            "signature": body["signature"],
        })


class SeedStatusView(APIView):
    @extend_schema(operation_id="seed_status", summary="Seed route: GET /status/{quote_id}",
                   responses={200: SeedStatusOutput, **error_responses("QUOTE_NOT_FOUND")})
    def get(self, request: Request, quote_id: Any) -> Response:
        quote = quote_get_for_user(user=request.user, quote_id=quote_id)
        return Response(selectors.quote_seed_status(quote))
