"""Local Solana JSON-RPC server over LiteSVM: one process owns the sandbox chain.

The web process and the worker talk to it over HTTP exactly as they talk to a real RPC node
(solana-py `AsyncClient` works unmodified), so both see the same chain, and tests exercise
the production RPC code path. Chain rules are described in `sandbox_chain.py`.

Start it::

    python -m execution.solana.sandbox --host 127.0.0.1 --port 8899 --data-dir .data/solana

It prints ``solana sandbox listening on http://127.0.0.1:8899`` when ready and exits 0 on
SIGTERM/SIGINT. State (accounts, landed transactions, block height) is committed to
``<data-dir>/chain.sqlite3`` before each answer and reloaded on start. Without
``--data-dir`` the chain lives in memory. A data dir is locked (flock) by one sandbox
process at a time: web and worker must share one server, never run two. ``--slot-ms``
sets the block time (400 ms by default, so a blockhash lives ~60 s as on mainnet;
0 = blocks advance only through ``sandbox_advanceBlocks``/``sandbox_expireBlockhash``).
In-process: ``serve_in_thread()``; as a child process: ``start_sandbox_process()``;
admin calls from Python: ``SandboxAdmin(url)``.

Standard methods: getHealth, getVersion, getGenesisHash, getSlot, getBlockHeight,
getEpochInfo, getLatestBlockhash, isBlockhashValid, getBalance, getAccountInfo,
getMultipleAccounts, getTokenAccountBalance, getMinimumBalanceForRentExemption,
getFeeForMessage, getRecentPrioritizationFees, getTransactionCount, simulateTransaction,
sendTransaction, getSignatureStatuses, getTransaction, requestAirdrop. Batches are
supported. ``GET /health`` answers ``ok``.

Sandbox-only methods (params are positional, like the standard ones):

``sandbox_airdrop [pubkey, lamports]`` → signature
    A real, landed transfer from the sandbox faucet (same as requestAirdrop).
``sandbox_setAccount [pubkey, {lamports, data_base64?, owner?, executable?, rent_epoch?}]``
    Overwrite an account (owner defaults to the System program, data to empty);
    0 lamports deletes it.
``sandbox_createMint [{mint_authority, decimals?=6, freeze_authority?, mint?}]`` → {mint}
    An initialized SPL Token mint, written into state (no transaction).
``sandbox_mintTo [{mint, owner, amount}]`` → {token_account}
    Credit the owner's associated token account (created if missing) and the mint supply.
``sandbox_advanceBlocks [n]`` → {blockHeight, slot}
``sandbox_expireBlockhash []`` → {blockHeight, slot}
    Advance 151 blocks: every blockhash handed out so far is expired.
``sandbox_injectFaults [{...}]`` → the pending faults
    Each key is a counter for the next N matching requests (adds to what is pending):

    - ``drop_sends``: sendTransaction answers with the signature but the transaction is
      never executed (a send lost between the RPC node and the leader).
    - ``lose_send_responses``: sendTransaction executes, then the HTTP answer is lost:
      the connection is closed without a response, or HTTP 503 when
      ``lost_response_mode`` is ``"503"``.
    - ``duplicate_sends``: sendTransaction is delivered to the chain twice (the second
      delivery must be a no-op).
    - ``null_statuses``: getSignatureStatuses answers null for every signature
      (a node that has not seen the transaction yet).
    - ``unavailable``: any standard request gets HTTP 503 and is not processed.
    - ``slow_requests`` with ``slow_ms``: any standard request waits slow_ms before it
      is processed (to trigger client timeouts; it is still processed).
``sandbox_clearFaults []`` → {} ; ``sandbox_faults []`` → the pending faults.

Sandbox requests themselves are never subject to faults.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from solders.account import Account
from solders.hash import Hash
from solders.pubkey import Pubkey
from solders.signature import Signature

from .sandbox_chain import (
    API_VERSION,
    FEATURE_SET,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    SYSTEM_PROGRAM_ID,
    RpcError,
    SandboxChain,
    decode_transaction,
    message_from_base64,
)

READY_LINE_PREFIX = "solana sandbox listening on "
MAX_BODY_BYTES = 1 << 20
MAX_BATCH = 256


# -- faults ---------------------------------------------------------------------------------


@dataclass
class Faults:
    """Pending fault injections, consumed one per matching request."""

    drop_sends: int = 0
    lose_send_responses: int = 0
    lost_response_mode: str = "close"
    duplicate_sends: int = 0
    null_statuses: int = 0
    unavailable: int = 0
    slow_requests: int = 0
    slow_ms: int = 0


_COUNTERS = (
    "drop_sends",
    "lose_send_responses",
    "duplicate_sends",
    "null_statuses",
    "unavailable",
    "slow_requests",
)


class FaultInjector:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults = Faults()

    def inject(self, spec: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            for key, value in spec.items():
                if key in _COUNTERS or key == "slow_ms":
                    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                        raise RpcError(INVALID_PARAMS, f"Invalid params: {key} must be an int >= 0")
                    if key == "slow_ms":
                        self._faults.slow_ms = value
                    else:
                        setattr(self._faults, key, getattr(self._faults, key) + value)
                elif key == "lost_response_mode":
                    if value not in ("close", "503"):
                        raise RpcError(
                            INVALID_PARAMS, 'Invalid params: lost_response_mode is "close" or "503"'
                        )
                    self._faults.lost_response_mode = value
                else:
                    raise RpcError(INVALID_PARAMS, f"Invalid params: unknown fault {key!r}")
            return asdict(self._faults)

    def clear(self) -> None:
        with self._lock:
            self._faults = Faults()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return asdict(self._faults)

    def take(self, name: str) -> bool:
        """Consume one pending fault of this kind; True when it applies to this request."""
        with self._lock:
            remaining = getattr(self._faults, name)
            if remaining <= 0:
                return False
            setattr(self._faults, name, remaining - 1)
            return True

    def take_slow(self) -> float:
        with self._lock:
            if self._faults.slow_requests <= 0:
                return 0.0
            self._faults.slow_requests -= 1
            return self._faults.slow_ms / 1000

    @property
    def lost_response_mode(self) -> str:
        return self._faults.lost_response_mode


# -- JSON-RPC dispatch ----------------------------------------------------------------------


class _RequestState:
    """Per-HTTP-request flags set by handlers."""

    __slots__ = ("lose_response",)

    def __init__(self) -> None:
        self.lose_response = False


def _param(params: list[Any], index: int, default: Any = None) -> Any:
    return params[index] if len(params) > index else default


def _config(params: list[Any], index: int) -> dict[str, Any]:
    value = _param(params, index)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RpcError(INVALID_PARAMS, "Invalid params: config must be an object")
    return value


def _pubkey(value: Any) -> Pubkey:
    if not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, "Invalid params: pubkey must be a string")
    try:
        return Pubkey.from_string(value)
    except ValueError:
        raise RpcError(INVALID_PARAMS, "Invalid param: Invalid") from None


def _signature(value: Any) -> Signature:
    if not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, "Invalid params: signature must be a string")
    try:
        return Signature.from_string(value)
    except ValueError:
        raise RpcError(INVALID_PARAMS, "Invalid param: Invalid") from None


def _hash(value: Any) -> Hash:
    if not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, "Invalid params: blockhash must be a string")
    try:
        return Hash.from_string(value)
    except ValueError:
        raise RpcError(INVALID_PARAMS, "Invalid param: Invalid") from None


def _uint(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
        raise RpcError(INVALID_PARAMS, f"Invalid params: {name} must be a u64")
    return value


class RpcDispatcher:
    """Maps JSON-RPC method names to the sandbox chain."""

    def __init__(self, chain: SandboxChain, faults: FaultInjector) -> None:
        self.chain = chain
        self.faults = faults
        self._methods: dict[str, Callable[[list[Any], _RequestState], Any]] = {
            "getHealth": lambda p, s: "ok",
            "getVersion": lambda p, s: {"solana-core": API_VERSION, "feature-set": FEATURE_SET},
            "getGenesisHash": lambda p, s: str(chain._blockhash_at(0)),
            "getSlot": lambda p, s: chain.get_slot(),
            "getBlockHeight": lambda p, s: chain.get_block_height(),
            "getEpochInfo": self._get_epoch_info,
            "getLatestBlockhash": lambda p, s: chain.get_latest_blockhash(),
            "isBlockhashValid": lambda p, s: chain.is_blockhash_valid(_hash(_param(p, 0))),
            "getBalance": lambda p, s: chain.get_balance(_pubkey(_param(p, 0))),
            "getAccountInfo": self._get_account_info,
            "getMultipleAccounts": self._get_multiple_accounts,
            "getTokenAccountBalance": lambda p, s: chain.get_token_account_balance(_pubkey(_param(p, 0))),
            "getMinimumBalanceForRentExemption": lambda p, s: chain.minimum_balance_for_rent_exemption(
                _uint(_param(p, 0), "size")
            ),
            "getFeeForMessage": self._get_fee_for_message,
            "getRecentPrioritizationFees": lambda p, s: [],
            "getTransactionCount": lambda p, s: chain.transaction_count(),
            "simulateTransaction": self._simulate_transaction,
            "sendTransaction": self._send_transaction,
            "getSignatureStatuses": self._get_signature_statuses,
            "getTransaction": self._get_transaction,
            "requestAirdrop": self._airdrop,
            "sandbox_airdrop": self._airdrop,
            "sandbox_setAccount": self._set_account,
            "sandbox_createMint": self._create_mint,
            "sandbox_mintTo": self._mint_to,
            "sandbox_advanceBlocks": lambda p, s: chain.advance_blocks(_uint(_param(p, 0, 1), "blocks")),
            "sandbox_expireBlockhash": lambda p, s: chain.expire_blockhash(),
            "sandbox_injectFaults": lambda p, s: faults.inject(_config(p, 0)),
            "sandbox_clearFaults": self._clear_faults,
            "sandbox_faults": lambda p, s: faults.snapshot(),
        }

    def call(self, request: Any, state: _RequestState) -> dict[str, Any] | None:
        """One JSON-RPC request object → response object (None for a notification)."""
        request_id = request.get("id") if isinstance(request, dict) else None
        try:
            if (
                not isinstance(request, dict)
                or request.get("jsonrpc") != "2.0"
                or not isinstance(request.get("method"), str)
            ):
                raise RpcError(INVALID_REQUEST, "Invalid request")
            method = self._methods.get(request["method"])
            if method is None:
                raise RpcError(METHOD_NOT_FOUND, "Method not found")
            params = request.get("params", [])
            if params is None:
                params = []
            if not isinstance(params, list):
                raise RpcError(INVALID_PARAMS, "Invalid params: expected an array")
            result = method(params, state)
        except RpcError as exc:
            return {"jsonrpc": "2.0", "error": exc.to_json(), "id": request_id}
        except Exception as exc:  # a bug here must not kill the connection thread
            error = RpcError(INTERNAL_ERROR, f"Internal error: {type(exc).__name__}: {exc}")
            return {"jsonrpc": "2.0", "error": error.to_json(), "id": request_id}
        if "id" not in request:
            return None
        return {"jsonrpc": "2.0", "result": result, "id": request_id}

    # -- handlers ------------------------------------------------------------------------

    def _get_epoch_info(self, params: list[Any], state: _RequestState) -> dict[str, Any]:
        slot = self.chain.get_slot()
        return {
            "absoluteSlot": slot,
            "blockHeight": self.chain.get_block_height(),
            "epoch": 0,
            "slotIndex": slot,
            "slotsInEpoch": 432_000,
            "transactionCount": self.chain.transaction_count(),
        }

    def _get_account_info(self, params: list[Any], state: _RequestState) -> Any:
        encoding = _config(params, 1).get("encoding", "binary")
        return self.chain.get_account_info(_pubkey(_param(params, 0)), encoding)

    def _get_multiple_accounts(self, params: list[Any], state: _RequestState) -> Any:
        keys = _param(params, 0)
        if not isinstance(keys, list):
            raise RpcError(INVALID_PARAMS, "Invalid params: expected an array of pubkeys")
        if len(keys) > 100:
            raise RpcError(INVALID_PARAMS, "Too many inputs provided; max 100")
        encoding = _config(params, 1).get("encoding", "binary")
        return self.chain.get_multiple_accounts([_pubkey(k) for k in keys], encoding)

    def _get_fee_for_message(self, params: list[Any], state: _RequestState) -> Any:
        payload = _param(params, 0)
        if not isinstance(payload, str):
            raise RpcError(INVALID_PARAMS, "Invalid params: message must be a base64 string")
        return self.chain.get_fee_for_message(message_from_base64(payload))

    def _simulate_transaction(self, params: list[Any], state: _RequestState) -> Any:
        config = _config(params, 1)
        payload = _param(params, 0)
        if not isinstance(payload, str):
            raise RpcError(INVALID_PARAMS, "Invalid params: transaction must be a string")
        tx, _ = decode_transaction(payload, config.get("encoding") or "base58")
        accounts_config = config.get("accounts") or None
        addresses = None
        encoding = "base64"
        if accounts_config is not None:
            if not isinstance(accounts_config, dict):
                raise RpcError(INVALID_PARAMS, "Invalid params: accounts must be an object")
            raw_addresses = accounts_config.get("addresses") or []
            if not isinstance(raw_addresses, list):
                raise RpcError(INVALID_PARAMS, "Invalid params: addresses must be an array")
            addresses = [_pubkey(a) for a in raw_addresses]
            encoding = accounts_config.get("encoding") or "base64"
        return self.chain.simulate(
            tx,
            sig_verify=bool(config.get("sigVerify", False)),
            replace_recent_blockhash=bool(config.get("replaceRecentBlockhash", False)),
            addresses=addresses,
            encoding=encoding,
        )

    def _send_transaction(self, params: list[Any], state: _RequestState) -> str:
        config = _config(params, 1)
        payload = _param(params, 0)
        if not isinstance(payload, str):
            raise RpcError(INVALID_PARAMS, "Invalid params: transaction must be a string")
        tx, raw = decode_transaction(payload, config.get("encoding") or "base58")
        if self.faults.take("drop_sends"):
            return str(tx.signatures[0])
        skip_preflight = bool(config.get("skipPreflight", False))
        signature, _ = self.chain.send(tx, raw, skip_preflight=skip_preflight)
        if self.faults.take("duplicate_sends"):
            self.chain.send(tx, raw, skip_preflight=True)
        if self.faults.take("lose_send_responses"):
            state.lose_response = True
        return signature

    def _get_signature_statuses(self, params: list[Any], state: _RequestState) -> Any:
        raw_signatures = _param(params, 0)
        if not isinstance(raw_signatures, list):
            raise RpcError(INVALID_PARAMS, "Invalid params: expected an array of signatures")
        if len(raw_signatures) > 256:
            raise RpcError(INVALID_PARAMS, "Too many inputs provided; max 256")
        signatures = [_signature(s) for s in raw_signatures]
        search = bool(_config(params, 1).get("searchTransactionHistory", False))
        if self.faults.take("null_statuses"):
            return {"context": self.chain.context(), "value": [None] * len(signatures)}
        return self.chain.get_signature_statuses(signatures, search)

    def _get_transaction(self, params: list[Any], state: _RequestState) -> Any:
        config = _param(params, 1)
        if isinstance(config, str):  # legacy form: [signature, encoding]
            config = {"encoding": config}
        elif config is None:
            config = {}
        elif not isinstance(config, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: config must be an object")
        version = config.get("maxSupportedTransactionVersion")
        if version is not None and version != 0:
            raise RpcError(INVALID_PARAMS, f"Invalid params: unsupported version {version}")
        return self.chain.get_transaction(
            _signature(_param(params, 0)), config.get("encoding") or "json", version
        )

    def _airdrop(self, params: list[Any], state: _RequestState) -> str:
        lamports = _uint(_param(params, 1), "lamports")
        return self.chain.airdrop(_pubkey(_param(params, 0)), lamports)

    def _set_account(self, params: list[Any], state: _RequestState) -> None:
        pubkey = _pubkey(_param(params, 0))
        spec = _config(params, 1)
        try:
            data = base64.b64decode(spec.get("data_base64") or "", validate=True)
        except ValueError:
            raise RpcError(INVALID_PARAMS, "Invalid params: data_base64 is not base64") from None
        owner = _pubkey(spec["owner"]) if spec.get("owner") else SYSTEM_PROGRAM_ID
        account = Account(
            lamports=_uint(spec.get("lamports"), "lamports"),
            data=data,
            owner=owner,
            executable=bool(spec.get("executable", False)),
            rent_epoch=_uint(spec.get("rent_epoch", 0), "rent_epoch"),
        )
        self.chain.set_account(pubkey, account)
        return None

    def _create_mint(self, params: list[Any], state: _RequestState) -> dict[str, str]:
        spec = _config(params, 0)
        freeze = spec.get("freeze_authority")
        mint = spec.get("mint")
        decimals = spec.get("decimals", 6)
        if not isinstance(decimals, int) or not 0 <= decimals <= 255:
            raise RpcError(INVALID_PARAMS, "Invalid params: decimals must be 0..255")
        created = self.chain.create_mint(
            mint_authority=_pubkey(spec.get("mint_authority")),
            decimals=decimals,
            freeze_authority=_pubkey(freeze) if freeze else None,
            mint=_pubkey(mint) if mint else None,
        )
        return {"mint": str(created)}

    def _mint_to(self, params: list[Any], state: _RequestState) -> dict[str, str]:
        spec = _config(params, 0)
        token_account = self.chain.mint_to(
            mint=_pubkey(spec.get("mint")),
            owner=_pubkey(spec.get("owner")),
            amount=_uint(spec.get("amount"), "amount"),
        )
        return {"token_account": str(token_account)}

    def _clear_faults(self, params: list[Any], state: _RequestState) -> dict[str, Any]:
        self.faults.clear()
        return {}


# -- HTTP -----------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: SandboxHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.log_requests:
            super().log_message(format, *args)

    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        reason = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            413: "Payload Too Large",
            503: "Service Unavailable",
        }.get(status, "Error")
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "\r\n"
        ).encode()
        self.wfile.write(head + body)

    def do_GET(self) -> None:
        if self.path.split("?")[0] == "/health":
            self._reply(200, b"ok", "text/plain")
        else:
            self._reply(404, b"not found", "text/plain")

    def do_POST(self) -> None:
        length_header = self.headers.get("Content-Length")
        try:
            length = int(length_header or "")
        except ValueError:
            self._reply(400, b"Content-Length required", "text/plain")
            self.close_connection = True
            return
        if length > MAX_BODY_BYTES or length < 0:
            self._reply(413, b"request too large", "text/plain")
            self.close_connection = True
            return
        body = self.rfile.read(length)
        dispatcher = self.server.dispatcher
        try:
            request = json.loads(body)
        except ValueError:
            error = RpcError(PARSE_ERROR, "Parse error").to_json()
            self._reply(200, json.dumps({"jsonrpc": "2.0", "error": error, "id": None}).encode())
            return
        calls = request if isinstance(request, list) else [request]
        standard = any(
            not (isinstance(c, dict) and str(c.get("method", "")).startswith("sandbox_")) for c in calls
        )
        faults = dispatcher.faults
        if standard:
            if faults.take("unavailable"):
                self._reply(503, b"node unavailable (injected)", "text/plain")
                return
            delay = faults.take_slow()
            if delay:
                time.sleep(delay)
        state = _RequestState()
        if isinstance(request, list):
            if not request or len(request) > MAX_BATCH:
                error = RpcError(INVALID_REQUEST, "Invalid request").to_json()
                response: Any = {"jsonrpc": "2.0", "error": error, "id": None}
            else:
                response = [r for r in (dispatcher.call(c, state) for c in request) if r]
        else:
            response = dispatcher.call(request, state)
        if state.lose_response:
            if faults.lost_response_mode == "503":
                self._reply(503, b"response lost (injected)", "text/plain")
            else:
                self.close_connection = True  # no bytes at all: the client sees a reset
                with contextlib.suppress(OSError):
                    self.connection.shutdown(2)
            return
        self._reply(200, json.dumps(response, separators=(",", ":")).encode())


class SandboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(
        self,
        address: tuple[str, int],
        chain: SandboxChain,
        *,
        log_requests: bool = False,
    ) -> None:
        super().__init__(address, _Handler)
        self.chain = chain
        self.faults = FaultInjector()
        self.dispatcher = RpcDispatcher(chain, self.faults)
        self.log_requests = log_requests
        self._connections: set[Any] = set()
        self._connections_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (timeout, injected lost response) is not a server error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def close_connections(self) -> None:
        """Drop open keep-alive connections so no request reaches a stopped chain."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(2)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if isinstance(host, bytes):
            host = host.decode()
        return f"http://{host}:{port}"


