"""Take the README's admin screenshots with headless Chromium (Debian's `chromium`).

    .venv/bin/python docs/screenshots/take.py

Creates a fresh database (`solpay_admin_screens` on DATABASE_URL's server, default the local
PostgreSQL on 127.0.0.1:5432), fills it with a week of demo activity through the real write
paths (tests/admin/admin_kit.py: signed Stellar payments, the quote and execution state
machines, the executor's bookings, breaker trips and an operator reset), serves it with
`runserver` on 127.0.0.1:8765, signs headless Chromium in through a one-time link that only
docs/screenshots/screens_urls.py has, and writes dashboard.png, breaker_reset.png and
quote_detail.png beside this file.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PORT = 8765
SERVER_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_NAME = "solpay_admin_screens"
DB_URL = SERVER_URL.rsplit("/", 1)[0] + f"/{DB_NAME}"


def fresh_database() -> None:
    import psycopg

    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def environment() -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": DB_URL, "DJANGO_SETTINGS_MODULE": "screens_settings",
            "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]), "LOG_LEVEL": "WARNING"}


def seed() -> dict[str, str]:
    """A week of activity; returns the ids the screenshots need."""
    import django

    django.setup()
    from django.conf import settings
    from django.db import transaction
    from django.utils import timezone

    from execution.models import Execution
    from quotes.models import Quote, QuoteTransition
    from risk.models import CircuitBreaker, CircuitBreakerEvent, DailySpending, TreasuryOutflow
    from risk.services import breaker_reset, breaker_trip
    from settlement.models import TreasuryAccount
    from settlement.services.treasury import treasury_accounts_ensure
    from tests.admin import admin_kit
    from tests.factories import UserFactory

    treasury = settings.STELLAR_TREASURY_ADDRESS
    operator = UserFactory(username="ops-alice", is_staff=True, is_superuser=True)
    customers = [UserFactory(username=name) for name in ("maria", "kenji", "amara", "lucas")]
    admin_kit.fund_inventory(sol=1_000)
    treasury_accounts_ensure()

    now = timezone.now()
    rng = __import__("random").Random(7)
    featured = None
    for index in range(60):
        outflow = rng.choice([2, 5, 8, 12, 20, 35, 50]) * 10**8  # 0.2 .. 5 SOL
        quote = admin_kit.executed_quote(
            user=customers[index % 4], treasury=treasury, treasury_outflow_lamports=outflow,
            max_lamports_spend=outflow + 5_000, destination_amount=outflow + 5_000,
            refund_to="GBRPYHIL2CI3FNQ4BXLFMNDLFJUNPU2HY3ZMFSHONUCEOASW7QC7OX2H")
        # Spread the week's history backwards in time (newest first): hours, then days.
        age = dt.timedelta(minutes=rng.randint(5, 50)) if index < 8 else \
            dt.timedelta(hours=rng.randint(1, 23)) if index < 30 else \
            dt.timedelta(days=rng.randint(1, 6), hours=rng.randint(0, 23))
        when = now - age
        Quote.objects.filter(pk=quote.pk).update(created_at=when - dt.timedelta(minutes=1),
                                                 expires_at=when + dt.timedelta(minutes=4),
                                                 committed_at=when, executed_at=when)
        TreasuryOutflow.objects.filter(quote_id=quote.pk).update(at=when)
        for step, transition in enumerate(QuoteTransition.objects.filter(quote=quote).order_by("at", "id")):
            QuoteTransition.objects.filter(pk=transition.pk).update(at=when + dt.timedelta(seconds=2 * step))
        if index == 0:
            featured = quote
    for index in range(4):
        admin_kit.failed_quote(user=customers[index], treasury=treasury)
    for index in range(3):
        admin_kit.start_execution(admin_kit.committed_quote(user=customers[index], treasury=treasury))
    for index in range(2):
        admin_kit.unmatched_payment(treasury=treasury, amount=(index + 3) * 10**8, memo_id=9_100 + index)
    admin_kit.held_withdrawal(user=customers[0], treasury=treasury)

    today = now.date()
    spent = sum(int(q.max_lamports_spend) for q in Quote.objects.filter(executed_at__date=today))
    DailySpending.objects.update_or_create(chain="solana", day=today,
                                           defaults={"amount_spent": spent, "transaction_count": 20})
    DailySpending.objects.update_or_create(chain="stellar", day=today,
                                           defaults={"amount_spent": 31_500 * 10**7,
                                                     "transaction_count": 20})
    booked = 1_000 * 10**9 - sum(int(e.treasury_outflow_lamports or 0) + int(e.fee_lamports or 0)
                                 for e in Execution.objects.filter(status="confirmed"))
    TreasuryAccount.objects.filter(chain="solana", asset="SOL").update(
        last_chain_balance=booked, last_checked_at=now - dt.timedelta(minutes=3))

    with transaction.atomic():
        breaker_trip(trigger="hourly_outflow", actor="system:hourly_outflow",
                     reason="Hourly outflow 212.4 SOL exceeds 20% of the treasury balance 1000 SOL")
    breaker_reset(actor_user=operator, reason="Reviewed: scheduled payroll batch for a known merchant")
    # That trip and reset happened two days ago; the breaker opened again a few minutes ago.
    two_days_ago = now - dt.timedelta(days=2)
    CircuitBreakerEvent.objects.filter(kind="tripped").update(at=two_days_ago)
    CircuitBreakerEvent.objects.filter(kind="reset").update(at=two_days_ago + dt.timedelta(minutes=25))
    CircuitBreaker.objects.filter(pk=1).update(reset_at=two_days_ago + dt.timedelta(minutes=25))
    breaker_trip(trigger="volume_spike", actor="system:volume_spike",
                 reason="412 quotes in the last hour, above 2.0x the 24 h hourly average (61.3)")
    CircuitBreakerEvent.objects.filter(trigger="volume_spike").update(at=now - dt.timedelta(minutes=12))
    CircuitBreaker.objects.filter(pk=1).update(opened_at=now - dt.timedelta(minutes=12))
    assert featured is not None
    return {"quote_id": str(featured.pk)}


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"server did not start on port {port}")


def shoot(token: str, path: str, out: Path, *, height: int) -> None:
    url = f"http://127.0.0.1:{PORT}/__screens_login/{token}/?next={path}"
    subprocess.run(  # noqa: S603 - fixed argv, local URL
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",  # noqa: S607
         "--disable-background-networking", "--no-first-run", "--force-device-scale-factor=1",
         f"--window-size=1400,{height}", f"--screenshot={out}", url],
        check=True, capture_output=True, timeout=120)
    print(f"wrote {out.relative_to(ROOT)}")


def main() -> None:
    fresh_database()
    env = environment()
    os.environ.update(env)
    sys.path[:0] = [str(HERE), str(ROOT)]
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"],  # noqa: S603
                   cwd=ROOT, env=env, check=True)
    ids = seed()
    token = secrets.token_urlsafe(24)
    server = subprocess.Popen(  # noqa: S603 - our own manage.py
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{PORT}", "--noreload"],
        cwd=ROOT, env={**env, "SCREENS_LOGIN_TOKEN": token},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(PORT)
        shoot(token, "/admin/dashboard/", HERE / "dashboard.png", height=1500)
        shoot(token, "/admin/risk/circuitbreaker/reset/", HERE / "breaker_reset.png", height=800)
        shoot(token, f"/admin/quotes/quote/{ids['quote_id']}/change/", HERE / "quote_detail.png",
              height=2800)
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
