"""PostgreSQL stopped and started again while clients create, pay and read quotes.

The stack (daphne + worker) runs on a PostgreSQL server of this test's own (the shared one
is not ours to restart), with the production connection settings (persistent connections
with health checks). Four client threads loop over create quote → pay → read status, and
one polls /health, while the server is stopped (fast shutdown: every session is cut),
stays down for a few seconds, and starts again. During the outage every answer must be the
JSON error envelope (DATABASE_ERROR; /health 503), never a dropped connection or an HTML
page; afterwards the service must recover by itself (web and worker, no restart), every
payment that was acknowledged, or that the client simply sends again, must commit exactly
once and execute, the WebSocket must carry events again, and the database must hold no
half-written state (invariants and reconciliation on the private database).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
import websockets
from solders.keypair import Keypair

from tests.chaos.harness import (
    ChaosStack,
    Customer,
    PrivatePostgres,
    run_manage,
    run_module,
    stack_env,
    wait_until,
)
from tests.chaos.kit import TERMINAL, report_figures

pytestmark = [pytest.mark.chaos]

REDIS_URL = "redis://127.0.0.1:6379/5"


class EventPublishStalled(AssertionError):
    """The worker's WebSocket publishing hangs after the restart.

    Regression guard: channels-postgres keeps a psycopg async pool bound to the loop that
    opened it, and the worker once published through async_to_sync (a new loop per call),
    so after a database restart every publish waited the pool timeout (30 s) and failed.
    config/events.py now publishes from sync code on one long-lived loop per process."""


THREADS = 4
STEADY_SECONDS, OUTAGE_SECONDS, RECOVERY_SECONDS = 4.0, 5.0, 8.0


@dataclass
class Call:
    endpoint: str
    started: float
    ended: float
    status: int  # 0: no HTTP answer at all
    error_code: str | None
    envelope: bool  # a JSON body (the error envelope for errors)
    transport_error: str = ""


class Traffic:
    """Client threads looping over the quote lifecycle, recording every call."""

    def __init__(self, customer: Customer, base_url: str) -> None:
        self.customer, self.base_url = customer, base_url
        self.t0 = time.monotonic()
        self.calls: list[Call] = []
        self.acknowledged: list[dict[str, Any]] = []  # payment answered 200
        self.unacknowledged: list[tuple[dict[str, Any], dict[str, str]]] = []  # to send again
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(THREADS)]
        self.threads.append(threading.Thread(target=self._health, daemon=True))

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _call(self, client: httpx2.Client, endpoint: str, method: str, path: str,
              body: Any = None) -> tuple[Call, Any]:
        started = self.now()
        headers = {"Authorization": f"Bearer {self.customer.token}"}
        try:
            response = client.request(method, self.base_url + path, json=body, headers=headers)
        except httpx2.HTTPError as exc:
            call = Call(endpoint, started, self.now(), 0, None, False, type(exc).__name__)
            payload = None
        else:
            try:
                payload = response.json()
            except ValueError:
                payload = None
            code = payload.get("error_code") if isinstance(payload, dict) else None
            call = Call(endpoint, started, self.now(), response.status_code, code, payload is not None)
        with self.lock:
            self.calls.append(call)
        return call, payload

    def _client(self) -> None:
        client = httpx2.Client(timeout=20)
        lamports = 1_500_000
        while not self.stop.is_set():
            instructions = self.customer.sol_instructions(lamports, Keypair().pubkey())
            call, quote = self._call(client, "quote_create", "POST", "/api/v1/quotes",
                                     {"source_chain": "stellar", "instructions": instructions})
            if call.status != 201:
                time.sleep(0.05)
                continue
            body = self.customer.signed_payment(quote)
            path = f"/api/v1/quotes/{quote['quote_id']}/payment"
            call, _ = self._call(client, "payment", "POST", path, body)
            with self.lock:
                if call.status == 200:
                    self.acknowledged.append(quote)
                else:
                    self.unacknowledged.append((quote, body))
            self._call(client, "quote_status", "GET", f"/api/v1/quotes/{quote['quote_id']}")
        client.close()

    def _health(self) -> None:
        client = httpx2.Client(timeout=10)
        while not self.stop.is_set():
            self._call(client, "health", "GET", "/health")
            time.sleep(0.2)
        client.close()

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


async def _watch_until_executed(ws_url: str, pay) -> list[str]:
    async with websockets.connect(ws_url, open_timeout=10) as socket:
        statuses = [json.loads(await asyncio.wait_for(socket.recv(), 10))["status"]]
        await asyncio.get_running_loop().run_in_executor(None, pay)
        while statuses[-1] != "executed":
            frame = json.loads(await asyncio.wait_for(socket.recv(), 30))
            if frame.get("event") == "quote.status" and frame["status"] != statuses[-1]:
                statuses.append(frame["status"])
    return statuses


def _redis_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("layer", ["postgres", "redis"])
def test_postgres_restart_mid_run_fails_cleanly_and_recovers_without_half_written_state(
        chain, layer):
    if layer == "redis" and not _redis_available():
        pytest.fail("Redis is not running on 127.0.0.1:6379 (CI machines have it)")
    pg = PrivatePostgres()
    try:
        env = stack_env(DATABASE_URL=pg.uri, CHANNEL_LAYER=layer,
                        REDIS_URL=REDIS_URL if layer == "redis" else "")
        env.pop("DB_CONN_MAX_AGE", None)  # production default: persistent, health-checked
        run_manage(env, "migrate", "--noinput")
        run_manage(env, "ensure_schedules")  # the periodic recovery jobs, as `make run` has them
        opened = run_module(env, "tests.chaos.invariants", "open-books")
        assert opened.returncode == 0, opened.stderr

        with ChaosStack(env) as stack:
            assert stack.worker is not None and stack.web is not None
            customer = Customer(stack.base_url)
            traffic = Traffic(customer, stack.base_url)
            traffic.start()
            time.sleep(STEADY_SECONDS)
            stopping_at = traffic.now()
            pg.stop()
            down_at = traffic.now()
            time.sleep(OUTAGE_SECONDS)
            up_started = traffic.now()
            pg.start()
            up_at = traffic.now()
            time.sleep(RECOVERY_SECONDS)
            traffic.finish()
            ended_at = traffic.now()

            assert stack.web.alive, stack.web.log_tail()
            assert stack.worker.alive, f"the worker died with the database:\n{stack.worker.log_tail()}"

            # A client that got no acknowledgement sends the same signed payment again.
            resent = Counter()
            for quote, body in traffic.unacknowledged:
                answer = customer.pay(quote, body)
                resent[answer["status"]] += 1
            paid = ([q["quote_id"] for q in traffic.acknowledged]
                    + [q["quote_id"] for q, _ in traffic.unacknowledged])

            # Executions the outage interrupted, and execute tasks that failed while the
            # database was down, are the periodic jobs' work (every minute): fire them now.
            nudged = run_module(env, "tests.chaos.kit", "recover")
            assert nudged.returncode == 0, nudged.stderr[-3000:]

            final: dict[str, str] = {}

            def all_finished() -> bool:
                for quote_id in paid:
                    if quote_id not in final:
                        status = customer.status(quote_id)["status"]
                        if status in TERMINAL:
                            final[quote_id] = status
                return len(final) == len(paid)

            def stalled() -> None:
                log = stack.worker.log_path.read_text(errors="replace")
                if "PoolTimeout" in log:
                    raise EventPublishStalled(f"worker publishes time out after the restart "
                                              f"({log.count('event publish failed')} failed so far)")

            try:
                execute_seconds = wait_until(all_finished, timeout=90, interval=1.0, on_tick=stalled,
                                             what="every paid quote finished after the restart")
            except EventPublishStalled:
                raise
            except AssertionError as exc:
                statuses = Counter(customer.status(quote_id)["status"] for quote_id in paid)
                facts = run_module(env, "tests.chaos.invariants", "check", "--no-reconcile")
                raise AssertionError(f"{exc}: {dict(statuses)}\n{facts.stdout[-3000:]}\n"
                                     f"worker log:\n{stack.worker.log_tail(30)}") from exc

            # Events flow again: a new quote watched on the WebSocket through to executed.
            quote, _ = customer.quote_sol(1_234_567)
            frames = asyncio.run(_watch_until_executed(
                f"{stack.ws_url}/ws/quotes/{quote['quote_id']}/?token={customer.token}",
                lambda: customer.pay(quote)))
            assert frames == ["pending", "committed", "executing", "executed"], frames

        checked = run_module(env, "tests.chaos.invariants", "check")
        report = json.loads(checked.stdout.strip().splitlines()[-1])
        assert checked.returncode == 0 and report["ok"], json.dumps(report["problems"], indent=2)[:6000]
        # Every paid quote executed: an outage is no reason for an execution to fail.
        outcomes = Counter(final.values())
        assert outcomes == {"executed": len(paid)}, (outcomes, report["facts"]["failed_executions"])
    finally:
        pg.close()

    calls = traffic.calls
    during = [c for c in calls if c.started >= down_at + 0.2 and c.ended <= up_started]
    assert during, "no request fell inside the outage"
    assert all(c.transport_error == "" for c in calls), Counter(c.transport_error for c in calls)
    assert all(c.envelope for c in calls if c.status >= 400), "an error answer was not the JSON envelope"
    api_during = [c for c in during if c.endpoint != "health"]
    assert api_during and all(c.status >= 500 and c.error_code == "DATABASE_ERROR" for c in api_during), \
        Counter((c.endpoint, c.status, c.error_code) for c in api_during)
    assert all(c.status == 503 for c in during if c.endpoint == "health")
    after = [c for c in calls if c.started >= up_at]
    first_ok = min((c.ended for c in after if c.status < 400), default=None)
    assert first_ok is not None and first_ok - up_at < 5.0, "the service did not recover within 5 s"
    tail = [c for c in calls if c.started >= ended_at - RECOVERY_SECONDS / 2]
    assert tail and all(c.status < 400 for c in tail), \
        Counter((c.endpoint, c.status, c.error_code) for c in tail)

    by_phase: dict[str, Counter[str]] = defaultdict(Counter)
    for c in calls:
        phase = "before" if c.ended < stopping_at else "outage" if c.started < up_at else "after"
        by_phase[phase][f"{c.endpoint}:{c.status}{':' + c.error_code if c.error_code else ''}"] += 1
    report_figures(f"postgres_restart[{layer}]", {
        "outage_s": round(up_at - down_at, 2), "first_success_after_restart_s": round(first_ok - up_at, 2),
        "calls": len(calls), "by_phase": {k: dict(v) for k, v in by_phase.items()},
        "payments_acknowledged": len(traffic.acknowledged),
        "payments_resent_after_outage": len(traffic.unacknowledged), "resent_answers": dict(resent),
        "all_finished_within_s": round(execute_seconds, 2), "outcomes": dict(outcomes),
        "ws_after_restart": frames,
        "invariants": report["checked"], "facts": report["facts"],
    })
