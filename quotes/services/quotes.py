"""Quote write paths: create (price, bound, sign), cancel, expire.

`quote_create` is the whole pricing pipeline (DESIGN.md §8):

1. decode and police the Solana work (`solana_tx`): treasury pays and alone signs, no
   lookup tables, allow-listed programs and instructions only;
2. simulate it exactly as the executor will build it (`solana.work_cost`): fee, SOL and
   token outflow of the treasury, refusing work that fails;
3. price it with the oracle (`prices`), exact rational math rounded up (`pricing`):
       source_amount = ceil(outflow in source units) + buffer
       gas_estimate  = ceil(fee in source units) + buffer
       service_fee   = ceil((source_amount + gas_estimate) × SERVICE_FEE_RATE)
       total_cost    = source_amount + gas_estimate + service_fee
4. refuse what the limits (`risk_check_quote`) or the live treasury inventory could not
   fill, then store the quote with its deposit memo, price snapshot and signature.

Nothing is written for a refused quote (every refusal happens before the one short
statement that inserts it with its audit row).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import secrets
import uuid
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from config.bulk import insert_together, new_row
from config.chains import NATIVE_ASSET, NATIVE_DECIMALS, SOURCE_CHAINS, Chain, format_amount
from config.prepared import django_connection, prepared_statements
from quotes.errors import InvalidQuoteParameters, QuoteNotFound, QuoteNotPending
from quotes.models import MemoType, Quote, QuoteStatus
from quotes.prices import PricePoint, price_feed
from quotes.pricing import conversion_band_width, convert_ceil, rate_ceil, ttl_for_band
from quotes.quote_settings import QuoteSettings, quote_settings
from quotes.services.prices import price_observations_record
from quotes.services.transitions import quote_transition
from quotes.signing import sign_quote
from quotes.solana import WorkCost, treasury_pubkey, work_cost
from quotes.solana_tx import (
    SolanaWork,
    compute_budget,
    work_from_instructions,
    work_from_message_base64,
)
from risk.audit import audit_event
from risk.errors import InsufficientTreasury
from risk.services import QuoteRiskState, risk_check_quote, risk_quote_state_select
from users.models import User, Wallet
from users.signatures import InvalidAddress, validate_address

logger = logging.getLogger(__name__)

SOL_DECIMALS = NATIVE_DECIMALS["SOL"]
# A system account must keep its rent-exempt minimum (0 data bytes) or transfers fail.
TREASURY_RENT_RESERVE_LAMPORTS = 890_880
IN_FLIGHT = (QuoteStatus.COMMITTED, QuoteStatus.EXECUTING)
IN_FLIGHT_NAMES = [str(status) for status in IN_FLIGHT]
EXPIRY_BATCH = 500


def priced_tokens() -> dict[str, tuple[str, int]]:
    """SPL mints the treasury may send, as mint → (price symbol, decimals)."""
    tokens: dict[str, tuple[str, int]] = {}
    if settings.SOLANA_USDC_MINT:
        tokens[settings.SOLANA_USDC_MINT] = ("USDC", settings.SOLANA_USDC_DECIMALS)
    return tokens


@functools.lru_cache(maxsize=256)
def _iso(moment: dt.datetime) -> str:
    # Cached: formatting a datetime is ~16,000 instructions, and a quote shows the same
    # few moments again and again (the prices' publish times are shared by every quote
    # within the same second, and the snapshot names each one twice). Equal datetimes
    # are the same instant, so they print the same.
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# -- the public shape of a quote ------------------------------------------------------------


def quote_public_payload(quote: Quote) -> dict[str, Any]:
    """The 201 body (DESIGN.md §6) without `signature`: what is shown AND what is signed.

    A pure function of fields that never change after creation (plus `status`, which the
    signature leaves out), so the stored signature verifies on every later read too.
    """
    snapshot = quote.price_snapshot or {}
    return {
        "quote_id": str(quote.pk),
        "status": quote.status,
        "source_chain": quote.source_chain,
        "source_asset": quote.source_asset,
        "total_cost": str(int(quote.total_cost)),
        "service_fee": str(int(quote.service_fee)),
        "gas_estimate": str(int(quote.gas_estimate)),
        "treasury_outflow": str(int(quote.treasury_outflow_lamports)),
        "price": {
            "rate": snapshot.get("rate"),
            "source": snapshot.get("source"),
            "publish_time": snapshot.get("publish_time"),
            "confidence": snapshot.get("confidence"),
        },
        "expires_at": _iso(quote.expires_at),
        "nonce": quote.nonce,
        "payment": {
            "address": quote.payment_address,
            "memo_type": quote.payment_memo_type,
            "memo": quote.payment_memo,
            "amount": str(int(quote.total_cost)),
            "instructions": payment_instructions(quote),
        },
    }


def quote_response(quote: Quote) -> dict[str, Any]:
    return {**quote_public_payload(quote), "signature": quote.service_signature}


def payment_instructions(quote: Quote) -> dict[str, Any]:
    """How to pay, in the source chain's own terms."""
    amount = int(quote.total_cost)
    if quote.source_chain == "near":
        # The seed's contract call: the payment account reads quote_id from the args.
        return {"type": "near_function_call", "receiver_id": quote.payment_address,
                "method": "execute_payment", "args": {"quote_id": str(quote.pk)},
                "deposit": str(amount),
                "deposit_near": format_amount(amount, NATIVE_DECIMALS["NEAR"])}
    # A Stellar text memo holds 28 bytes: a quote is named by a MEMO_ID (uint64) instead.
    return {"type": "stellar_payment", "destination": quote.payment_address, "asset": "native",
            "amount_stroops": str(amount),
            "amount": format_amount(amount, NATIVE_DECIMALS["XLM"]),
            "memo": {"type": "MEMO_ID", "value": quote.payment_memo}}


