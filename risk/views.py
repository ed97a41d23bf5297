"""Public treasury document and the operators' breaker endpoints: validate, call one
service, render. Permissions (staff + risk.reset_breaker / risk.trip_breaker) are decided
by the services, so the admin and the API enforce the same rule."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from risk import selectors, services
from risk.serializers import BreakerActionSerializer, BreakerStateSerializer, TreasurySerializer
from users.serializers import ErrorSerializer


class TreasuryView(APIView):
    authentication_classes: list[type] = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="treasury",
        summary="Where to pay, the limits in force, and the circuit breaker's state",
        responses={200: TreasurySerializer},
        auth=[],
    )
    def get(self, request: Request) -> Response:
        return Response(TreasurySerializer(selectors.treasury_overview()).data)


_breaker_responses = {200: BreakerStateSerializer, 400: ErrorSerializer, 401: ErrorSerializer,
                      403: ErrorSerializer}


class BreakerResetView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="ops_breaker_reset",
        summary="Close the circuit breaker (operators with reset_breaker only); held "
                "executions resume",
        request=BreakerActionSerializer,
        responses=_breaker_responses,
        examples=[OpenApiExample("Reset", request_only=True,
                                 value={"reason": "Outflow reviewed: payroll batch, expected"})],
    )
    def post(self, request: Request) -> Response:
        params = BreakerActionSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        services.breaker_reset(actor_user=request.user, **params.validated_data)
        return Response(BreakerStateSerializer(selectors.breaker_state()).data)


class BreakerTripView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="ops_breaker_trip",
        summary="Open the circuit breaker by hand (operators with trip_breaker only)",
        request=BreakerActionSerializer,
        responses=_breaker_responses,
        examples=[OpenApiExample("Trip", request_only=True,
                                 value={"reason": "Suspicious withdrawals under investigation"})],
    )
    def post(self, request: Request) -> Response:
        params = BreakerActionSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        services.breaker_trip_by_operator(actor_user=request.user, **params.validated_data)
        return Response(BreakerStateSerializer(selectors.breaker_state()).data)
