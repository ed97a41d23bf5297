"""Shared helpers for the demo, the soak and the benchmarks.

* statistics: `percentile`, `latency_summary`;
* process memory: `MemorySampler` (RSS of each process tree, via psutil);
* clients of a running service: `Api` / `AsyncApi` (JSON over HTTP, errors raised with the
  service's error envelope), `solana_rpc` (JSON-RPC to the Solana node or sandbox),
  `wait_http`;
* a client-side wallet kit that does what a real wallet does, with the chains' own SDKs:
  `StellarWallet` / `NearWallet` sign the sign-in challenge (SEP-53 / NEP-413) and build the
  signed payment (stellar-sdk envelope with the quote's memo; py-near `execute_payment`
  function call with the deposit attached).

Nothing here imports Django: these scripts are clients of a running service.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx2
import psutil

# -- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (numpy's default), `pct` in 0..100. NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """count, mean and p50/p95/p99/max in milliseconds."""
    if not seconds:
        return {"count": 0, "mean_ms": math.nan, "p50_ms": math.nan, "p95_ms": math.nan,
                "p99_ms": math.nan, "max_ms": math.nan}
    return {
        "count": len(seconds),
        "mean_ms": 1000 * sum(seconds) / len(seconds),
        "p50_ms": 1000 * percentile(seconds, 50),
        "p95_ms": 1000 * percentile(seconds, 95),
        "p99_ms": 1000 * percentile(seconds, 99),
        "max_ms": 1000 * max(seconds),
    }


# -- process memory --------------------------------------------------------------------------


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (a django-q2 cluster is several processes).
    Raises psutil.NoSuchProcess when `pid` is gone."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_sum(pid: int, measure: Callable[[psutil.Process], float]) -> float:
    """`measure` summed over `process_tree(pid)`; processes that exit meanwhile count as
    nothing."""
    try:
        processes = process_tree(pid)
    except psutil.NoSuchProcess:
        return 0
    total = 0.0
    for proc in processes:
        try:
            total += measure(proc)
        except psutil.NoSuchProcess:
            continue
    return total


def tree_rss_bytes(pid: int) -> int:
    """RSS of a process and all its descendants."""
    return int(tree_sum(pid, lambda proc: proc.memory_info().rss))


@dataclass
class MemorySampler:
    """Samples the RSS of named process trees; `summary()` reports start, end, peak, growth."""

    pids: dict[str, int]
    samples: dict[str, list[tuple[float, int]]] = field(default_factory=dict)

    def sample(self) -> None:
        now = time.monotonic()
        for name, pid in self.pids.items():
            self.samples.setdefault(name, []).append((now, tree_rss_bytes(pid)))

    def summary(self) -> dict[str, dict[str, float]]:
        mib = 1024 * 1024
        out: dict[str, dict[str, float]] = {}
        for name, rows in self.samples.items():
            values = [rss for _, rss in rows if rss]
            if not values:
                continue
            # Growth compares the settled level after warm-up (median of the first 10% of
            # samples) with the level at the end (median of the last 10%), not two single
            # readings that a garbage collection could skew.
            tenth = max(1, len(values) // 10)
            start = sorted(values[:tenth])[tenth // 2]
            end = sorted(values[-tenth:])[tenth // 2]
            out[name] = {"start_mib": start / mib, "end_mib": end / mib,
                         "peak_mib": max(values) / mib, "growth_mib": (end - start) / mib,
                         "growth_pct": 100.0 * (end - start) / start, "samples": len(values)}
        return out


# -- HTTP -------------------------------------------------------------------------------------


class ApiError(Exception):
    """A response other than the one expected, with the service's error envelope."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        self.method, self.path, self.status, self.body = method, path, status, body
        code = body.get("error_code") if isinstance(body, dict) else None
        message = body.get("error") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{method} {path} -> HTTP {status} {code or ''} {message or ''}".strip())

    @property
    def error_code(self) -> str | None:
        return self.body.get("error_code") if isinstance(self.body, dict) else None


