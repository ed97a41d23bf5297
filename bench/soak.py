"""Soak: N minutes of mixed traffic at a fixed rate through the real server processes.

    python -m bench.soak [--minutes 2] [--rate 3] [--new-user-share 0.1] [--ws-share 0.5]
    python -m bench.soak --target http://127.0.0.1:8000      # a stack that is already running

By default it starts its own stack exactly as `make run` does (`python -m config.launcher`:
embedded PostgreSQL, the LiteSVM Solana sandbox, seeded treasury, daphne, the django-q2
worker) in a temporary DATA_DIR on free ports, so nothing of yours is touched. Two limits
meant for humans are lifted for the run and reported: the sign-in throttle (30/min per IP)
and the quote-volume breaker trigger (a fresh database has no history, so any steady load
is a "spike").

Traffic is open-loop: a journey starts every 1/rate seconds whatever the previous ones are
doing. A journey: maybe sign in a new user (Stellar SEP-53, then NEAR NEP-413 joining the
same user), ask a quote (SOL or USDC, paid in XLM or NEAR), pay most of them with a real
signed envelope / transaction, and either watch the quote's WebSocket until it is executed
(payment → executed latency) or read its status. Unpaid quotes are left to expire.

Reported: per-endpoint throughput, error rate and p50/p95/p99; the payment → executed
latency seen on the WebSocket; RSS (and PSS) of each process tree at the start, the end,
the peak, and the growth; then, once everything paid has finished, the invariant check
(`tests/chaos/invariants.py`: ledger, balances, histories, one landed transaction per
execution, reconciliation of books against the chain). Exit status 1 if any invariant
fails or any paid quote did not finish.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import websockets
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from bench.common import (
    AsyncApi,
    NearWallet,
    StellarWallet,
    Timed,
    instruction_json,
    latency_summary,
    wait_http,
)
from execution.solana import spl

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"executed", "failed", "refund_due", "refunded", "expired", "cancelled"}
SOAK_ENV = {
    "THROTTLE_AUTH": "1000000/min",  # the sign-in throttle is per IP: every soak user is one IP
    "VOLUME_SPIKE_FLOOR": "1000000000",  # no quote history on a fresh database
    "LOG_LEVEL": "WARNING",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the stack --------------------------------------------------------------------------------


class OwnStack:
    """`python -m config.launcher` in a temporary DATA_DIR on free ports."""

    def __init__(self, keep: bool = False) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="solpay-soak-"))
        self.port, rpc_port = free_port(), free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.rpc_url = f"http://127.0.0.1:{rpc_port}"
        self.keep = keep
        self.env = {**os.environ, **SOAK_ENV, "DATA_DIR": str(self.data_dir), "PORT": str(self.port),
                    "SOLANA_RPC_URL": self.rpc_url, "PYTHONPATH": str(ROOT),
                    "DJANGO_SUPERUSER_USERNAME": "soak",
                    "DJANGO_SUPERUSER_PASSWORD": "soak-" + os.urandom(8).hex()}
        for name in ("DATABASE_URL", "REDIS_URL", "TEST_DB_SUFFIX"):
            self.env.pop(name, None)
        self.log_path = self.data_dir / "stack.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen([sys.executable, "-m", "config.launcher"], cwd=ROOT, env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        if not wait_http(f"{self.base_url}/health", timeout=120) or self.proc.poll() is not None:
            raise RuntimeError(f"the stack did not start:\n{self.tail()}")
        time.sleep(1.0)  # the worker cluster comes up right after the web process

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def processes(self) -> dict[str, int]:
        """launcher, web, worker, sandbox and postgres, by pid."""
        assert self.proc is not None
        found = {"launcher": self.proc.pid}
        for child in psutil.Process(self.proc.pid).children():
            command = " ".join(child.cmdline())
            if "daphne" in command:
                found["web"] = child.pid
            elif "qcluster" in command:
                found["worker"] = child.pid
            elif "solana_sandbox" in command:
                found["solana_sandbox"] = child.pid
        pid_file = self.data_dir / "postgres" / "postmaster.pid"
        if pid_file.exists():
            found["postgres"] = int(pid_file.read_text().split()[0])
        return found

    def check_env(self) -> dict[str, str]:
        return self.env

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # the launcher stops its children itself
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if not self.keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class TargetStack:
    """A stack somebody else runs; its processes are found by the port they serve."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.port = int(self.base_url.rsplit(":", 1)[1].split("/")[0])

    def start(self) -> None:
        if not wait_http(f"{self.base_url}/health", timeout=10):
            raise RuntimeError(f"{self.base_url}/health does not answer")

    def processes(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for proc in psutil.process_iter(["pid", "cmdline"]):
            command = " ".join(proc.info["cmdline"] or [])
            if "daphne" in command and f"-p {self.port}" in command:
                found["web"] = proc.pid
                with contextlib.suppress(psutil.Error):
                    parent = proc.parent()
                    if parent is not None and "config.launcher" in " ".join(parent.cmdline()):
                        found["launcher"] = parent.pid
                        for sibling in parent.children():
                            sibling_command = " ".join(sibling.cmdline())
                            if "qcluster" in sibling_command:
                                found["worker"] = sibling.pid
                            elif "solana_sandbox" in sibling_command:
                                found["solana_sandbox"] = sibling.pid
        return found

    def check_env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(ROOT)}

    def stop(self) -> None:
        pass