def serve_in_thread(
    port: int = 0,
    data_dir: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    slot_ms: int = 400,
    ledger_history: int = 50_000,
) -> tuple[str, Callable[[], None]]:
    """Start the sandbox in this process. Returns (url, stop); stop() is idempotent."""
    chain = SandboxChain(data_dir, slot_ms=slot_ms, ledger_history=ledger_history)
    server = SandboxHTTPServer((host, port), chain)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="solana-sandbox",
        daemon=True,
    )
    thread.start()
    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        thread.join()
        chain.close()

    return server.url, stop


def start_sandbox_process(
    data_dir: str | Path | None,
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    slot_ms: int = 400,
    timeout: float = 30.0,
    extra_args: list[str] | None = None,
) -> tuple[str, subprocess.Popen[str]]:
    """Start `python -m execution.solana.sandbox` and wait until it listens.

    Port 0 picks a free port (read back from the ready line). Stop it with
    `proc.terminate(); proc.wait()`: it flushes and exits 0.
    """
    repo_root = Path(__file__).resolve().parents[2]
    args = [
        sys.executable,
        "-m",
        "execution.solana.sandbox",
        "--host",
        host,
        "--port",
        str(port),
        "--slot-ms",
        str(slot_ms),
    ]
    if data_dir is not None:
        args += ["--data-dir", str(data_dir)]
    args += extra_args or []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(  # noqa: S603 - fixed argv, our own module
        args, cwd=repo_root, env=env, stdout=subprocess.PIPE, text=True
    )
    ready: list[str] = []

    def read_ready_line() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(READY_LINE_PREFIX):
                ready.append(line[len(READY_LINE_PREFIX) :].strip())
                return

    reader = threading.Thread(target=read_ready_line, daemon=True)
    reader.start()
    reader.join(timeout)
    if not ready:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"solana sandbox did not start within {timeout}s (exit {proc.returncode})")
    return ready[0], proc


