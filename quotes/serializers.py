"""Quote API shapes. Input serializers only check types; the rules live in the services.

Output is rendered by `quotes.services.quotes.quote_response` (the same dict that is
signed); the output serializers here describe it for the OpenAPI schema.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.fields import empty

from config.serializers import StrictInputMixin, StrictInputSerializer
from quotes.errors import InvalidQuoteParameters


def validated(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    """Validate a request body; any problem is 400 INVALID_QUOTE_PARAMETERS with the fields."""
    plain = _plain_values(serializer_class)
    if plain is not None:
        values = plain(data)
        if values is not None:
            return values
    serializer = serializer_class(data=data)
    if not serializer.is_valid():
        raise InvalidQuoteParameters("Invalid quote parameters",
                                     details={"fields": serializer.errors})
    return dict(serializer.validated_data)


# -- the plain-body shortcut ----------------------------------------------------------------
#
# A DRF serializer instance deep-copies all its declared fields before it validates
# anything: on `POST /api/v1/quotes` that was ~10% of the server's CPU per quote, to check
# half a dozen scalars. A body whose every value is a plain, clearly valid JSON value of its
# field's type (a known key, no null, an ASCII string within its length, an int within its
# bounds, a listed choice) gets exactly the values DRF would return, read directly. Anything
# else, error or doubt, goes through the serializer, which says what is wrong in its own
# words. tests/quotes/test_quotes_input_shortcut.py holds the two paths to the same answers.

_Reader = Callable[[Any], tuple[bool, Any]]  # value → (plainly valid, DRF's internal value)


def _string_reader(field: serializers.CharField) -> _Reader:
    def read(value: Any) -> tuple[bool, Any]:
        if type(value) is not str or not value.isascii() or "\x00" in value:
            return False, None
        if field.trim_whitespace:
            value = value.strip()
        if value == "":
            return field.allow_blank, ""
        too_long = field.max_length is not None and len(value) > field.max_length
        too_short = field.min_length is not None and len(value) < field.min_length
        return not (too_long or too_short), value

    return read


def _choice_reader(field: serializers.ChoiceField) -> _Reader:
    choices = {key: value for key, value in field.choice_strings_to_values.items() if key != ""}

    def read(value: Any) -> tuple[bool, Any]:
        if type(value) is str and value in choices:
            return True, choices[value]
        return False, None

    return read


def _integer_reader(field: serializers.IntegerField) -> _Reader:
    low = field.min_value if field.min_value is not None else float("-inf")
    high = field.max_value if field.max_value is not None else float("inf")

    def read(value: Any) -> tuple[bool, Any]:
        return type(value) is int and low <= value <= high, value

    return read


def _json_list_reader(field: serializers.JSONField) -> _Reader:
    # What the JSON parser produced is JSON by construction; DRF would re-dump it to check.
    return lambda value: (type(value) is list, value)


def _reader_for(field: serializers.Field) -> _Reader | None:
    kind = type(field)
    if kind is serializers.CharField:
        return _string_reader(field)  # type: ignore[arg-type]
    if kind is serializers.ChoiceField:
        return _choice_reader(field)  # type: ignore[arg-type]
    if kind is serializers.IntegerField:
        return _integer_reader(field)  # type: ignore[arg-type]
    if (isinstance(field, serializers.JSONField) and not field.binary
            and kind.to_internal_value is serializers.JSONField.to_internal_value):
        return _json_list_reader(field)
    return None


_PlainValues = Callable[[Any], dict[str, Any] | None]
_plain_values_of: dict[type[serializers.Serializer], _PlainValues | None] = {}


def _plain_values(serializer_class: type[serializers.Serializer]) -> _PlainValues | None:
    if serializer_class not in _plain_values_of:  # a race only builds the same thing twice
        _plain_values_of[serializer_class] = _plain_values_for(serializer_class)
    return _plain_values_of[serializer_class]


def _plain_values_for(serializer_class: type[serializers.Serializer]) -> _PlainValues | None:
    """The shortcut for a strict serializer made only of fields it understands, else None.

    Fields with defaults, sources, extra validators or read-only fields, and serializers
    with their own `validate` or validators, always go through DRF.
    """
    if (serializer_class.validate is not serializers.Serializer.validate
            or getattr(getattr(serializer_class, "Meta", None), "validators", None)
            or not issubclass(serializer_class, StrictInputMixin)):
        return None
    standard = (serializers.CharField(max_length=1, min_length=1).validators
                + serializers.IntegerField(min_value=0, max_value=1).validators)
    standard_types = {type(v) for v in standard}
    readers: dict[str, _Reader] = {}
    required: set[str] = set()
    for name, field in serializer_class._declared_fields.items():  # type: ignore[attr-defined]
        reader = _reader_for(field)
        if (reader is None or field.read_only or field.default is not empty
                or field.source not in (None, name) or field.allow_null
                or any(type(v) not in standard_types for v in field.validators)):
            return None
        readers[name] = reader
        if field.required:
            required.add(name)

    def plain(data: Any) -> dict[str, Any] | None:
        if type(data) is not dict or not required.issubset(data):
            return None
        values: dict[str, Any] = {}
        for key, value in data.items():
            reader = readers.get(key)
            if reader is None:
                return None
            ok, values[key] = reader(value)
            if not ok:
                return None
        return values

    return plain


class AccountMetaInput(StrictInputSerializer):
    """Documentation of one account of an instruction (checked in `quotes.solana_tx`)."""

    pubkey = serializers.CharField(max_length=64)
    is_signer = serializers.BooleanField()
    is_writable = serializers.BooleanField()


class InstructionInput(StrictInputSerializer):
    """Documentation of one instruction (checked in `quotes.solana_tx`)."""

    program_id = serializers.CharField(max_length=64)
    accounts = AccountMetaInput(many=True, max_length=64)
    data_base64 = serializers.CharField(max_length=2048, allow_blank=True, trim_whitespace=False)


@extend_schema_field(InstructionInput(many=True))
class InstructionListField(serializers.JSONField):
    """The instruction list, passed through as JSON: `solana_tx.instructions_from_json`
    checks every field strictly once (DRF's nested serializers would parse it twice, on the
    hottest path of the API)."""


class QuoteCreateInput(StrictInputSerializer):
    source_chain = serializers.ChoiceField(choices=["stellar", "near"])
    refund_to = serializers.CharField(max_length=128, required=False, allow_blank=True)
    solana_transaction_base64 = serializers.CharField(max_length=4096, required=False,
                                                      trim_whitespace=False)
    instructions = InstructionListField(required=False)
    estimated_compute_units = serializers.IntegerField(required=False, min_value=-2**63,
                                                       max_value=2**63)
    priority_fee_micro_lamports = serializers.IntegerField(required=False, min_value=-2**63,
                                                           max_value=2**63)



class SeedQuoteInput(StrictInputSerializer):
    """The seed's `POST /quote` body. `user_id` is accepted for compatibility and ignored:
    the quote belongs to the token's user."""

    user_id = serializers.CharField(required=False, max_length=64)
    source_chain = serializers.ChoiceField(choices=["stellar", "near"])
    destination_chain = serializers.ChoiceField(choices=["solana"], required=False)
    solana_instructions_base64 = serializers.CharField(max_length=4096, trim_whitespace=False)
    estimated_compute_units = serializers.IntegerField(required=False, min_value=-2**63,
                                                       max_value=2**63)
    estimated_cu = serializers.IntegerField(required=False, min_value=-2**63, max_value=2**63)
    refund_to = serializers.CharField(max_length=128, required=False, allow_blank=True)


