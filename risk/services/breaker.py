"""The circuit breaker: what trips it, and the operator-only reset.

Triggers (DESIGN.md §9): hourly treasury outflow above HOURLY_OUTFLOW_THRESHOLD of the
treasury balance, CONSECUTIVE_FAILURE_THRESHOLD failed executions in a row, quote volume in
the last hour above VOLUME_SPIKE_RATIO × the trailing 24 h hourly average (and above
VOLUME_SPIKE_FLOOR), a reconciliation mismatch, and an operator. While open, new quotes and
new executions are refused with CIRCUIT_BREAKER_TRIGGERED; committed quotes stay committed
and wait. Only a staff user with `risk.reset_breaker` can close it, with a reason.

The state is the single `CircuitBreaker` row: trips and resets lock it, so two concurrent
trips write one event, and counters move with F() / conditional UPDATEs only.
`CIRCUIT_BREAKER_ENABLED=false` silences the automatic triggers (they log a warning
instead); an operator's trip is still honoured.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import F
from django.utils import timezone

from config.errors import Forbidden, InvalidRequest
from risk.audit import audit_record
from risk.errors import CircuitBreakerOpen
from risk.models import CircuitBreaker, CircuitBreakerEvent
from risk.selectors import (
    VOLUME_BASELINE_HOURS,
    breaker_is_open,
    hourly_outflow_lamports,
    quote_volume_counts,
    utc_minute,
)
from risk.services.alerts import alert_raise, jsonable

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

    from quotes.models import Quote
    from users.models import User

    # Whoever is signed in: an anonymous or non-staff caller is refused, not mistyped.
    Actor = User | AnonymousUser

logger = logging.getLogger(__name__)

BREAKER_ENTITY = "circuit_breaker"


class Trigger(StrEnum):
    HOURLY_OUTFLOW = "hourly_outflow"
    CONSECUTIVE_FAILURES = "consecutive_failures"
    VOLUME_SPIKE = "volume_spike"
    RECONCILIATION_MISMATCH = "reconciliation_mismatch"
    OPERATOR = "operator"


def operator_actor(user: Actor) -> str:
    return f"operator:{user.get_username()}"


# --- state ---------------------------------------------------------------------------------

def breaker_assert_closed() -> None:
    """One primary-key read; raises CircuitBreakerOpen (503) while the breaker is open."""
    if breaker_is_open():
        raise CircuitBreakerOpen()


def _lock_breaker() -> CircuitBreaker:
    """Lock the singleton row for the rest of the transaction (recreating it if missing)."""
    try:
        return CircuitBreaker.objects.select_for_update().get(pk=1)
    except CircuitBreaker.DoesNotExist:
        CircuitBreaker.objects.bulk_create([CircuitBreaker(pk=1)], ignore_conflicts=True)
        return CircuitBreaker.objects.select_for_update().get(pk=1)


# --- trip and reset ------------------------------------------------------------------------

def breaker_trip(*, trigger: str, reason: str, actor: str,
                 details: dict[str, Any] | None = None) -> bool:
    """Open the breaker. Returns False (and writes nothing) when it is already open.

    Writes the history event, the audit row and the alert in the caller's transaction;
    the error log line and the outgoing webhook follow after commit.
    """
    reason = (reason or "").strip()
    if not reason:
        raise InvalidRequest("A reason is required to trip the circuit breaker")
    details = jsonable(details)
    with transaction.atomic():
        breaker = _lock_breaker()
        if breaker.is_open:
            return False
        now = timezone.now()
        breaker.is_open = True
        breaker.reason = reason
        breaker.trigger = trigger
        breaker.opened_at = now
        breaker.opened_by = actor
        breaker.save(update_fields=["is_open", "reason", "trigger", "opened_at", "opened_by",
                                    "updated_at"])
        CircuitBreakerEvent.objects.create(kind=CircuitBreakerEvent.Kind.TRIPPED, trigger=trigger,
                                           reason=reason, actor=actor, details=details, at=now)
        audit_record(event_type="circuit_breaker_tripped", actor=actor, entity_type=BREAKER_ENTITY,
                     entity_id=1, details={"trigger": trigger, "reason": reason, **details})
        alert_raise(kind="circuit_breaker_tripped",
                    message=f"Circuit breaker tripped ({trigger}): {reason}",
                    details={"trigger": trigger, "reason": reason, "actor": actor,
                             "opened_at": now, **details})
    return True


def _trip_automatic(*, trigger: Trigger, reason: str, details: dict[str, Any]) -> bool:
    if not settings.CIRCUIT_BREAKER_ENABLED:
        logger.warning("circuit breaker disabled; not tripping", extra={
            "trigger": str(trigger), "reason": reason, "details": jsonable(details)})
        return False
    return breaker_trip(trigger=trigger, reason=reason, actor=f"system:{trigger}",
                        details=details)


def _trip_committed_now(*, trigger: Trigger, reason: str, details: dict[str, Any]) -> bool:
    """Trip in a transaction of its own, even when called inside the caller's.

    The quote path refuses the very quote that revealed a volume spike, and that refusal
    rolls the caller's transaction back; a trip written in it would vanish with it. A
    helper thread has its own database connection, so its trip commits on its own.
    """
    if not connection.in_atomic_block:
        return _trip_automatic(trigger=trigger, reason=reason, details=details)
    outcome: dict[str, Any] = {}

    def trip() -> None:
        try:
            outcome["tripped"] = _trip_automatic(trigger=trigger, reason=reason, details=details)
        except Exception as exc:  # reported to the caller's thread below
            outcome["error"] = exc
        finally:
            close_old_connections()
            connection.close()

    worker = threading.Thread(target=trip, name="breaker-trip", daemon=True)
    worker.start()
    worker.join(timeout=30)
    if "error" in outcome:
        raise outcome["error"]
    if worker.is_alive():
        logger.error("circuit breaker trip did not finish", extra={"trigger": str(trigger)})
    return bool(outcome.get("tripped"))


def breaker_trip_by_operator(*, actor_user: Actor, reason: str,
                             details: dict[str, Any] | None = None) -> bool:
    """An operator opens the breaker by hand (staff with `risk.trip_breaker`)."""
    if not (actor_user.is_active and actor_user.is_staff
            and actor_user.has_perm("risk.trip_breaker")):
        raise Forbidden("Only operators with the trip_breaker permission can trip the breaker")
    return breaker_trip(trigger=Trigger.OPERATOR, reason=reason,
                        actor=operator_actor(actor_user), details=details)


# Called after a reset commits: the execution app registers "resume the waiting quotes".
_reset_hooks: list[Callable[[], Any]] = []


def breaker_on_reset(hook: Callable[[], Any]) -> None:
    """Register a callable run after every committed reset (e.g. re-enqueue held executions)."""
    if hook not in _reset_hooks:
        _reset_hooks.append(hook)


def _run_reset_hooks() -> None:
    for hook in list(_reset_hooks):
        try:
            hook()
        except Exception:  # one failing hook must not stop the others; held work is re-found
            logger.exception("breaker reset hook failed")


def breaker_reset(*, actor_user: Actor, reason: str) -> None:
    """Close the breaker: staff with `risk.reset_breaker` only, with a reason, audited.

    Resetting a closed breaker changes nothing. The failure counter restarts at zero, and
    outflow and volume are measured from the reset on.
    """
    if not (actor_user.is_active and actor_user.is_staff
            and actor_user.has_perm("risk.reset_breaker")):
        raise Forbidden("Only operators with the reset_breaker permission can reset the breaker")
    reason = (reason or "").strip()
    if not reason:
        raise InvalidRequest("A reason is required to reset the circuit breaker")
    actor = operator_actor(actor_user)
    with transaction.atomic():
        breaker = _lock_breaker()
        if not breaker.is_open:
            return
        now = timezone.now()
        previous_trigger = breaker.trigger
        previous = {"trigger": breaker.trigger, "reason": breaker.reason,
                    "opened_at": breaker.opened_at, "opened_by": breaker.opened_by}
        breaker.is_open = False
        breaker.reason = ""
        breaker.trigger = ""
        breaker.opened_at = None
        breaker.opened_by = ""
        breaker.consecutive_failures = 0
        breaker.reset_at = now
        breaker.save(update_fields=["is_open", "reason", "trigger", "opened_at", "opened_by",
                                    "consecutive_failures", "reset_at", "updated_at"])
        CircuitBreakerEvent.objects.create(kind=CircuitBreakerEvent.Kind.RESET,
                                           trigger=previous_trigger, reason=reason,
                                           actor=actor, details=jsonable({"previous": previous}),
                                           at=now)
        audit_record(event_type="circuit_breaker_reset", actor=actor, entity_type=BREAKER_ENTITY,
                     entity_id=1, user_id=actor_user.pk,
                     details={"reason": reason, "previous": jsonable(previous)})
        logger.warning("circuit breaker reset", extra={"actor": actor, "reason": reason})
        transaction.on_commit(_run_reset_hooks)


# --- triggers ------------------------------------------------------------------------------

def breaker_record_execution_outcome(*, success: bool, outflow_lamports: int = 0,
                                     quote: Quote | None = None,
                                     treasury_balance_lamports: int | None = None) -> None:
    """Count an execution's outcome: failures in a row trip the breaker; a success resets
    the count, books its outflow and checks the hourly outflow.

    Pass `quote` so the outflow is booked once per quote and its spend reservation is
    marked consumed (a later release then gives nothing back). Pass the chain's treasury
    balance when known; otherwise the ledger's `treasury:solana:SOL` balance is used.
    """
    with transaction.atomic():
        if not success:
            _record_failure()
            return
        # No write (and no row lock) unless there is a streak to end.
        CircuitBreaker.objects.filter(pk=1, consecutive_failures__gt=0).update(
            consecutive_failures=0, updated_at=timezone.now())
        if quote is not None:
            from risk.services.limits import risk_consume_execution

            risk_consume_execution(quote=quote)
        if outflow_lamports <= 0:
            return
        _book_outflows({quote.pk if quote is not None else None: outflow_lamports})
        if treasury_balance_lamports is None:
            from risk.services.limits import treasury_balance_lamports as ledger_balance

            treasury_balance_lamports = ledger_balance()
            if treasury_balance_lamports <= 0:
                # The books hold no treasury (not seeded): a ratio against zero would
                # trip on the first payment without saying anything true.
                logger.warning("hourly outflow not checked: the ledger holds no treasury balance")
                return
        breaker_check_hourly_outflow(treasury_balance_lamports=treasury_balance_lamports)


def breaker_record_execution_successes(*, outflows: dict[Any, int],
                                       treasury_balance_lamports: int) -> None:
    """`breaker_record_execution_outcome(success=True, ...)` for a batch of landed
    executions: `outflows` maps quote id → lamports spent (fee included). One streak reset,
    one reservation update, one outflow insert, one hourly check with the chain's latest
    treasury balance."""
    from risk.services.limits import risk_consume_executions

    # No savepoint: nothing here is caught and carried on from, so a failure undoes the
    # caller's whole transaction anyway (the batch's record step), and two round trips
    # per batch are saved.
    with transaction.atomic(savepoint=False):
        CircuitBreaker.objects.filter(pk=1, consecutive_failures__gt=0).update(
            consecutive_failures=0, updated_at=timezone.now())
        risk_consume_executions(list(outflows))
        spent = {quote_id: lamports for quote_id, lamports in outflows.items() if lamports > 0}
        if not spent:
            return
        _book_outflows(spent)
        breaker_check_hourly_outflow(treasury_balance_lamports=treasury_balance_lamports)


# The rows not booked before (a retried success books nothing twice), and their total
# added to the minute's, in one statement: the minute's row lock is held to commit, so
# concurrent batches add up rather than overwrite.
_BOOK_OUTFLOWS = """
WITH booked AS (
    INSERT INTO risk_treasuryoutflow (quote_id, lamports, at)
    SELECT quote_id, lamports, %s FROM unnest(%s::uuid[], %s::numeric[]) AS spent (quote_id, lamports)
    ON CONFLICT (quote_id) DO NOTHING
    RETURNING lamports)
