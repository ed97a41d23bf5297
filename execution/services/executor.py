"""Execute a committed quote on Solana from the treasury: once, and only once.

The queue delivers `execute_quote` at least once and workers crash, so exactness lives in
PostgreSQL and in what the chain can tell us about a signature we stored:

1. Start (one transaction): lock the quote; only a `committed` quote starts; create its
   Execution (UNIQUE per quote); reserve the spend with the risk limits; quote →
   `executing`. An `executing` quote resumes its existing execution.
2. One driver per execution: a PostgreSQL session advisory lock (released by the server
   when the holder's connection dies, so a SIGKILLed worker frees it at once). Everyone
   else returns "busy"; the state below is enough for the holder to pick up any work.
3. Sign: build the quote's transaction (compute budget + instructions + a per-execution
   memo, `quotes.solana_tx.build_execution_message`), sign it, and COMMIT the attempt
   (signature, raw bytes, last valid block height) before anything is sent.
   → execution `signed`, which means "stored, never sent".
4. Guard: simulate; refuse (and fail, never having sent it) if the treasury would lose more
   than the quote bound (`guard.outflow_guard_check`).
5. Send: COMMIT `submitted` first, then hand the same bytes to the node (skip preflight,
   no node retries). Committing before the send keeps `signed` meaning "never sent": a
   crash between the two leaves `submitted`, and recovery asks the chain.
6. Confirm: ask for the signature's status first, always. Found → record the outcome
   (fee and compute units from the chain, `err` read by us). Not found and the block height
   has passed the attempt's last valid height → that attempt is provably dead; only then
   may a new attempt be signed (and stored before it is sent). Not found and still valid →
   re-send the same bytes now and then, and keep asking until SOLANA_CONFIRM_TIMEOUT_SECONDS;
   then leave it `submitted` for the recovery job, never failed while it could still land.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction

from config.errors import ServiceError
from config.logging import log_context
from execution.models import (
    Execution,
    ExecutionAttempt,
    ExecutionStatus,
    FailReason,
)
from execution.services.chain import recent_blockhash, solana_backend, treasury_signer
from execution.services.faults import crash_point
from execution.services.guard import GuardVerdict, outflow_guard_check
from execution.services.outcomes import (
    ChainOutcome,
    execution_book_failure,
    execution_book_success,
)
from execution.services.transitions import (
    FINAL,
    execution_record_created,
    execution_transition,
    lock_execution,
)
from execution.solana.backend import (
    SignatureState,
    SolanaBackend,
    SolanaError,
    TransactionDetails,
)
from execution.solana.signer import SignerError, TreasurySigner
from quotes.models import Quote, QuoteStatus
from quotes.services.transitions import lock_quote, quote_transition
from quotes.solana_tx import build_execution_message, execution_memo
from risk.audit import audit_record
from risk.errors import (
    CircuitBreakerOpen,
    DailyLimitExceeded,
    InsufficientTreasury,
    TransactionLimitExceeded,
)
from risk.services.limits import risk_reserve_execution

logger = logging.getLogger(__name__)

E = ExecutionStatus
A = ExecutionAttempt.State
ACTOR = "system:executor"
_LANDED_STATUSES = {"confirmed", "finalized"}


@dataclass(frozen=True)
class RunResult:
    """What one call did. `outcome`: confirmed | failed | waiting (circuit breaker open) |
    noop (nothing to execute) | busy (another worker drives it) | unresolved (left for the
    recovery job) | batch (a wake-up executed other quotes' batch)."""

    outcome: str
    execution_id: str | None = None
    signature: str = ""
    fail_reason: str = ""

    @classmethod
    def of(cls, execution: Execution, outcome: str | None = None) -> RunResult:
        status = str(execution.status)  # plain text, also when it was set from the enum
        if outcome is None:
            outcome = status if status in FINAL else "unresolved"
        return cls(str(outcome), str(execution.pk), execution.signature,
                   str(execution.fail_reason))


_Known = tuple[Execution, ExecutionAttempt | None]


class _BreakerOpen(Exception):
    """Raised inside the start transaction to roll it back while the breaker is open."""


# -- 1. start -------------------------------------------------------------------------------


def execution_start(*, quote_id: Any, actor: str = ACTOR) -> tuple[str, Execution | None]:
    """Start (or find) the execution of a committed quote. Returns (outcome, execution):
    "started" | "resumed" | "failed" (refused by the risk limits) | "waiting" | "noop"."""
    try:
        with transaction.atomic():
            try:
                quote = lock_quote(quote_id)
            except Quote.DoesNotExist:
                return "noop", None
            if quote.status != QuoteStatus.COMMITTED:
                existing = Execution.objects.filter(quote_id=quote.pk).first()
                if quote.status == QuoteStatus.EXECUTING and existing is not None:
                    return "resumed", existing
                return "noop", existing
            # Committed means never started (the execution is created in the same transaction
            # that moves the quote on); UNIQUE(quote) would refuse a second one regardless.
            execution = Execution.objects.create(quote=quote)
            execution_record_created(execution=execution, actor=actor, quote=quote)
            try:
                risk_reserve_execution(quote=quote)
            except CircuitBreakerOpen:
                raise _BreakerOpen from None
            except (DailyLimitExceeded, TransactionLimitExceeded, InsufficientTreasury) as exc:
                fail_refused(execution=execution, quote=quote, refusal=exc, actor=actor)
                return "failed", execution
            quote_transition(quote_id=quote.pk, quote=quote, to_status=QuoteStatus.EXECUTING,
                             actor=actor, expected_from={QuoteStatus.COMMITTED},
                             details={"execution_id": str(execution.pk)})
            return "started", execution
    except _BreakerOpen:
        # Nothing was written: the quote stays committed and `resume_waiting` re-enqueues it
        # once an operator has reset the breaker.
        return "waiting", None


# -- 2. one driver per execution ------------------------------------------------------------


def _lease_key(execution_id: Any) -> int:
    digest = hashlib.blake2b(f"execution:{execution_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextlib.contextmanager
def execution_lease(execution_id: Any) -> Iterator[bool]:
    """Try to become the one driver of this execution (a session advisory lock).

    Yields False when another session holds it. Held across the driver's several
    transactions; PostgreSQL drops it when the connection closes, so a killed worker never
    leaves it behind. Needs a session-level connection (no transaction-pooling PgBouncer).
    """
    key = _lease_key(execution_id)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        held = bool(cursor.fetchone()[0])
    try:
        yield held
    finally:
        if held:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
            except Exception:  # the connection is gone, and the lock with it
                logger.warning("advisory unlock failed", exc_info=True)


# -- the whole run --------------------------------------------------------------------------


def execution_run(*, quote_id: Any, actor: str = ACTOR) -> RunResult:
    """Execute a committed quote (the `execute_quote` task). Safe to call any number of
    times, from any number of workers at once."""
    with log_context(quote_id=str(quote_id)):
        outcome, execution = execution_start(quote_id=quote_id, actor=actor)
        if execution is None:
            return RunResult(outcome)
        if execution.status in FINAL:
            return RunResult.of(execution)
        return execution_drive(execution_id=execution.pk, actor=actor)


def execution_drive(*, execution_id: Any, actor: str = ACTOR,
                    timeout_seconds: float | None = None) -> RunResult:
    """Drive one execution to a final state, or until the confirmation timeout."""
    with execution_lease(execution_id) as held:
        if not held:
            execution = Execution.objects.get(pk=execution_id)
            return RunResult.of(execution, outcome=(
                execution.status if execution.status in FINAL else "busy"))
        with log_context(execution_id=str(execution_id)):
            driver = _Driver(execution_id=execution_id, actor=actor,
                             timeout=(settings.SOLANA_CONFIRM_TIMEOUT_SECONDS
                                      if timeout_seconds is None else timeout_seconds))
            try:
                return driver.run()
            except Exception:
                Execution.objects.filter(pk=execution_id).exclude(
                    status__in=list(FINAL)).update(needs_recovery=True, updated_at=timezone.now())
                raise


class _Driver:
    """The loop of steps 3-6. Each pass re-reads the execution and does the next step."""

    def __init__(self, *, execution_id: Any, actor: str, timeout: float) -> None:
        self.execution_id = execution_id
        self.actor = actor
        self.deadline = time.monotonic() + timeout
        self.backend: SolanaBackend = solana_backend()
        self.signer: TreasurySigner = treasury_signer()
        self.resend_interval = float(settings.EXECUTION_RESEND_INTERVAL_SECONDS)
        self.max_attempts = int(settings.EXECUTION_MAX_ATTEMPTS)
        self._pause = 0.0

    # -- loop ----------------------------------------------------------------------------

    def run(self) -> RunResult:
        progress: tuple[Any, ...] = ()
        # What the last step left behind, when it knows (it committed it under our lease);
        # None sends the next pass back to the database.
        known: _Known | None = None
        while True:
            if known is None:
                execution = Execution.objects.select_related("quote").get(pk=self.execution_id)
                attempt = (None if execution.status in FINAL
                           else execution.attempts.filter(state=A.SIGNED).first())
            else:
                execution, attempt = known
            known = None
            if (execution.status, execution.attempt_count) != progress:
                progress, self._pause = (execution.status, execution.attempt_count), 0.0
            if execution.status in FINAL:
                return RunResult.of(execution)
            if time.monotonic() > self.deadline:
                Execution.objects.filter(pk=execution.pk, status=execution.status).update(
                    needs_recovery=True, updated_at=timezone.now())
                logger.warning("execution unresolved at the confirmation timeout; left for "
                               "recovery", extra={"status": execution.status})
                return RunResult.of(execution, outcome="unresolved")
            try:
                if attempt is None:
                    known = self._sign_next(execution)
                elif execution.status == E.SIGNED:
                    known = self._guard_and_send(execution, attempt)
                else:
                    known = self._confirm(execution, attempt)
            except SolanaError as exc:
                # No answer, or an answer we cannot use: nothing was decided. Ask again.
                logger.info("solana rpc problem; retrying", extra={"error": repr(exc)[:300]})
                self._sleep()

    def _sleep(self) -> None:
        self._pause = min(0.5, max(0.025, self._pause * 2))
        time.sleep(self._pause)

    # -- 3. sign -------------------------------------------------------------------------

    def _sign_next(self, execution: Execution) -> _Known | None:
        quote = execution.quote
        if execution.attempt_count >= self.max_attempts:
            self._fail(execution, FailReason.BLOCKHASH_EXPIRED,
                       f"{execution.attempt_count} attempts expired without landing")
            return None
        # A re-sign follows an expiry: never reuse a cached blockhash then.
        blockhash, last_valid = recent_blockhash(self.backend, fresh=execution.attempt_count > 0)
        try:
            message = build_execution_message(
                quote.instructions, int(quote.estimated_compute_units),
                int(quote.priority_fee_micro_lamports), execution_memo(execution.pk),
                self.signer.pubkey, blockhash)
            tx = self.signer.sign_transaction(message)
        except (ServiceError, SignerError) as exc:
            self._fail(execution, FailReason.INVALID_TRANSACTION, str(exc))
            return None
        signature = str(tx.signatures[0])
        try:
            with transaction.atomic():
                locked = lock_execution(execution.pk)
                if locked.status in FINAL:
                    return None
                # A live attempt stored meanwhile (only possible without our lease) makes this
                # insert fail on `attempt_one_live_per_execution`: nothing is then stored.
                number = locked.attempt_count + 1
                attempt = ExecutionAttempt.objects.create(
                    execution=locked, number=number, signature=signature,
                    signed_transaction=bytes(tx), blockhash=str(blockhash),
                    last_valid_block_height=last_valid)
                execution_transition(
                    execution=locked, to_status=E.SIGNED, actor=self.actor, signature=signature,
                    fields={"signature": signature, "attempt_count": number},
                    details={"attempt": number, "last_valid_block_height": last_valid})
        except IntegrityError:
            return None  # a concurrent driver stored an attempt first; re-read and continue
        crash_point("after_sign")
        return locked, attempt

    # -- 4 + 5. guard, then send -----------------------------------------------------------

    def _guard_and_send(self, execution: Execution, attempt: ExecutionAttempt) -> _Known | None:
        tx = VersionedTransaction.from_bytes(bytes(attempt.signed_transaction))
        verdict = outflow_guard_check(backend=self.backend, tx=tx, quote=execution.quote,
                                      treasury=self.signer.pubkey)
        if verdict.outcome == "refused":
            self._fail(execution, verdict.fail_reason, verdict.message,
                       details=verdict.details, closing=attempt,
                       closing_reason=f"refused before sending: {verdict.fail_reason}")
        elif verdict.outcome == "expired":
            self._expire(execution, attempt, "never sent; its blockhash expired first")
        elif verdict.outcome == "unstable":
            self._sleep()
            return execution, attempt
        else:  # ok, or "landed" (someone has these bytes on chain already: only confirm)
            submitted = self._mark_submitted(execution, attempt, verdict)
            if submitted is None:
                return None
            if verdict.outcome == "ok":
                self._send(attempt, counted=True)
                crash_point("after_send")
            return submitted, attempt
        return None

    def _mark_submitted(self, execution: Execution, attempt: ExecutionAttempt,
                        verdict: GuardVerdict) -> Execution | None:
        now = timezone.now()
        with transaction.atomic():
            locked = lock_execution(execution.pk)
            if locked.status != E.SIGNED or locked.signature != attempt.signature:
                return None
            fields: dict[str, Any] = {}
            if locked.submitted_at is None:
                fields["submitted_at"] = now
            if verdict.outcome == "ok":
                # Counted before it happens, in the same commit: a crash right after this
                # commit leaves "submitted, sent once (maybe)", which is what recovery assumes.
                ExecutionAttempt.objects.filter(pk=attempt.pk).update(
                    send_count=F("send_count") + 1, last_sent_at=now)
                attempt.send_count, attempt.last_sent_at = attempt.send_count + 1, now
            execution_transition(
                execution=locked, to_status=E.SUBMITTED, actor=self.actor,
                signature=attempt.signature, fields=fields,
                details={"attempt": attempt.number,
                         "simulated_lamports_spend": str(verdict.lamports_spend),
                         "simulated_units": verdict.units_consumed})
        return locked

    def _send(self, attempt: ExecutionAttempt, *, counted: bool = False) -> None:
        if not counted:
            now = timezone.now()
            ExecutionAttempt.objects.filter(pk=attempt.pk).update(
                send_count=F("send_count") + 1, last_sent_at=now)
            attempt.send_count, attempt.last_sent_at = attempt.send_count + 1, now
        try:
            self.backend.send_raw(bytes(attempt.signed_transaction), skip_preflight=True)
        except SolanaError as exc:
            # The node may or may not have it: only the signature status can tell.
            logger.info("send outcome unknown; asking the chain", extra={"error": repr(exc)[:300]})

    # -- 6. confirm ----------------------------------------------------------------------

    def _confirm(self, execution: Execution, attempt: ExecutionAttempt) -> _Known | None:
        signature = Signature.from_string(attempt.signature)
        state = self.backend.signature_status(signature)
        if state is not None and state.confirmation_status in _LANDED_STATUSES:
            return self._record_landed(execution, attempt, state)
        if state is None:
            # Height first, then status again: a transaction that landed just before its
            # blockhash expired is found by the second look.
            height = self.backend.block_height()
            if height > attempt.last_valid_block_height:
                if self.backend.signature_status(signature) is None:
                    self._expire(execution, attempt,
                                 f"block height {height} passed {attempt.last_valid_block_height} "
                                 "with no status")
                return None
            last_sent = attempt.last_sent_at
            if last_sent is None or (timezone.now() - last_sent).total_seconds() >= self.resend_interval:
                self._send(attempt)  # the same bytes: at most one of them can ever land
                return execution, attempt
        self._sleep()
        return execution, attempt

    def _record_landed(self, execution: Execution, attempt: ExecutionAttempt,
                       state: SignatureState) -> _Known | None:
        details = self.backend.transaction(Signature.from_string(attempt.signature))
        if details is None:
            self._sleep()  # a status comes before the full transaction on some nodes
            return execution, attempt
        outcome = self._chain_outcome(details)
        treasury_balance = details.post_balances[details.account_keys.index(self.signer.pubkey)]
        with transaction.atomic():
            locked = lock_execution(execution.pk)
            if locked.status in FINAL:
                return None
            quote = locked.quote  # locked too: FOR UPDATE covers the joined quote row
            ExecutionAttempt.objects.filter(pk=attempt.pk).update(state=A.LANDED)
            recorded = {"fee_lamports": outcome.fee_lamports,
                        "compute_units_consumed": details.compute_units_consumed,
                        "treasury_outflow_lamports": outcome.outflow_lamports,
                        "slot": details.slot, "signature": attempt.signature,
                        "needs_recovery": False}
            chain_facts = {"attempt": attempt.number, "slot": details.slot,
                           "fee_lamports": str(outcome.fee_lamports),
                           "compute_units": details.compute_units_consumed,
                           "outflow_lamports": str(outcome.outflow_lamports),
                           "token_outflows": {m: str(a) for m, a in outcome.token_outflows.items()}}
            if details.err is None and state.err is None:
                execution_transition(execution=locked, to_status=E.CONFIRMED, actor=self.actor,
                                     signature=attempt.signature, quote=quote,
                                     fields={**recorded, "confirmed_at": timezone.now()},
                                     details=chain_facts)
                execution_book_success(execution=locked, quote=quote, outcome=outcome,
                                       signature=attempt.signature, actor=self.actor,
                                       treasury_balance_lamports=treasury_balance)
            else:
                err = details.err if details.err is not None else state.err
                message = f"program error: {json.dumps(err)}"
                execution_transition(execution=locked, to_status=E.FAILED, actor=self.actor,
                                     signature=attempt.signature, quote=quote,
                                     fields={**recorded, "fail_reason": FailReason.PROGRAM_ERROR,
                                             "error_message": message},
                                     details={**chain_facts, "err": err})
                execution_book_failure(execution=locked, quote=quote,
                                       reason=FailReason.PROGRAM_ERROR, message=message,
                                       actor=self.actor, outcome=outcome,
                                       signature=attempt.signature)
        return locked, None

    def _chain_outcome(self, details: TransactionDetails) -> ChainOutcome:
        return chain_outcome_of(details, self.signer.pubkey)

    # -- endings ---------------------------------------------------------------------------

    def _expire(self, execution: Execution, attempt: ExecutionAttempt, reason: str) -> None:
        """The attempt can never land; the next pass signs a new one (or gives up)."""
        with transaction.atomic():
            locked = lock_execution(execution.pk)
            if locked.status in FINAL:
                return
            closed = ExecutionAttempt.objects.filter(pk=attempt.pk, state=A.SIGNED).update(
                state=A.EXPIRED, closed_reason=reason[:200])
            if closed:
                audit_record(event_type="execution_attempt_expired", actor=self.actor,
                             entity_type="execution", entity_id=locked.pk,
                             user_id=locked.quote.user_id,
                             details={"attempt": attempt.number, "signature": attempt.signature,
                                      "reason": reason})

    def _fail(self, execution: Execution, reason: str, message: str, *,
              details: dict[str, Any] | None = None, closing: ExecutionAttempt | None = None,
              closing_reason: str = "") -> None:
        with transaction.atomic():
            locked = lock_execution(execution.pk)
            if locked.status in FINAL:
                return
            quote = locked.quote  # locked too: FOR UPDATE covers the joined quote row
            if closing is not None:
                # We hold the only copy of these bytes and never sent them: they are dead.
                ExecutionAttempt.objects.filter(pk=closing.pk, state=A.SIGNED).update(
                    state=A.EXPIRED, closed_reason=closing_reason[:200])
            _fail(execution=locked, quote=quote, reason=reason, message=message,
                  actor=self.actor, details=details)


def chain_outcome_of(details: TransactionDetails, treasury: Pubkey) -> ChainOutcome:
    """What a landed transaction did to the treasury, read from the chain's own record."""
    spent = -details.lamport_delta(treasury)
    tokens: dict[str, int] = {}
    pre = {b.account: b for b in details.pre_token_balances if b.owner == treasury}
    post = {b.account: b for b in details.post_token_balances if b.owner == treasury}
    for account in set(pre) | set(post):
        before = pre[account].amount if account in pre else 0
        after = post[account].amount if account in post else 0
        mint = str((pre.get(account) or post[account]).mint)
        tokens[mint] = tokens.get(mint, 0) + before - after
    return ChainOutcome(fee_lamports=details.fee, outflow_lamports=spent - details.fee,
                        token_outflows={m: a for m, a in tokens.items() if a})


def fail_refused(*, execution: Execution, quote: Quote, actor: str,
                 refusal: DailyLimitExceeded | TransactionLimitExceeded | InsufficientTreasury
                 ) -> None:
    """A start the risk limits refused: failed before anything was signed."""
    reason = (FailReason.INSUFFICIENT_TREASURY if isinstance(refusal, InsufficientTreasury)
              else FailReason.RISK_REJECTED)
    _fail(execution=execution, quote=quote, reason=reason,
          message=f"{refusal.code}: {refusal.message}", actor=actor)


def _fail(*, execution: Execution, quote: Quote, reason: str, message: str, actor: str,
          details: dict[str, Any] | None = None) -> None:
    """Record a failure that cost nothing on chain (refused, expired, rejected by risk)."""
    execution_transition(execution=execution, to_status=E.FAILED, actor=actor, quote=quote,
                         fields={"fail_reason": reason, "error_message": message[:2000],
                                 "needs_recovery": False},
                         details={"fail_reason": reason, "message": message[:500],
                                  **(details or {})})
    execution_book_failure(execution=execution, quote=quote, reason=reason, message=message,
                           actor=actor)