# -- create ---------------------------------------------------------------------------------


def _decode_work(*, solana_transaction_base64: Any, instructions: Any) -> SolanaWork:
    given = [name for name, value in (("solana_transaction_base64", solana_transaction_base64),
                                      ("instructions", instructions)) if value is not None]
    if len(given) != 1:
        raise InvalidQuoteParameters(
            "Give the Solana work as exactly one of solana_transaction_base64 or instructions",
            details={"given": given},
        )
    treasury = treasury_pubkey()
    if solana_transaction_base64 is not None:
        return work_from_message_base64(solana_transaction_base64, treasury=treasury)
    return work_from_instructions(instructions, treasury=treasury)


def _given_refund_address(*, source_chain: str, refund_to: str | None) -> str | None:
    if not refund_to:
        return None
    try:
        return validate_address(source_chain, refund_to)
    except InvalidAddress as exc:
        raise InvalidQuoteParameters(f"refund_to is not a valid {source_chain} address",
                                     details={"field": "refund_to", "reason": str(exc)}) from None


@dataclass(frozen=True, slots=True)
class _QuoteReads:
    memo_id: int  # the quote's deposit MEMO_ID
    committed_lamports: int  # promised to paid quotes not yet executed
    committed_tokens: dict[str, int]
    wallet_address: str | None  # the user's latest verified wallet on the source chain
    risk: QuoteRiskState


@functools.lru_cache(maxsize=8)
def _reads_statement(token_count: int, risk_select: str) -> str:
    """The statement for a work moving `token_count` tokens (its text, cached). Prepared
    (config.prepared): its one plan that depends on a table's size, the in-flight quotes
    on a table that only grows, is made inside `quotes_in_flight` (migration 0007), by the
    status index whatever the table's size when the connection first runs it."""
    token_sums = "".join(
        ", COALESCE(SUM((token_outflows ->> %s::text)::numeric), 0)" for _ in range(token_count))
    return (
        "SELECT nextval('quote_memo_id_seq'), "  # noqa: S608 - table names and our constants
        f"(SELECT address FROM {Wallet._meta.db_table} WHERE user_id = %s AND chain = %s "
        " ORDER BY verified_at DESC LIMIT 1), risk.*, committed.* "
        f"FROM ({risk_select}) AS risk, "
        f"(SELECT COALESCE(SUM(max_lamports_spend), 0){token_sums} "
        " FROM quotes_in_flight(%s)) AS committed"
    )