INSERT INTO risk_outflowminute (minute, lamports)
SELECT %s, sum(lamports) FROM booked HAVING count(*) > 0
ON CONFLICT (minute) DO UPDATE SET lamports = risk_outflowminute.lamports + EXCLUDED.lamports
"""


def _book_outflows(spent: dict[Any, int]) -> None:
    """Book `spent` (quote id or None -> lamports, each > 0) as treasury outflow now."""
    at = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(_BOOK_OUTFLOWS, [at, list(spent), [Decimal(v) for v in spent.values()],
                                        utc_minute(at)])


def _record_failure() -> None:
    updated = CircuitBreaker.objects.filter(pk=1).update(
        consecutive_failures=F("consecutive_failures") + 1, updated_at=timezone.now())
    if not updated:
        CircuitBreaker.objects.bulk_create([CircuitBreaker(pk=1)], ignore_conflicts=True)
        CircuitBreaker.objects.filter(pk=1).update(
            consecutive_failures=F("consecutive_failures") + 1, updated_at=timezone.now())
    # Our UPDATE holds the row lock until commit, so this read is exactly our increment.
    failures = CircuitBreaker.objects.values_list("consecutive_failures", flat=True).get(pk=1)
    threshold = settings.CONSECUTIVE_FAILURE_THRESHOLD
    if failures >= threshold:
        _trip_automatic(
            trigger=Trigger.CONSECUTIVE_FAILURES,
            reason=f"{failures} consecutive failed executions (threshold {threshold})",
            details={"consecutive_failures": failures, "threshold": threshold})


def breaker_check_hourly_outflow(*, treasury_balance_lamports: int) -> None:
    """Trip when the last hour's outflow exceeds HOURLY_OUTFLOW_THRESHOLD × the balance."""
    outflow = hourly_outflow_lamports()
    ratio = Decimal(settings.HOURLY_OUTFLOW_THRESHOLD)
    limit = ratio * Decimal(int(treasury_balance_lamports))
    if Decimal(outflow) > limit:
        _trip_automatic(
            trigger=Trigger.HOURLY_OUTFLOW,
            reason=(f"Hourly outflow {outflow} lamports exceeds {ratio:%} of the treasury "
                    f"balance {treasury_balance_lamports} lamports"),
            details={"hourly_outflow_lamports": outflow,
                     "treasury_balance_lamports": int(treasury_balance_lamports),
                     "threshold_ratio": str(ratio)})


