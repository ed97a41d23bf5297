"""The ledger's one write path: balanced journal entries, posted once per business event.

`ledger_post` writes an entry and its postings in the caller's transaction. Its
`reference` is UNIQUE, so posting the same business event twice (a replayed webhook, a
retried task) is refused by PostgreSQL; `ledger_post` then returns the existing entry.
Balance is checked here for a clear error, and again by the deferred trigger at commit.

Account codes (one place builds them, so every app names accounts the same way):
  treasury:<chain>:<asset>            asset      our wallet on that chain
  customer_funds:<chain>:<asset>      liability  quote payments received, not yet earned
  refunds_payable:<chain>:<asset>     liability  money we owe back (refund records)
  unmatched_deposits:<chain>:<asset>  liability  payments nobody claimed yet
  user_balance:<user>:<asset>         liability  a user's prepaid balance (available)
  user_locked:<user>:<asset>          liability  the part locked for a committed quote
  withdrawals_payable:<user>:<asset>  liability  a user's withdrawal, requested, not yet paid out
  revenue:<chain>:<asset>             revenue    what executed quotes earned (fee included)
  network_fees:solana:SOL             expense    Solana fees the treasury paid
  delivered:solana:<asset>            expense    value the treasury sent to recipients
  inventory_funding:<chain>:<asset>   equity     inventory put in by the owners
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Model, Sum

from config.bulk import insert_together
from config.chains import Chain
from config.rows import RowReader
from settlement.models import JournalEntry, LedgerAccount, Posting

Kind = LedgerAccount.Kind

_ACCOUNT_KINDS = {
    "treasury": Kind.ASSET,
    "customer_funds": Kind.LIABILITY,
    "refunds_payable": Kind.LIABILITY,
    "unmatched_deposits": Kind.LIABILITY,
    "user_balance": Kind.LIABILITY,
    "user_locked": Kind.LIABILITY,
    "withdrawals_payable": Kind.LIABILITY,
    "revenue": Kind.REVENUE,
    "network_fees": Kind.EXPENSE,
    "delivered": Kind.EXPENSE,
    "inventory_funding": Kind.EQUITY,
}

# Accounts whose scope is a user id (they carry the user foreign key).
_USER_SCOPED = ("user_balance", "user_locked", "withdrawals_payable")


class UnbalancedEntry(ValueError):
    pass


@dataclass(frozen=True)
class Leg:
    """One side of a movement: `amount` > 0 debits the account, < 0 credits it."""

    account: str
    asset: str
    amount: int


def account_code(kind: str, scope: str, asset: str) -> str:
    if kind not in _ACCOUNT_KINDS:
        raise ValueError(f"unknown ledger account kind {kind!r}")
    return f"{kind}:{scope}:{asset}"


def _chain_of(code: str, asset: str) -> str:
    scope = code.split(":")[1]
    if scope in Chain.values:
        return scope
    return {"XLM": Chain.STELLAR, "NEAR": Chain.NEAR}.get(asset, Chain.SOLANA)


_account_rows = RowReader(LedgerAccount)
_ACCOUNTS_BY_CODE = _account_rows.select + " WHERE t.code = ANY(%s)"


class _KnownAccounts:
    """Ledger accounts this process has seen committed, by code.

    Every booking needs its accounts' ids; reading them was one statement and a model
    instance per leg, on every payment and every executor batch. An account never changes
    once created (no code updates it, the admin shows it read-only, and its postings
    PROTECT it from deletion), so a committed one can be remembered for the life of the
    process. Two rules keep that true:
    * remembered only after the transaction that read or created it commits, so an account
      created by a transaction that rolls back is never handed out;
    * forgotten when the tables are emptied (`manage.py flush` and TransactionTestCase
      send post_migrate; settlement/apps.py connects `forget_all`), since ids then change.
    Per-user accounts make the set grow with users: past `LIMIT` it starts over.
    """

    LIMIT = 10_000

    def __init__(self) -> None:
        self._by_code: dict[str, LedgerAccount] = {}

    def get(self, code: str) -> LedgerAccount | None:
        return self._by_code.get(code)

    def remember_after_commit(self, accounts: dict[str, LedgerAccount]) -> None:
        transaction.on_commit(lambda: self._remember(accounts))

    def _remember(self, accounts: dict[str, LedgerAccount]) -> None:
        if len(self._by_code) + len(accounts) > self.LIMIT:
            self._by_code = {}
        self._by_code.update(accounts)

    def forget_all(self, **_signal: Any) -> None:
        self._by_code = {}


known_accounts = _KnownAccounts()


def _accounts(codes: Iterable[tuple[str, str]]) -> dict[str, LedgerAccount]:
    """The accounts of `codes` ((code, asset) pairs), created when missing: from memory
    when this process has seen them all committed, else in one query (plus one per
    account that does not exist yet)."""
    wanted = dict(codes)
    found: dict[str, LedgerAccount] = {}
    for code in wanted:
        account = known_accounts.get(code)
        if account is None:
            break
        found[code] = account
    else:
        return found
    # A fixed statement (config.rows says why).
    found = {a.code: a for a in _account_rows.all(_ACCOUNTS_BY_CODE, [list(wanted)])}
    for code, asset in wanted.items():
        if code not in found:
            kind_name, scope = code.split(":")[0], code.split(":")[1]
            user_id = scope if kind_name in _USER_SCOPED else None
            found[code], _ = LedgerAccount.objects.get_or_create(
                code=code,
                defaults={"kind": _ACCOUNT_KINDS[kind_name], "asset": asset,
                          "chain": _chain_of(code, asset), "user_id": user_id},
            )
    known_accounts.remember_after_commit(found)
    return found


@dataclass(frozen=True)
class EntrySpec:
    """One journal entry to post (`ledger_post_many`)."""

    reference: str
    kind: str
    legs: list[Leg]
    description: str = ""
    quote_id: Any = None
    user_id: Any = None
    tx_hash: str = ""


def _check_balanced(reference: str, legs: list[Leg]) -> None:
    totals: dict[str, int] = defaultdict(int)
    for leg in legs:
        if leg.amount == 0:
            raise UnbalancedEntry("a leg of zero moves nothing")
        totals[leg.asset] += leg.amount
    if not legs or any(totals.values()):
        raise UnbalancedEntry(f"entry {reference} does not balance: {dict(totals)}")


def _unsaved(spec: EntrySpec,
             accounts: dict[str, LedgerAccount]) -> tuple[JournalEntry, list[Posting]]:
    """The entry and its postings as rows not yet written (the spec checked balanced)."""
    entry = JournalEntry(reference=spec.reference, kind=spec.kind, description=spec.description,
                         quote_id=spec.quote_id, user_id=spec.user_id, tx_hash=spec.tx_hash)
    return entry, [Posting(entry=entry, account=accounts[leg.account], asset=leg.asset,
                           amount=Decimal(leg.amount)) for leg in spec.legs]


def ledger_post(*, reference: str, kind: str, legs: list[Leg], description: str = "",
                quote_id: Any = None, user_id: Any = None, tx_hash: str = "") -> JournalEntry:
    """Post a balanced entry once per `reference`; a repeat returns the first entry."""
    _check_balanced(reference, legs)
    accounts = _accounts((leg.account, leg.asset) for leg in legs)
    entry, postings = _unsaved(EntrySpec(reference=reference, kind=kind, legs=legs,
                                         description=description, quote_id=quote_id,
                                         user_id=user_id, tx_hash=tx_hash), accounts)
    try:
        with transaction.atomic():  # savepoint: a duplicate reference must not poison the caller
            entry.save(force_insert=True)
            Posting.objects.bulk_create(postings)
    except IntegrityError:
        existing = JournalEntry.objects.filter(reference=reference).first()
        if existing is None:
            raise
        return existing
    return entry


def ledger_post_many(entries: list[EntrySpec]) -> None:
    """Post several new entries in two statements (the accounts, then the entries with
    their postings as one insert: `config.bulk.insert_together`, which costs the client a
    fraction of the ORM's two `bulk_create`s).

    For callers that know every reference is new (the executor's batch, whose quotes moved
    state in the same transaction): a duplicate reference raises IntegrityError and rolls
    the caller's transaction back, instead of returning the first entry as `ledger_post`
    does.
    """
    if not entries:
        return
    for spec in entries:
        _check_balanced(spec.reference, spec.legs)
    accounts = _accounts((leg.account, leg.asset) for spec in entries for leg in spec.legs)
    rows: list[Model] = []
    for spec in entries:
        entry, postings = _unsaved(spec, accounts)
        rows += [entry, *postings]
    insert_together(*rows)


def ledger_entry_rows(spec: EntrySpec) -> list[Model]:
    """A new balanced entry and its postings as unsaved rows, for a caller that inserts
    them with its other rows in one statement (`config.bulk.insert_together`) because it
    knows the reference is new."""
    _check_balanced(spec.reference, spec.legs)
    entry, postings = _unsaved(spec, _accounts((leg.account, leg.asset) for leg in spec.legs))
    return [entry, *postings]


def account_balance(code: str) -> int:
    """Debit-positive balance of one account (liabilities therefore read negative)."""
    total = Posting.objects.filter(account__code=code).aggregate(s=Sum("amount"))["s"]
    return int(total or 0)


def balances_by_account(prefix: str = "") -> dict[str, int]:
    rows = (Posting.objects.filter(account__code__startswith=prefix)
            .values("account__code").annotate(total=Sum("amount")))
    return {r["account__code"]: int(r["total"]) for r in rows}


def unbalanced_entries() -> list[dict[str, Any]]:
    """Entries whose postings do not sum to zero per asset (should always be empty)."""
    rows = (Posting.objects.values("entry_id", "asset").annotate(total=Sum("amount"))
            .exclude(total=0))
    return [{"entry_id": str(r["entry_id"]), "asset": r["asset"], "sum": int(r["total"])}
            for r in rows]
