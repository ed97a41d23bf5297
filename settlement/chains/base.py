"""Shared types of the chain payment verifiers: the verified result, errors, amount parsing.

A payment the client or a webhook tells us about is only a hint; a `VerifiedPayment` is what
the chain (or, in sandbox mode, the signed transaction itself) says happened. Amounts are
integers in the chain's smallest unit and are never floats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

ChainName = Literal["stellar", "near"]
MemoType = Literal["id", "hash", "text", "return"]

STROOPS_PER_XLM = 10**7
YOCTO_PER_NEAR = 10**24
INT64_MAX = 2**63 - 1
U128_MAX = 2**128 - 1


class ChainUnavailable(Exception):
    """The chain backend could not answer (timeout, connection error, 5xx). Retry later;
    never treat this as a verdict on the payment."""


class PaymentInvalid(Exception):
    """The payment was checked and refused. `code` is stable and machine-readable."""

    MALFORMED = "MALFORMED"
    WRONG_NETWORK = "WRONG_NETWORK"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    NOT_A_PAYMENT = "NOT_A_PAYMENT"
    WRONG_ASSET = "WRONG_ASSET"
    WRONG_DESTINATION = "WRONG_DESTINATION"
    TX_FAILED = "TX_FAILED"
    NOT_FINAL = "NOT_FINAL"
    NOT_FOUND = "NOT_FOUND"
    EXPIRED = "EXPIRED"
    NOT_YET_VALID = "NOT_YET_VALID"
    WRONG_SENDER = "WRONG_SENDER"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class VerifiedPayment:
    """One incoming payment as confirmed by the chain (or the sandbox signature check).

    `tx_hash` identifies the transaction that carries the payment and is what a
    UNIQUE(chain, tx_hash) constraint should be put on. For a Stellar fee bump it is the
    INNER transaction's hash (the payment's identity; one inner tx can be wrapped in several
    fee bumps but only lands once); the outer hash is in `raw["fee_bump_hash"]`.
    """

    chain: ChainName
    tx_hash: str
    from_address: str
    to_address: str
    asset: Literal["XLM", "NEAR"]
    amount: int
    memo_type: MemoType | None
    memo: str | None
    quote_id: str | None
    method_name: str | None
    successful: bool
    final: bool
    ledger_time: datetime | None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


_XLM_RE = re.compile(r"(?P<whole>[0-9]+)(?:\.(?P<frac>[0-9]{1,7}))?")
_NEAR_RE = re.compile(r"(?P<whole>[0-9]+)(?:\.(?P<frac>[0-9]{1,24}))?")
_UINT_RE = re.compile(r"[0-9]+")


def _parse_fixed(value: str | Decimal, pattern: re.Pattern[str], decimals: int, what: str) -> int:
    if isinstance(value, Decimal):
        if not value.is_finite() or value < 0:
            raise ValueError(f"invalid {what} amount: {value!r}")
        value = format(value, "f")
    if not isinstance(value, str):
        raise TypeError(f"{what} amount must be a decimal string, got {type(value).__name__}")
    m = pattern.fullmatch(value)
    if m is None:
        raise ValueError(f"invalid {what} amount (at most {decimals} decimals, no sign): {value!r}")
    frac = (m.group("frac") or "").ljust(decimals, "0")
    return int(m.group("whole")) * 10**decimals + int(frac or "0")


def xlm_to_stroops(value: str | Decimal) -> int:
    """'12.3456789' -> 123456789. Exact; rejects negatives, exponents, > 7 decimals and
    anything above Stellar's int64 limit."""
    stroops = _parse_fixed(value, _XLM_RE, 7, "XLM")
    if stroops > INT64_MAX:
        raise ValueError(f"XLM amount above int64 stroops: {value!r}")
    return stroops


def stroops_to_xlm(stroops: int) -> str:
    """123456789 -> '12.3456789' (Horizon's 7-decimal form)."""
    if stroops < 0:
        raise ValueError("negative amount")
    return f"{stroops // STROOPS_PER_XLM}.{stroops % STROOPS_PER_XLM:07d}"


def near_to_yocto(value: str | Decimal) -> int:
    """'1.5' NEAR -> 1500000000000000000000000 yoctoNEAR. Exact; at most 24 decimals."""
    yocto = _parse_fixed(value, _NEAR_RE, 24, "NEAR")
    if yocto > U128_MAX:
        raise ValueError(f"NEAR amount above u128 yocto: {value!r}")
    return yocto


def parse_u128(value: str | int) -> int:
    """A yoctoNEAR amount as NEAR RPC sends it (decimal string) -> int, range-checked."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"not a u128: {value!r}")
    if isinstance(value, str):
        if not _UINT_RE.fullmatch(value):
            raise ValueError(f"not a u128: {value!r}")
        value = int(value)
    if not 0 <= value <= U128_MAX:
        raise ValueError(f"u128 out of range: {value!r}")
    return value
