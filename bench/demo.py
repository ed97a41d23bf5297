"""`make demo`: the whole product in about a minute, through the public API only.

Against a running `make run` (DEMO_BASE_URL, default http://127.0.0.1:8000; the Solana
sandbox's JSON-RPC at SOLANA_RPC_URL, default http://127.0.0.1:8899), as a newcomer's
client would:

1. generate a Stellar key and a NEAR implicit account, sign in with both (SEP-53 and
   NEP-413 signed challenges; the second wallet joins the first one's user);
2. read `GET /api/v1/treasury` for the treasury's Solana address, its USDC mint and where
   to pay on Stellar and NEAR;
3. ask for two quotes: 0.05 SOL from the treasury to a fresh recipient, paid in XLM, and
   25 USDC (create the recipient's token account + transfer_checked), paid in NEAR; check
   each quote's service signature before paying;
4. pay each one for real: a stellar-sdk envelope (native payment, the quote's memo id)
   and a py-near `execute_payment` function call with the deposit, signed by the wallets
   and sent to `POST /api/v1/quotes/{id}/payment`;
5. watch `/ws/quotes/{id}/` until the quote is executed, then print the Solana
   signature, and the recipient balances read from the chain.

Every step prints what it did and how long it took. Any step that does not do what it
should stops the demo with `DEMO FAILED at <step>` and exit code 1: it never reports a
success it did not see.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import base58
import websockets
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from bench.common import (
    Api,
    ApiError,
    NearWallet,
    StellarWallet,
    instruction_json,
    sign_in,
    sol_balance,
    solana_rpc,
    token_balance,
    whole,
)
from execution.solana import spl

BASE_URL = os.environ.get("DEMO_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
SOLANA_RPC_URL = os.environ.get("SOLANA_RPC_URL", "http://127.0.0.1:8899")
WATCH_TIMEOUT_SECONDS = float(os.environ.get("DEMO_WATCH_TIMEOUT", "60"))
SOL_AMOUNT_LAMPORTS = 50_000_000  # 0.05 SOL
USDC_AMOUNT_WHOLE = 25
TERMINAL = {"executed", "failed", "refund_due", "refunded", "expired", "cancelled"}

_started = time.monotonic()


class DemoFailed(Exception):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step, self.reason = step, reason


def say(text: str = "", indent: int = 0) -> None:
    stamp = f"[{time.monotonic() - _started:6.2f}s]"
    print(f"{stamp} {'    ' * indent}{text}", flush=True)


class Step:
    """`with Step("name"):` prints the step, its duration, and turns any error into
    DemoFailed naming the step."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> Step:
        self.began = time.monotonic()
        say(f"== {self.name}")
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            say(f"   done in {time.monotonic() - self.began:.2f}s")
            return False
        if isinstance(exc, DemoFailed):
            return False
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ApiError) and isinstance(exc.body, dict) and exc.body.get("details"):
            reason += f" details={json.dumps(exc.body['details'])[:1500]}"
        raise DemoFailed(self.name, reason) from exc


def require(condition: bool, step: str, reason: str) -> None:
    if not condition:
        raise DemoFailed(step, reason)


# -- the service's quote signature ------------------------------------------------------------


def verify_quote_signature(quote: dict[str, Any], public_key_b58: str | None) -> None:
    """The quote body, without `signature` and `status`, as canonical JSON, signed ed25519."""
    if not public_key_b58:
        raise DemoFailed("verify quote", "GET /api/v1/treasury publishes no quote signing key")
    unsigned = {k: v for k, v in quote.items() if k not in ("signature", "status")}
    message = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        VerifyKey(base58.b58decode(public_key_b58)).verify(message, base58.b58decode(quote["signature"]))
    except (BadSignatureError, ValueError) as exc:
        raise DemoFailed("verify quote", f"the quote's signature does not verify ({exc})") from exc


# -- watching a quote -------------------------------------------------------------------------


def ws_url(quote_id: str, token: str) -> str:
    return f"{BASE_URL.replace('http', 'ws', 1)}/ws/quotes/{quote_id}/?token={token}"


async def watch_and_pay(quote_id: str, token: str, pay: Any) -> dict[str, Any]:
    """Connect first (snapshot frame), pay, then print frames until a terminal status."""
    async with websockets.connect(ws_url(quote_id, token), open_timeout=10) as socket:
        first = json.loads(await asyncio.wait_for(socket.recv(), 10))
        say(f"ws: connected, quote is {first.get('status')}", 1)
        await asyncio.get_running_loop().run_in_executor(None, pay)
        deadline = time.monotonic() + WATCH_TIMEOUT_SECONDS
        last = first
        while last.get("status") not in TERMINAL:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DemoFailed("watch", f"quote still {last.get('status')} after "
                                          f"{WATCH_TIMEOUT_SECONDS:.0f}s on the WebSocket")
            frame = json.loads(await asyncio.wait_for(socket.recv(), remaining))
            if frame.get("event") == "quote.status":
                execution = frame.get("execution") or {}
                if frame.get("previous") == frame.get("status"):
                    say(f"ws: quote {frame.get('status')}, execution {execution.get('status')}", 1)
                else:
                    extra = f" (execution {execution.get('status')})" if execution else ""
                    say(f"ws: quote {frame.get('previous')} -> {frame.get('status')}{extra}", 1)
                last = frame
            else:
                say(f"ws: {frame.get('event')} {_brief(frame)}", 1)
        return last


