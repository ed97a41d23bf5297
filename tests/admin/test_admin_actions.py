"""Each operator action: refused without its permission (nothing changes), and with it the
service's effect is there, audited under the operator's name."""

from __future__ import annotations

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse
from django_q.models import OrmQ

from execution.models import Execution, ExecutionStatus
from quotes.models import QuoteStatus
from risk.models import AuditEvent, CircuitBreaker, CircuitBreakerEvent
from risk.services import breaker_trip
from settlement.models import (
    FundingPayment,
    JournalEntry,
    ReconciliationReport,
    Refund,
    Settlement,
    UserBalance,
    Withdrawal,
)
from tests.admin.admin_kit import (
    committed_quote,
    executed_quote,
    failed_quote,
    held_withdrawal,
    start_execution,
    unmatched_payment,
)
from tests.admin.conftest import login, staff_with
from tests.factories import QuoteFactory, UserFactory

pytestmark = pytest.mark.django_db


def run_action(client, model: str, action: str, rows, **form):
    """POST a changelist action as the admin's action bar does (plus an intermediate form)."""
    data = {"action": action, ACTION_CHECKBOX_NAME: [str(r.pk) for r in rows], "index": 0, **form}
    return client.post(reverse(f"admin:{model}_changelist"), data, follow=True)


def audited(event_type: str, actor: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event_type=event_type, actor=actor))


def action_names(client, model: str) -> set[str]:
    response = client.get(reverse(f"admin:{model}_changelist"))
    form = response.context["action_form"]
    if form is None:  # no action this user may run
        return set()
    return {name for name, _ in form.fields["action"].choices if name}


# --- circuit breaker -------------------------------------------------------------------------


def open_breaker() -> None:
    breaker_trip(trigger="hourly_outflow", reason="test: outflow spike", actor="system:test")