class QuoteListQuery(serializers.Serializer):
    status = serializers.CharField(required=False, max_length=16)


class OhlcQuery(serializers.Serializer):
    interval = serializers.ChoiceField(choices=["1m", "5m", "1h", "1d"], default="1m")
    start = serializers.DateTimeField(required=False)
    end = serializers.DateTimeField(required=False)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=1000, default=500)


# -- output (documentation) ---------------------------------------------------------------


class PriceOutput(serializers.Serializer):
    rate = serializers.CharField(help_text="source asset per SOL (decimal string)")
    source = serializers.CharField(help_text='"pyth" or "fixed" (sandbox)')
    publish_time = serializers.DateTimeField(help_text="oldest publish time of the prices used")
    confidence = serializers.CharField(
        help_text="relative width of the conversion's confidence band (0.004 = 0.4%)")


class PaymentOutput(serializers.Serializer):
    address = serializers.CharField(help_text="Stellar treasury account or NEAR payment account")
    memo_type = serializers.ChoiceField(choices=["id", "hash"])
    memo = serializers.CharField(help_text="MEMO_ID as a decimal string (uint64)")
    amount = serializers.CharField(help_text="stroops or yoctoNEAR to pay (= total_cost)")
    instructions = serializers.JSONField(
        help_text="Stellar: payment with MEMO_ID; NEAR: function call execute_payment"
                  '({"quote_id"}) on the payment account with `deposit` attached')


