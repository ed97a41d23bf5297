"""The sandbox speaks a real node's JSON-RPC: solana-py's AsyncClient works unmodified."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
from solana.rpc.async_api import AsyncClient
from solana.rpc.core import RPCException
from solana.rpc.models import TxOpts
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.rpc.errors import (
    InvalidParamsMessage,
    SendTransactionPreflightFailureMessage,
    UnsupportedTransactionVersionMessage,
)

from execution.solana import spl
from execution.solana.sandbox import serve_in_thread
from execution.solana.sandbox_chain import compute_fee

if TYPE_CHECKING:
    from conftest import Sandbox

SOL = 10**9


def rpc(url: str, method: str, *params: Any) -> dict[str, Any]:
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": method, "params": list(params)})
    request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def run(coro):
    return asyncio.run(coro)


def test_asyncclient_reads(sandbox: Sandbox) -> None:
    payer = sandbox.funded(5 * SOL)

    async def scenario() -> None:
        async with AsyncClient(sandbox.url) as client:
            assert await client.is_connected()
            version = (await client.get_version()).value
            assert version.solana_core
            slot = (await client.get_slot()).value
            height = (await client.get_block_height()).value
            assert slot != height  # code mixing the two up fails here as on a real cluster
            latest = (await client.get_latest_blockhash()).value
            assert latest.last_valid_block_height == height + 150
            balance = await client.get_balance(payer.pubkey())
            assert balance.value == 5 * SOL and balance.context.slot == slot
            info = (await client.get_account_info(payer.pubkey())).value
            assert info is not None and info.lamports == 5 * SOL and info.data == b""
            assert (await client.get_account_info(Keypair().pubkey())).value is None
            many = (await client.get_multiple_accounts([payer.pubkey(), Keypair().pubkey()])).value
            assert many[0] is not None and many[1] is None
            rent = (await client.get_minimum_balance_for_rent_exemption(0)).value
            assert rent == 890_880

    run(scenario())


def test_asyncclient_send_status_and_transaction(sandbox: Sandbox) -> None:
    payer, recipient = sandbox.funded(), Keypair().pubkey()

    async def scenario() -> None:
        async with AsyncClient(sandbox.url) as client:
            blockhash = (await client.get_latest_blockhash()).value.blockhash
            tx = spl.build_transaction(
                payer,
                [
                    spl.compute_unit_price(1_000_000),
                    spl.sol_transfer(payer.pubkey(), recipient, SOL),
                ],
                blockhash,
            )
            fee = (await client.get_fee_for_message(tx.message)).value
            assert fee == 5000 + 6000  # no CU limit: 2 builtin instructions x 3,000 CU
            sent = await client.send_raw_transaction(bytes(tx), TxOpts(skip_preflight=True, max_retries=0))
            assert sent.value == tx.signatures[0]
            statuses = await client.get_signature_statuses([sent.value], search_transaction_history=True)
            status = statuses.value[0]
            assert status is not None and status.err is None
            assert str(status.confirmation_status) == "TransactionConfirmationStatus.Finalized"
            got = await client.get_transaction(sent.value, max_supported_transaction_version=0)
            assert got.value is not None
            meta = got.value.transaction.meta
            assert meta.fee == fee and meta.err is None
            assert meta.pre_balances[0] - meta.post_balances[0] == SOL + fee
            assert meta.post_balances[1] == SOL
            assert meta.compute_units_consumed and meta.compute_units_consumed > 0
            assert got.value.slot == status.slot

            # A v0 transaction needs maxSupportedTransactionVersion, as on a real node.
            with pytest.raises(RPCException) as info:
                await client.get_transaction(sent.value)
            assert isinstance(info.value.args[0], UnsupportedTransactionVersionMessage)

    run(scenario())


def test_asyncclient_preflight_errors(sandbox: Sandbox) -> None:
    payer = sandbox.funded()

    async def scenario() -> None:
        async with AsyncClient(sandbox.url) as client:
            blockhash = (await client.get_latest_blockhash()).value.blockhash
            tx = spl.build_transaction(
                payer, [spl.sol_transfer(payer.pubkey(), Keypair().pubkey(), SOL)], blockhash
            )
            await client.send_raw_transaction(bytes(tx), TxOpts(skip_preflight=False))
            with pytest.raises(RPCException) as info:
                await client.send_raw_transaction(bytes(tx), TxOpts(skip_preflight=False))
            error = info.value.args[0]
            assert isinstance(error, SendTransactionPreflightFailureMessage)
            assert error.message.startswith("Transaction simulation failed: ")
            assert "already been processed" in error.message

            with pytest.raises(RPCException) as info:
                await client.send_raw_transaction(b"\x01\x02\x03", TxOpts(skip_preflight=True))
            assert isinstance(info.value.args[0], InvalidParamsMessage)

    run(scenario())


def test_simulate_with_accounts_through_asyncclient(sandbox: Sandbox) -> None:
    payer, recipient = sandbox.funded(), Keypair().pubkey()

    async def scenario() -> None:
        async with AsyncClient(sandbox.url) as client:
            blockhash = (await client.get_latest_blockhash()).value.blockhash
            tx = spl.build_transaction(payer, [spl.sol_transfer(payer.pubkey(), recipient, SOL)], blockhash)
            sim = (
                await client.simulate_transaction(
                    tx, sig_verify=True, accounts_addresses=[recipient, payer.pubkey()]
                )
            ).value
            assert sim.err is None and sim.units_consumed == 150
            assert sim.accounts[0].lamports == SOL
            assert sim.accounts[1].lamports == 9 * SOL - 5000
            assert (await client.get_balance(recipient)).value == 0

    run(scenario())


def test_wire_format_of_raw_json_rpc(sandbox: Sandbox) -> None:
    payer = sandbox.funded()

    balance = rpc(sandbox.url, "getBalance", str(payer.pubkey()))
    assert balance["jsonrpc"] == "2.0" and balance["id"] == 7
    assert set(balance["result"]["context"]) == {"slot", "apiVersion"}
    assert balance["result"]["value"] == 10 * SOL

    account = rpc(sandbox.url, "getAccountInfo", str(payer.pubkey()), {"encoding": "base64"})
    value = account["result"]["value"]
    assert value["data"] == ["", "base64"] and value["owner"] == "1" * 32 and value["space"] == 0

    assert rpc(sandbox.url, "getHealth")["result"] == "ok"
    assert rpc(sandbox.url, "noSuchMethod")["error"]["code"] == -32601
    assert rpc(sandbox.url, "getBalance", "not-a-key")["error"]["code"] == -32602
    assert rpc(sandbox.url, "getTokenAccountBalance", str(payer.pubkey()))["error"] == {
        "code": -32602,
        "message": "Invalid param: not a Token account",
    }

    request = urllib.request.Request(sandbox.url, b"{not json", {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.loads(response.read())["error"]["code"] == -32700

    batch = json.dumps(
        [
            {"jsonrpc": "2.0", "id": 1, "method": "getSlot"},
            {"jsonrpc": "2.0", "id": 2, "method": "getBlockHeight"},
        ]
    ).encode()
    request = urllib.request.Request(sandbox.url, batch, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        answers = json.loads(response.read())
    assert [a["id"] for a in answers] == [1, 2]
    assert answers[0]["result"] == answers[1]["result"] + 1000

    with urllib.request.urlopen(sandbox.url + "/health", timeout=5) as response:
        assert response.read() == b"ok"


def test_oversized_transaction_is_rejected_like_a_node(sandbox: Sandbox) -> None:
    payer = sandbox.funded()
    blockhash, _ = sandbox.backend.latest_blockhash()
    big = spl.build_transaction(payer, [spl.memo("x" * 1300)], blockhash)
    payload = base64.b64encode(bytes(big)).decode()

    answer = rpc(sandbox.url, "sendTransaction", payload, {"encoding": "base64"})

    assert answer["error"]["code"] == -32602
    assert "too large" in answer["error"]["message"]


def test_status_without_search_history_only_sees_recent_slots(sandbox: Sandbox) -> None:
    payer = sandbox.funded()
    tx_signature = sandbox.admin.airdrop(payer.pubkey(), SOL)

    recent = rpc(sandbox.url, "getSignatureStatuses", [str(tx_signature)])
    assert recent["result"]["value"][0]["confirmationStatus"] == "finalized"

    sandbox.admin.advance_blocks(301)  # out of the validator's status cache

    old = rpc(sandbox.url, "getSignatureStatuses", [str(tx_signature)])
    assert old["result"]["value"] == [None]
    searched = rpc(
        sandbox.url, "getSignatureStatuses", [str(tx_signature)], {"searchTransactionHistory": True}
    )
    assert searched["result"]["value"][0]["err"] is None
    assert sandbox.backend.signature_status(tx_signature) is not None  # backend searches


def test_token_balances_and_sandbox_mint_helpers(sandbox: Sandbox) -> None:
    authority, owner = Keypair().pubkey(), Keypair().pubkey()
    mint = sandbox.admin.create_mint(authority, decimals=6)

    token_account = sandbox.admin.mint_to(mint, owner, 1_234_500)
    sandbox.admin.mint_to(mint, owner, 500)

    assert token_account == spl.associated_token_address(owner, mint)
    answer = rpc(sandbox.url, "getTokenAccountBalance", str(token_account))["result"]["value"]
    assert answer == {"amount": "1235000", "decimals": 6, "uiAmount": 1.235, "uiAmountString": "1.235"}
    assert sandbox.backend.token_balance(token_account) == 1_235_000


def test_blocks_follow_wall_clock_when_slot_ms_is_set() -> None:
    url, stop = serve_in_thread(slot_ms=20)
    try:
        first = rpc(url, "getBlockHeight")["result"]
        blockhash = rpc(url, "getLatestBlockhash")["result"]["value"]["blockhash"]
        time.sleep(0.25)
        later = rpc(url, "getBlockHeight")["result"]
        assert later >= first + 5
        assert rpc(url, "getLatestBlockhash")["result"]["value"]["blockhash"] != blockhash
        assert rpc(url, "isBlockhashValid", blockhash)["result"]["value"] is True
    finally:
        stop()


@pytest.mark.parametrize(
    "build",
    [
        lambda p, q: [spl.sol_transfer(p, q, SOL)],
        lambda p, q: [spl.compute_unit_limit(10_001), spl.compute_unit_price(3), spl.sol_transfer(p, q, SOL)],
        lambda p, q: [spl.compute_unit_price(1000), spl.sol_transfer(p, q, SOL), spl.sol_transfer(p, q, 1)],
        lambda p, q: [spl.compute_unit_price(7), spl.memo("x"), spl.sol_transfer(p, q, SOL)],
        lambda p, q: [
            spl.compute_unit_limit(2_000_000),
            spl.compute_unit_price(10),
            spl.sol_transfer(p, q, SOL),
        ],
    ],
)
def test_fee_formula_matches_litesvm(build) -> None:
    from solders.hash import Hash

    svm = LiteSVM()
    payer, recipient = Keypair(), Keypair()
    svm.airdrop(payer.pubkey(), 100 * SOL)
    tx = spl.build_transaction(payer, build(payer.pubkey(), recipient.pubkey()), svm.latest_blockhash())
    assert isinstance(svm.latest_blockhash(), Hash)

    result = svm.send_transaction(tx)

    assert result.fee() == compute_fee(tx.message)


def test_set_account_writes_raw_state(sandbox: Sandbox) -> None:
    target, owner = Keypair().pubkey(), Keypair().pubkey()

    sandbox.admin.set_account(target, lamports=1_000_000, data=b"\x01\x02\x03", owner=owner)

    account = sandbox.backend.account(target)
    assert account is not None
    assert (account.lamports, account.data, account.owner) == (1_000_000, b"\x01\x02\x03", owner)
    sandbox.admin.set_account(target, lamports=0)  # zero lamports: the account is gone
    assert sandbox.backend.account(target) is None