# -- admin client ---------------------------------------------------------------------------


class SandboxAdmin:
    """Small synchronous client for the sandbox_* methods (tests, demo setup commands)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self._ids = 0

    def call(self, method: str, *params: Any) -> Any:
        self._ids += 1
        body = json.dumps(
            {"jsonrpc": "2.0", "id": self._ids, "method": method, "params": list(params)}
        ).encode()
        request = urllib.request.Request(  # noqa: S310 - local sandbox URL
            self.url, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
            payload = json.loads(response.read())
        if "error" in payload:
            error = payload["error"]
            raise RpcError(error["code"], error["message"], error.get("data"))
        return payload["result"]

    def airdrop(self, pubkey: Pubkey, lamports: int) -> Signature:
        return Signature.from_string(self.call("sandbox_airdrop", str(pubkey), lamports))

    def set_account(
        self,
        pubkey: Pubkey,
        *,
        lamports: int,
        data: bytes = b"",
        owner: Pubkey = SYSTEM_PROGRAM_ID,
        executable: bool = False,
    ) -> None:
        spec = {
            "lamports": lamports,
            "data_base64": base64.b64encode(data).decode(),
            "owner": str(owner),
            "executable": executable,
        }
        self.call("sandbox_setAccount", str(pubkey), spec)

    def create_mint(
        self,
        mint_authority: Pubkey,
        *,
        decimals: int = 6,
        freeze_authority: Pubkey | None = None,
        mint: Pubkey | None = None,
    ) -> Pubkey:
        spec: dict[str, Any] = {"mint_authority": str(mint_authority), "decimals": decimals}
        if freeze_authority is not None:
            spec["freeze_authority"] = str(freeze_authority)
        if mint is not None:
            spec["mint"] = str(mint)
        return Pubkey.from_string(self.call("sandbox_createMint", spec)["mint"])

    def mint_to(self, mint: Pubkey, owner: Pubkey, amount: int) -> Pubkey:
        spec = {"mint": str(mint), "owner": str(owner), "amount": amount}
        return Pubkey.from_string(self.call("sandbox_mintTo", spec)["token_account"])

    def advance_blocks(self, blocks: int) -> int:
        return int(self.call("sandbox_advanceBlocks", blocks)["blockHeight"])

    def expire_blockhash(self) -> int:
        return int(self.call("sandbox_expireBlockhash")["blockHeight"])

    def inject_faults(self, **faults: Any) -> dict[str, Any]:
        return dict(self.call("sandbox_injectFaults", faults))

    def clear_faults(self) -> None:
        self.call("sandbox_clearFaults")

    def faults(self) -> dict[str, Any]:
        return dict(self.call("sandbox_faults"))


# -- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m execution.solana.sandbox", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8899)
    parser.add_argument("--data-dir", default=None, help="persist state here (default: memory)")
    parser.add_argument(
        "--ledger-history",
        type=int,
        default=50_000,
        help="LiteSVM in-memory history (replays are also checked in SQLite)",
    )
    parser.add_argument(
        "--slot-ms",
        type=int,
        default=400,
        help="block time in ms; 0 = blocks advance only via sandbox_ methods",
    )
    parser.add_argument("--log-requests", action="store_true")
    args = parser.parse_args(argv)

    chain = SandboxChain(args.data_dir, ledger_history=args.ledger_history, slot_ms=args.slot_ms)
    server = SandboxHTTPServer((args.host, args.port), chain, log_requests=args.log_requests)

    def request_stop(signum: int, frame: Any) -> None:
        # shutdown() waits for serve_forever() to return, so it must run on another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    print(f"{READY_LINE_PREFIX}{server.url}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
        server.close_connections()
        chain.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
