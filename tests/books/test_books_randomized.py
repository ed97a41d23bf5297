"""The books always match the chains: a seeded run of a few hundred mixed operations through
the real services, then the invariants.

Chains: Solana is the LiteSVM sandbox server (quotes are priced and executed on it for real).
Stellar and NEAR run twice: in live mode against Horizon / NEAR JSON-RPC fakes that keep
balances (tests/books/ledger_fakes.py), so "books = chain" is checked for every asset, not
assumed: users' real signed envelopes / transactions land on those fakes, and the service
submits its own signed payouts (withdrawals, refunds) to them; and in sandbox mode (the
embedded default), where the signed bytes are the evidence and reconciliation reports those
two treasuries as not checkable.

Operations: quotes (SOL and USDC work), payments exact / under / over / late / duplicate /
with an unknown memo, executions that succeed and executions that fail (the recipient's token
account broken between quote and execution), balance deposits, quotes paid from the balance,
withdrawals (small, large with operator approval or rejection, and two at once for more than
half the balance), refunds approved and paid out, cancellations, the expiry sweep.

Afterwards: every journal entry balances; no balance is negative and locked ≤ total, and the
cached balances equal their postings; no liability account ever went into debit; the books
equal the chain for every asset (directly, and by `reconcile_run` with every check `ok`);
every quote is in a final state, or an explainable one with its evidence.

Reproduce a failure with BOOKS_SEED=<seed> (and BOOKS_OPERATIONS=<n>).
"""

from __future__ import annotations

import datetime as dt
import os
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.db.models import Sum
from django.utils import timezone
from solders.keypair import Keypair

from execution.models import Execution
from execution.solana.spl import TOKEN_ACCOUNT_SIZE, TOKEN_PROGRAM_ID
from execution.tasks import execute_quote
from quotes.models import Quote
from quotes.services.quotes import quote_cancel, quotes_expire_due
from settlement.ledger import account_balance, account_code, unbalanced_entries
from settlement.models import (
    FundingPayment,
    JournalEntry,
    Posting,
    Refund,
    Settlement,
    UserBalance,
    Withdrawal,
)
from settlement.selectors import user_balance_disagreements
from settlement.services.balances import InsufficientFunds, quote_pay_from_balance
from settlement.services.reconciliation import reconcile_run, treasury_inventory_record
from settlement.services.refund_payouts import refund_pay_out
from settlement.services.refunds import refund_mark, unmatched_payment_refund
from settlement.services.settlements import settlements_advance
from settlement.services.withdrawals import (
    withdrawal_approve,
    withdrawal_execute,
    withdrawal_reject,
    withdrawal_request,
)
from tests.books.books_kit import (
    NEAR,
    NEAR_TREASURY,
    XLM,
    Customer,
    balance_of,
    deposit,
    new_quote,
    pay,
    pay_quote,
    run_threads,
    sol_transfer_work,
    usdc_transfer_work,
)
from tests.factories import UserFactory

SEED = int(os.environ.get("BOOKS_SEED", "20261121"))
OPERATIONS = int(os.environ.get("BOOKS_OPERATIONS", "300"))
CUSTOMERS = 6
PAID = ("committed", "executing", "executed", "failed", "refund_due", "refunded")
LIABILITIES = ("customer_funds:", "refunds_payable:", "unmatched_deposits:", "user_balance:",
               "user_locked:", "withdrawals_payable:")