def _quote_reads(*, user: User, source_chain: str, mints: list[str]) -> _QuoteReads:
    """Everything quoting needs from the database, in ONE prepared statement (hot path):

    * what the risk check needs (`risk_quote_state_select`): the breaker, today's counters;
    * what paid, not yet executed quotes already claim from the treasury (an indexed
      aggregate on status), SOL and each token the work moves;
    * the next deposit memo id. It is drawn even if a check then refuses: a sequence
      never rolls back anyway, and a gap in memo ids costs nothing;
    * the user's verified wallet on the source chain (the default refund address).
    """
    risk_select, risk_params = risk_quote_state_select(user_id=user.pk, source_chain=source_chain)
    statement = _reads_statement(len(mints), risk_select)
    # The thread's own connection, not the proxy (config.prepared.django_connection).
    with prepared_statements(), django_connection().cursor() as cursor:
        cursor.execute(statement, [user.pk, source_chain, *risk_params, *mints, IN_FLIGHT_NAMES])
        memo, wallet, *row = cursor.fetchone()
    risk_columns = len(QuoteRiskState.__slots__)
    risk, (lamports, *tokens) = QuoteRiskState(*row[:risk_columns]), row[risk_columns:]
    return _QuoteReads(memo_id=int(memo), committed_lamports=int(lamports),
                       committed_tokens={m: int(t) for m, t in zip(mints, tokens, strict=True)},
                       wallet_address=wallet, risk=risk)


def _check_inventory(cost: WorkCost, reads: _QuoteReads) -> None:
    """Refuse what the treasury could not fill (like Across's maxDepositInstant): its live
    balance (read with the simulation), less what paid quotes already claim, less the
    rent-exempt reserve its own account must keep."""
    available = (cost.treasury_lamports - reads.committed_lamports
                 - TREASURY_RENT_RESERVE_LAMPORTS)
    if cost.max_lamports_spend > available:
        raise InsufficientTreasury(details={"asset": "SOL", "required": str(cost.max_lamports_spend),
                                            "available": str(max(0, available))})
    for mint, amount in cost.token_outflows.items():
        left = cost.treasury_token_balances.get(mint, 0) - reads.committed_tokens[mint]
        if amount > left:
            raise InsufficientTreasury(details={"asset": mint, "required": str(amount),
                                                "available": str(max(0, left))})


def _snapshot(prices: dict[str, PricePoint], *, source_symbol: str, width: Fraction,
              ttl: int, knobs: QuoteSettings) -> dict[str, Any]:
    sol, source = prices["SOL"], prices[source_symbol]
    rate = (sol.price / source.price).normalize()
    return {
        "rate": format(rate, "f"),
        "rate_description": f"{source_symbol} per SOL",
        "source": sol.source,
        "publish_time": _iso(min(p.publish_time for p in prices.values())),
        "confidence": f"{Decimal(width.numerator) / Decimal(width.denominator):.6f}",
        "ttl_seconds": ttl,
        "service_fee_rate": str(knobs.service_fee_rate),
        "buffer_rate": str(knobs.safety_buffer_rate),
        "prices_usd": {
            symbol: {"price": str(p.price), "confidence": str(p.confidence),
                     "publish_time": _iso(p.publish_time), "source": p.source}
            for symbol, p in prices.items()
        },
    }


