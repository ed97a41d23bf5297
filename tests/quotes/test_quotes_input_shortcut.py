"""The quote endpoints read a plain request body without building a DRF serializer
(`quotes.serializers.validated`): whatever the body, the values or the 400 must be exactly
what the serializer alone would give."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rest_framework import serializers

from quotes.errors import InvalidQuoteParameters
from quotes.serializers import (
    OhlcQuery,
    QuoteCreateInput,
    SeedQuoteInput,
    _plain_values,
    validated,
)


def drf_only(serializer_class: type[serializers.Serializer], data: Any) -> tuple[str, Any]:
    serializer = serializer_class(data=data)
    if serializer.is_valid():
        return "ok", dict(serializer.validated_data)
    return "invalid", serializer.errors


def through_validated(serializer_class: type[serializers.Serializer], data: Any) -> tuple[str, Any]:
    try:
        return "ok", validated(serializer_class, data)
    except InvalidQuoteParameters as exc:
        return "invalid", exc.details["fields"]


def test_the_quote_bodies_take_the_shortcut_and_the_query_serializers_do_not():
    assert _plain_values(QuoteCreateInput) is not None
    assert _plain_values(SeedQuoteInput) is not None
    assert _plain_values(OhlcQuery) is None  # defaults and datetimes: DRF reads those


def test_a_typical_quote_body_is_read_by_the_shortcut():
    body = {"source_chain": "near", "refund_to": "  alice.near ",
            "instructions": [{"program_id": "x", "accounts": [], "data_base64": ""}],
            "estimated_compute_units": 10_000, "priority_fee_micro_lamports": 0}
    values = _plain_values(QuoteCreateInput)(body)  # type: ignore[misc]
    assert values == drf_only(QuoteCreateInput, body)[1]
    assert values["refund_to"] == "alice.near"


SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-2**64, max_value=2**64),
    st.sampled_from([0, 1, -1, 2**63, 2**63 + 1, -2**63, -2**63 - 1, 1.5, 2.0]),
    st.sampled_from(["", " ", "stellar", "near", "solana", " stellar", "STELLAR", "a\x00b",
                     "\u00e9t\u00e9", "x" * 128, " " + "x" * 128 + " ", "x" * 129, "x" * 4096,
                     "x" * 4097, "AQABAgME", "\t\n"]),
    st.text(max_size=20),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                   st.dictionaries(st.text(max_size=5), SCALARS, max_size=2))
KEYS = st.sampled_from(["source_chain", "refund_to", "solana_transaction_base64", "instructions",
                        "estimated_compute_units", "priority_fee_micro_lamports", "user_id",
                        "destination_chain", "solana_instructions_base64", "estimated_cu",
                        "unknown"])


@pytest.mark.parametrize("serializer_class", [QuoteCreateInput, SeedQuoteInput])
@settings(max_examples=400, deadline=None)
@given(body=st.dictionaries(KEYS, VALUES, max_size=6))
def test_the_shortcut_answers_exactly_as_the_serializer(serializer_class, body):
    assert through_validated(serializer_class, body) == drf_only(serializer_class, body)


EDGE_STRINGS = ["", " ", "  x ", "a\x00b", "\u00e9t\u00e9", "x" * 64, "x" * 65, "x" * 128,
                " " + "x" * 128 + " ", "x" * 129, "x" * 4096, "x" * 4097, "\t\n"]
ASCII_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
STRING = st.one_of(ASCII_TEXT, ASCII_TEXT, st.sampled_from(EDGE_STRINGS), SCALARS)
INTEGER = st.one_of(st.integers(min_value=-2**64, max_value=2**64),
                    st.integers(min_value=0, max_value=2_000_000),
                    st.sampled_from([2**63, 2**63 + 1, -2**63, -2**63 - 1]), SCALARS)
FIELD_VALUES = {"refund_to": STRING, "solana_transaction_base64": STRING,
                "solana_instructions_base64": STRING, "user_id": STRING,
                "instructions": st.one_of(st.lists(VALUES, max_size=2), VALUES),
                "estimated_compute_units": INTEGER, "estimated_cu": INTEGER,
                "priority_fee_micro_lamports": INTEGER,
                "destination_chain": st.sampled_from(["solana", "solana", "near", None])}


def nearly_valid(serializer_class: type[serializers.Serializer]) -> st.SearchStrategy[Any]:
    """Bodies with the right keys and mostly right types, so both answers occur often."""
    fields = serializer_class._declared_fields  # type: ignore[attr-defined]
    chains = st.sampled_from(["stellar", "near", "stellar", "solana", ""])
    given = {name: FIELD_VALUES[name] for name, field in fields.items()
             if field.required and name != "source_chain"}
    return st.fixed_dictionaries({"source_chain": chains, **given},
                                 optional={name: FIELD_VALUES[name] for name in fields
                                           if name != "source_chain" and name not in given})


@pytest.mark.parametrize("serializer_class", [QuoteCreateInput, SeedQuoteInput])
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_nearly_valid_bodies_get_the_serializers_values_or_errors(serializer_class, data):
    body = data.draw(nearly_valid(serializer_class))
    assert through_validated(serializer_class, body) == drf_only(serializer_class, body)


@pytest.mark.parametrize("serializer_class", [QuoteCreateInput, SeedQuoteInput])
@pytest.mark.parametrize("body", [None, [], "x", 1, {"source_chain": None}])
def test_non_objects_and_nulls_get_the_serializers_errors(serializer_class, body):
    assert through_validated(serializer_class, body) == drf_only(serializer_class, body)
