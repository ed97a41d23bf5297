"""Chains, assets and their smallest units: the vocabulary every app shares.

Amounts are integers in the chain's smallest unit everywhere (lamports, stroops,
yoctoNEAR, SPL base units). Conversions to whole units exist only for display and for
reading the seed's whole-unit limits from settings.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

from django.db import models


class Chain(models.TextChoices):
    SOLANA = "solana", "Solana"
    STELLAR = "stellar", "Stellar"
    NEAR = "near", "NEAR"


SOURCE_CHAINS = (Chain.STELLAR, Chain.NEAR)

# Native asset and decimals per chain.
NATIVE_ASSET = {Chain.SOLANA: "SOL", Chain.STELLAR: "XLM", Chain.NEAR: "NEAR"}
NATIVE_DECIMALS = {"SOL": 9, "XLM": 7, "NEAR": 24}
LAMPORTS_PER_SOL = 10**9
STROOPS_PER_XLM = 10**7
YOCTO_PER_NEAR = 10**24

# NUMERIC(78,0) holds any uint256; every amount column uses it.
AMOUNT_DIGITS = 78


def amount_field(**kwargs: object) -> models.DecimalField:
    """An integer amount in a chain's smallest unit, stored as NUMERIC(78,0)."""
    return models.DecimalField(max_digits=AMOUNT_DIGITS, decimal_places=0, **kwargs)  # type: ignore[arg-type]


def whole_to_smallest(whole: Decimal, decimals: int) -> int:
    """Whole units (a settings limit such as '100' SOL) to the smallest unit, rounded up."""
    return int((Decimal(whole) * (Decimal(10) ** decimals)).to_integral_value(ROUND_CEILING))


def format_amount(smallest: int | Decimal, decimals: int) -> str:
    """Human display string, exact: 1500000000 lamports → '1.5'."""
    value = Decimal(int(smallest)).scaleb(-decimals)
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
