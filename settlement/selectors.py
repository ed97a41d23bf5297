"""Reads with logic over the books: balances and their history, withdrawals, settlements
(by status, by user, stuck), TVL, and the proof that cached balances equal the ledger."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from django.conf import settings
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from config.chains import NATIVE_ASSET, NATIVE_DECIMALS, SOURCE_CHAINS, format_amount
from settlement.models import (
    Posting,
    Settlement,
    SettlementStatus,
    SettlementTransition,
    UserBalance,
    Withdrawal,
)

USER_ACCOUNT_KINDS = ("user_balance", "user_locked", "withdrawals_payable")
# How a user reads each of their accounts in the history.
_USER_ACCOUNT_LABEL = {"user_balance": "available", "user_locked": "locked",
                       "withdrawals_payable": "withdrawing"}


# -- balances ---------------------------------------------------------------------------------


def balances_for_user(*, user: Any) -> list[UserBalance]:
    """One balance per chain that holds prepaid balances (zero rows are not stored)."""
    rows = {b.chain: b for b in UserBalance.objects.filter(user=user)}
    return [rows.get(chain) or UserBalance(user=user, chain=chain, asset=NATIVE_ASSET[chain])
            for chain in SOURCE_CHAINS]


def balance_history_for_user(*, user: Any, chain: str | None = None) -> QuerySet[Posting]:
    """The user's postings, newest first: every movement of their available, locked and
    withdrawing money (entry kind, amount, time)."""
    postings = (Posting.objects.filter(account__user=user,
                                       account__code__regex=rf"^({'|'.join(USER_ACCOUNT_KINDS)}):")
                .select_related("entry", "account").order_by("-entry__created_at", "-pk"))
    if chain:
        postings = postings.filter(account__chain=chain)
    return postings


def history_item(posting: Posting) -> dict[str, Any]:
    """One posting as the user sees it: a credit to their (liability) account is money in."""
    kind = posting.account.code.split(":")[0]
    user_amount = -int(posting.amount)
    decimals = NATIVE_DECIMALS.get(posting.asset, 0)
    return {
        "id": posting.pk,
        "at": posting.entry.created_at.isoformat(),
        "kind": posting.entry.kind,
        "description": posting.entry.description,
        "account": _USER_ACCOUNT_LABEL.get(kind, kind),
        "chain": posting.account.chain,
        "asset": posting.asset,
        "amount": str(user_amount),
        "amount_display": format_amount(abs(user_amount), decimals) if user_amount >= 0
        else "-" + format_amount(-user_amount, decimals),
        "quote_id": str(posting.entry.quote_id) if posting.entry.quote_id else None,
        "tx_hash": posting.entry.tx_hash or None,
    }


def withdrawals_for_user(*, user: Any) -> QuerySet[Withdrawal]:
    return Withdrawal.objects.filter(user=user).order_by("-created_at")


def _user_ledger_totals() -> dict[tuple[str, str], dict[str, int]]:
    """(user id, asset) → {kind: debit-positive balance} for every user-scoped account."""
    rows = (Posting.objects.filter(account__code__regex=rf"^({'|'.join(USER_ACCOUNT_KINDS)}):")
            .values("account__code", "account__asset").annotate(total=Sum("amount")))
    totals: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(USER_ACCOUNT_KINDS, 0))
    for row in rows:
        kind, user_id, _ = row["account__code"].split(":", 2)
        totals[(user_id, row["account__asset"])][kind] = int(row["total"] or 0)
    return totals


def user_balance_disagreements() -> list[dict[str, Any]]:
    """Every user balance whose cached columns differ from its postings, or whose ledger
    accounts went the wrong way (a liability with a debit balance: money we never had).

    Cached:  amount == -(user_balance + user_locked + withdrawals_payable)
             locked == -(user_locked + withdrawals_payable)
    """
    problems: list[dict[str, Any]] = []
    ledger = _user_ledger_totals()
    seen: set[tuple[str, str]] = set()
    for balance in UserBalance.objects.all().order_by("pk"):
        key = (str(balance.user_id), balance.asset)
        seen.add(key)
        kinds = ledger.get(key, dict.fromkeys(USER_ACCOUNT_KINDS, 0))
        expected_amount = -sum(kinds.values())
        expected_locked = -(kinds["user_locked"] + kinds["withdrawals_payable"])
        if int(balance.amount) != expected_amount or int(balance.locked) != expected_locked:
            problems.append({"user_id": key[0], "asset": balance.asset, "chain": balance.chain,
                             "cached_amount": str(int(balance.amount)),
                             "ledger_amount": str(expected_amount),
                             "cached_locked": str(int(balance.locked)),
                             "ledger_locked": str(expected_locked)})
    for key, kinds in ledger.items():
        if key not in seen and any(kinds.values()):
            problems.append({"user_id": key[0], "asset": key[1], "cached_amount": None,
                             "ledger_amount": str(-sum(kinds.values())),
                             "problem": "ledger holds money for a user without a balance row"})
        for kind, value in kinds.items():
            if value > 0:
                problems.append({"user_id": key[0], "asset": key[1], "account": kind,
                                 "ledger_balance": str(value),
                                 "problem": "user account below zero"})
    return problems


def tvl_by_chain() -> dict[str, dict[str, Any]]:
    """Total value held for users, per chain and asset: prepaid balances (available, locked,
    withdrawing) plus customer funds (paid quotes not yet earned or refunded)."""
    liabilities = (Posting.objects
                   .filter(Q(account__code__regex=rf"^({'|'.join(USER_ACCOUNT_KINDS)}):")
                           | Q(account__code__startswith="customer_funds:"))
                   .values("account__code", "account__chain", "asset").annotate(total=Sum("amount")))
    tvl: dict[str, dict[str, Any]] = {}
    for row in liabilities:
        kind = row["account__code"].split(":")[0]
        chain, asset = row["account__chain"], row["asset"]
        held = -int(row["total"] or 0)
        entry = tvl.setdefault(chain, {}).setdefault(asset, {
            "prepaid_balances": 0, "locked": 0, "withdrawing": 0, "customer_funds": 0})
        if kind == "customer_funds":
            entry["customer_funds"] += held
        else:
            entry["prepaid_balances"] += held
            if kind == "user_locked":
                entry["locked"] += held
            elif kind == "withdrawals_payable":
                entry["withdrawing"] += held
    users = {row["chain"]: row["n"] for row in
             UserBalance.objects.filter(amount__gt=0).values("chain").annotate(n=Count("pk"))}
    for chain, assets in tvl.items():
        for asset, entry in assets.items():
            decimals = NATIVE_DECIMALS.get(asset, 6)
            entry["total"] = entry["prepaid_balances"] + entry["customer_funds"]
            entry["display"] = {name: format_amount(value, decimals)
                                for name, value in entry.items() if isinstance(value, int)}
            entry["users_with_balance"] = int(users.get(chain, 0))
            for name in ("prepaid_balances", "locked", "withdrawing", "customer_funds", "total"):
                entry[name] = str(entry[name])
    return tvl


# -- settlements ------------------------------------------------------------------------------


def _settlements() -> QuerySet[Settlement]:
    return Settlement.objects.select_related("execution", "execution__quote", "funding_payment")


def settlements_by_status(*, status: str) -> QuerySet[Settlement]:
    return _settlements().filter(status=status).order_by("created_at")


def settlements_for_user(*, user: Any) -> QuerySet[Settlement]:
    return _settlements().filter(execution__quote__user=user).order_by("-created_at")


def settlement_history(*, settlement: Settlement) -> QuerySet[SettlementTransition]:
    return settlement.transitions.order_by("at", "pk")


def settlements_stuck(*, older_than_seconds: int | None = None,
                      now: dt.datetime | None = None) -> QuerySet[Settlement]:
    """Settlements not final after the threshold (default SETTLEMENT_STUCK_AFTER_SECONDS,
    1 h): pending or verified ones that should have moved, and timed-out ones waiting for
    an operator. Oldest first."""
    seconds = settings.SETTLEMENT_STUCK_AFTER_SECONDS if older_than_seconds is None else older_than_seconds
    cutoff = (now or timezone.now()) - dt.timedelta(seconds=int(seconds))
    return (_settlements()
            .filter(status__in=[SettlementStatus.PENDING, SettlementStatus.VERIFIED,
                                SettlementStatus.TIMED_OUT], created_at__lt=cutoff)
            .order_by("created_at"))
