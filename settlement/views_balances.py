"""Prepaid balance endpoints: balances, their history, withdrawals, paying a quote from the
balance. Thin: validate, call one service or selector, render."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework import status as http
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api_docs import (
    IDEMPOTENCY_KEY_PARAMETER,
    PAGINATION_PARAMETERS,
    error_responses,
    paginated,
)
from config.chains import NATIVE_DECIMALS, SOURCE_CHAINS, format_amount
from config.errors import NotFound
from config.idempotency import HEADER as IDEMPOTENCY_HEADER
from config.idempotency import idempotent
from config.pagination import ApiPagination
from config.serializers import StrictInputSerializer
from settlement import selectors
from settlement.models import Withdrawal
from settlement.services.balances import balance_view, quote_pay_from_balance
from settlement.services.withdrawals import withdrawal_request

# -- shapes -----------------------------------------------------------------------------------


class BalanceOutput(serializers.Serializer):
    chain = serializers.CharField()
    asset = serializers.CharField()
    decimals = serializers.IntegerField()
    total = serializers.CharField(help_text="smallest unit (stroops / yoctoNEAR)")
    locked = serializers.CharField(help_text="locked for committed quotes and pending withdrawals")
    available = serializers.CharField(help_text="total - locked: spendable and withdrawable")
    display = serializers.DictField(child=serializers.CharField())
    deposit = serializers.DictField(help_text="how to top this balance up", allow_null=True)


class HistoryItemOutput(serializers.Serializer):
    id = serializers.IntegerField()
    at = serializers.DateTimeField()
    kind = serializers.CharField(help_text="the journal entry's kind: balance_deposit, balance_lock, "
                                           "balance_settle, balance_release, withdrawal_requested, ...")
    description = serializers.CharField()
    account = serializers.ChoiceField(choices=["available", "locked", "withdrawing"])
    chain = serializers.CharField()
    asset = serializers.CharField()
    amount = serializers.CharField(help_text="signed, smallest unit: > 0 adds to this part of "
                                             "the balance, < 0 takes from it")
    amount_display = serializers.CharField()
    quote_id = serializers.UUIDField(allow_null=True)
    tx_hash = serializers.CharField(allow_null=True)


class WithdrawalInput(StrictInputSerializer):
    chain = serializers.ChoiceField(choices=list(SOURCE_CHAINS))
    amount = serializers.RegexField(r"^[1-9][0-9]{0,38}$", max_length=39,
                                    help_text="smallest unit as a decimal string (stroops / yoctoNEAR)")


class WithdrawalOutput(serializers.Serializer):
    withdrawal_id = serializers.UUIDField()
    status = serializers.CharField()
    chain = serializers.CharField()
    asset = serializers.CharField()
    amount = serializers.CharField()
    amount_display = serializers.CharField()
    destination = serializers.CharField()
    tx_hash = serializers.CharField(allow_null=True)
    network_fee = serializers.CharField(allow_null=True)
    fail_reason = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)


class HistoryQuery(serializers.Serializer):
    chain = serializers.ChoiceField(choices=list(SOURCE_CHAINS), required=False)


def withdrawal_data(withdrawal: Withdrawal) -> dict[str, Any]:
    decimals = NATIVE_DECIMALS[withdrawal.asset]
    return {
        "withdrawal_id": str(withdrawal.pk),
        "status": withdrawal.status,
        "chain": withdrawal.chain,
        "asset": withdrawal.asset,
        "amount": str(int(withdrawal.amount)),
        "amount_display": format_amount(int(withdrawal.amount), decimals),
        "destination": withdrawal.destination,
        "tx_hash": withdrawal.tx_hash,
        "network_fee": str(int(withdrawal.network_fee)) if withdrawal.network_fee is not None else None,
        "fail_reason": withdrawal.fail_reason,
        "created_at": withdrawal.created_at.isoformat(),
        "completed_at": withdrawal.completed_at.isoformat() if withdrawal.completed_at else None,
    }


def _deposit_instructions(user: Any, chain: str) -> dict[str, Any] | None:
    memo = getattr(user, "deposit_memo", None)
    if memo is None:
        return None
    if chain == "stellar":
        return {"address": settings.STELLAR_TREASURY_ADDRESS, "memo_type": "id", "memo": str(memo)}
    return {"account": settings.NEAR_PAYMENT_ACCOUNT, "method": "deposit",
            "args": {"memo": str(memo)}}


# -- views ------------------------------------------------------------------------------------


class BalancesView(APIView):
    @extend_schema(operation_id="balances_list", summary="The caller's prepaid balances, per chain",
                   responses={200: inline_serializer("BalancesOutput",
                                                     {"balances": BalanceOutput(many=True)})})
    def get(self, request: Request) -> Response:
        balances = [{**balance_view(b), "deposit": _deposit_instructions(request.user, b.chain)}
                    for b in selectors.balances_for_user(user=request.user)]
        return Response({"balances": balances})


class BalanceHistoryView(APIView):
    @extend_schema(operation_id="balances_history", summary="Movements of the caller's balances",
                   parameters=[*PAGINATION_PARAMETERS,
                               OpenApiParameter("chain", str, required=False, enum=list(SOURCE_CHAINS))],
                   responses={200: paginated(HistoryItemOutput)})
    def get(self, request: Request) -> Response:
        query = HistoryQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        postings = selectors.balance_history_for_user(user=request.user,
                                                      chain=query.validated_data.get("chain"))
        paginator = ApiPagination()
        page = paginator.paginate_queryset(postings, request, view=self) or []
        return paginator.get_paginated_response([selectors.history_item(p) for p in page])


class WithdrawalsView(APIView):
    @extend_schema(operation_id="withdrawals_create",
                   summary="Withdraw available balance to your verified wallet",
                   description=("Pays `amount` (smallest unit) of your available balance on `chain` "
                                "to your verified wallet there. Above the approval threshold "
                                f"(WITHDRAWAL_APPROVAL_THRESHOLD_USD, default "
                                f"{settings.WITHDRAWAL_APPROVAL_THRESHOLD_USD} USD) it waits for an "
                                "operator (`pending_approval`). The amount is locked at once."),
                   request=WithdrawalInput, parameters=[IDEMPOTENCY_KEY_PARAMETER],
                   examples=[OpenApiExample("10 XLM", value={"chain": "stellar", "amount": "100000000"})],
                   responses={201: WithdrawalOutput,
                              **error_responses("INSUFFICIENT_FUNDS", "TRANSACTION_LIMIT_EXCEEDED")})
    @idempotent("settlement.withdrawals_create")
    def post(self, request: Request) -> Response:
        data = WithdrawalInput(data=request.data)
        data.is_valid(raise_exception=True)
        withdrawal = withdrawal_request(user=request.user, chain=data.validated_data["chain"],
                                        amount=int(data.validated_data["amount"]),
                                        request_key=request.headers.get(IDEMPOTENCY_HEADER, ""))
        return Response(withdrawal_data(withdrawal), status=http.HTTP_201_CREATED)

    @extend_schema(operation_id="withdrawals_list", summary="The caller's withdrawals, newest first",
                   parameters=PAGINATION_PARAMETERS, responses={200: paginated(WithdrawalOutput)})
    def get(self, request: Request) -> Response:
        paginator = ApiPagination()
        page = paginator.paginate_queryset(selectors.withdrawals_for_user(user=request.user),
                                           request, view=self) or []
        return paginator.get_paginated_response([withdrawal_data(w) for w in page])


class WithdrawalDetailView(APIView):
    @extend_schema(operation_id="withdrawals_retrieve", summary="One of the caller's withdrawals",
                   responses={200: WithdrawalOutput})
    def get(self, request: Request, withdrawal_id: Any) -> Response:
        try:
            withdrawal_uuid = uuid.UUID(str(withdrawal_id))
        except ValueError:
            withdrawal_uuid = None
        withdrawal = (selectors.withdrawals_for_user(user=request.user).filter(pk=withdrawal_uuid).first()
                      if withdrawal_uuid else None)
        if withdrawal is None:  # someone else's is indistinguishable from a missing one
            raise NotFound("Withdrawal not found", code="WITHDRAWAL_NOT_FOUND", status=404)
        return Response(withdrawal_data(withdrawal))


class QuotePayFromBalanceView(APIView):
    @extend_schema(operation_id="quote_pay_from_balance", request=None,
                   summary="Commit a pending quote with your prepaid balance",
                   description=("Locks `total_cost` of your available balance on the quote's source "
                                "chain and commits the quote; it is debited when the execution "
                                "succeeds and unlocked if it fails."),
                   parameters=[IDEMPOTENCY_KEY_PARAMETER],
                   responses={200: inline_serializer("QuotePayFromBalanceOutput", {
                       "quote_id": serializers.UUIDField(), "status": serializers.CharField(),
                       "balance": BalanceOutput()}),
                       **error_responses("QUOTE_NOT_FOUND", "QUOTE_EXPIRED", "QUOTE_NOT_PENDING",
                                         "QUOTE_ALREADY_EXECUTED", "INSUFFICIENT_FUNDS")})
    @idempotent("settlement.quote_pay_from_balance")
    def post(self, request: Request, quote_id: Any) -> Response:
        quote = quote_pay_from_balance(user=request.user, quote_id=quote_id)
        balance = next(b for b in selectors.balances_for_user(user=request.user)
                       if b.chain == quote.source_chain)
        return Response({"quote_id": str(quote.pk), "status": quote.status,
                         "balance": {**balance_view(balance), "deposit": None}})