# -- process memory ---------------------------------------------------------------------------


# The launcher's children are measured on their own: count it alone, not as a tree.
SINGLE_PROCESS = {"launcher"}


def tree_memory(pid: int, *, tree: bool = True) -> tuple[int, int]:
    """(RSS, PSS) of a process and its descendants, in bytes. PSS shares shared pages out,
    so it does not count PostgreSQL's shared buffers once per backend."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)] if tree else [root]
    except psutil.NoSuchProcess:
        return 0, 0
    rss = pss = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
    return rss, pss


class MemoryWatch(threading.Thread):
    def __init__(self, pids: dict[str, int], every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.pids, self.every = pids, every
        self.samples: dict[str, list[tuple[float, int, int]]] = defaultdict(list)
        self.stopped = threading.Event()

    def sample(self) -> None:
        now = time.monotonic()
        for name, pid in self.pids.items():
            rss, pss = tree_memory(pid, tree=name not in SINGLE_PROCESS)
            if rss:
                self.samples[name].append((now, rss, pss))

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            self.sample()

    def summary(self) -> dict[str, dict[str, float]]:
        mib = 1024 * 1024
        out = {}
        for name, rows in self.samples.items():
            # Start = the settled level after warm-up (median of the first tenth of the run),
            # end = median of the last tenth: one GC or one burst does not make a trend.
            tenth = max(1, len(rows) // 10)
            start_rss = sorted(r for _, r, _ in rows[:tenth])[tenth // 2]
            end_rss = sorted(r for _, r, _ in rows[-tenth:])[tenth // 2]
            start_pss = sorted(p for _, _, p in rows[:tenth])[tenth // 2]
            end_pss = sorted(p for _, _, p in rows[-tenth:])[tenth // 2]
            out[name] = {"rss_start_mib": start_rss / mib, "rss_end_mib": end_rss / mib,
                         "rss_peak_mib": max(r for _, r, _ in rows) / mib,
                         "rss_growth_mib": (end_rss - start_rss) / mib,
                         "rss_growth_pct": 100 * (end_rss - start_rss) / start_rss,
                         "pss_start_mib": start_pss / mib, "pss_end_mib": end_pss / mib,
                         "samples": len(rows)}
        return out


# -- the traffic ------------------------------------------------------------------------------


@dataclass
class User:
    token: str
    stellar: StellarWallet
    near: NearWallet


@dataclass
class Stats:
    calls: dict[str, list[Timed]] = field(default_factory=lambda: defaultdict(list))
    pipeline: list[float] = field(default_factory=list)  # payment POST → executed frame
    ws_connect: list[float] = field(default_factory=list)
    ws_frames: int = 0
    ws_failures: Counter[str] = field(default_factory=Counter)
    journeys: int = 0
    skipped: int = 0  # journeys not started: too many still in flight
    paid: dict[str, str] = field(default_factory=dict)  # quote id → its user's token
    quotes: int = 0

    def record(self, endpoint: str, timed: Timed) -> Timed:
        self.calls[endpoint].append(timed)
        return timed


class Soak:
    def __init__(self, base_url: str, args: argparse.Namespace) -> None:
        self.base_url = base_url
        self.ws_base = base_url.replace("http", "ws", 1)
        self.args = args
        self.api = AsyncApi(base_url, max_connections=args.connections)
        self.rng = random.Random(args.seed)
        self.stats = Stats()
        self.users: list[User] = []
        self.treasury: dict[str, Any] = {}

    async def sign_in(self) -> User | None:
        stellar, near = StellarWallet(), NearWallet()
        challenge = self.stats.record("auth_challenge", await self.api.call(
            "POST", "/api/v1/auth/challenge", {"chain": "stellar", "address": stellar.address}))
        if challenge.status != 201:
            return None
        verified = self.stats.record("auth_verify", await self.api.call(
            "POST", "/api/v1/auth/verify", stellar.sign_challenge(challenge.body)))
        if verified.status != 200:
            return None
        token = verified.body["token"]
        challenge = self.stats.record("auth_challenge", await self.api.call(
            "POST", "/api/v1/auth/challenge", {"chain": "near", "address": near.address}))
        if challenge.status != 201:
            return None
        joined = self.stats.record("auth_verify", await self.api.call(
            "POST", "/api/v1/auth/verify", near.sign_challenge(challenge.body), token=token))
        if joined.status != 200:
            return None
        user = User(token, stellar, near)
        self.users.append(user)
        return user

    def work(self) -> tuple[list[dict[str, Any]], str]:
        treasury = Pubkey.from_string(self.treasury["solana"]["treasury"])
        owner = Keypair().pubkey()
        if self.rng.random() < self.args.usdc_share:
            mint = Pubkey.from_string(self.treasury["solana"]["usdc_mint"])
            decimals = int(self.treasury["solana"]["usdc_decimals"])
            source = spl.associated_token_address(treasury, mint)
            destination = spl.associated_token_address(owner, mint)
            return [instruction_json(spl.create_ata_idempotent(payer=treasury, owner=owner, mint=mint)),
                    instruction_json(spl.token_transfer_checked(
                        source=source, mint=mint, destination=destination, owner=treasury,
                        amount=self.rng.randint(1, 50) * 10**4, decimals=decimals))], "usdc"
        lamports = self.rng.randint(100_000, 300_000) + 890_880  # above the rent-exempt minimum
        return [instruction_json(spl.sol_transfer(treasury, owner, lamports))], "sol"

    def payment_body(self, user: User, quote: dict[str, Any]) -> dict[str, str]:
        if quote["source_chain"] == "stellar":
            return {"envelope_xdr": user.stellar.payment_envelope(
                payment=quote["payment"], network_passphrase=self.treasury["stellar"]["network_passphrase"])}
        return {"signed_transaction_base64": user.near.payment_transaction(
            quote_id=quote["quote_id"], payment=quote["payment"])}

    async def journey(self) -> None:
        self.stats.journeys += 1
        user = None
        if not self.users or self.rng.random() < self.args.new_user_share:
            user = await self.sign_in()
        if user is None:
            if not self.users:
                return
            user = self.rng.choice(self.users)
        instructions, _kind = self.work()
        source_chain = self.rng.choice(["stellar", "near"])
        created = self.stats.record("quote_create", await self.api.call(
            "POST", "/api/v1/quotes", {"source_chain": source_chain, "instructions": instructions},
            token=user.token))
        if created.status != 201:
            return
        quote = created.body
        self.stats.quotes += 1
        if self.rng.random() >= self.args.pay_share:
            return  # left to expire
        body = self.payment_body(user, quote)
        if self.rng.random() < self.args.ws_share:
            await self.pay_and_watch(user, quote, body)
        else:
            paid = await self.pay(user, quote, body)
            if paid:
                for delay in (0.5, 2.0):
                    await asyncio.sleep(delay)
                    self.stats.record("quote_status", await self.api.call(
                        "GET", f"/api/v1/quotes/{quote['quote_id']}", token=user.token))

    async def pay(self, user: User, quote: dict[str, Any], body: dict[str, str]) -> bool:
        timed = self.stats.record("payment", await self.api.call(
            "POST", f"/api/v1/quotes/{quote['quote_id']}/payment", body, token=user.token))
        if timed.status == 200:
            self.stats.paid[quote["quote_id"]] = user.token
            return True
        return False

    async def pay_and_watch(self, user: User, quote: dict[str, Any], body: dict[str, str]) -> None:
        url = f"{self.ws_base}/ws/quotes/{quote['quote_id']}/?token={user.token}"
        started = time.perf_counter()
        try:
            async with websockets.connect(url, open_timeout=10) as socket_:
                await asyncio.wait_for(socket_.recv(), 10)
                self.stats.ws_connect.append(time.perf_counter() - started)
                self.stats.ws_frames += 1
                paid_at = time.perf_counter()
                if not await self.pay(user, quote, body):
                    return
                deadline = paid_at + self.args.watch_timeout
                while True:
                    remaining = max(0.1, deadline - time.perf_counter())
                    frame = json.loads(await asyncio.wait_for(socket_.recv(), remaining))
                    self.stats.ws_frames += 1
                    if frame.get("event") == "quote.status" and frame.get("status") in TERMINAL:
                        if frame["status"] == "executed":
                            self.stats.pipeline.append(time.perf_counter() - paid_at)
                        else:
                            self.stats.ws_failures[f"ended_{frame['status']}"] += 1
                        return
        except TimeoutError:
            self.stats.ws_failures["timeout"] += 1
        except (OSError, websockets.WebSocketException) as exc:
            self.stats.ws_failures[type(exc).__name__] += 1

    async def run(self, seconds: float) -> float:
        treasury = await self.api.call("GET", "/api/v1/treasury")
        assert treasury.status == 200, treasury
        self.treasury = treasury.body
        for _ in range(self.args.initial_users):
            await self.sign_in()
        in_flight: set[asyncio.Task[None]] = set()
        interval = 1.0 / self.args.rate
        started = time.monotonic()
        next_start = started
        while time.monotonic() - started < seconds:
            if len(in_flight) < self.args.max_in_flight:
                task = asyncio.create_task(self.journey())
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            else:
                self.stats.skipped += 1
            next_start += interval
            await asyncio.sleep(max(0.0, next_start - time.monotonic()))
        elapsed = time.monotonic() - started
        if in_flight:
            await asyncio.wait(in_flight, timeout=self.args.watch_timeout + 10)
        return elapsed

    async def wait_finished(self, timeout: float) -> Counter[str]:
        """Statuses of every paid quote once none is still moving (or at the timeout)."""
        deadline = time.monotonic() + timeout
        pending = dict(self.stats.paid)
        statuses: Counter[str] = Counter()
        while pending and time.monotonic() < deadline:
            for quote_id, token in list(pending.items()):
                reply = await self.api.call("GET", f"/api/v1/quotes/{quote_id}", token=token)
                if reply.status == 200 and reply.body["status"] in TERMINAL:
                    statuses[reply.body["status"]] += 1
                    del pending[quote_id]
            if pending:
                await asyncio.sleep(1.0)
        statuses["unfinished"] = len(pending)
        return statuses


# -- report -----------------------------------------------------------------------------------


def endpoint_table(stats: Stats, elapsed: float) -> dict[str, dict[str, Any]]:
    table = {}
    for endpoint, calls in sorted(stats.calls.items()):
        errors = [c for c in calls if c.status == 0 or c.status >= 400]
        table[endpoint] = {
            "requests": len(calls), "per_second": len(calls) / elapsed,
            "error_rate_pct": 100.0 * len(errors) / len(calls) if calls else 0.0,
            "errors": dict(Counter(_error_label(c) for c in errors)),
            **latency_summary([c.seconds for c in calls]),
        }
    return table


def _error_label(call: Timed) -> str:
    if call.error:
        return call.error
    code = call.body.get("error_code", "") if isinstance(call.body, dict) else ""
    return f"{call.status} {code}".strip()


def print_report(report: dict[str, Any]) -> None:
    print(f"\n== soak: {report['elapsed_s']:.0f} s at {report['rate_per_s']} journeys/s "
          f"({report['journeys']} journeys, {report['quotes']} quotes, {report['paid']} paid)")
    print(f"{'endpoint':<16}{'req':>7}{'req/s':>8}{'err%':>7}"
          f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name, row in report["endpoints"].items():
        print(f"{name:<16}{row['requests']:>7}{row['per_second']:>8.2f}{row['error_rate_pct']:>7.2f}"
              f"{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}{row['p99_ms']:>9.1f}{row['max_ms']:>9.1f}")
        if row["errors"]:
            print(f"{'':<16}errors: {row['errors']}")
    pipe = report["pipeline_payment_to_executed"]
    print(f"{'pay→executed':<16}{pipe['count']:>7}{'':>8}{'':>7}{pipe['p50_ms']:>9.1f}{pipe['p95_ms']:>9.1f}"
          f"{pipe['p99_ms']:>9.1f}{pipe['max_ms']:>9.1f}   (seen on the WebSocket)")
    ws = report["websocket"]
    print(f"websocket: {ws['watchers']} watchers, {ws['frames']} frames, connect p50 "
          f"{ws['connect']['p50_ms']:.1f} ms p99 {ws['connect']['p99_ms']:.1f} ms, failures {ws['failures']}")
    print("memory (process tree)   RSS start → end (peak)         growth      PSS start → end")
    for name, mem in report["memory"].items():
        print(f"  {name:<16}{mem['rss_start_mib']:>8.1f} → {mem['rss_end_mib']:>7.1f} MiB "
              f"({mem['rss_peak_mib']:>6.1f}) {mem['rss_growth_mib']:>+8.1f} MiB "
              f"{mem['rss_growth_pct']:>+6.1f}%"
              f"   {mem['pss_start_mib']:>7.1f} → {mem['pss_end_mib']:>7.1f} MiB")
    print(f"paid quotes at the end: {report['final_statuses']}")
    failed = report["invariants"].get("facts", {}).get("failed_executions") or []
    if failed:
        print(f"failed executions (refunded): {dict(Counter(f['fail_reason'] for f in failed))}")
    inv = report["invariants"]
    print(f"invariants: {'OK' if inv.get('ok') else 'BROKEN'} "
          f"({', '.join(inv.get('checked', []))}) facts={json.dumps(inv.get('facts', {}).get('quotes'))}")
    if inv.get("problems") or inv.get("error"):
        print(json.dumps(inv.get("problems") or inv.get("error"), indent=2)[:5000])


def invariant_check(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "tests.chaos.invariants", "check"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = done.stdout.strip().splitlines()
    try:
        return dict(json.loads(lines[-1]))
    except (IndexError, ValueError):
        return {"ok": False, "error": (done.stdout + done.stderr)[-3000:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=3.0, help="journeys started per second")
    parser.add_argument("--target", help="base URL of a running stack (default: start our own)")
    parser.add_argument("--new-user-share", type=float, default=0.1)
    parser.add_argument("--pay-share", type=float, default=0.85)
    parser.add_argument("--ws-share", type=float, default=0.5, help="paid journeys watched on the WebSocket")
    parser.add_argument("--usdc-share", type=float, default=0.3)
    parser.add_argument("--initial-users", type=int, default=5)
    parser.add_argument("--max-in-flight", type=int, default=300)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--watch-timeout", type=float, default=60.0)
    parser.add_argument("--sample-every", type=float, default=2.0, help="memory sampling, seconds")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", help="also write the report here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary DATA_DIR")
    parser.add_argument("--no-check", action="store_true", help="skip the invariant check")
    args = parser.parse_args(argv)

    stack: OwnStack | TargetStack = TargetStack(args.target) if args.target else OwnStack(keep=args.keep)
    print(f"soak: {'target ' + args.target if args.target else 'own stack in ' + str(stack.data_dir)}",
          flush=True)
    try:
        started = time.monotonic()
        stack.start()
        print(f"stack ready in {time.monotonic() - started:.1f}s at {stack.base_url}; "
              f"running {args.minutes} min at {args.rate}/s", flush=True)
        pids = stack.processes()
        memory = MemoryWatch(pids, every=args.sample_every)
        memory.sample()
        memory.start()
        soak = Soak(stack.base_url, args)

        async def drive() -> tuple[float, Counter[str]]:
            elapsed = await soak.run(args.minutes * 60)
            statuses = await soak.wait_finished(timeout=120)
            await soak.api.close()
            return elapsed, statuses

        elapsed, statuses = asyncio.run(drive())
        memory.stopped.set()
        memory.sample()
        stats = soak.stats
        report: dict[str, Any] = {
            "elapsed_s": elapsed, "rate_per_s": args.rate, "journeys": stats.journeys,
            "skipped_journeys": stats.skipped, "quotes": stats.quotes, "paid": len(stats.paid),
            "users": len(soak.users), "endpoints": endpoint_table(stats, elapsed),
            "pipeline_payment_to_executed": latency_summary(stats.pipeline),
            "websocket": {"watchers": len(stats.ws_connect), "frames": stats.ws_frames,
                          "connect": latency_summary(stats.ws_connect),
                          "failures": dict(stats.ws_failures)},
            "memory": memory.summary(), "processes": pids, "final_statuses": dict(statuses),
            "lifted_limits": SOAK_ENV if not args.target else {},
            "cpus": os.cpu_count(),
        }
        report["invariants"] = {"skipped": True} if args.no_check else invariant_check(stack.check_env())
        print_report(report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        ok = (args.no_check or report["invariants"].get("ok")) and statuses.get("unfinished", 0) == 0
        return 0 if ok else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