class QuoteOutput(serializers.Serializer):
    quote_id = serializers.UUIDField()
    status = serializers.CharField()
    source_chain = serializers.CharField()
    source_asset = serializers.CharField()
    total_cost = serializers.CharField(help_text="smallest unit of the source asset")
    service_fee = serializers.CharField()
    gas_estimate = serializers.CharField()
    treasury_outflow = serializers.CharField(help_text="lamports leaving the treasury (rent included)")
    price = PriceOutput()
    expires_at = serializers.DateTimeField()
    nonce = serializers.CharField()
    payment = PaymentOutput()
    signature = serializers.CharField(
        help_text="base58 ed25519 signature over the canonical JSON of this body without "
                  "`signature`, `status` and `execution` (sorted keys, no spaces, UTF-8); "
                  "public key at "
                  "GET /api/v1/treasury")


class ExecutionOutput(serializers.Serializer):
    status = serializers.CharField(help_text="pending | signed | submitted | confirmed | failed")
    signature = serializers.CharField(allow_null=True, help_text="Solana transaction signature")
    fail_reason = serializers.CharField(allow_null=True)
    error_message = serializers.CharField(allow_null=True)
    fee_lamports = serializers.CharField(allow_null=True, help_text="fee the chain charged")
    compute_units_consumed = serializers.IntegerField(allow_null=True)
    treasury_outflow_lamports = serializers.CharField(allow_null=True)
    attempts = serializers.IntegerField()
    slot = serializers.IntegerField(allow_null=True)
    submitted_at = serializers.DateTimeField(allow_null=True)
    executed_at = serializers.DateTimeField(allow_null=True)


class QuoteDetailOutput(QuoteOutput):
    execution = ExecutionOutput(allow_null=True, help_text="null until the quote is paid")


class SeedQuoteOutput(serializers.Serializer):
    quote_id = serializers.UUIDField()
    user_id = serializers.UUIDField()
    source_chain = serializers.CharField()
    source_amount = serializers.CharField()
    total_cost = serializers.CharField()
    service_fee = serializers.CharField()
    gas_estimate = serializers.CharField()
    expires_at = serializers.DateTimeField()
    payment_address = serializers.CharField()
    payment_memo_type = serializers.CharField()
    payment_memo = serializers.CharField()
    nonce = serializers.CharField()
    signature = serializers.CharField()


class SeedStatusOutput(serializers.Serializer):
    quote_id = serializers.UUIDField()
    status = serializers.CharField()
    solana_signature = serializers.CharField(allow_null=True)
    executed_at = serializers.DateTimeField(allow_null=True)
    error_message = serializers.CharField(allow_null=True)


class CandleOutput(serializers.Serializer):
    time = serializers.DateTimeField(help_text="bucket start (UTC)")
    open = serializers.CharField()
    high = serializers.CharField()
    low = serializers.CharField()
    close = serializers.CharField()
    count = serializers.IntegerField()
    source = serializers.CharField()