def _brief(frame: dict[str, Any]) -> str:
    keys = ("status", "amount", "asset", "committed")
    return ", ".join(f"{k}={frame[k]}" for k in keys if k in frame)


# -- the demo ---------------------------------------------------------------------------------


def run() -> None:
    api = Api(BASE_URL)

    with Step("service is up"):
        try:
            health = api.get("/health")
        except Exception as exc:
            raise DemoFailed("service is up", f"{BASE_URL}/health does not answer ({exc}); "
                                              "start the service with `make run` first") from exc
        say(f"{BASE_URL}/health: {health.get('status')}", 1)
        require(health.get("status") == "healthy", "service is up", f"service reports {health}")
        try:
            solana_rpc(SOLANA_RPC_URL, "getHealth")
        except Exception as exc:
            raise DemoFailed("service is up", f"Solana RPC {SOLANA_RPC_URL} does not answer ({exc}); "
                                              "set SOLANA_RPC_URL to the sandbox `make run` started") from exc

    with Step("treasury"):
        treasury = api.get("/api/v1/treasury")
        solana = treasury["solana"]
        require(bool(solana.get("treasury")), "treasury", "no Solana treasury address published")
        require(bool(solana.get("usdc_mint")), "treasury",
                "GET /api/v1/treasury publishes no USDC mint (solana.usdc_mint)")
        treasury_pk = Pubkey.from_string(solana["treasury"])
        usdc_mint = Pubkey.from_string(solana["usdc_mint"])
        usdc_decimals = int(solana.get("usdc_decimals", 6))
        treasury_usdc = spl.associated_token_address(treasury_pk, usdc_mint)
        say(f"mode {treasury['mode']}, Solana cluster {solana['cluster']}", 1)
        say(f"Solana treasury {treasury_pk}: {whole(sol_balance(SOLANA_RPC_URL, str(treasury_pk)), 9)} SOL, "
            f"{whole(token_balance(SOLANA_RPC_URL, str(treasury_usdc)) or 0, usdc_decimals)} USDC", 1)
        say(f"pay XLM to {treasury['stellar']['address']} "
            f"({treasury['stellar']['network_passphrase']})", 1)
        say(f"pay NEAR to {treasury['near']['payment_account']} ({treasury['near']['network']})", 1)

    stellar, near = StellarWallet(), NearWallet()
    with Step("sign in with a new Stellar wallet (SEP-53)"):
        signed = sign_in(api, stellar)
        token = signed["token"]
        say(f"wallet {stellar.address} -> user {signed['user_id']}", 1)
    with Step("add a new NEAR implicit account to the same user (NEP-413)"):
        joined = sign_in(api, near, token=token)
        require(str(joined["user_id"]) == str(signed["user_id"]), "add NEAR wallet",
                f"the NEAR wallet went to user {joined['user_id']}, not {signed['user_id']}")
        say(f"wallet {near.address[:16]}... -> user {joined['user_id']}; wallets: "
            + ", ".join(w["chain"] for w in joined["wallets"]), 1)
    me = api.with_token(token)

    # -- quote 1: SOL, paid in XLM --------------------------------------------------------
    sol_recipient = Keypair().pubkey()
    with Step("quote: send 0.05 SOL to a fresh recipient, paid in XLM"):
        body = {"source_chain": "stellar",
                "instructions": [instruction_json(spl.sol_transfer(treasury_pk, sol_recipient,
                                                                   SOL_AMOUNT_LAMPORTS))]}
        sol_quote = me.post("/api/v1/quotes", body, expect=(201,))
        verify_quote_signature(sol_quote, treasury.get("quote_signing_public_key"))
        _print_quote(sol_quote, "XLM", 7)

    with Step("pay it on Stellar (signed envelope) and watch the WebSocket"):
        envelope = stellar.payment_envelope(payment=sol_quote["payment"],
                                            network_passphrase=treasury["stellar"]["network_passphrase"])

        def pay_sol() -> None:
            answer = me.post(f"/api/v1/quotes/{sol_quote['quote_id']}/payment", {"envelope_xdr": envelope})
            say(f"POST payment: quote {answer['status']}, payment {answer['payment'].get('status')}", 1)

        final = asyncio.run(watch_and_pay(sol_quote["quote_id"], token, pay_sol))
        require(final.get("status") == "executed", "SOL quote",
                f"ended {final.get('status')}: {json.dumps(final.get('execution'))}")

    with Step("check the SOL transfer on chain"):
        sol_signature = _check_landed(me, sol_quote["quote_id"])
        received = sol_balance(SOLANA_RPC_URL, str(sol_recipient))
        say(f"recipient {sol_recipient}: {whole(received, 9)} SOL", 1)
        require(received == SOL_AMOUNT_LAMPORTS, "SOL balance",
                f"recipient holds {received} lamports, expected {SOL_AMOUNT_LAMPORTS}")

    # -- quote 2: USDC, paid in NEAR ------------------------------------------------------
    usdc_owner = Keypair().pubkey()
    usdc_account = spl.associated_token_address(usdc_owner, usdc_mint)
    usdc_amount = USDC_AMOUNT_WHOLE * 10**usdc_decimals
    with Step(f"quote: send {USDC_AMOUNT_WHOLE} USDC to a fresh wallet, paid in NEAR"):
        instructions = [
            spl.create_ata_idempotent(payer=treasury_pk, owner=usdc_owner, mint=usdc_mint),
            spl.token_transfer_checked(source=treasury_usdc, mint=usdc_mint, destination=usdc_account,
                                       owner=treasury_pk, amount=usdc_amount, decimals=usdc_decimals),
        ]
        body = {"source_chain": "near", "instructions": [instruction_json(ix) for ix in instructions]}
        usdc_quote = me.post("/api/v1/quotes", body, expect=(201,))
        verify_quote_signature(usdc_quote, treasury.get("quote_signing_public_key"))
        _print_quote(usdc_quote, "NEAR", 24)

    with Step("pay it on NEAR (signed execute_payment call) and watch the WebSocket"):
        signed_tx = near.payment_transaction(quote_id=usdc_quote["quote_id"], payment=usdc_quote["payment"])

        def pay_near() -> None:
            answer = me.post(f"/api/v1/quotes/{usdc_quote['quote_id']}/payment",
                             {"signed_transaction_base64": signed_tx})
            say(f"POST payment: quote {answer['status']}, payment {answer['payment'].get('status')}", 1)

        final = asyncio.run(watch_and_pay(usdc_quote["quote_id"], token, pay_near))
        require(final.get("status") == "executed", "USDC quote",
                f"ended {final.get('status')}: {json.dumps(final.get('execution'))}")

    with Step("check the USDC transfer on chain"):
        usdc_signature = _check_landed(me, usdc_quote["quote_id"])
        received = token_balance(SOLANA_RPC_URL, str(usdc_account)) or 0
        say(f"recipient {usdc_owner} (token account {usdc_account}): "
            f"{whole(received, usdc_decimals)} USDC", 1)
        require(received == usdc_amount, "USDC balance",
                f"recipient token account holds {received}, expected {usdc_amount}")

    say()
    say(f"DEMO OK in {time.monotonic() - _started:.1f}s")
    say(f"SOL  transfer: {sol_signature}")
    say(f"USDC transfer: {usdc_signature}")


