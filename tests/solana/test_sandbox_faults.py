"""Injected faults behave as documented in execution/solana/sandbox.py."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
from solders.keypair import Keypair

from execution.solana import spl
from execution.solana.backend import SolanaBackend, SolanaUnavailable
from execution.solana.sandbox_chain import RpcError

if TYPE_CHECKING:
    from conftest import Sandbox

SOL = 10**9


def _signed_transfer(sandbox: Sandbox, lamports: int = SOL):
    payer, recipient = sandbox.funded(), Keypair().pubkey()
    blockhash, _ = sandbox.backend.latest_blockhash()
    tx = spl.build_transaction(payer, [spl.sol_transfer(payer.pubkey(), recipient, lamports)], blockhash)
    return tx, recipient


def test_dropped_send_answers_the_signature_but_never_executes(sandbox: Sandbox) -> None:
    tx, recipient = _signed_transfer(sandbox)
    sandbox.admin.inject_faults(drop_sends=1)

    assert sandbox.backend.send_raw(bytes(tx)) == tx.signatures[0]

    assert sandbox.backend.signature_status(tx.signatures[0]) is None
    assert sandbox.backend.balance(recipient) == 0
    # The same bytes re-sent while the blockhash is valid land once.
    sandbox.backend.send_raw(bytes(tx))
    assert sandbox.backend.balance(recipient) == SOL
    assert sandbox.admin.faults()["drop_sends"] == 0


@pytest.mark.parametrize("mode", ["close", "503"])
def test_lost_response_means_unknown_outcome_but_the_transaction_landed(sandbox: Sandbox, mode: str) -> None:
    tx, recipient = _signed_transfer(sandbox)
    sandbox.admin.inject_faults(lose_send_responses=1, lost_response_mode=mode)

    with pytest.raises(SolanaUnavailable):
        sandbox.backend.send_raw(bytes(tx))

    state = sandbox.backend.signature_status(tx.signatures[0])
    assert state is not None and state.err is None
    assert sandbox.backend.balance(recipient) == SOL
    sandbox.backend.send_raw(bytes(tx))  # a blind retry is harmless: same signature
    assert sandbox.backend.balance(recipient) == SOL


def test_duplicated_delivery_executes_once(sandbox: Sandbox) -> None:
    tx, recipient = _signed_transfer(sandbox)
    sandbox.admin.inject_faults(duplicate_sends=1)

    sandbox.backend.send_raw(bytes(tx))

    assert sandbox.backend.balance(recipient) == SOL
    assert sandbox.admin.faults()["duplicate_sends"] == 0


def test_null_statuses_hide_a_landed_transaction_for_n_calls(sandbox: Sandbox) -> None:
    tx, _ = _signed_transfer(sandbox)
    sandbox.backend.send_raw(bytes(tx))
    sandbox.admin.inject_faults(null_statuses=2)

    assert sandbox.backend.signature_status(tx.signatures[0]) is None
    assert sandbox.backend.signature_status(tx.signatures[0]) is None
    state = sandbox.backend.signature_status(tx.signatures[0])
    assert state is not None and state.err is None


def test_unavailable_node_processes_nothing(sandbox: Sandbox) -> None:
    tx, recipient = _signed_transfer(sandbox)
    sandbox.admin.inject_faults(unavailable=1)

    with pytest.raises(SolanaUnavailable):
        sandbox.backend.send_raw(bytes(tx))  # sends are never retried by the backend

    assert sandbox.backend.signature_status(tx.signatures[0]) is None
    assert sandbox.backend.balance(recipient) == 0


def test_reads_retry_once_on_unavailable(sandbox: Sandbox) -> None:
    sandbox.admin.inject_faults(unavailable=1)
    assert sandbox.backend.block_height() > 0  # first attempt 503, retry answers

    sandbox.admin.inject_faults(unavailable=2)
    with pytest.raises(SolanaUnavailable):
        sandbox.backend.block_height()


def test_slow_node_times_out_the_client_but_still_executes(sandbox: Sandbox) -> None:
    tx, recipient = _signed_transfer(sandbox)
    sandbox.admin.inject_faults(slow_requests=1, slow_ms=600)

    with SolanaBackend.from_url(sandbox.url, timeout=0.2) as impatient, pytest.raises(SolanaUnavailable):
        impatient.send_raw(bytes(tx))

    # The node processed it after the client gave up.
    for _ in range(50):
        if sandbox.backend.signature_status(tx.signatures[0]) is not None:
            break
        time.sleep(0.05)
    assert sandbox.backend.balance(recipient) == SOL


def test_sandbox_requests_are_not_subject_to_faults(sandbox: Sandbox) -> None:
    sandbox.admin.inject_faults(unavailable=5)

    sandbox.admin.airdrop(Keypair().pubkey(), SOL)  # admin calls pass

    assert sandbox.admin.faults()["unavailable"] == 5
    sandbox.admin.clear_faults()
    assert sandbox.admin.faults()["unavailable"] == 0


def test_fault_api_rejects_unknown_or_bad_faults(sandbox: Sandbox) -> None:
    with pytest.raises(RpcError) as info:
        sandbox.admin.inject_faults(explode=1)
    assert info.value.code == -32602
    with pytest.raises(RpcError):
        sandbox.admin.inject_faults(drop_sends=-1)
    with pytest.raises(RpcError):
        sandbox.admin.inject_faults(lost_response_mode="maybe")
    counters = sandbox.admin.inject_faults(drop_sends=2)
    assert counters["drop_sends"] == 2
    assert sandbox.admin.inject_faults(drop_sends=1)["drop_sends"] == 3  # counters add up