def _decode(response: httpx2.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


class Api:
    """Synchronous JSON client of the public API. `token` adds the bearer header."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 30.0,
                 client: httpx2.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.client = client or httpx2.Client(timeout=timeout)

    def with_token(self, token: str) -> Api:
        return Api(self.base_url, token=token, client=self.client)

    def request(self, method: str, path: str, body: Any = None, *, expect: Iterable[int] = (200, 201),
                headers: dict[str, str] | None = None) -> Any:
        all_headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        all_headers.update(headers or {})
        response = self.client.request(method, self.base_url + path, json=body, headers=all_headers)
        payload = _decode(response)
        if response.status_code not in tuple(expect):
            raise ApiError(method, path, response.status_code, payload)
        return payload

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, body, **kwargs)

    def close(self) -> None:
        self.client.close()


@dataclass
class Timed:
    status: int
    body: Any
    seconds: float
    error: str = ""  # transport failure (no HTTP status)


class AsyncApi:
    """Async client for load: every call returns `Timed` and never raises on HTTP status."""

    def __init__(self, base_url: str, *, max_connections: int = 64, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = httpx2.AsyncClient(
            timeout=timeout,
            limits=httpx2.Limits(max_connections=max_connections,
                                 max_keepalive_connections=max_connections))

    async def call(self, method: str, path: str, body: Any = None, *,
                   token: str | None = None) -> Timed:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        started = time.perf_counter()
        try:
            response = await self.client.request(method, self.base_url + path, json=body,
                                                 headers=headers)
        except httpx2.HTTPError as exc:
            return Timed(0, None, time.perf_counter() - started, error=type(exc).__name__)
        return Timed(response.status_code, _decode(response), time.perf_counter() - started)

    async def close(self) -> None:
        await self.client.aclose()


def wait_http(url: str, timeout: float = 30.0) -> bool:
    """True once `url` answers anything below 500 within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return True
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


# -- Solana JSON-RPC --------------------------------------------------------------------------

_rpc_ids = itertools.count(1)


class RpcError(Exception):
    pass


def solana_rpc(url: str, method: str, *params: Any, timeout: float = 10.0) -> Any:
    """One JSON-RPC call to a Solana node (or the sandbox); returns `result`."""
    body = json.dumps({"jsonrpc": "2.0", "id": next(_rpc_ids), "method": method,
                       "params": list(params)}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    if "error" in reply:
        raise RpcError(f"{method}: {reply['error']}")
    return reply["result"]


def sol_balance(url: str, address: str) -> int:
    return int(solana_rpc(url, "getBalance", address, {"commitment": "confirmed"})["value"])


def token_balance(url: str, token_account: str) -> int | None:
    """Base units in an SPL token account; None when the account does not exist."""
    try:
        result = solana_rpc(url, "getTokenAccountBalance", token_account, {"commitment": "confirmed"})
    except RpcError:
        return None
    return int(result["value"]["amount"])


def instruction_json(ix: Any) -> dict[str, Any]:
    """A solders Instruction in the quote API's shape."""
    return {"program_id": str(ix.program_id),
            "accounts": [{"pubkey": str(a.pubkey), "is_signer": a.is_signer,
                          "is_writable": a.is_writable} for a in ix.accounts],
            "data_base64": base64.b64encode(bytes(ix.data)).decode()}


# -- wallets ----------------------------------------------------------------------------------

STROOPS_PER_XLM = 10**7
YOCTO_PER_NEAR = 10**24
NEAR_GAS_TGAS = 30 * 10**12


def whole(amount: int | str, decimals: int) -> str:
    """Exact decimal display of a smallest-unit amount (no floats)."""
    value = Decimal(int(amount)).scaleb(-decimals)
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


class StellarWallet:
    """A Stellar account key: signs SEP-53 messages and payment envelopes."""

    chain = "stellar"

    def __init__(self, secret: str | None = None) -> None:
        from stellar_sdk import Keypair

        self.keypair = Keypair.from_secret(secret) if secret else Keypair.random()
        self.address = self.keypair.public_key
        # Sandbox verification has no ledger to read a sequence from: any fresh number works.
        self._sequence = itertools.count(secrets.randbelow(2**40) + 1)

    def sign_challenge(self, challenge: dict[str, Any]) -> dict[str, str]:
        signature = base64.b64encode(self.keypair.sign_message(challenge["message"])).decode()
        return {"challenge_id": challenge["challenge_id"], "signature": signature}

    def payment_envelope(self, *, payment: dict[str, Any], network_passphrase: str,
                         timeout_seconds: int = 300) -> str:
        """A signed native payment of `payment.amount` stroops to `payment.address`, carrying
        the quote's memo (MEMO_ID, or MEMO_HASH when memo_type is "hash")."""
        from stellar_sdk import Account, Asset, TransactionBuilder

        builder = TransactionBuilder(Account(self.address, next(self._sequence)),
                                     network_passphrase, base_fee=100)
        builder.append_payment_op(payment["address"], Asset.native(),
                                  whole(payment["amount"], 7))
        if payment["memo_type"] == "id":
            builder.add_id_memo(int(payment["memo"]))
        else:
            builder.add_hash_memo(bytes.fromhex(payment["memo"]))
        envelope = builder.set_timeout(timeout_seconds).build()
        envelope.sign(self.keypair)
        return str(envelope.to_xdr())


class NearWallet:
    """A NEAR implicit account (its id is the hex of its ed25519 public key): signs NEP-413
    messages and `execute_payment` function calls."""

    chain = "near"

    def __init__(self, seed: bytes | None = None) -> None:
        from nacl.signing import SigningKey

        self.signing_key = SigningKey(seed or secrets.token_bytes(32))
        public = bytes(self.signing_key.verify_key)
        self.address = public.hex()
        import base58

        self.public_key = "ed25519:" + base58.b58encode(public).decode()
        # An access key's nonce must grow with every transaction.
        self._nonce = itertools.count(int(time.time() * 1000) * 1000)

    def sign_challenge(self, challenge: dict[str, Any]) -> dict[str, str]:
        from users.signatures import sign_near_nep413  # plain Python: the NEP-413 byte layout

        nonce = base64.b64decode(challenge["nonce"])
        signature, public_key = sign_near_nep413(self.signing_key, challenge["message"], nonce,
                                                 challenge["recipient"])
        return {"challenge_id": challenge["challenge_id"], "signature": signature,
                "public_key": public_key}

    def payment_transaction(self, *, quote_id: str, payment: dict[str, Any],
                            block_hash: bytes | None = None) -> str:
        """base64 borsh SignedTransaction: FunctionCall `execute_payment({"quote_id"})` on the
        payment account with `payment.amount` yoctoNEAR attached."""
        from py_near.transactions import sign_and_serialize_transaction
        from py_near_primitives import FunctionCallAction

        args = json.dumps({"quote_id": quote_id}).encode()
        action = FunctionCallAction("execute_payment", args, NEAR_GAS_TGAS, int(payment["amount"]))
        secret = bytes(self.signing_key) + bytes(self.signing_key.verify_key)
        # Sandbox verification has no chain to take a recent block hash from.
        return str(sign_and_serialize_transaction(
            self.address, secret, payment["address"], next(self._nonce), [action],
            block_hash or secrets.token_bytes(32)))


def sign_in(api: Api, wallet: StellarWallet | NearWallet, *, token: str | None = None) -> dict[str, Any]:
    """Challenge → signature → verify. With `token`, the wallet joins that user."""
    challenge = api.post("/api/v1/auth/challenge", {"chain": wallet.chain, "address": wallet.address},
                         expect=(201,))
    acting = api.with_token(token) if token else api
    return acting.post("/api/v1/auth/verify", wallet.sign_challenge(challenge), expect=(200,))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))
