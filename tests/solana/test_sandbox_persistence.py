"""The sandbox as its own process: ready line, clean stop, and state that survives restarts."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest
from solders.keypair import Keypair

from execution.solana import spl
from execution.solana.backend import AlreadyProcessed, SolanaBackend
from execution.solana.sandbox import SandboxAdmin, serve_in_thread, start_sandbox_process
from execution.solana.sandbox_store import DataDirInUse
from execution.solana.signer import KeypairSigner

SOL = 10**9


@pytest.mark.slow
def test_restarted_process_keeps_balances_tokens_and_statuses(tmp_path: Path) -> None:
    data_dir = tmp_path / "solana"
    url, proc = start_sandbox_process(data_dir)
    try:
        admin = SandboxAdmin(url)
        with SolanaBackend.from_url(url) as backend:
            authority, recipient = Keypair(), Keypair().pubkey()
            treasury = KeypairSigner.generate()
            admin.airdrop(authority.pubkey(), 10 * SOL)
            admin.airdrop(treasury.pubkey, 10 * SOL)
            usdc = spl.setup_demo_usdc(
                backend, mint_authority=authority, treasury=treasury.pubkey, amount=7_000_000
            )
            blockhash, last_valid = backend.latest_blockhash()
            tx = spl.build_transaction(
                treasury, [spl.sol_transfer(treasury.pubkey, recipient, SOL)], blockhash
            )
            spl.send_and_confirm(backend, tx, last_valid)
            before = {
                "treasury": backend.balance(treasury.pubkey),
                "recipient": backend.balance(recipient),
                "tokens": backend.token_balance(usdc.treasury_token_account),
                "height": backend.block_height(),
                "status": backend.signature_status(tx.signatures[0]),
            }
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0

    url, proc = start_sandbox_process(data_dir)
    try:
        with SolanaBackend.from_url(url) as backend:
            assert backend.balance(treasury.pubkey) == before["treasury"]
            assert backend.balance(recipient) == before["recipient"] == SOL
            assert backend.token_balance(usdc.treasury_token_account) == 7_000_000
            assert backend.block_height() >= before["height"]
            assert backend.signature_status(tx.signatures[0]) == before["status"]
            details = backend.transaction(tx.signatures[0])
            assert details is not None and details.lamport_delta(recipient) == SOL
            # LiteSVM's in-memory history is gone, the store still refuses the replay.
            with pytest.raises(AlreadyProcessed):
                backend.send_raw(bytes(tx), skip_preflight=False)
            backend.send_raw(bytes(tx))
            assert backend.balance(recipient) == SOL
            # And the restored chain keeps working: the restored mint accepts transfers.
            user = Keypair().pubkey()
            blockhash, last_valid = backend.latest_blockhash()
            transfer = spl.build_transaction(
                treasury,
                [
                    spl.create_ata_idempotent(payer=treasury.pubkey, owner=user, mint=usdc.mint),
                    spl.token_transfer_checked(
                        source=usdc.treasury_token_account,
                        mint=usdc.mint,
                        destination=spl.associated_token_address(user, usdc.mint),
                        owner=treasury.pubkey,
                        amount=1_000_000,
                        decimals=6,
                    ),
                ],
                blockhash,
            )
            spl.send_and_confirm(backend, transfer, last_valid)
            assert backend.token_balance(usdc.treasury_token_account) == 6_000_000
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0


@pytest.mark.slow
def test_process_prints_ready_line_and_serves(tmp_path: Path) -> None:
    url, proc = start_sandbox_process(None)
    try:
        assert url.startswith("http://127.0.0.1:")
        with SolanaBackend.from_url(url) as backend:
            assert backend.block_height() >= 1
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_in_thread_server_persists_to_its_data_dir(tmp_path: Path) -> None:
    who = Keypair().pubkey()
    url, stop = serve_in_thread(data_dir=tmp_path, slot_ms=0)
    signature = SandboxAdmin(url).airdrop(who, 5 * SOL)
    SandboxAdmin(url).advance_blocks(10)
    stop()

    with sqlite3.connect(tmp_path / "chain.sqlite3") as db:
        stored = db.execute("SELECT lamports FROM accounts WHERE pubkey = ?", (bytes(who),))
        assert stored.fetchone() == ("5000000000",)
        programs = db.execute("SELECT COUNT(*) FROM accounts WHERE executable = 1").fetchone()
        assert programs == (0,)  # built-in programs are never persisted

    url, stop = serve_in_thread(data_dir=tmp_path, slot_ms=0)
    try:
        with SolanaBackend.from_url(url) as backend:
            assert backend.balance(who) == 5 * SOL
            assert backend.block_height() == 11
            assert backend.signature_status(signature) is not None
    finally:
        stop()


def test_a_data_dir_is_owned_by_one_sandbox_at_a_time(tmp_path: Path) -> None:
    url, stop = serve_in_thread(data_dir=tmp_path, slot_ms=0)
    try:
        with pytest.raises(DataDirInUse):
            serve_in_thread(data_dir=tmp_path, slot_ms=0)
    finally:
        stop()
    url, stop = serve_in_thread(data_dir=tmp_path, slot_ms=0)  # released on stop
    stop()
