"""OpenAPI documentation helpers (drf-spectacular) shared by every app's views.

In a view:

    from drf_spectacular.utils import extend_schema
    from config.api_docs import IDEMPOTENCY_KEY_PARAMETER, error_responses

    @extend_schema(
        request=QuoteCreateInput, responses={201: QuoteOutput,
                                            **error_responses("INVALID_QUOTE_PARAMETERS",
                                                              "PRICE_UNAVAILABLE")},
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @idempotent("quotes.create")
    def post(self, request): ...

`error_responses(*codes)` groups the codes by their HTTP status (from `ERROR_CODES`), each
with an example envelope. On top of what views declare, `add_standard_error_responses`
(a postprocessing hook) gives every operation the errors any endpoint can return
(400 INVALID_REQUEST, 401, 404 on paths with ids, 413/415 on bodies, 422/409 for
Idempotency-Key, 429 RATE_LIMITED, 500 INTERNAL_ERROR) and the API description gets the
full table of error codes.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, inline_serializer
from rest_framework import serializers

from config.errors import ERROR_CODES

ERROR_COMPONENT = "ErrorResponse"

# One-line meaning of each code, for the docs table and the examples.
ERROR_DESCRIPTIONS: dict[str, str] = {
    "QUOTE_NOT_FOUND": "No quote with this id belongs to the caller",
    "QUOTE_EXPIRED": "The quote's expiry passed before it was paid or committed",
    "QUOTE_ALREADY_EXECUTED": "The quote was already executed",
    "QUOTE_NOT_PENDING": "The quote is no longer pending (cancelled, committed, ...)",
    "INSUFFICIENT_FUNDS": "The payment or prepaid balance does not cover the quote",
    "INVALID_QUOTE_PARAMETERS": "The requested Solana work cannot be quoted",
    "NONCE_REUSED": "A quote nonce was used twice",
    "EXECUTION_FAILED": "The Solana execution failed",
    "INSUFFICIENT_TREASURY": "The treasury cannot cover this now",
    "DUPLICATE_EXECUTION": "An execution already exists for this quote",
    "DAILY_LIMIT_EXCEEDED": "A daily spending limit would be exceeded",
    "TRANSACTION_LIMIT_EXCEEDED": "The per-transaction limit would be exceeded",
    "CIRCUIT_BREAKER_TRIGGERED": "The circuit breaker is open: no new quotes or executions",
    "DATABASE_ERROR": "A database error; retry later",
    "INTERNAL_ERROR": "An unexpected error; `details.request_id` identifies it in the logs",
    "UNAUTHORIZED": "Missing, invalid or revoked bearer token",
    "FORBIDDEN": "Authenticated but not allowed",
    "NOT_FOUND": "No such resource",
    "METHOD_NOT_ALLOWED": "The HTTP method is not supported here",
    "RATE_LIMITED": "Too many requests; wait `Retry-After` seconds",
    "PRICE_UNAVAILABLE": "No fresh, confident oracle price",
    "PROGRAM_NOT_ALLOWED": "An instruction calls a program outside the allow-list",
    "INVALID_REQUEST": "Malformed body, wrong types, unknown or missing fields",
    "INVALID_ADDRESS": "Not a valid address on that chain",
    "INVALID_SIGNATURE": "The wallet signature does not verify",
    "CHALLENGE_EXPIRED": "The sign-in challenge expired",
    "CHALLENGE_USED": "The sign-in challenge was already used",
    "CHALLENGE_INVALID": "Unknown sign-in challenge",
    "WALLET_ALREADY_CLAIMED": "The address belongs to another user",
    "PAYMENT_INVALID": "The payment does not verify on chain",
    "PAYMENT_NOT_FOUND": "No such payment on chain",
    "WEBHOOK_SIGNATURE_INVALID": "Missing, stale or wrong X-Webhook-Signature",
    "IDEMPOTENCY_KEY_REUSED": "The Idempotency-Key was used with a different request",
    "IDEMPOTENCY_KEY_IN_USE": "A request with this Idempotency-Key is still running",
    "PAYLOAD_TOO_LARGE": "The request body exceeds the size limit",
    "UNSUPPORTED_MEDIA_TYPE": "The body is not application/json",
    "CHAIN_UNAVAILABLE": "A chain backend is unreachable",
    "SERVICE_UNAVAILABLE": "Temporarily unavailable",
    "CONFLICT": "The request conflicts with the current state",
    "NOT_ACCEPTABLE": "The Accept header asks for something other than JSON",
    "INVALID_STATE_TRANSITION": "The object is not in a state that allows this",
    "NO_VERIFIED_WALLET": "Verify a wallet on that chain first",
    "USER_NOT_FOUND": "No such user",
    "WITHDRAWAL_NOT_FOUND": "No withdrawal with this id belongs to the caller",
    "REFUND_NOT_FOUND": "No such refund",
    "SETTLEMENT_NOT_FOUND": "No such settlement",
}


class ErrorResponse(serializers.Serializer):
    """The one error envelope every endpoint uses."""

    error = serializers.CharField(help_text="Human-readable message")
    error_code = serializers.ChoiceField(choices=sorted(ERROR_CODES),
                                         help_text="Stable machine-readable code")
    details = serializers.DictField(required=False,
                                    help_text="Code-specific context, e.g. `fields` for "
                                              "validation errors, `request_id` for 5xx")


def _example(code: str) -> OpenApiExample:
    body: dict[str, Any] = {"error": ERROR_DESCRIPTIONS.get(code, code.replace("_", " ").capitalize()),
                            "error_code": code}
    if ERROR_CODES[code] >= 500:
        body["details"] = {"request_id": "9f1c2a7be0d84c4f8d0f3b6c1e2a4d5f"}
    elif code == "INVALID_REQUEST":
        body["details"] = {"fields": {"amount": ["A valid integer is required."]}}
    elif code == "RATE_LIMITED":
        body["details"] = {"retry_after_seconds": 12}
    return OpenApiExample(code, value=body, response_only=True,
                          status_codes=[str(ERROR_CODES[code])])


def error_responses(*codes: str) -> dict[int, OpenApiResponse]:
    """`@extend_schema(responses={...})` entries for these error codes, grouped by status."""
    unknown = [c for c in codes if c not in ERROR_CODES]
    if unknown:
        raise ValueError(f"unknown error codes {unknown}: add them to config.errors.ERROR_CODES")
    by_status: dict[int, list[str]] = defaultdict(list)
    for code in codes:
        by_status[ERROR_CODES[code]].append(code)
    return {
        status: OpenApiResponse(
            response=ErrorResponse,
            description=" / ".join(f"`{c}`" for c in group),
            examples=[_example(c) for c in group],
        )
        for status, group in sorted(by_status.items())
    }


def paginated(serializer_class: type[serializers.Serializer], name: str | None = None) -> Any:
    """The documented shape of a LimitOffsetPagination page (`count, next, previous, results`).

    For list endpoints on a plain APIView that paginate by hand:
    `@extend_schema(responses={200: paginated(QuoteOutput)}, parameters=PAGINATION_PARAMETERS)`.
    """
    return inline_serializer(
        name=name or f"Paginated{serializer_class.__name__.removesuffix('Serializer')}List",
        fields={
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": serializer_class(many=True),
        },
    )


PAGINATION_PARAMETERS = [
    OpenApiParameter("limit", OpenApiTypes.INT, OpenApiParameter.QUERY, required=False,
                     description="Page size (default 50)"),
    OpenApiParameter("offset", OpenApiTypes.INT, OpenApiParameter.QUERY, required=False,
                     description="Items to skip"),
]


IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    name="Idempotency-Key", type=OpenApiTypes.STR, location=OpenApiParameter.HEADER,
    required=False,
    description="1-255 printable ASCII characters. The same key and body within 24 h replays "
                "the first response (header `Idempotent-Replayed: true`); a different body gets "
                "422 IDEMPOTENCY_KEY_REUSED; while the first is running, 409 IDEMPOTENCY_KEY_IN_USE.",
)


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "users.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "http", "scheme": "bearer",
                "description": "Token from POST /api/v1/auth/verify: `Authorization: Bearer <token>`"}


# --- Postprocessing hook (SPECTACULAR_SETTINGS POSTPROCESSING_HOOKS) --------------------------

def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The one error envelope every endpoint uses.",
        "properties": {
            "error": {"type": "string", "description": "Human-readable message"},
            "error_code": {"type": "string", "enum": sorted(ERROR_CODES),
                           "description": "Stable machine-readable code"},
            "details": {"type": "object", "additionalProperties": {},
                        "description": "Code-specific context"},
        },
        "required": ["error", "error_code"],
    }


def _error_response(codes: list[str]) -> dict[str, Any]:
    examples = {}
    for code in codes:
        example = _example(code)
        examples[code] = {"value": example.value, "summary": ERROR_DESCRIPTIONS.get(code, code)}
    return {
        "description": " / ".join(f"`{c}`" for c in codes),
        "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"},
            "examples": examples,
        }},
    }


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"},
                                "description": "Seconds to wait before retrying"}}


def _standard_errors(path: str, method: str, operation: dict[str, Any],
                     secured: bool) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {"400": ["INVALID_REQUEST"], "429": ["RATE_LIMITED"],
                                    "500": ["INTERNAL_ERROR"]}
    if secured:
        errors["401"] = ["UNAUTHORIZED"]
    if "{" in path:
        errors["404"] = ["NOT_FOUND"]
    if method in ("post", "put", "patch"):
        errors["413"] = ["PAYLOAD_TOO_LARGE"]
        errors["415"] = ["UNSUPPORTED_MEDIA_TYPE"]
    if any(p.get("name") == "Idempotency-Key" for p in operation.get("parameters", [])):
        errors["409"] = ["IDEMPOTENCY_KEY_IN_USE"]
        errors["422"] = ["IDEMPOTENCY_KEY_REUSED"]
    return errors


def _codes_table() -> str:
    rows = "\n".join(f"| `{code}` | {status} | {ERROR_DESCRIPTIONS.get(code, '')} |"
                     for code, status in sorted(ERROR_CODES.items(), key=lambda kv: (kv[1], kv[0])))
    return ("\n\n## Errors\n\nEvery error is `{\"error\": message, \"error_code\": CODE, "
            "\"details\": {...}}` (`details` optional). 5xx responses carry `details.request_id`, "
            "also in the `X-Request-ID` header and in the server log.\n\n"
            "| code | HTTP status | meaning |\n|---|---|---|\n" + rows)


def add_standard_error_responses(result: dict[str, Any], generator: Any, request: Any,
                                 public: bool) -> dict[str, Any]:
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault(ERROR_COMPONENT, _error_schema())
    global_security = result.get("security")
    for path, item in result.get("paths", {}).items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            security = operation.get("security", global_security) or []
            secured = bool(security) and {} not in security
            responses = operation.setdefault("responses", {})
            for status, codes in _standard_errors(path, method, operation, secured).items():
                if status not in responses:
                    responses[status] = _error_response(codes)
            if "429" in responses:
                responses["429"].setdefault("headers", {}).update(_RETRY_AFTER)
    info = result.setdefault("info", {})
    if "## Errors" not in info.get("description", ""):
        info["description"] = info.get("description", "") + _codes_table()
    return result
