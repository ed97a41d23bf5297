"""A real worker process is SIGKILLed after signing and before sending, and after sending
and before recording; recovery then finishes each quote with exactly one transaction on
chain and balanced books."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from solders.signature import Signature

from execution.models import Execution, ExecutionAttempt
from execution.services.recovery import execution_recover_stuck
from execution.tasks import execute_quote, recover_executions
from quotes.models import Quote
from settlement.models import JournalEntry
from tests.execution.conftest import assert_books_balanced, chain_transaction_count, sol_quote

pytestmark = pytest.mark.django_db(transaction=True)

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = ("import django; django.setup(); import sys; "
          "from execution.tasks import execute_quote; print(execute_quote(sys.argv[1]))")


def _database_url() -> str:
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgresql://{db['USER']}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def _worker(quote_id: str, sandbox, crash_point: str | None) -> subprocess.CompletedProcess[str]:
    """`execute_quote` in a separate Python process against this test's database/chain."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings",
           "DATABASE_URL": _database_url(), "SOLANA_RPC_URL": sandbox.url,
           "SOLANA_TREASURY_KEY": settings.SOLANA_TREASURY_KEY,
           "PYTHONPATH": str(REPO_ROOT)}
    env.pop("EXECUTION_CRASH_POINT", None)
    if crash_point:
        env["EXECUTION_CRASH_POINT"] = crash_point
    return subprocess.run([sys.executable, "-c", WORKER, quote_id], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_killed_after_signing_before_sending_is_sent_once_by_recovery(sandbox):
    amount = 8_100_000
    quote, recipient = sol_quote(sandbox, amount)
    before = chain_transaction_count(sandbox)

    worker = _worker(str(quote.pk), sandbox, "after_sign")

    assert worker.returncode == -signal.SIGKILL, worker.stderr[-2000:]
    execution = Execution.objects.get(quote=quote)
    attempt = ExecutionAttempt.objects.get(execution=execution)
    assert (execution.status, attempt.state, attempt.send_count) == ("signed", "signed", 0)
    assert sandbox.backend.signature_status(Signature.from_string(attempt.signature)) is None
    assert chain_transaction_count(sandbox) == before
    assert Quote.objects.get(pk=quote.pk).status == "executing"

    counts = execution_recover_stuck(older_than_seconds=0)

    assert counts == {"confirmed": 1}
    execution.refresh_from_db()
    assert execution.status == "confirmed" and execution.signature == attempt.signature
    assert ExecutionAttempt.objects.filter(execution=execution).count() == 1
    assert sandbox.balance(recipient) == amount
    assert chain_transaction_count(sandbox) == before + 1
    assert Quote.objects.get(pk=quote.pk).status == "executed"
    assert_books_balanced()


def test_killed_after_sending_before_recording_is_recorded_once_by_recovery(sandbox, settings):
    settings.EXECUTION_RECOVERY_GRACE_SECONDS = 0
    amount = 8_200_000
    quote, recipient = sol_quote(sandbox, amount)
    before = chain_transaction_count(sandbox)

    worker = _worker(str(quote.pk), sandbox, "after_send")

    assert worker.returncode == -signal.SIGKILL, worker.stderr[-2000:]
    execution = Execution.objects.get(quote=quote)
    attempt = ExecutionAttempt.objects.get(execution=execution)
    assert (execution.status, attempt.send_count) == ("submitted", 1)
    # The chain has it; our books do not yet.
    assert sandbox.backend.signature_status(Signature.from_string(attempt.signature)) is not None
    assert sandbox.balance(recipient) == amount
    assert not JournalEntry.objects.filter(reference=f"execution:{execution.pk}").exists()

    counts = recover_executions()  # the scheduled task's entry point

    assert counts.get("confirmed") == 1
    execution.refresh_from_db()
    assert execution.status == "confirmed" and int(execution.fee_lamports) == 5_000
    attempt.refresh_from_db()
    assert attempt.send_count == 1 and attempt.state == "landed"  # recovery asked, never re-sent
    assert sandbox.balance(recipient) == amount
    assert chain_transaction_count(sandbox) == before + 1
    assert JournalEntry.objects.filter(reference=f"execution:{execution.pk}").count() == 1
    assert_books_balanced()


def test_killed_after_a_send_that_never_arrived_is_re_signed_only_after_expiry(sandbox):
    amount = 8_300_000
    quote, recipient = sol_quote(sandbox, amount)
    before = chain_transaction_count(sandbox)
    sandbox.admin.inject_faults(drop_sends=1)

    worker = _worker(str(quote.pk), sandbox, "after_send")
    assert worker.returncode == -signal.SIGKILL, worker.stderr[-2000:]
    first = ExecutionAttempt.objects.get(execution__quote=quote)
    sandbox.admin.expire_blockhash()  # the dropped attempt can now never land

    assert execution_recover_stuck(older_than_seconds=0) == {"confirmed": 1}

    attempts = list(ExecutionAttempt.objects.filter(execution__quote=quote).order_by("number"))
    assert [(a.number, a.state) for a in attempts] == [(1, "expired"), (2, "landed")]
    assert attempts[0].signature == first.signature
    assert sandbox.backend.signature_status(Signature.from_string(first.signature)) is None
    assert sandbox.balance(recipient) == amount
    assert chain_transaction_count(sandbox) == before + 1
    assert_books_balanced()


def test_a_worker_without_a_crash_point_finishes_by_itself(sandbox):
    quote, recipient = sol_quote(sandbox, 8_400_000)

    worker = _worker(str(quote.pk), sandbox, None)

    assert worker.returncode == 0, worker.stderr[-2000:]
    assert "'outcome': 'confirmed'" in worker.stdout
    assert sandbox.balance(recipient) == 8_400_000
    assert execution_recover_stuck(older_than_seconds=0) == {}


def test_a_driver_that_times_out_leaves_it_flagged_and_recovery_finishes_it(sandbox, settings):
    settings.SOLANA_CONFIRM_TIMEOUT_SECONDS = 1
    settings.EXECUTION_RESEND_INTERVAL_SECONDS = 3600  # the dropped send is not retried in time
    quote, recipient = sol_quote(sandbox, 8_500_000)
    sandbox.admin.inject_faults(drop_sends=1)

    assert execute_quote(str(quote.pk))["outcome"] == "unresolved"
    execution = Execution.objects.get(quote=quote)
    assert (execution.status, execution.needs_recovery) == ("submitted", True)
    assert sandbox.balance(recipient) == 0  # never failed while it could still land

    settings.EXECUTION_RESEND_INTERVAL_SECONDS = 0
    assert execution_recover_stuck() == {"confirmed": 1}  # flagged: no grace period

    execution.refresh_from_db()
    assert (execution.status, execution.needs_recovery) == ("confirmed", False)
    assert sandbox.balance(recipient) == 8_500_000
    assert ExecutionAttempt.objects.filter(execution=execution).count() == 1