def _print_quote(quote: dict[str, Any], asset: str, decimals: int) -> None:
    payment = quote["payment"]
    say(f"quote {quote['quote_id']} (signature verified with the service key)", 1)
    work = int(quote["total_cost"]) - int(quote["gas_estimate"]) - int(quote["service_fee"])
    say(f"total {whole(quote['total_cost'], decimals)} {asset} = work {whole(work, decimals)} "
        f"+ gas {whole(quote['gas_estimate'], decimals)} + fee {whole(quote['service_fee'], decimals)}", 1)
    say(f"price {quote['price']['rate']} {asset}/SOL ({quote['price']['source']}), "
        f"expires {quote['expires_at']}", 1)
    say(f"treasury outflow {whole(quote['treasury_outflow'], 9)} SOL; pay {payment['amount']} "
        f"to {payment['address']} memo {payment['memo_type']}:{payment['memo']}", 1)


def _check_landed(me: Api, quote_id: str) -> str:
    """The quote's execution, as the API reports it and as the chain has it."""
    quote = me.get(f"/api/v1/quotes/{quote_id}")
    execution = quote.get("execution") or {}
    signature = execution.get("signature")
    if not signature:  # the API may not embed the execution: the seed status route has it
        signature = me.get(f"/status/{quote_id}").get("solana_signature")
    require(bool(signature), "check on chain", f"no Solana signature reported for quote {quote_id}")
    chain_tx = solana_rpc(SOLANA_RPC_URL, "getTransaction", signature,
                          {"encoding": "json", "commitment": "confirmed",
                           "maxSupportedTransactionVersion": 0})
    require(chain_tx is not None, "check on chain", f"the chain does not know transaction {signature}")
    require(chain_tx["meta"]["err"] is None, "check on chain",
            f"transaction failed: {chain_tx['meta']['err']}")
    say(f"Solana signature {signature} (slot {chain_tx['slot']}, fee {chain_tx['meta']['fee']} lamports)", 1)
    return str(signature)


def main() -> int:
    print(f"solpay demo against {BASE_URL} (Solana RPC {SOLANA_RPC_URL})", flush=True)
    try:
        run()
    except DemoFailed as exc:
        print(f"\nDEMO FAILED at step '{exc.step}': {exc.reason}", file=sys.stderr, flush=True)
        return 1
    except ApiError as exc:
        print(f"\nDEMO FAILED: {exc}\n{json.dumps(exc.body, indent=2)[:2000]}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