def quote_create(*, user: User, source_chain: str, solana_transaction_base64: Any = None,
                 instructions: Any = None, estimated_compute_units: int | None = None,
                 priority_fee_micro_lamports: int | None = None,
                 refund_to: str | None = None) -> Quote:
    """Price the Solana work and store a signed, expiring pending quote for `user`."""
    if source_chain not in SOURCE_CHAINS:
        raise InvalidQuoteParameters("source_chain must be stellar or near",
                                     details={"field": "source_chain"})
    work = _decode_work(solana_transaction_base64=solana_transaction_base64,
                        instructions=instructions)
    cu_limit, cu_price = compute_budget(work, compute_units=estimated_compute_units,
                                        priority_fee_micro_lamports=priority_fee_micro_lamports)
    given_refund_address = _given_refund_address(source_chain=source_chain, refund_to=refund_to)
    source_symbol = NATIVE_ASSET[Chain(source_chain)]
    source_decimals = NATIVE_DECIMALS[source_symbol]
    feed = price_feed()
    # Prices first: a refused price costs no simulation.
    prices = feed.prices(["SOL", source_symbol])

    cost = work_cost(list(work.instructions), cu_limit=cu_limit, cu_price=cu_price)

    tokens = priced_tokens()
    unpriced = [mint for mint in cost.token_outflows if mint not in tokens]
    if unpriced:
        raise InvalidQuoteParameters("The transaction sends a token we cannot price",
                                     details={"mints": unpriced})
    token_symbols = sorted({tokens[mint][0] for mint in cost.token_outflows})
    if token_symbols:
        prices.update(feed.prices(token_symbols))
    price_observations_record(list(prices.values()))

    sol, source = prices["SOL"], prices[source_symbol]
    knobs = quote_settings()
    buffer = knobs.safety_buffer_rate
    work_source = convert_ceil(cost.treasury_outflow_lamports, SOL_DECIMALS, sol.price,
                               source_decimals, source.price)
    width = conversion_band_width(sol.price, sol.confidence, source.price, source.confidence)
    for mint, amount in sorted(cost.token_outflows.items()):
        symbol, decimals = tokens[mint]
        token = prices[symbol]
        work_source += convert_ceil(amount, decimals, token.price, source_decimals, source.price)
        width = max(width, conversion_band_width(token.price, token.confidence,
                                                 source.price, source.confidence))
    source_amount = work_source + rate_ceil(work_source, buffer)
    gas_source = convert_ceil(cost.fee_lamports, SOL_DECIMALS, sol.price, source_decimals,
                              source.price)
    gas_estimate = gas_source + rate_ceil(gas_source, buffer)
    service_fee = rate_ceil(source_amount + gas_estimate, knobs.service_fee_rate)
    total_cost = source_amount + gas_estimate + service_fee

    reads = _quote_reads(user=user, source_chain=source_chain, mints=list(cost.token_outflows))
    risk_check_quote(user=user, lamports_spend=cost.max_lamports_spend,
                     source_chain=source_chain, source_amount=total_cost, state=reads.risk)
    refund_address = given_refund_address or reads.wallet_address
    if refund_address is None:
        raise InvalidQuoteParameters(
            f"No verified {source_chain} wallet to refund to: give refund_to or verify a wallet",
            details={"field": "refund_to"},
        )
    _check_inventory(cost, reads)

    ttl = ttl_for_band(width, knobs.ttl_seconds)
    now = timezone.now()
    quote = new_row(
        Quote, id=uuid.uuid4(), user_id=user.pk, status=QuoteStatus.PENDING,
        source_chain=source_chain, source_asset=source_symbol, source_amount=Decimal(source_amount),
        service_fee=Decimal(service_fee), gas_estimate=Decimal(gas_estimate),
        total_cost=Decimal(total_cost), destination_amount=Decimal(cost.max_lamports_spend),
        treasury_outflow_lamports=Decimal(cost.treasury_outflow_lamports),
        fee_lamports=Decimal(cost.fee_lamports),
        token_outflows={mint: str(amount) for mint, amount in cost.token_outflows.items()},
        max_lamports_spend=Decimal(cost.max_lamports_spend), instructions=work.normalized(),
        estimated_compute_units=cu_limit, priority_fee_micro_lamports=cu_price,
        price_snapshot=_snapshot(prices, source_symbol=source_symbol, width=width, ttl=ttl,
                                 knobs=knobs),
        nonce=secrets.token_hex(16), created_at=now, expires_at=now + dt.timedelta(seconds=ttl),
        payment_address=(knobs.stellar_payment_address if source_chain == "stellar"
                         else knobs.near_payment_account),
        payment_memo_type=MemoType.ID, refund_to=refund_address,
        # A MEMO_ID from the sequence (>= 10^15): unique per quote, fits a uint64, and
        # never collides with a user's balance-deposit memo (< 10^15).
        payment_memo=str(reads.memo_id),
    )
    Quote.user.field.set_cached_value(quote, user)
    quote.service_signature = sign_quote(quote_public_payload(quote))
    # Creation is not a transition (nothing moves from one status to another): the quote
    # row and its audit event record it; transition rows start at the first change.
    created = audit_event(event_type="quote_created", actor=f"user:{user.pk}",
                          entity_type="quote", entity_id=quote.pk, user_id=user.pk,
                          details={"source_chain": source_chain, "total_cost": str(total_cost),
                                   "max_lamports_spend": str(cost.max_lamports_spend),
                                   "token_outflows": quote.token_outflows,
                                   "price_source": sol.source})
    with prepared_statements():  # the same INSERT every time (config.prepared)
        insert_together(quote, created)
    return quote


