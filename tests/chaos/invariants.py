"""The invariants every chaos test (and the soak) checks after its faults.

Each check returns a list of problems (empty = holds):

  ledger_balanced        every journal entry sums to zero per asset
  no_negative_balances   no ledger account on the wrong side (assets and expenses >= 0;
                         liabilities, revenue and equity <= 0); no user balance below zero
  locked_within_total    a user's locked balance never exceeds the balance
  quote_histories        every quote's transitions form one allowed path from `pending` to
                         its status, and its status has what it implies: a paid quote one
                         committing payment, an executed one a confirmed execution, ...
  executions_once        per execution at most one attempt landed (in our records AND on
                         the chain: the signatures of all its attempts are looked up), a
                         confirmed one exactly one, with no error; a failed one nothing
  payments_booked        every recorded payment has its ledger entry
  reconciliation         `reconcile_run`: books against themselves and the chain
                         (treasury balances, recorded transactions), no mismatch, no error

Run in-process (`invariant_report()`), or against any database from a shell:

    DATABASE_URL=... SOLANA_RPC_URL=... python -m tests.chaos.invariants check
    DATABASE_URL=... SOLANA_RPC_URL=... python -m tests.chaos.invariants open-books

`open-books` books the treasury's current Solana balances as owners' inventory, so a fresh
database and a chain that already holds money start with books = chain.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections import defaultdict
from typing import Any

from django.db.models import Count, Q, Sum

QUOTE_NEEDS_PAYMENT = {"committed", "executing", "executed", "failed", "refund_due", "refunded"}


def ledger_balanced() -> list[str]:
    from settlement.ledger import unbalanced_entries

    return [f"entry {row['entry_id']} sums to {row['sum']} {row['asset']}" for row in unbalanced_entries()]


def no_negative_balances() -> list[str]:
    from settlement.models import LedgerAccount, Posting, UserBalance

    debit_normal = {LedgerAccount.Kind.ASSET, LedgerAccount.Kind.EXPENSE}
    problems = []
    rows = (Posting.objects.values("account__code", "account__kind")
            .annotate(total=Sum("amount")))
    for row in rows:
        total = int(row["total"] or 0)
        if row["account__kind"] in debit_normal and total < 0:
            problems.append(f"{row['account__code']} ({row['account__kind']}) is negative: {total}")
        if row["account__kind"] not in debit_normal and total > 0:
            problems.append(f"{row['account__code']} ({row['account__kind']}) is on the debit side: {total}")
    for balance in UserBalance.objects.filter(Q(amount__lt=0) | Q(locked__lt=0)):
        problems.append(f"user balance {balance.pk} below zero: {balance.amount} / locked {balance.locked}")
    return problems


def locked_within_total() -> list[str]:
    from django.db.models import F

    from settlement.models import UserBalance

    return [f"user balance {b.pk}: locked {b.locked} > total {b.amount}"
            for b in UserBalance.objects.filter(locked__gt=F("amount"))]


def quote_histories() -> list[str]:
    from execution.models import Execution
    from quotes.models import Quote, QuoteTransition
    from quotes.services.transitions import ALLOWED
    from settlement.models import FundingPayment, JournalEntry, Refund

    problems: list[str] = []
    paths: dict[Any, list[tuple[str, str]]] = defaultdict(list)
    for quote_id, from_status, to_status in (QuoteTransition.objects.order_by("quote_id", "at", "id")
                                             .values_list("quote_id", "from_status", "to_status")):
        paths[quote_id].append((from_status, to_status))
    committing = dict(FundingPayment.objects.filter(status__in=["matched", "overpaid"])
                      .values("quote_id").annotate(n=Count("id")).values_list("quote_id", "n"))
    executions = {e.quote_id: e for e in Execution.objects.only("quote_id", "status", "fail_reason")}
    references = set(JournalEntry.objects.filter(
        Q(reference__startswith="revenue:") | Q(reference__startswith="refund:execution:"))
        .values_list("reference", flat=True))
    refunded_quotes = set(Refund.objects.filter(reason="execution_failed").values_list("quote_id", flat=True))

    for quote in Quote.objects.only("id", "status", "pay_from_balance"):
        where = f"quote {quote.pk} ({quote.status})"
        path = paths.get(quote.pk, [])
        current = "pending"
        for index, (from_status, to_status) in enumerate(path):
            if index == 0 and from_status == "":
                if to_status != "pending":
                    problems.append(f"{where}: created as {to_status}")
                continue
            if from_status != current:
                problems.append(f"{where}: history jumps from {current} to a move out of {from_status}")
            if to_status not in ALLOWED.get(from_status, set()):
                problems.append(f"{where}: forbidden move {from_status} -> {to_status}")
            current = to_status
        if current != quote.status:
            problems.append(f"{where}: history ends at {current}")

        paid = committing.get(quote.pk, 0)
        if quote.status in QUOTE_NEEDS_PAYMENT and not quote.pay_from_balance and paid != 1:
            problems.append(f"{where}: {paid} committing payments (expected 1)")
        if quote.status not in QUOTE_NEEDS_PAYMENT and paid:
            problems.append(f"{where}: committed by a payment but {quote.status}")
        execution = executions.get(quote.pk)
        if quote.status in ("pending", "expired", "cancelled", "committed") and execution is not None:
            problems.append(f"{where}: has an execution ({execution.status})")
        if quote.status == "executing" and (execution is None or execution.status in ("confirmed", "failed")):
            problems.append(f"{where}: execution is {execution.status if execution else 'missing'}")
        if quote.status == "executed":
            if execution is None or execution.status != "confirmed":
                problems.append(f"{where}: execution is {execution.status if execution else 'missing'}")
            if f"revenue:{quote.pk}" not in references:
                problems.append(f"{where}: no revenue entry")
        if quote.status in ("failed", "refund_due", "refunded"):
            if execution is None or execution.status != "failed":
                problems.append(f"{where}: execution is {execution.status if execution else 'missing'}")
            if not quote.pay_from_balance and (f"refund:execution:{quote.pk}" not in references
                                               or quote.pk not in refunded_quotes):
                problems.append(f"{where}: failed without its refund entry and refund record")
    return problems


def executions_once(*, chain: bool = True) -> list[str]:
    from solders.signature import Signature

    from execution.models import Execution, ExecutionAttempt

    problems: list[str] = []
    attempts: dict[Any, list[ExecutionAttempt]] = defaultdict(list)
    for attempt in ExecutionAttempt.objects.only("execution_id", "signature", "state", "number"):
        attempts[attempt.execution_id].append(attempt)
    executions = list(Execution.objects.only("id", "status", "signature", "fail_reason"))
    backend = None
    if chain:
        from execution.services.chain import solana_backend

        backend = solana_backend()
    for execution in executions:
        where = f"execution {execution.pk} ({execution.status})"
        mine = attempts.get(execution.pk, [])
        landed = [a for a in mine if a.state == "landed"]
        if len(landed) > 1:
            problems.append(f"{where}: {len(landed)} attempts recorded as landed")
        if execution.status == "confirmed" and [a.signature for a in landed] != [execution.signature]:
            problems.append(f"{where}: confirmed without exactly one landed attempt with its signature")
        if backend is None or not mine:
            continue
        statuses = backend.signature_statuses([Signature.from_string(a.signature) for a in mine])
        on_chain = [(a, s) for a, s in zip(mine, statuses, strict=True) if s is not None]
        if len(on_chain) > 1:
            problems.append(f"{where}: {len(on_chain)} of its attempts are on chain: "
                            + ", ".join(a.signature for a, _ in on_chain))
        if execution.status == "confirmed":
            landed_ok = [a.signature for a, state in on_chain if state.err is None]
            if landed_ok != [execution.signature]:
                problems.append(f"{where}: its signature is not on chain as a success")
        elif execution.status == "failed" and execution.fail_reason != "PROGRAM_ERROR" and on_chain:
            problems.append(f"{where}: failed ({execution.fail_reason}) but an attempt landed")
    return problems


def payments_booked() -> list[str]:
    from settlement.models import FundingPayment, JournalEntry

    references = set(JournalEntry.objects.filter(reference__startswith="payment:")
                     .values_list("reference", flat=True))
    return [f"payment {p.chain}:{p.tx_hash} ({p.status}) has no ledger entry"
            for p in FundingPayment.objects.only("chain", "tx_hash", "status")
            if f"payment:{p.chain}:{p.tx_hash}" not in references]


def reconciliation() -> list[str]:
    from settlement.services.reconciliation import reconcile_run

    report = reconcile_run(triggered_by="chaos-invariants")
    problems = [json.dumps(m, sort_keys=True, default=str)[:400] for m in report.mismatches]
    for name, check in (report.checks or {}).items():
        if check.get("status") == "error":
            problems.append(f"reconciliation check {name} errored: {check.get('summary')} "
                            f"{json.dumps(check.get('details'), default=str)[:300]}")
    if report.outcome != "ok" and not problems:
        problems.append(f"reconciliation outcome {report.outcome}")
    return problems


def quote_status_counts() -> dict[str, int]:
    from quotes.models import Quote

    return dict(Quote.objects.values("status").annotate(n=Count("id")).values_list("status", "n"))


def invariant_report(*, chain: bool = True, reconcile: bool = True) -> dict[str, Any]:
    checks: dict[str, list[str]] = {
        "ledger_balanced": ledger_balanced(),
        "no_negative_balances": no_negative_balances(),
        "locked_within_total": locked_within_total(),
        "quote_histories": quote_histories(),
        "executions_once": executions_once(chain=chain),
        "payments_booked": payments_booked(),
    }
    if reconcile:
        checks["reconciliation"] = reconciliation()
    from execution.models import Execution
    from settlement.models import FundingPayment, JournalEntry

    return {
        "ok": not any(checks.values()),
        "problems": {name: found for name, found in checks.items() if found},
        "checked": sorted(checks),
        "facts": {"quotes": quote_status_counts(),
                  "executions": dict(Execution.objects.values("status").annotate(n=Count("id"))
                                     .values_list("status", "n")),
                  "failed_executions": [
                      {"execution_id": str(e.pk), "fail_reason": e.fail_reason,
                       "error": e.error_message[:300],
                       "history": [(t.at.isoformat()[11:23], t.actor, t.to_status, t.details)
                                   for t in e.transitions.all()]}
                      for e in Execution.objects.filter(status="failed").order_by("updated_at")[:50]],
                  "payments": FundingPayment.objects.count(),
                  "journal_entries": JournalEntry.objects.count()},
    }


def assert_invariants(**kwargs: Any) -> dict[str, Any]:
    report = invariant_report(**kwargs)
    assert report["ok"], "invariants broken:\n" + json.dumps(report["problems"], indent=2)[:6000]
    return report


def open_books_at_chain(*, label: str = "chaos") -> dict[str, int]:
    """Book the treasury's current Solana balances (SOL and the USDC mint) as inventory, so
    books = chain from here on. Returns what was booked per asset."""
    from django.conf import settings
    from solders.pubkey import Pubkey

    from execution.services.chain import solana_backend, treasury_pubkey
    from execution.solana.spl import associated_token_address
    from settlement.ledger import account_balance, account_code
    from settlement.services.reconciliation import treasury_inventory_record
    from settlement.services.treasury import treasury_accounts_ensure

    treasury_accounts_ensure()
    backend, treasury = solana_backend(), treasury_pubkey()
    on_chain = {"SOL": backend.balance(treasury)}
    if settings.SOLANA_USDC_MINT:
        mint = Pubkey.from_string(settings.SOLANA_USDC_MINT)
        on_chain[settings.SOLANA_USDC_MINT] = backend.token_balance(associated_token_address(treasury, mint))
    booked = {}
    for asset, balance in on_chain.items():
        difference = balance - account_balance(account_code("treasury", "solana", asset))
        if difference:
            treasury_inventory_record(chain="solana", asset=asset, amount=difference,
                                      reason="opening inventory for a chaos run", actor=label,
                                      reference=f"{label}:{asset}:{uuid.uuid4().hex[:12]}")
            booked[asset] = difference
    return booked


def main(argv: list[str]) -> int:
    import os

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    command = argv[0] if argv else "check"
    if command == "open-books":
        print(json.dumps({"booked": {k: str(v) for k, v in open_books_at_chain().items()}}))
        return 0
    if command == "check":
        report = invariant_report(reconcile="--no-reconcile" not in argv)
        print(json.dumps(report, default=str))
        return 0 if report["ok"] else 1
    print(f"unknown command {command!r}: check | open-books", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