def test_reset_confirmation_page_asks_for_a_reason(admin_client):
    open_breaker()
    page = admin_client.get(reverse("admin:risk_circuitbreaker_reset"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Reset the circuit breaker" in html and 'name="reason"' in html
    assert "test: outflow spike" in html  # what the operator is about to close

    blank = admin_client.post(reverse("admin:risk_circuitbreaker_reset"), {"reason": "   "})
    assert blank.status_code == 200 and "required" in blank.content.decode()
    assert CircuitBreaker.objects.get(pk=1).is_open


def test_reset_with_reason_closes_breaker_and_audits_the_operator(admin_client):
    open_breaker()
    response = admin_client.post(reverse("admin:risk_circuitbreaker_reset"),
                                 {"reason": "outflow reviewed: payroll batch"}, follow=True)
    assert response.status_code == 200
    assert not CircuitBreaker.objects.get(pk=1).is_open
    event = CircuitBreakerEvent.objects.get(kind="reset")
    assert event.actor == "operator:ops-alice" and event.reason == "outflow reviewed: payroll batch"
    [audit] = audited("circuit_breaker_reset", "operator:ops-alice")
    assert audit.details["reason"] == "outflow reviewed: payroll batch"


def test_reset_needs_the_reset_breaker_permission(viewer_client):
    open_breaker()
    assert viewer_client.get(reverse("admin:risk_circuitbreaker_reset")).status_code == 403
    assert viewer_client.post(reverse("admin:risk_circuitbreaker_reset"),
                              {"reason": "let me"}).status_code == 403
    assert CircuitBreaker.objects.get(pk=1).is_open
    assert "reset_action" not in action_names(viewer_client, "risk_circuitbreaker")


def test_staff_with_only_reset_permission_can_reset_but_not_trip(db):
    client = login(staff_with("risk.view_circuitbreaker", "risk.reset_breaker", username="ops-bob"))
    assert action_names(client, "risk_circuitbreaker") == {"reset_action"}
    assert client.post(reverse("admin:risk_circuitbreaker_trip"), {"reason": "x"}).status_code == 403
    open_breaker()
    client.post(reverse("admin:risk_circuitbreaker_reset"), {"reason": "checked"})
    assert not CircuitBreaker.objects.get(pk=1).is_open
    assert audited("circuit_breaker_reset", "operator:ops-bob")


def test_trip_with_reason_opens_breaker(admin_client):
    admin_client.post(reverse("admin:risk_circuitbreaker_trip"), {"reason": "suspicious volume"})
    breaker = CircuitBreaker.objects.get(pk=1)
    assert breaker.is_open and breaker.trigger == "operator" and breaker.opened_by == "operator:ops-alice"
    assert audited("circuit_breaker_tripped", "operator:ops-alice")


def test_breaker_actions_lead_to_the_confirmation_pages(admin_client):
    breaker, _ = CircuitBreaker.objects.get_or_create(pk=1)
    response = run_action(admin_client, "risk_circuitbreaker", "reset_action", [breaker])
    assert response.redirect_chain[-1][0] == reverse("admin:risk_circuitbreaker_reset")


# --- executions ------------------------------------------------------------------------------


def test_mark_for_recovery_flags_and_enqueues_without_signing(admin_client, treasury,
                                                              django_capture_on_commit_callbacks):
    execution = start_execution(committed_quote(user=UserFactory(), treasury=treasury))
    attempts_before = execution.attempts.count()
    queued_before = set(OrmQ.objects.values_list("pk", flat=True))
    with django_capture_on_commit_callbacks(execute=True):
        run_action(admin_client, "execution_execution", "mark_for_recovery_action", [execution])
    execution.refresh_from_db()
    assert execution.needs_recovery and execution.status == ExecutionStatus.SUBMITTED
    assert execution.attempts.count() == attempts_before  # nothing signed
    assert audited("execution_marked_for_recovery", "operator:ops-alice")
    queued = OrmQ.objects.exclude(pk__in=queued_before)
    assert [t.func() for t in queued] == ["execution.tasks.recover_executions"]


def test_mark_for_recovery_skips_final_executions_and_needs_permission(admin_client, viewer_client,
                                                                       treasury):
    done = Execution.objects.get(quote=executed_quote(user=UserFactory(), treasury=treasury))
    live = start_execution(committed_quote(user=UserFactory(), treasury=treasury))
    run_action(viewer_client, "execution_execution", "mark_for_recovery_action", [live])
    live.refresh_from_db()
    assert not live.needs_recovery

    run_action(admin_client, "execution_execution", "mark_for_recovery_action", [done])
    done.refresh_from_db()
    assert not done.needs_recovery
    assert not AuditEvent.objects.filter(event_type="execution_marked_for_recovery").exists()


# --- refunds ---------------------------------------------------------------------------------


def test_approve_refund_needs_approve_refund_permission(viewer_client, treasury):
    refund = Refund.objects.get(quote=failed_quote(user=UserFactory(), treasury=treasury))
    run_action(viewer_client, "settlement_refund", "approve_action", [refund])
    refund.refresh_from_db()
    assert refund.status == "due"


def test_approve_then_record_payout_completes_refund_once(db, treasury):
    approver = staff_with("settlement.view_refund", "settlement.approve_refund", username="ops-carol")
    client = login(approver)
    refund = Refund.objects.get(quote=failed_quote(user=UserFactory(), treasury=treasury))

    run_action(client, "settlement_refund", "approve_action", [refund])
    refund.refresh_from_db()
    assert refund.status == "approved" and refund.approved_by == "operator:ops-carol"

    form_page = run_action(client, "settlement_refund", "complete_action", [refund])
    assert 'name="tx_hash"' in form_page.content.decode()
    run_action(client, "settlement_refund", "complete_action", [refund], post="yes", tx_hash="ab" * 32)
    run_action(client, "settlement_refund", "complete_action", [refund], post="yes", tx_hash="cd" * 32)
    refund.refresh_from_db()
    assert refund.status == "completed" and refund.tx_hash == "ab" * 32
    assert JournalEntry.objects.filter(reference=f"refund:{refund.pk}").count() == 1
    assert audited("refund_completed", "operator:ops-carol")


# --- unmatched deposits ----------------------------------------------------------------------


def test_resolve_unmatched_deposit_to_a_quote_commits_it(admin_client, treasury,
                                                         django_capture_on_commit_callbacks):
    quote = QuoteFactory(user=UserFactory(), payment_address=treasury)
    payment = unmatched_payment(treasury=treasury, amount=int(quote.total_cost))
    with django_capture_on_commit_callbacks(execute=True):
        run_action(admin_client, "settlement_fundingpayment", "resolve_action", [payment],
                   post="yes", quote_id=str(quote.pk), user="")
    payment.refresh_from_db()
    quote.refresh_from_db()
    assert payment.status == "matched" and payment.quote_id == quote.pk
    assert quote.status == QuoteStatus.COMMITTED
    assert quote.transitions.get(to_status="committed").actor == "operator:ops-alice"
    entry = JournalEntry.objects.get(reference=f"unmatched_resolve:stellar:{payment.tx_hash}")
    assert {p.account.code: int(p.amount) for p in entry.postings.all()} == {
        "unmatched_deposits:stellar:XLM": int(quote.total_cost),
        "customer_funds:stellar:XLM": -int(quote.total_cost)}
    assert audited("payment_resolved", "operator:ops-alice")
    assert [t.func() for t in OrmQ.objects.all()] == ["execution.tasks.execute_quote"]

    # A second resolution is refused: the money moved once.
    other = QuoteFactory(user=UserFactory(), payment_address=treasury)
    response = run_action(admin_client, "settlement_fundingpayment", "resolve_action", [payment],
                          post="yes", quote_id=str(other.pk), user="")
    assert "only an unresolved unmatched payment" in response.content.decode()
    assert JournalEntry.objects.filter(reference__startswith="unmatched_resolve:").count() == 1


def test_resolve_unmatched_deposit_to_a_balance(admin_client, treasury):
    owner = UserFactory(username="dana")
    payment = unmatched_payment(treasury=treasury, amount=3 * 10**7)
    run_action(admin_client, "settlement_fundingpayment", "resolve_action", [payment],
               post="yes", quote_id="", user="dana")
    payment.refresh_from_db()
    assert payment.status == "credited" and payment.user_id == owner.pk
    assert int(UserBalance.objects.get(user=owner, chain="stellar").amount) == 3 * 10**7


def test_resolve_form_rejects_both_or_neither_target(admin_client, treasury):
    payment = unmatched_payment(treasury=treasury, amount=3 * 10**7)
    response = run_action(admin_client, "settlement_fundingpayment", "resolve_action", [payment],
                          post="yes", quote_id="", user="")
    assert "Give exactly one" in response.content.decode()
    payment.refresh_from_db()
    assert payment.status == "unmatched"


def test_resolve_and_refund_to_payer_need_their_permissions(viewer_client, admin_client, treasury):
    payment = unmatched_payment(treasury=treasury, amount=3 * 10**7)
    assert action_names(viewer_client, "settlement_fundingpayment") == set()
    run_action(viewer_client, "settlement_fundingpayment", "refund_to_payer_action", [payment],
               post="yes", destination="")
    assert not Refund.objects.filter(funding_payment=payment).exists()

    run_action(admin_client, "settlement_fundingpayment", "refund_to_payer_action", [payment],
               post="yes", destination="")
    refund = Refund.objects.get(funding_payment=payment)
    assert refund.reason == "unmatched" and refund.destination == payment.from_address


# --- withdrawals -----------------------------------------------------------------------------


def test_approve_withdrawal_needs_permission_and_records_approver(viewer_client, db, treasury,
                                                                   django_capture_on_commit_callbacks):
    withdrawal = held_withdrawal(user=UserFactory(), treasury=treasury)
    assert withdrawal.status == "pending_approval"
    run_action(viewer_client, "settlement_withdrawal", "approve_action", [withdrawal])
    withdrawal.refresh_from_db()
    assert withdrawal.status == "pending_approval"

    client = login(staff_with("settlement.view_withdrawal", "settlement.approve_withdrawal",
                              username="ops-erin"))
    with django_capture_on_commit_callbacks(execute=True):
        run_action(client, "settlement_withdrawal", "approve_action", [withdrawal])
    withdrawal.refresh_from_db()
    assert withdrawal.status == "approved" and withdrawal.approved_by == "operator:ops-erin"
    assert OrmQ.objects.count() == 1  # the payout is queued, not run in the request


def test_reject_withdrawal_returns_the_amount(admin_client, treasury):
    user = UserFactory()
    withdrawal = held_withdrawal(user=user, treasury=treasury)
    run_action(admin_client, "settlement_withdrawal", "reject_action", [withdrawal],
               post="yes", reason="destination under review")
    withdrawal.refresh_from_db()
    assert withdrawal.status == "rejected" and withdrawal.fail_reason == "destination under review"
    balance = UserBalance.objects.get(user=user, chain="stellar")
    assert int(balance.locked) == 0 and int(balance.amount) == int(withdrawal.amount)


# --- settlements and reconciliation ----------------------------------------------------------


def test_retry_settlement_verification_is_audited_and_permission_gated(admin_client, viewer_client,
                                                                        treasury):
    quote = executed_quote(user=UserFactory(), treasury=treasury)
    settlement = Settlement.objects.get(execution__quote=quote)
    run_action(viewer_client, "settlement_settlement", "retry_verification_action", [settlement])
    assert not AuditEvent.objects.filter(event_type="settlement_retry_requested").exists()

    run_action(admin_client, "settlement_settlement", "retry_verification_action", [settlement])
    assert audited("settlement_retry_requested", "operator:ops-alice")
    settlement.refresh_from_db()
    assert settlement.status in ("pending", "verified", "settled", "failed")


def test_fail_settlement_requires_a_reason(admin_client, treasury):
    settlement = Settlement.objects.get(
        execution__quote=executed_quote(user=UserFactory(), treasury=treasury))
    page = run_action(admin_client, "settlement_settlement", "fail_action", [settlement],
                      post="yes", reason="")
    assert "required" in page.content.decode()
    run_action(admin_client, "settlement_settlement", "fail_action", [settlement],
               post="yes", reason="payment reversed on chain")
    settlement.refresh_from_db()
    assert settlement.status == "failed"
    transition = settlement.transitions.get(to_status="failed")
    assert transition.actor == "operator:ops-alice"
    assert transition.details["reason"] == "payment reversed on chain"


def test_run_reconciliation_needs_permission(viewer_client, admin_client):
    url = reverse("admin:settlement_reconciliationreport_run")
    assert viewer_client.post(url).status_code == 403
    assert admin_client.get(url).status_code == 405
    admin_client.post(url)
    report = ReconciliationReport.objects.get()
    assert report.triggered_by == "operator:ops-alice" and report.outcome != "running"


def test_no_payment_is_touched_by_a_refused_action(viewer_client, treasury):
    payment = unmatched_payment(treasury=treasury, amount=3 * 10**7)
    before = FundingPayment.objects.values().get(pk=payment.pk)
    run_action(viewer_client, "settlement_fundingpayment", "resolve_action", [payment],
               post="yes", quote_id="", user="x")
    assert FundingPayment.objects.values().get(pk=payment.pk) == before
    assert not Withdrawal.objects.exists()