class World:
    def __init__(self, rng: random.Random, sandbox: Any, horizon: Any, near_rpc: Any) -> None:
        self.rng = rng
        self.sandbox = sandbox
        self.horizon = horizon
        self.near_rpc = near_rpc
        self.live = horizon is not None
        self.chains = {"horizon": horizon, "near_rpc": near_rpc} if self.live else {}
        self.customers = [Customer() for _ in range(CUSTOMERS)]
        if self.live:
            for customer in self.customers:
                horizon.fund(customer.stellar.public_key, 200_000 * XLM)
                near_rpc.fund(customer.near_account, 3_000 * NEAR)
        self.owner: dict[Any, Customer] = {}
        self.usdc_recipient: dict[Any, Any] = {}
        self.outcomes: Counter[str] = Counter()
        self.log: list[str] = []
        operator = UserFactory(is_staff=True, username=f"ops-{SEED}")
        operator.user_permissions.add(Permission.objects.get(codename="approve_withdrawal"))
        self.operator = type(operator).objects.get(pk=operator.pk)

    # -- picking ----------------------------------------------------------------------------

    def _quotes(self, **filters: Any) -> list[Quote]:
        return list(Quote.objects.filter(pk__in=list(self.owner), **filters).order_by("created_at"))

    def _pick(self, items: list[Any]) -> Any:
        return self.rng.choice(items) if items else None

    def _pending(self) -> Quote | None:
        return self._pick(self._quotes(status="pending", expires_at__gt=timezone.now()))

    def _note(self, text: str) -> None:
        self.log.append(text)
        self.outcomes[text] += 1

    # -- operations (each returns False when it had nothing to act on) ----------------------

    def op_quote(self) -> bool:
        customer = self._pick(self.customers)
        chain = self.rng.choice(["stellar", "near"])
        recipient_account = None
        if self.rng.random() < 0.35:
            recipient_account = self.sandbox.usdc_account_for(Keypair().pubkey())
            work = usdc_transfer_work(self.sandbox, recipient_account, self.rng.randrange(10**5, 40 * 10**6))
        else:
            work = sol_transfer_work(Keypair().pubkey(), self.rng.randrange(1_000_000, 15_000_000))
        quote = new_quote(customer, chain, work)
        self.owner[quote.pk] = customer
        if recipient_account is not None:
            self.usdc_recipient[quote.pk] = recipient_account
        self._note(f"quote:{chain}:{'usdc' if recipient_account else 'sol'}")
        return True

    def _pay(self, quote: Quote, amount: int) -> str:
        outcome = pay_quote(self.owner[quote.pk], quote, amount=amount, **self.chains)
        return outcome.status

    def op_pay_exact(self) -> bool:
        quote = self._pending()
        if quote is None:
            return False
        status = self._pay(quote, int(quote.total_cost))
        assert status == "matched", status
        self._note("pay_exact:matched")
        return True

    def op_pay_under(self) -> bool:
        quote = self._pending()
        if quote is None:
            return False
        status = self._pay(quote, int(quote.total_cost) - self.rng.randrange(1, int(quote.total_cost) // 2))
        assert status == "underpaid", status
        self._note("pay_under:underpaid")
        return True

    def op_pay_over(self) -> bool:
        quote = self._pending()
        if quote is None:
            return False
        status = self._pay(quote, int(quote.total_cost) + self.rng.randrange(1, int(quote.total_cost)))
        assert status == "overpaid", status
        self._note("pay_over:overpaid")
        return True

    def op_pay_late(self) -> bool:
        quote = self._pending()
        if quote is None:
            return False
        past = timezone.now() - dt.timedelta(seconds=1)
        Quote.objects.filter(pk=quote.pk).update(created_at=past - dt.timedelta(minutes=5), expires_at=past)
        quote.refresh_from_db()
        status = self._pay(quote, int(quote.total_cost))
        assert status == "late", status
        assert Quote.objects.get(pk=quote.pk).status == "expired"
        self._note("pay_late:late")
        return True

    def op_pay_duplicate(self) -> bool:
        quote = self._pick(self._quotes(status__in=["committed", "executed"]))
        if quote is None:
            return False
        status = self._pay(quote, int(quote.total_cost))
        assert status == "duplicate", status
        self._note("pay_duplicate:duplicate")
        return True

    def op_pay_unknown_memo(self) -> bool:
        customer = self._pick(self.customers)
        signed = customer.stellar_payment(self.rng.randrange(XLM, 20 * XLM),
                                          memo_id=self.rng.randrange(10**16, 10**17))
        outcome = pay("stellar", signed, **self.chains)
        assert outcome.status == "unmatched", outcome.status
        self._note("pay_unknown_memo:unmatched")
        return True

    def op_execute(self) -> bool:
        quote = self._pick(self._quotes(status="committed"))
        if quote is None:
            return False
        sabotage = quote.pk in self.usdc_recipient and self.rng.random() < 0.35
        if sabotage:
            # Between quote and execution the recipient's token account stops being one.
            self.sandbox.admin.set_account(self.usdc_recipient[quote.pk], lamports=2_039_280,
                                           data=bytes(TOKEN_ACCOUNT_SIZE), owner=TOKEN_PROGRAM_ID)
        outcome = execute_quote(str(quote.pk))["outcome"]
        assert outcome == ("failed" if sabotage else "confirmed"), (quote.pk, outcome)
        self._note(f"execute:{outcome}")
        return True

    def op_deposit(self) -> bool:
        customer = self._pick(self.customers)
        chain = self.rng.choice(["stellar", "near"])
        amount = self.rng.randrange(5 * XLM, 500 * XLM) if chain == "stellar" \
            else self.rng.randrange(NEAR // 10, 20 * NEAR)
        outcome = deposit(customer, chain, amount, **self.chains)
        assert outcome.status == "credited", outcome.status
        self._note(f"deposit:{chain}")
        return True

    def op_pay_from_balance(self) -> bool:
        quote = self._pending()
        if quote is None:
            return False
        customer = self.owner[quote.pk]
        amount, locked = balance_of(customer.user, quote.source_chain)
        try:
            quote_pay_from_balance(user=customer.user, quote_id=quote.pk)
        except InsufficientFunds:
            assert amount - locked < int(quote.total_cost)
            self._note("pay_from_balance:insufficient")
            return True
        self._note("pay_from_balance:committed")
        return True

    def _with_available(self) -> tuple[Customer, str, int] | None:
        options = []
        for customer in self.customers:
            for chain in ("stellar", "near"):
                amount, locked = balance_of(customer.user, chain)
                if amount - locked > 0:
                    options.append((customer, chain, amount - locked))
        return self._pick(options)

    def op_withdraw(self) -> bool:
        picked = self._with_available()
        if picked is None:
            return False
        customer, chain, available = picked
        amount = self.rng.randrange(1, available + 1)
        withdrawal = withdrawal_request(user=customer.user, chain=chain, amount=amount)
        if withdrawal.status == "pending_approval":
            if self.rng.random() < 0.5:
                withdrawal_approve(withdrawal_id=withdrawal.pk, operator=self.operator)
            else:
                withdrawal_reject(withdrawal_id=withdrawal.pk, operator=self.operator,
                                  reason="randomized review said no")
        final = withdrawal_execute(withdrawal_id=withdrawal.pk).status
        assert final in ("completed", "rejected"), final
        self._note(f"withdraw:{chain}:{final}")
        return True

    def op_large_withdraw(self) -> bool:
        customer = self._pick(self.customers)
        deposit(customer, "near", 400 * NEAR, **self.chains)  # 1200 USD: above the threshold
        return self.op_withdraw_all(customer, "near")

    def op_withdraw_all(self, customer: Customer, chain: str) -> bool:
        amount, locked = balance_of(customer.user, chain)
        if amount - locked <= 0:
            return False
        withdrawal = withdrawal_request(user=customer.user, chain=chain, amount=amount - locked)
        assert withdrawal.status == "pending_approval"
        withdrawal_approve(withdrawal_id=withdrawal.pk, operator=self.operator)
        assert withdrawal_execute(withdrawal_id=withdrawal.pk).status == "completed"
        self._note("large_withdraw:completed")
        return True

    def op_double_withdraw(self) -> bool:
        picked = self._with_available()
        if picked is None or picked[2] < 10:
            return False
        customer, chain, available = picked
        amount = available // 2 + 1  # two of these cannot both fit
        results = run_threads([lambda: withdrawal_request(user=customer.user, chain=chain, amount=amount)
                               for _ in range(2)])
        granted = [r for r in results if isinstance(r, Withdrawal)]
        assert len(granted) == 1, results
        assert isinstance(next(r for r in results if not isinstance(r, Withdrawal)), InsufficientFunds)
        if granted[0].status == "pending_approval":
            withdrawal_approve(withdrawal_id=granted[0].pk, operator=self.operator)
        assert withdrawal_execute(withdrawal_id=granted[0].pk).status == "completed"
        self._note("double_withdraw:one_granted")
        return True

    def op_refund(self) -> bool:
        unmatched = FundingPayment.objects.filter(status="unmatched", resolved_at__isnull=True).first()
        if unmatched is not None and self.rng.random() < 0.5:
            unmatched_payment_refund(payment_id=unmatched.pk, actor="operator:ops")
        refund = self._pick(list(Refund.objects.filter(status__in=["due", "approved", "sent"])))
        if refund is None:
            return False
        if refund.status == "due":
            refund_mark(refund_id=refund.pk, to_status="approved", actor="operator:ops")
        paid = refund_pay_out(refund_id=refund.pk, actor="operator:ops")
        assert paid.status == "completed", paid.status
        self._note(f"refund:{refund.reason}")
        return True

    def op_cancel(self) -> bool:
        quote = self._pending()
        if quote is None:
            return False
        quote_cancel(user=self.owner[quote.pk].user, quote_id=quote.pk)
        self._note("cancel:cancelled")
        return True

    def op_expire_sweep(self) -> bool:
        quote = self._pending()
        if quote is None:
            return False
        past = timezone.now() - dt.timedelta(seconds=1)
        Quote.objects.filter(pk=quote.pk).update(created_at=past - dt.timedelta(minutes=5), expires_at=past)
        assert quotes_expire_due() >= 1
        self._note("expire:expired")
        return True

    # -- the end ----------------------------------------------------------------------------

    def drain(self) -> None:
        """Finish what can be finished: execute committed quotes, pay every refund out (the
        unmatched payments back to their payers), sweep expiries, advance settlements."""
        for quote in self._quotes(status="committed"):
            assert execute_quote(str(quote.pk))["outcome"] in ("confirmed", "failed")
        for payment in FundingPayment.objects.filter(status="unmatched", resolved_at__isnull=True):
            unmatched_payment_refund(payment_id=payment.pk, actor="operator:ops")
        for refund in Refund.objects.filter(status__in=["due", "approved", "sent"]):
            if refund.status == "due":
                refund_mark(refund_id=refund.pk, to_status="approved", actor="operator:ops")
            assert refund_pay_out(refund_id=refund.pk, actor="operator:ops").status == "completed"
        quotes_expire_due(now=max([q.expires_at for q in self._quotes(status="pending")],
                                  default=timezone.now()))
        settlements_advance()


WEIGHTS: dict[str, int] = {
    "op_quote": 22, "op_pay_exact": 14, "op_pay_under": 3, "op_pay_over": 4, "op_pay_late": 3,
    "op_pay_duplicate": 3, "op_pay_unknown_memo": 2, "op_execute": 16, "op_deposit": 12,
    "op_pay_from_balance": 8, "op_withdraw": 5, "op_large_withdraw": 1, "op_double_withdraw": 2,
    "op_refund": 6, "op_cancel": 2, "op_expire_sweep": 2,
}


OPENING = {"stellar": 1_000 * XLM, "near": 100 * NEAR}


@pytest.fixture(params=["live", "sandbox"])
def books_world(request, opened_books, settings):
    """Books opened at every treasury's balance, in one of two modes:

    live     Stellar / NEAR through Horizon and NEAR RPC fakes that keep balances (their
             treasuries funded with OPENING), so books = chain is checked for every asset;
    sandbox  the embedded default: Stellar / NEAR payments and payouts are signed bytes
             checked offline, their treasuries have no ledger and reconciliation says so.
    """
    horizon = near_rpc = None
    if request.param == "live":
        horizon = request.getfixturevalue("horizon")
        near_rpc = request.getfixturevalue("near_rpc")
        assert horizon.balance(settings.STELLAR_TREASURY_ADDRESS) == OPENING["stellar"]
        assert near_rpc.balance(NEAR_TREASURY) == OPENING["near"]
    for chain, asset in (("stellar", "XLM"), ("near", "NEAR")):
        treasury_inventory_record(chain=chain, asset=asset, amount=OPENING[chain], actor="test",
                                  reason="opening inventory", reference=f"opening:{chain}:{asset}")
    # The risk triggers are not under test here: a burst of test quotes is not a market spike,
    # and the deliberately failed executions must not stop the run.
    settings.VOLUME_SPIKE_FLOOR = 10**9
    settings.CONSECUTIVE_FAILURE_THRESHOLD = 10**9
    return World(random.Random(SEED), opened_books, horizon, near_rpc)


@pytest.mark.django_db(transaction=True)
def test_randomized_operations_keep_books_equal_to_the_chains(books_world):
    world = books_world
    rng = world.rng
    names = list(WEIGHTS)
    weights = [WEIGHTS[n] for n in names]
    performed = attempts = 0
    while performed < OPERATIONS:
        attempts += 1
        assert attempts < OPERATIONS * 10, f"seed {SEED}: the run starved ({world.outcomes})"
        name = rng.choices(names, weights)[0]
        operation: Callable[[], bool] = getattr(world, name)
        try:
            if operation():
                performed += 1
        except Exception as exc:
            raise AssertionError(f"seed {SEED}, operation #{performed} {name} failed: {exc!r}; "
                                 f"last steps {world.log[-8:]}") from exc
    world.drain()

    _assert_invariants(world)
    print(f"\nseed {SEED} ({settings.CHAIN_MODE}): {performed} operations: "
          f"{dict(sorted(world.outcomes.items()))}")


def _assert_invariants(world: World) -> None:
    context = f"seed {SEED}"
    # 1. Every journal entry balances per asset.
    assert unbalanced_entries() == [], context
    # 2. No balance is negative, locked ≤ total, and the cached rows equal their postings.
    for row in UserBalance.objects.all():
        assert 0 <= row.locked <= row.amount, (context, row.pk)
    assert user_balance_disagreements() == [], context
    # 3. No liability went into debit (money owed can't be below zero); treasuries ≥ 0.
    totals = Posting.objects.values("account__code").annotate(total=Sum("amount"))
    for row in totals:
        code, total = row["account__code"], int(row["total"])
        if code.startswith(LIABILITIES):
            assert total <= 0, (context, code, total)
        if code.startswith("treasury:"):
            assert total >= 0, (context, code, total)
    # 4. Books = chain, for every asset, directly...
    sandbox = world.sandbox
    assert account_balance(account_code("treasury", "solana", "SOL")) == sandbox.balance(sandbox.treasury)
    assert account_balance(account_code("treasury", "solana", str(sandbox.usdc_mint))) == \
        sandbox.token_balance(sandbox.treasury_usdc_account)
    if world.live:
        assert account_balance(account_code("treasury", "stellar", "XLM")) == \
            world.horizon.balance(settings.STELLAR_TREASURY_ADDRESS), context
        assert account_balance(account_code("treasury", "near", "NEAR")) == \
            world.near_rpc.balance(NEAR_TREASURY), context
    # ... and as the reconciler proves it. Live: every asset checked. Sandbox: Stellar and
    # NEAR have no ledger, and the report says exactly that.
    report = reconcile_run(triggered_by="randomized-test")
    assert report.outcome == "ok", (context, report.mismatches)
    assert {check["status"] for check in report.checks.values()} == {"ok"}, (context, report.checks)
    assets = report.checks["treasury_balances"]["details"]["assets"]
    other = "ok" if world.live else "not_checkable"
    assert {k: v["status"] for k, v in assets.items()} == {
        "solana:SOL": "ok", f"solana:{sandbox.usdc_mint}": "ok", "stellar:XLM": other,
        "near:NEAR": other}, context
    # 5. Every quote is in a final state, or an explainable one with its evidence.
    for quote in Quote.objects.filter(pk__in=list(world.owner)):
        _assert_explained(quote, world)
    # 6. Every payment was resolved: committed its quote, credited a balance, or paid back.
    for payment in FundingPayment.objects.all():
        if payment.status in ("underpaid", "late", "duplicate", "unmatched", "overpaid"):
            assert payment.refunds.exists() and all(r.status == "completed" for r in payment.refunds.all()), \
                (context, payment.pk, payment.status)
        else:
            assert payment.status in ("matched", "credited"), (context, payment.pk, payment.status)
    assert not Withdrawal.objects.exclude(status__in=["completed", "rejected"]).exists(), context
    assert world.outcomes["execute:confirmed"] > 0 and world.outcomes["execute:failed"] > 0, world.outcomes


def _assert_explained(quote: Quote, world: World) -> None:
    context = (f"seed {SEED}", str(quote.pk), quote.status)
    funded_by_payment = quote.funding_payments.filter(status__in=["matched", "overpaid"]).count()
    funded_by_balance = JournalEntry.objects.filter(reference=f"balance_lock:{quote.pk}").exists()
    if quote.status in PAID:
        assert funded_by_payment + int(funded_by_balance) == 1, context
    else:
        assert funded_by_payment == 0 and not funded_by_balance, context
    if quote.status == "executed":
        execution = Execution.objects.get(quote=quote)
        assert execution.status == "confirmed", context
        earned = JournalEntry.objects.get(reference=f"revenue:{quote.pk}")
        # Earned from the balance lock for a balance-funded quote, from customer funds else.
        assert (earned.kind == "balance_settle") == funded_by_balance, context
        assert Settlement.objects.get(execution=execution).status == "settled", context
    elif quote.status == "refunded":
        own_refund = quote.refunds.filter(reason="execution_failed", status="completed").exists()
        released = JournalEntry.objects.filter(reference=f"balance_release:{quote.pk}").exists()
        assert own_refund or released, context
        assert Execution.objects.get(quote=quote).status == "failed", context
    else:
        assert quote.status in ("expired", "cancelled"), context
