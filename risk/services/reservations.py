"""Spend reservations for a batch of executions: `risk_reserve_execution`, many at once.

The executor starts committed quotes in batches. Reserving them one by one would take the
same three counter rows (Solana's day, the source chain's day, the user's day) once per
quote; here each counter is consumed ONCE with the batch's sum, by the same conditional
UPDATE, in the same lock order (Solana, then source chains, then users; every reservation
in the system takes the Solana row first, so no two can wait on each other in a cycle).

When the sum does not fit under a limit, the batch falls back to reserving quote by quote
with `risk_reserve_execution`, so exactly the quotes that fit in order get the room and
the others get the refusal they would have had alone. A fixed order of admission is
what a limit means; the aggregate is only a faster way to the same answer when all fit.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction

from risk.errors import DailyLimitExceeded, InsufficientTreasury, TransactionLimitExceeded
from risk.models import DailySpending, UserDailySpending
from risk.selectors import risk_limits, utc_today
from risk.services.breaker import breaker_assert_closed
from risk.services.limits import (
    _check_per_transaction,
    _consume,
    _Counter,
    _counters,
    _reservations_insert,
    _source_chain_checked,
    risk_reserve_execution,
)

if TYPE_CHECKING:
    from quotes.models import Quote

Refusal = DailyLimitExceeded | TransactionLimitExceeded | InsufficientTreasury


class _DoesNotFit(Exception):
    """The batch's sum does not fit under a limit: roll the aggregate back."""


def risk_reserve_executions(quotes: list[Quote]) -> dict[Any, Refusal]:
    """Reserve today's limits for every quote, or refuse some. Returns the refusals by quote
    id (the others are reserved). Call inside the executor's transaction with the quotes
    locked. Raises CircuitBreakerOpen (nothing reserved) while the breaker is open.
    """
    if not quotes:
        return {}
    breaker_assert_closed()
    limits = risk_limits()
    refused: dict[Any, Refusal] = {}
    fitting = []
    for quote in quotes:
        _source_chain_checked(quote.source_chain)
        try:
            _check_per_transaction(lamports=int(quote.max_lamports_spend), limits=limits)
        except TransactionLimitExceeded as exc:
            refused[quote.pk] = exc
            continue
        fitting.append(quote)
    try:
        with transaction.atomic():
            _reserve_together(fitting, limits=limits)
        return refused
    except _DoesNotFit:
        pass
    for quote in fitting:  # one by one, in order: exactly what fits is admitted
        try:
            risk_reserve_execution(quote=quote)
        except (DailyLimitExceeded, TransactionLimitExceeded, InsufficientTreasury) as exc:
            refused[quote.pk] = exc
    return refused


def _reserve_together(quotes: list[Quote], *, limits: Any) -> None:
    day = utc_today()
    new = _reservations_insert(quotes, day=day)
    sums: dict[tuple[type, tuple[tuple[str, Any], ...]], list[Any]] = {}
    order: list[tuple[type, tuple[tuple[str, Any], ...]]] = []
    for quote in quotes:
        if quote.pk not in new:
            continue  # reserved before (a resumed start): nothing more to take
        for counter in _counters(limits=limits, user_id=quote.user_id, day=day,
                                 lamports=int(quote.max_lamports_spend),
                                 source_chain=quote.source_chain,
                                 source_amount=int(quote.total_cost)):
            key = (counter.model, tuple(sorted(counter.key.items())))
            if key not in sums:
                sums[key] = [counter, 0, 0]
                order.append(key)
            sums[key][1] += counter.amount
            sums[key][2] += 1
    users: list[tuple[_Counter, int, int]] = []
    for key in sorted(order, key=_lock_rank):
        counter, amount, count = sums[key]
        if counter.model is UserDailySpending:
            users.append((counter, amount, count))
        elif not _consume(counter, amount=amount, count=count):
            raise _DoesNotFit
    if users and not _consume_user_sums(users, day=day):
        raise _DoesNotFit


def _lock_rank(key: tuple[type, tuple[tuple[str, Any], ...]]) -> tuple[int, str]:
    model, items = key
    scope = dict(items)
    if model is DailySpending:
        return (0 if scope["chain"] == "solana" else 1, str(scope["chain"]))
    return (2, str(scope["user_id"]))


def _consume_user_sums(users: list[tuple[_Counter, int, int]], *, day: Any) -> bool:
    """Every user's daily counter in one conditional UPDATE (after one INSERT of the rows
    a user's first spend of the day needs). All or nothing: False when any user's sum does
    not fit, and the caller rolls back. The order rows are locked in does not matter here:
    the Solana row, which every reservation takes first, is already ours."""
    table = UserDailySpending._meta.db_table
    UserDailySpending.objects.bulk_create(
        [UserDailySpending(**counter.key) for counter, _, _ in users],
        ignore_conflicts=True)
    limit = users[0][0].limit  # one per-user limit for everyone
    values = ", ".join(["(%s::uuid, %s::numeric, %s::integer)"] * len(users))
    params: list[Any] = []
    for counter, amount, count in users:
        params += [counter.key["user_id"], Decimal(amount), count]
    sql = (f"UPDATE {table} AS t SET amount_spent = t.amount_spent + v.amount, "  # noqa: S608
           "transaction_count = t.transaction_count + v.n "
           f"FROM (VALUES {values}) AS v(user_id, amount, n) "
           "WHERE t.user_id = v.user_id AND t.day = %s AND t.amount_spent + v.amount <= %s")
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, day, Decimal(limit)])
        return cursor.rowcount == len(users)