# -- cancel and expire ----------------------------------------------------------------------


def quote_get_for_user(*, user: User, quote_id: Any) -> Quote:
    """The user's own quote; anyone else's id is indistinguishable from a missing one."""
    try:
        return Quote.objects.get(pk=quote_id, user=user)
    except (Quote.DoesNotExist, ValueError, TypeError, ValidationError):
        raise QuoteNotFound(details={"quote_id": str(quote_id)}) from None


def quote_cancel(*, user: User, quote_id: Any) -> Quote:
    """Cancel a pending quote (nothing was paid yet). Anything else: 409 QUOTE_NOT_PENDING."""
    with transaction.atomic():
        try:
            quote = Quote.objects.select_for_update().get(pk=quote_id, user=user)
        except (Quote.DoesNotExist, ValueError, TypeError, ValidationError):
            raise QuoteNotFound(details={"quote_id": str(quote_id)}) from None
        if quote.status != QuoteStatus.PENDING:
            raise QuoteNotPending(details={"status": quote.status})
        return quote_transition(quote_id=quote.pk, to_status=QuoteStatus.CANCELLED,
                                actor=f"user:{user.pk}", expected_from={QuoteStatus.PENDING},
                                quote=quote)


def quotes_expire_due(*, now: dt.datetime | None = None, limit: int = 10_000) -> int:
    """Expire pending quotes past their expiry (django-q2, every minute). Returns how many.

    Each quote goes through `quote_transition` in its own short transaction, so it gets
    its transition row, audit event and WebSocket event like any other change. Rows
    locked by someone else (a payment committing the quote right now) are skipped and
    retried on the next run: the committer decides, after re-reading under its lock.
    """
    now = now or timezone.now()
    expired = 0
    while expired < limit:
        due = list(Quote.objects.filter(status=QuoteStatus.PENDING, expires_at__lte=now)
                   .order_by("expires_at").values_list("pk", flat=True)[:EXPIRY_BATCH])
        if not due:
            break
        progressed = 0
        for quote_id in due:
            with transaction.atomic():
                quote = (Quote.objects.select_for_update(skip_locked=True)
                         .filter(pk=quote_id, status=QuoteStatus.PENDING, expires_at__lte=now)
                         .first())
                if quote is None:
                    continue
                quote_transition(quote_id=quote.pk, to_status=QuoteStatus.EXPIRED,
                                 actor="system:expiry", expected_from={QuoteStatus.PENDING},
                                 details={"expires_at": _iso(quote.expires_at)}, quote=quote)
                expired += 1
                progressed += 1
        if not progressed:
            break  # everything left is locked by others; the next run picks it up
    return expired


__all__ = [
    "payment_instructions",
    "priced_tokens",
    "quote_cancel",
    "quote_create",
    "quote_get_for_user",
    "quote_public_payload",
    "quote_response",
    "quotes_expire_due",
]
