"""Executing committed quotes in batches: the executor's steps, one transaction per step
for the whole batch.

The single-execution driver (`executor.py`) spends most of its time on bookkeeping
round trips: five transactions and ~85 statements per execution. Under load many quotes
are committed and waiting at once, so a worker takes up to EXECUTION_BATCH_SIZE of them
(its own first, then the oldest others, `FOR UPDATE SKIP LOCKED` so two workers never take
the same one) and walks them through the SAME states with the same guarantees:

1. start     one transaction: executions created, spend reserved (risk), quotes
             `executing`, a session advisory lease taken on every execution (as
             `execution_lease` does, so no single driver can touch them meanwhile)
2. sign      every transaction built and signed; one transaction stores all attempts
             (signature, bytes, last valid height): `signed`, never sent
3. guard     the other accounts read once, all simulations at once, read again;
             the bound is judged per transaction exactly as `outflow_guard_check` does
4. submit    one transaction: `submitted` and send counted, for all; then all sent
5. confirm   one getSignatureStatuses for all, the landed ones' transactions read at once
6. record    one transaction: executions `confirmed`, quotes `executed`, the ledger,
             settlements, risk and breaker bookkeeping for all

Each step's transaction runs its statements prepared (config.prepared): they repeat with
new values batch after batch, and parsing and planning them was about a third of the
database's CPU per execution. The claim of committed quotes and the breaker's hourly sum
stay planned each time.

Anything that leaves the straight road (a refusal, an RPC error, a transaction that does
not land within a few seconds, a program error, a quote paid from a prepaid balance) is
released from the batch and driven by the single driver, whose every branch the fault
tests cover. Leaving the batch is always safe: the states are the single driver's, so the
next step is decided from what is stored, never from what the batch was about to do.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from solders.signature import Signature
from solders.transaction import VersionedTransaction

from config.bulk import insert_together
from config.errors import ServiceError
from config.events import publish_after_commit_many
from config.prepared import planned_each_time, prepared_statements
from execution.models import Execution, ExecutionAttempt, ExecutionStatus
from execution.selectors import execution_summary_of
from execution.services.chain import recent_blockhash, solana_backend, treasury_signer
from execution.services.enqueue import execution_enqueue
from execution.services.executor import (
    _LANDED_STATUSES,
    ACTOR,
    RunResult,
    _lease_key,
    chain_outcome_of,
    execution_run,
    fail_refused,
)
from execution.services.faults import crash_point
from execution.services.guard import outflow_guard_check_many
from execution.services.outcomes import Landed, execution_book_successes
from execution.services.transitions import execution_records_created, execution_transition_many
from execution.services.wakeup import execution_wake, wakeup_taken
from execution.solana.backend import SignatureState, SolanaError, TransactionDetails
from execution.solana.signer import SignerError
from quotes.models import Quote, QuoteStatus
from quotes.services.transitions import quote_status_event, quote_transition_many
from quotes.solana_tx import build_execution_message, execution_memo
from risk.errors import CircuitBreakerOpen
from risk.services.reservations import risk_reserve_executions

logger = logging.getLogger(__name__)

E = ExecutionStatus
A = ExecutionAttempt.State


@dataclass
class _Item:
    """One execution travelling with the batch."""

    execution: Execution
    tx: VersionedTransaction | None = None
    attempt: ExecutionAttempt | None = None
    verdict_details: dict[str, Any] = field(default_factory=dict)
    state: SignatureState | None = None
    details: TransactionDetails | None = None

    @property
    def quote(self) -> Quote:
        return self.execution.quote


# Executions and their quotes locked together, in id order (as the ORM's
# select_for_update().select_related("quote") locked them), only their state read back.
_LOCK_EXECUTIONS = (
    "SELECT e.id, e.status, e.signature FROM execution_execution e "
    "JOIN quotes_quote q ON q.id = e.quote_id WHERE e.id = ANY(%s) ORDER BY e.id FOR UPDATE")


# Every delivery of `execute_quote` starts with this read, and most find their quote run
# already: a fixed statement (the ORM compiled its join anew each time, ~0.4 ms of CPU).
_QUOTE_PROGRESS = (
    "SELECT q.status, e.id, e.status, e.signature, e.fail_reason FROM quotes_quote q "
    "LEFT JOIN execution_execution e ON e.quote_id = q.id WHERE q.id = %s")


class _BreakerOpen(Exception):
    """Raised inside the start transaction to roll it back while the breaker is open."""


def execution_run_batch(*, quote_id: Any, actor: str = ACTOR) -> RunResult:
    """Execute a committed quote, taking other waiting ones along (the `execute_quote`
    task). Safe to call any number of times, from any number of workers at once."""
    quote_id = _as_uuid(quote_id)
    if quote_id is None:
        return RunResult("noop")
    # Under load most deliveries find their quote already taken along by an earlier
    # batch: one read answers them. Only a committed quote starts a batch.
    status, done = _quote_progress(quote_id)
    if done is not None:
        return done
    if status != QuoteStatus.COMMITTED:
        # Running in someone's batch (the single driver answers "busy"), left behind by a
        # crash, or paid from a balance: the single driver decides what is left to do.
        return execution_run(quote_id=quote_id, actor=actor)
    return _run_batch_for(quote_id, actor=actor)


def execution_run_waiting(*, quote_id: Any = None, actor: str = ACTOR) -> RunResult:
    """The wake-up (`execute_waiting` task, execution/services/wakeup.py): take the
    wake-up, then execute the committed quotes waiting, `quote_id`'s first. Reports on
    `quote_id` (the quote that asked for the wake-up) when given, else on the batch."""
    wakeup_taken()
    own = _as_uuid(quote_id) if quote_id else None
    if own is not None:
        status, done = _quote_progress(own)
        if done is None and status == QuoteStatus.COMMITTED:
            return _run_batch_for(own, actor=actor)
    # The asking quote is done or under way (another batch took it along): the others
    # that counted on this wake-up still wait for it.
    ran = _claim_and_run(own_quote_id=None, actor=actor)
    if ran is None:
        return RunResult("waiting")
    claimed, _ = ran
    return RunResult("batch" if claimed else "noop")


def _run_batch_for(quote_id: uuid.UUID, *, actor: str) -> RunResult:
    ran = _claim_and_run(own_quote_id=quote_id, actor=actor)
    if ran is None:
        return RunResult("waiting")
    claimed, finished = ran
    execution = finished.get(claimed.get(quote_id))
    if execution is not None:
        return RunResult.of(execution)
    # Not batched (another worker took it meanwhile, or it is paid from a balance), or it
    # left the batch: the single driver decides what is left to do.
    return execution_run(quote_id=quote_id, actor=actor)


def _claim_and_run(*, own_quote_id: uuid.UUID | None,
                   actor: str) -> tuple[dict[Any, Any], dict[Any, Execution]] | None:
    """One batch, claimed (`own_quote_id` first), started and run: ({quote id: execution
    id} it started, {execution id: execution} it finished), or None while the circuit
    breaker holds the quotes."""
    batch = _Batch(actor=actor, own_quote_id=own_quote_id)
    try:
        claimed = batch.start()
    except _BreakerOpen:
        return None
    batch.run()
    return claimed, batch.finished


def _quote_progress(quote_id: uuid.UUID) -> tuple[str | None, RunResult | None]:
    """(the quote's status, what this delivery has to report without doing anything: the
    execution's final result, or "busy" while a live batch or driver holds its lease), one
    read. "busy" is what the single driver would answer too, but only after waiting for
    the quote's row lock, which the owning batch holds through each of its steps."""
    with connection.cursor() as cursor:
        cursor.execute(_QUOTE_PROGRESS, [quote_id])
        row = cursor.fetchone()
    if row is None:
        return None, None
    status, execution_id, execution_status, signature, fail_reason = row
    if execution_id is not None and execution_status in (E.CONFIRMED, E.FAILED):
        return status, RunResult(str(execution_status), str(execution_id), signature or "",
                                 str(fail_reason or ""))
    if execution_id is not None and _lease_held_elsewhere(execution_id):
        # Its owner finishes it, hands it over (a new delivery), or dies and leaves it to
        # the recovery job (the lease goes with its connection).
        return status, RunResult("busy", str(execution_id))
    return status, None


def _lease_held_elsewhere(execution_id: Any) -> bool:
    key = _lease_key(execution_id)
    with connection.cursor() as cursor:  # take it and give it back at once when free
        cursor.execute("SELECT CASE WHEN pg_try_advisory_lock(%s) THEN NOT pg_advisory_unlock(%s) "
                       "ELSE true END", [key, key])
        return bool(cursor.fetchone()[0])


def _as_uuid(value: Any) -> uuid.UUID | None:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        return None


class _Batch:
    def __init__(self, *, actor: str, own_quote_id: uuid.UUID | None) -> None:
        self.actor = actor
        self.own_quote_id = own_quote_id
        self.size = int(settings.EXECUTION_BATCH_SIZE)
        self.confirm_seconds = float(settings.EXECUTION_BATCH_CONFIRM_SECONDS)
        self.items: list[_Item] = []
        self.leftovers: list[Any] = []  # execution ids for the single driver
        self.leased: list[Any] = []
        self.started_ms = 0.0
        # Executions this batch took to a final state (its own committed writes, so the
        # caller's answer needs no read back).
        self.finished: dict[Any, Execution] = {}

    # -- 1. start ------------------------------------------------------------------------

    def start(self) -> dict[Any, Any]:
        """Claim up to `size` committed quotes (ours first, then the longest waiting) and
        start them. Returns {quote id: execution id} of the quotes this batch started."""
        began = time.monotonic()
        with prepared_statements(), transaction.atomic():
            with planned_each_time():  # committed quotes are few in a table that grows
                waiting = Quote.objects.select_for_update(skip_locked=True).filter(
                    status=QuoteStatus.COMMITTED, pay_from_balance=False)
                # Ours first, then the longest waiting, in the order of the queue's index
                # (one sort of both would read every committed quote's index entry).
                quotes, others = [], waiting
                if self.own_quote_id is not None:
                    quotes = list(waiting.filter(pk=self.own_quote_id))
                    others = waiting.exclude(pk=self.own_quote_id)
                quotes += others.order_by("committed_at")[: self.size - len(quotes)]
            if not quotes:
                return {}
            if len(quotes) == self.size:
                # More may be waiting than one batch takes: another worker can start on
                # them now (their own wake-ups may have been folded into the one this is).
                execution_wake()
            executions = [Execution(quote=q) for q in quotes]  # keys made here: no RETURNING
            insert_together(*executions)
            execution_records_created(executions=executions, actor=self.actor)
            try:
                refused = risk_reserve_executions(quotes)
            except CircuitBreakerOpen:
                raise _BreakerOpen from None
            started = []
            for execution in executions:
                refusal = refused.get(execution.quote_id)
                if refusal is None:
                    started.append(execution)
                    continue
                fail_refused(execution=execution, quote=execution.quote, refusal=refusal,
                             actor=self.actor)
                self.finished[execution.pk] = execution
            quote_transition_many(
                quotes=[e.quote for e in started], to_status=QuoteStatus.EXECUTING,
                actor=self.actor, expected_from={QuoteStatus.COMMITTED},
                details={e.quote_id: {"execution_id": str(e.pk)} for e in started})
            self._publish(started, previous=QuoteStatus.COMMITTED)
            # Leases before commit: nobody can know these executions before it anyway.
            self._lease([e.pk for e in started])
            self.items = [_Item(execution=e) for e in started]
        self.started_ms = round(1000 * (time.monotonic() - began), 1)
        return {e.quote_id: e.pk for e in executions}

    # -- the rest ------------------------------------------------------------------------

    def run(self) -> None:
        if not self.items:
            return
        size, timings = len(self.items), {}
        try:
            for name, step in (("sign", self._sign), ("guard_send", self._guard_and_submit),
                               ("confirm", self._confirm), ("record", self._record)):
                began = time.monotonic()
                step()
                timings[name] = round(1000 * (time.monotonic() - began), 1)
            logger.info("execution batch done", extra={
                "size": size, "left_to_single_driver": len(self.leftovers),
                "started_ms": self.started_ms, "step_ms": timings})
        except Exception:
            logger.exception("execution batch failed; its executions go to the single driver")
            self.leftovers += [item.execution.pk for item in self.items]
            self.items = []
            self._flag_leftovers()
        finally:
            self._release()
        self._hand_over()

    def _drop(self, item: _Item) -> None:
        self.leftovers.append(item.execution.pk)

    # -- 2. sign -------------------------------------------------------------------------

    def _sign(self) -> None:
        backend, signer = solana_backend(), treasury_signer()
        blockhash, last_valid = recent_blockhash(backend)
        signed: list[_Item] = []
        for item in self.items:
            quote = item.quote
            try:
                message = build_execution_message(
                    quote.instructions, int(quote.estimated_compute_units),
                    int(quote.priority_fee_micro_lamports), execution_memo(item.execution.pk),
                    signer.pubkey, blockhash)
                item.tx = signer.sign_transaction(message)
            except (ServiceError, SignerError):
                self._drop(item)  # the single driver fails it with the reason
                continue
            signed.append(item)
        if not signed:
            self.items = []
            return
        with prepared_statements(), transaction.atomic():
            locked = self._lock(signed, status=E.PENDING)
            attempts = ExecutionAttempt.objects.bulk_create([
                ExecutionAttempt(execution=item.execution, number=1,
                                 signature=str(item.tx.signatures[0]),  # type: ignore[union-attr]
                                 signed_transaction=bytes(item.tx),  # type: ignore[arg-type]
                                 blockhash=str(blockhash), last_valid_block_height=last_valid)
                for item in locked])
            for item, attempt in zip(locked, attempts, strict=True):
                item.attempt = attempt
            execution_transition_many(
                executions=[item.execution for item in locked], to_status=E.SIGNED,
                actor=self.actor,
                fields={item.execution.pk: {"signature": item.attempt.signature,  # type: ignore[union-attr]
                                            "attempt_count": 1} for item in locked},
                details={item.execution.pk: {"attempt": 1, "last_valid_block_height": last_valid}
                         for item in locked})
            # No event: "signed" is stored-not-sent, milliseconds before "submitted".
        self.items = locked
        crash_point("after_sign")

    # -- 3 + 4. guard, then submit and send ---------------------------------------------------

    def _guard_and_submit(self) -> None:
        if not self.items:
            return
        backend, signer = solana_backend(), treasury_signer()
        verdicts = outflow_guard_check_many(
            backend=backend, treasury=signer.pubkey,
            items=[(item.tx, item.quote) for item in self.items])  # type: ignore[misc]
        cleared = []
        for item, verdict in zip(self.items, verdicts, strict=True):
            if verdict is None or not verdict.ok:
                self._drop(item)  # refusals, expiries, RPC trouble: decided alone
                continue
            item.verdict_details = {"attempt": 1,
                                    "simulated_lamports_spend": str(verdict.lamports_spend),
                                    "simulated_units": verdict.units_consumed}
            cleared.append(item)
        if not cleared:
            self.items = []
            return
        now = timezone.now()
        with prepared_statements(), transaction.atomic():
            locked = self._lock(cleared, status=E.SIGNED)
            ExecutionAttempt.objects.filter(pk__in=[item.attempt.pk for item in locked],  # type: ignore[union-attr]
                                            state=A.SIGNED).update(send_count=1, last_sent_at=now)
            execution_transition_many(
                executions=[item.execution for item in locked], to_status=E.SUBMITTED,
                actor=self.actor,
                fields={item.execution.pk: {"submitted_at": now} for item in locked},
                details={item.execution.pk: item.verdict_details for item in locked})
            self._publish([item.execution for item in locked], previous=QuoteStatus.EXECUTING)
        self.items = locked
        try:
            results: list[Any] = backend.send_raw_many(
                [bytes(item.attempt.signed_transaction) for item in locked])  # type: ignore[union-attr]
        except SolanaError as exc:  # no answer to the batch: each may or may not have landed
            results = [exc] * len(locked)
        for result in results:
            if isinstance(result, SolanaError):
                # The node may or may not have it: only the signature status can tell.
                logger.info("send outcome unknown; asking the chain",
                            extra={"error": repr(result)[:300]})
        crash_point("after_send")

    # -- 5. confirm ------------------------------------------------------------------------

    def _confirm(self) -> None:
        if not self.items:
            return
        backend = solana_backend()
        deadline = time.monotonic() + self.confirm_seconds
        waiting, landed = list(self.items), []
        pause = 0.005
        while waiting:
            try:
                states = backend.signature_statuses(
                    [Signature.from_string(item.attempt.signature) for item in waiting])  # type: ignore[union-attr]
            except SolanaError:
                states = [None] * len(waiting)
            still = []
            for item, state in zip(waiting, states, strict=True):
                if state is not None and state.confirmation_status in _LANDED_STATUSES:
                    item.state = state
                    landed.append(item)
                else:
                    still.append(item)
            waiting = still
            if not waiting or time.monotonic() + pause > deadline:
                break
            time.sleep(pause)
            pause = min(0.2, pause * 2)
        for item in waiting:
            self._drop(item)  # not landed (yet): resends and expiry are the driver's
        try:
            details: list[Any] = backend.transactions(
                [Signature.from_string(item.attempt.signature) for item in landed])  # type: ignore[union-attr]
        except SolanaError as exc:
            details = [exc] * len(landed)
        self.items = []
        for item, found in zip(landed, details, strict=True):
            if isinstance(found, TransactionDetails) and found.err is None and (
                    item.state is not None and item.state.err is None):
                item.details = found
                self.items.append(item)
            else:
                self._drop(item)  # not readable yet, or a program error: the driver records it

    # -- 6. record -----------------------------------------------------------------------

    def _record(self) -> None:
        if not self.items:
            return
        treasury = treasury_signer().pubkey
        with prepared_statements(), transaction.atomic():
            locked = self._lock(self.items, status=E.SUBMITTED)
            now = timezone.now()
            ExecutionAttempt.objects.filter(
                pk__in=[item.attempt.pk for item in locked]).update(state=A.LANDED)  # type: ignore[union-attr]
            landed, fields, facts = [], {}, {}
            for item in locked:
                details = item.details
                assert details is not None and item.attempt is not None
                outcome = chain_outcome_of(details, treasury)
                fields[item.execution.pk] = {
                    "fee_lamports": outcome.fee_lamports,
                    "compute_units_consumed": details.compute_units_consumed,
                    "treasury_outflow_lamports": outcome.outflow_lamports,
                    "slot": details.slot, "needs_recovery": False, "confirmed_at": now}
                facts[item.execution.pk] = {
                    "attempt": item.attempt.number, "slot": details.slot,
                    "fee_lamports": str(outcome.fee_lamports),
                    "compute_units": details.compute_units_consumed,
                    "outflow_lamports": str(outcome.outflow_lamports),
                    "token_outflows": {m: str(a) for m, a in outcome.token_outflows.items()}}
                landed.append(Landed(execution=item.execution, outcome=outcome,
                                     signature=item.attempt.signature))
            execution_transition_many(executions=[item.execution for item in locked],
                                      to_status=E.CONFIRMED, actor=self.actor, fields=fields,
                                      details=facts)
            # The latest landed transaction's view of the treasury: the breaker's hourly
            # ratio then needs no ledger aggregate.
            newest = max(locked, key=lambda item: item.details.slot)  # type: ignore[union-attr]
            balance = newest.details.post_balances[  # type: ignore[union-attr]
                newest.details.account_keys.index(treasury)]  # type: ignore[union-attr]
            execution_book_successes(landed=landed, actor=self.actor,
                                     treasury_balance_lamports=balance)
            self._publish([item.execution for item in locked], previous=QuoteStatus.EXECUTING)
        self.finished.update((item.execution.pk, item.execution) for item in locked)
        self.items = []

    # -- plumbing ------------------------------------------------------------------------

    def _lock(self, items: list[_Item], *, status: str) -> list[_Item]:
        """Lock the items' executions and quotes; keep those still in `status` (and, once
        signed, still on this batch's attempt). Others moved on under someone else (an
        operator's action): the single driver looks.

        Only the state is read back: the rows in memory are this batch's own (it has held
        their lease since it created them, and every write since was its own), so
        reloading whole quotes (instructions, price snapshot) at every step was CPU spent
        decoding what it already had."""
        by_id = {item.execution.pk: item for item in items}
        with connection.cursor() as cursor:
            cursor.execute(_LOCK_EXECUTIONS, [list(by_id)])
            rows = {pk: (row_status, signature) for pk, row_status, signature in cursor.fetchall()}
        kept = []
        for pk, item in by_id.items():
            row_status, signature = rows.get(pk, (None, None))
            if row_status != status or (
                    item.attempt is not None and signature != item.attempt.signature):
                self._drop(item)
                continue
            kept.append(item)
        return kept

    def _publish(self, executions: list[Execution], *, previous: str) -> None:
        publish_after_commit_many([
            (quote_status_event(execution.quote, previous=previous, at=execution.updated_at,
                                execution_summary=execution_summary_of(execution)),
             execution.quote.user_id, execution.quote_id)
            for execution in executions])

    def _lease(self, execution_ids: list[Any]) -> None:
        keys = [_lease_key(pk) for pk in execution_ids]
        if not keys:
            return
        with connection.cursor() as cursor:
            cursor.execute("SELECT bool_and(pg_try_advisory_lock(k)) FROM unnest(%s::bigint[]) k",
                           [keys])
            if not cursor.fetchone()[0]:  # fresh ids: nobody else can hold them
                raise RuntimeError("a new execution's lease was taken")
        self.leased = keys

    def _release(self) -> None:
        if not self.leased:
            return
        keys, self.leased = self.leased, []
        # A dead connection released them already.
        with contextlib.suppress(Exception), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(k) FROM unnest(%s::bigint[]) k", [keys])

    def _flag_leftovers(self) -> None:
        with contextlib.suppress(Exception):
            Execution.objects.filter(pk__in=self.leftovers).exclude(
                status__in=[E.CONFIRMED, E.FAILED]).update(needs_recovery=True,
                                                          updated_at=timezone.now())

    def _hand_over(self) -> None:
        """Queue every execution that left the batch for the single driver (its quote's own
        task may have come and gone while the batch held the lease)."""
        if not self.leftovers:
            return
        # The caller drives its own quote itself, right after.
        unfinished = Execution.objects.filter(pk__in=self.leftovers).exclude(
            status__in=[E.CONFIRMED, E.FAILED])
        if self.own_quote_id is not None:
            unfinished = unfinished.exclude(quote_id=self.own_quote_id)
        quote_ids = unfinished.values_list("quote_id", flat=True)
        execution_enqueue(quote_ids)
        self.leftovers = []
