"""Stellar and NEAR payment verification (plain Python, no Django).

Services depend on `VerifiedPayment`, `PaymentInvalid` and `ChainUnavailable` from here and
pick a verifier from `settlement.chains.stellar` / `settlement.chains.near` by CHAIN_MODE.
"""

from settlement.chains.base import (
    ChainUnavailable,
    PaymentInvalid,
    VerifiedPayment,
    near_to_yocto,
    parse_u128,
    stroops_to_xlm,
    xlm_to_stroops,
)

__all__ = [
    "ChainUnavailable",
    "PaymentInvalid",
    "VerifiedPayment",
    "near_to_yocto",
    "parse_u128",
    "stroops_to_xlm",
    "xlm_to_stroops",
]
