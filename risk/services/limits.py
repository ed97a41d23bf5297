"""Spend limits: a cheap read-only check when a quote is made, and the reservation that
really consumes them inside the executor's transaction.

Limits (settings in whole units, enforced in smallest units): the Solana chain's daily
lamport outflow (`max_lamports_spend`, the bound the executor enforces), each source
chain's daily intake (`total_cost` in stroops / yoctoNEAR), each user's daily lamports,
and lamports per transaction. Days are UTC.

The quote-time check is advisory (it reads, so two quotes can both pass); the reservation
is the guarantee: one conditional `UPDATE ... SET amount_spent = amount_spent + X WHERE
amount_spent + X <= limit` per counter, whose row count says whether this execution got
the room. PostgreSQL re-checks the WHERE clause after waiting for a concurrent writer, so
no interleaving can overshoot a limit. A `SpendReservation` row remembers what was taken so
a failed execution gives it back exactly once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction
from django.db.models import DecimalField, F, Value
from django.db.models.functions import Greatest
from django.utils import timezone
from psycopg import sql

from config.chains import AMOUNT_DIGITS, NATIVE_ASSET, Chain
from config.errors import InvalidRequest
from config.prepared import prepared_statements
from risk.audit import audit_record
from risk.errors import CircuitBreakerOpen, DailyLimitExceeded, InsufficientTreasury, TransactionLimitExceeded
from risk.models import CircuitBreaker, DailySpending, SpendReservation, UserDailySpending
from risk.selectors import RiskLimits, risk_limits, utc_today
from risk.services.breaker import breaker_assert_closed, breaker_check_quote_volume

if TYPE_CHECKING:
    import datetime as dt

    from quotes.models import Quote
    from users.models import User

logger = logging.getLogger(__name__)

_AMOUNT = DecimalField(max_digits=AMOUNT_DIGITS, decimal_places=0)


@dataclass(frozen=True)
class _Counter:
    """One daily counter a spend consumes, in the order they are always locked."""

    scope: str  # the refusal's `details.scope`
    model: type[DailySpending] | type[UserDailySpending]
    key: dict[str, Any]
    amount: int
    limit: int
    asset: str


def _counters(*, limits: RiskLimits, user_id: Any, day: dt.date, lamports: int,
              source_chain: str, source_amount: int) -> list[_Counter]:
    # A fixed order (Solana row, then the source chain's row, then the user's row) so two
    # concurrent reservations never wait on each other's rows in a cycle.
    return [
        _Counter("solana_daily", DailySpending, {"chain": Chain.SOLANA, "day": day}, lamports,
                 limits.chain_daily[Chain.SOLANA], "SOL"),
        _Counter(f"{source_chain}_daily", DailySpending, {"chain": source_chain, "day": day},
                 source_amount, limits.chain_daily[source_chain],
                 NATIVE_ASSET[Chain(source_chain)]),
        _Counter("user_daily", UserDailySpending, {"user_id": user_id, "day": day}, lamports,
                 limits.user_daily_lamports, "SOL"),
    ]


def _limit_refusal(counter: _Counter, *, spent: int) -> DailyLimitExceeded:
    return DailyLimitExceeded(
        f"Daily limit exceeded ({counter.scope})",
        details={"scope": counter.scope, "asset": counter.asset, "limit": str(counter.limit),
                 "spent_today": str(spent), "requested": str(counter.amount)})


def _check_per_transaction(*, lamports: int, limits: RiskLimits) -> None:
    if lamports > limits.per_transaction_lamports:
        raise TransactionLimitExceeded(
            details={"asset": "SOL", "limit": str(limits.per_transaction_lamports),
                     "requested": str(lamports)})


def _source_chain_checked(source_chain: str) -> str:
    if source_chain not in (Chain.STELLAR, Chain.NEAR):
        raise InvalidRequest(f"Unknown source chain {source_chain!r}",
                             code="INVALID_QUOTE_PARAMETERS")
    return source_chain


# --- quote time: read only ---------------------------------------------------------------

_QUOTE_STATE = sql.SQL(
    "SELECT COALESCE((SELECT {is_open} FROM {breakers} WHERE {breaker_id} = 1), false), "
    "COALESCE((SELECT {spent} FROM {chain_days} WHERE {chain} = %s AND {day} = %s), 0), "
    "COALESCE((SELECT {spent} FROM {chain_days} WHERE {chain} = %s AND {day} = %s), 0), "
    "COALESCE((SELECT {user_spent} FROM {user_days} WHERE {user} = %s AND {user_day} = %s), 0)"
)
_quote_state_sql: str | None = None


def _quote_state_statement() -> str:
    """One statement for the breaker and the three counters a quote would consume: each a
    unique-index lookup, a missing row read as closed / nothing spent. Composed once per
    process from the models' names (compiling the equivalent ORM annotate on every quote
    cost more CPU than the rest of the quote check)."""
    global _quote_state_sql
    if _quote_state_sql is None:
        def table(model: Any) -> sql.Identifier:
            return sql.Identifier(model._meta.db_table)

        def column(model: Any, field: str) -> sql.Identifier:
            return sql.Identifier(model._meta.get_field(field).column)

        _quote_state_sql = _QUOTE_STATE.format(
            is_open=column(CircuitBreaker, "is_open"), breakers=table(CircuitBreaker),
            breaker_id=column(CircuitBreaker, "id"),
            spent=column(DailySpending, "amount_spent"), chain_days=table(DailySpending),
            chain=column(DailySpending, "chain"), day=column(DailySpending, "day"),
            user_spent=column(UserDailySpending, "amount_spent"),
            user_days=table(UserDailySpending), user=column(UserDailySpending, "user"),
            user_day=column(UserDailySpending, "day"),
        ).as_string()
    return _quote_state_sql


@dataclass(frozen=True, slots=True)
class QuoteRiskState:
    """What the quote-time check reads: the breaker and today's three counters a quote
    would consume (a missing row read as closed / nothing spent)."""

    breaker_open: bool
    solana_spent: Decimal  # numeric columns, read as PostgreSQL sends them
    source_spent: Decimal
    user_spent: Decimal


def risk_quote_state_select(*, user_id: Any, source_chain: str) -> tuple[str, list[Any]]:
    """The quote-time check's read as a one-row sub-select (QuoteRiskState's columns, in
    order) and its parameters (`%s` placeholders), for a caller that reads it inside its
    own statement: `quote_create` does, so a quote makes one round trip for everything it
    reads. Unique-index look-ups only: fit to be prepared (config.prepared)."""
    day = utc_today()
    return _quote_state_statement(), [str(Chain.SOLANA), day,
                                      _source_chain_checked(source_chain), day, user_id, day]


def risk_quote_state(*, user: User, source_chain: str) -> QuoteRiskState:
    """`risk_quote_state_select` read on its own."""
    select, params = risk_quote_state_select(user_id=user.pk, source_chain=source_chain)
    with prepared_statements(), connection.cursor() as cursor:
        cursor.execute(select, params)
        return QuoteRiskState(*cursor.fetchone())


def risk_check_quote(*, user: User, lamports_spend: int, source_chain: str,
                     source_amount: int, state: QuoteRiskState | None = None) -> None:
    """Refuse a quote the limits would refuse at execution: breaker open (503),
    over the per-transaction limit (400), or over what today's limits have left (429).

    `state`: what the caller already read with `risk_quote_state_select`; else it is read
    here. Besides that read, at most one query: the (cached) quote volume count, which may
    trip the breaker on this very quote.
    """
    source_chain = _source_chain_checked(source_chain)
    if lamports_spend < 0 or source_amount < 0:
        raise InvalidRequest("Amounts must not be negative", code="INVALID_QUOTE_PARAMETERS")
    if breaker_check_quote_volume():
        raise CircuitBreakerOpen()
    if state is None:
        state = risk_quote_state(user=user, source_chain=source_chain)
    if state.breaker_open:
        raise CircuitBreakerOpen()
    limits = risk_limits()
    _check_per_transaction(lamports=lamports_spend, limits=limits)
    counters = _counters(limits=limits, user_id=user.pk, day=utc_today(),
                         lamports=lamports_spend, source_chain=source_chain,
                         source_amount=source_amount)
    spent = {"solana_daily": state.solana_spent, f"{source_chain}_daily": state.source_spent,
             "user_daily": state.user_spent}
    # The user's own limit first: it is the one a client can act on.
    for counter in sorted(counters, key=lambda c: c.scope != "user_daily"):
        already = int(spent[counter.scope])
        if already + counter.amount > counter.limit:
            raise _limit_refusal(counter, spent=already)


# --- execution time: consume atomically ---------------------------------------------------

def _consume(counter: _Counter, *, amount: int | None = None, count: int = 1) -> bool:
    """Take `amount` (default: the counter's own) from the counter's room, for `count`
    transactions, or nothing when it does not fit."""
    amount = counter.amount if amount is None else amount
    room = counter.model.objects.filter(**counter.key, amount_spent__lte=counter.limit - amount)
    # Decimal, not int: bound server-side (config.prepared), Django sends a bare int in an
    # expression as int4, and a day's lamports do not fit.
    change = {"amount_spent": F("amount_spent") + Decimal(amount),
              "transaction_count": F("transaction_count") + count}
    if room.update(**change):
        return True
    # First spend of the day: create the row (a concurrent creator wins harmlessly), retry.
    row: Any = counter.model(**counter.key)
    counter.model.objects.bulk_create([row], ignore_conflicts=True)
    return bool(room.update(**change))


def _reservations_insert(quotes: list[Quote], *, day: dt.date) -> set[Any]:
    """Insert the reservations these quotes do not have yet; the ids of the quotes whose
    reservation this call inserted."""
    if not quotes:
        return set()
    now = timezone.now()
    values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s)"] * len(quotes))
    params: list[Any] = []
    for quote in quotes:
        params += [quote.pk, quote.user_id, day, Decimal(int(quote.max_lamports_spend)),
                   quote.source_chain, Decimal(int(quote.total_cost)),
                   SpendReservation.State.RESERVED, now]
    sql = (f"INSERT INTO {SpendReservation._meta.db_table} "  # noqa: S608 - our table, bound values
           "(quote_id, user_id, day, lamports, source_chain, source_amount, state, created_at) "
           f"VALUES {values} ON CONFLICT (quote_id) DO NOTHING RETURNING quote_id")
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {row[0] for row in cursor.fetchall()}


def risk_reserve_execution(*, quote: Quote, treasury_balance_lamports: int | None = None) -> None:
    """Consume today's limits for this quote's execution, or refuse it.

    Call inside the executor's transaction after locking the quote. Raises
    CircuitBreakerOpen while the breaker is open (leave the quote committed: it waits for
    the reset), TransactionLimitExceeded, DailyLimitExceeded, or InsufficientTreasury when
    the caller passes a treasury balance that cannot cover `max_lamports_spend`. A refusal
    leaves every counter untouched. Reserving again for the same quote is a no-op.
    """
    with transaction.atomic():
        breaker_assert_closed()
        limits = risk_limits()
        lamports = int(quote.max_lamports_spend)
        source_amount = int(quote.total_cost)
        source_chain = _source_chain_checked(quote.source_chain)
        _check_per_transaction(lamports=lamports, limits=limits)
        if treasury_balance_lamports is not None and lamports > treasury_balance_lamports:
            raise InsufficientTreasury(details={"required_lamports": str(lamports),
                                                "treasury_lamports": str(treasury_balance_lamports)})
        day = utc_today()
        if quote.pk not in _reservations_insert([quote], day=day):
            return
        for counter in _counters(limits=limits, user_id=quote.user_id, day=day,
                                 lamports=lamports, source_chain=source_chain,
                                 source_amount=source_amount):
            if not _consume(counter):
                spent = counter.model.objects.filter(**counter.key).values_list(
                    "amount_spent", flat=True).first()
                # Raising rolls this savepoint back: the reservation row and the counters
                # already consumed above are undone with it.
                raise _limit_refusal(counter, spent=int(spent or 0))


def risk_release_execution(*, quote: Quote) -> bool:
    """Give a failed execution's reservation back, exactly once; True if this call did it."""
    with transaction.atomic():
        released = SpendReservation.objects.filter(
            quote_id=quote.pk, state=SpendReservation.State.RESERVED,
        ).update(state=SpendReservation.State.RELEASED, settled_at=timezone.now())
        if not released:
            return False
        reservation = SpendReservation.objects.get(quote_id=quote.pk)
        lamports, source_amount = int(reservation.lamports), int(reservation.source_amount)
        for counter in _counters(limits=risk_limits(), user_id=reservation.user_id,
                                 day=reservation.day, lamports=lamports,
                                 source_chain=reservation.source_chain,
                                 source_amount=source_amount):
            # Floored at zero: an operator who zeroed a counter by hand must not make the
            # failure path crash on the non-negative CHECK.
            counter.model.objects.filter(**counter.key).update(
                amount_spent=Greatest(F("amount_spent") - Decimal(counter.amount), Value(Decimal(0)),
                                      output_field=_AMOUNT),
                transaction_count=Greatest(F("transaction_count") - 1, Value(0)))
        audit_record(event_type="spend_released", actor="system:risk", entity_type="quote",
                     entity_id=quote.pk, user_id=reservation.user_id,
                     details={"day": reservation.day.isoformat(), "lamports": str(lamports),
                              "source_chain": reservation.source_chain,
                              "source_amount": str(source_amount)})
    return True


def risk_consume_execution(*, quote: Quote) -> bool:
    """Mark a reservation spent (the execution landed), so it can never be released."""
    return bool(risk_consume_executions([quote.pk]))


def risk_consume_executions(quote_ids: list[Any]) -> int:
    """`risk_consume_execution` for a batch of landed executions."""
    return SpendReservation.objects.filter(
        quote_id__in=quote_ids, state=SpendReservation.State.RESERVED,
    ).update(state=SpendReservation.State.CONSUMED, settled_at=timezone.now())


def treasury_balance_lamports() -> int:
    """The treasury's SOL per the ledger, for callers without a fresh chain reading."""
    from settlement.ledger import account_balance, account_code

    return account_balance(account_code("treasury", Chain.SOLANA, "SOL"))