_volume_lock = threading.Lock()
_volume_counted_at: float | None = None  # time.monotonic() of this process's last count


def breaker_check_quote_volume(*, force: bool = False) -> bool:
    """Trip on a quote volume spike; True when this call tripped the breaker. Counting
    runs at most every VOLUME_CHECK_INTERVAL_SECONDS per process (one indexed aggregate),
    so calling this on every quote costs nothing most of the time."""
    global _volume_counted_at
    with _volume_lock:
        now = time.monotonic()
        interval = float(settings.VOLUME_CHECK_INTERVAL_SECONDS)
        if not force and _volume_counted_at is not None and now - _volume_counted_at < interval:
            return False
        _volume_counted_at = now
    return _quote_volume_evaluate()


def _quote_volume_evaluate() -> bool:
    last_hour, baseline = quote_volume_counts()
    ratio = Decimal(settings.VOLUME_SPIKE_RATIO)
    floor = int(settings.VOLUME_SPIKE_FLOOR)
    # last_hour > ratio × (baseline / 24), kept in exact arithmetic.
    spiking = Decimal(last_hour) * VOLUME_BASELINE_HOURS > ratio * Decimal(baseline)
    if not (last_hour > floor and spiking):
        return False
    average = Decimal(baseline) / VOLUME_BASELINE_HOURS
    return _trip_committed_now(
        trigger=Trigger.VOLUME_SPIKE,
        reason=(f"{last_hour} quotes in the last hour, above {ratio}× the 24 h hourly "
                f"average ({average:.2f}) and the floor {floor}"),
        details={"last_hour_quotes": last_hour, "baseline_24h_quotes": baseline,
                 "hourly_average": str(average), "ratio": str(ratio), "floor": floor})


def breaker_trip_reconciliation_mismatch(*, report_id: Any, details: dict[str, Any]) -> bool:
    """The reconciler found books and chain disagreeing: stop spending until someone looks."""
    return _trip_automatic(
        trigger=Trigger.RECONCILIATION_MISMATCH,
        reason=f"Reconciliation report {report_id} found a mismatch",
        details={"report_id": str(report_id), **(details or {})})
