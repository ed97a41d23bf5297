"""SolanaBackend against the sandbox server: the code path services use in both modes."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from execution.solana import spl
from execution.solana.backend import (
    AlreadyProcessed,
    BlockhashNotFound,
    SolanaBackend,
    SolanaRpcError,
    SolanaUnavailable,
)
from execution.solana.signer import KeypairSigner

if TYPE_CHECKING:
    from conftest import Sandbox

SOL = 10**9
MAX_PROCESSING_AGE = 150


def _transfer(sandbox: Sandbox, payer: Keypair, to: Pubkey, lamports: int, *extra):
    blockhash, last_valid = sandbox.backend.latest_blockhash()
    tx = spl.build_transaction(payer, [*extra, spl.sol_transfer(payer.pubkey(), to, lamports)], blockhash)
    return tx, last_valid


def test_airdrop_credits_exactly_the_amount(sandbox: Sandbox) -> None:
    who = Keypair().pubkey()
    assert sandbox.backend.balance(who) == 0

    signature = sandbox.admin.airdrop(who, 3 * SOL)

    assert sandbox.backend.balance(who) == 3 * SOL
    state = sandbox.backend.signature_status(signature)
    assert state is not None and state.err is None and state.is_finalized


def test_sol_transfer_moves_exactly_amount_and_fee_is_signatures_plus_priority(
    sandbox: Sandbox,
) -> None:
    payer, recipient = sandbox.funded(), Keypair().pubkey()
    cu_limit, cu_price = 20_000, 12_345  # priority fee = ceil(246.9) = 247 lamports
    tx, last_valid = _transfer(
        sandbox,
        payer,
        recipient,
        SOL,
        spl.compute_unit_limit(cu_limit),
        spl.compute_unit_price(cu_price),
    )
    expected_fee = 5000 + spl.priority_fee(cu_limit, cu_price)
    assert expected_fee == 5247
    assert sandbox.backend.fee_for_message(tx.message) == expected_fee

    signature = sandbox.backend.send_raw(bytes(tx))

    assert signature == tx.signatures[0]  # ed25519 is deterministic: id known before sending
    assert sandbox.backend.balance(recipient) == SOL
    assert sandbox.backend.balance(payer.pubkey()) == 10 * SOL - SOL - expected_fee
    details = sandbox.backend.transaction(signature)
    assert details is not None and details.succeeded
    assert details.fee == expected_fee
    assert details.lamport_delta(payer.pubkey()) == -(SOL + expected_fee)
    assert details.lamport_delta(recipient) == SOL
    assert details.compute_units_consumed and details.compute_units_consumed > 0
    state = sandbox.backend.signature_status(signature)
    assert state is not None and state.slot == details.slot and state.err is None
    assert sandbox.backend.block_height() <= last_valid


def test_two_signers_pay_two_signature_fees(sandbox: Sandbox) -> None:
    payer, cosigner = sandbox.funded(), sandbox.funded()
    recipient = Keypair().pubkey()
    blockhash, _ = sandbox.backend.latest_blockhash()
    tx = spl.build_transaction(
        payer,
        [
            spl.sol_transfer(payer.pubkey(), recipient, SOL),
            spl.sol_transfer(cosigner.pubkey(), recipient, SOL),
        ],
        blockhash,
        extra_signers=[cosigner],
    )

    sandbox.backend.send_raw(bytes(tx))

    details = sandbox.backend.transaction(tx.signatures[0])
    assert details is not None and details.fee == 10_000
    assert sandbox.backend.balance(payer.pubkey()) == 9 * SOL - 10_000
    assert sandbox.backend.balance(cosigner.pubkey()) == 9 * SOL


def test_spl_transfer_lands_with_token_balances(sandbox: Sandbox) -> None:
    authority = sandbox.funded()
    treasury = KeypairSigner.generate()
    sandbox.admin.airdrop(treasury.pubkey, 10 * SOL)
    usdc = spl.setup_demo_usdc(
        sandbox.backend, mint_authority=authority, treasury=treasury.pubkey, amount=1_000_000_000
    )
    assert sandbox.backend.token_balance(usdc.treasury_token_account) == 1_000_000_000
    user = Keypair().pubkey()
    user_ata = spl.associated_token_address(user, usdc.mint)
    assert sandbox.backend.token_balance(user_ata) == 0  # missing account counts as 0

    blockhash, last_valid = sandbox.backend.latest_blockhash()
    tx = spl.build_transaction(
        treasury,
        [
            spl.create_ata_idempotent(payer=treasury.pubkey, owner=user, mint=usdc.mint),
            spl.token_transfer_checked(
                source=usdc.treasury_token_account,
                mint=usdc.mint,
                destination=user_ata,
                owner=treasury.pubkey,
                amount=25_500_000,
                decimals=6,
            ),
            spl.memo("execution 42", [treasury.pubkey]),
        ],
        blockhash,
    )
    spl.send_and_confirm(sandbox.backend, tx, last_valid)

    assert sandbox.backend.token_balance(user_ata) == 25_500_000
    assert sandbox.backend.token_balance(usdc.treasury_token_account) == 974_500_000
    details = sandbox.backend.transaction(tx.signatures[0])
    assert details is not None
    assert details.token_delta(user_ata) == 25_500_000
    assert details.token_delta(usdc.treasury_token_account) == -25_500_000
    post = {b.account: b for b in details.post_token_balances}
    assert post[user_ata].owner == user and post[user_ata].mint == usdc.mint
    assert post[user_ata].decimals == 6
    rent = sandbox.backend.minimum_rent(spl.TOKEN_ACCOUNT_SIZE)
    assert details.lamport_delta(treasury.pubkey) == -(rent + details.fee)
    assert any("Memo" in line for line in details.log_messages)


def test_demo_usdc_setup_is_idempotent(sandbox: Sandbox) -> None:
    authority, mint = sandbox.funded(), Keypair()
    treasury = Keypair().pubkey()

    first = spl.setup_demo_usdc(
        sandbox.backend, mint_authority=authority, treasury=treasury, amount=500, mint=mint
    )
    second = spl.setup_demo_usdc(
        sandbox.backend, mint_authority=authority, treasury=treasury, amount=800, mint=mint
    )
    third = spl.setup_demo_usdc(
        sandbox.backend, mint_authority=authority, treasury=treasury, amount=100, mint=mint
    )

    assert first == second == third
    assert first.mint == mint.pubkey()
    assert sandbox.backend.token_balance(first.treasury_token_account) == 800


def test_simulate_reports_post_state_without_changing_state(sandbox: Sandbox) -> None:
    payer, recipient = sandbox.funded(), Keypair().pubkey()
    tx, _ = _transfer(sandbox, payer, recipient, 2 * SOL)

    result = sandbox.backend.simulate(tx, [payer.pubkey(), recipient])

    assert result.succeeded and result.units_consumed > 0 and result.logs
    assert result.post_accounts[recipient] is not None
    assert result.post_accounts[recipient].lamports == 2 * SOL
    assert result.post_accounts[payer.pubkey()].lamports == 8 * SOL - 5000
    assert sandbox.backend.balance(recipient) == 0
    assert sandbox.backend.balance(payer.pubkey()) == 10 * SOL
    assert sandbox.backend.signature_status(tx.signatures[0]) is None
    # The simulated transaction can still be sent afterwards.
    sandbox.backend.send_raw(bytes(tx))
    assert sandbox.backend.balance(recipient) == 2 * SOL


def test_simulate_failure_returns_error_and_no_accounts(sandbox: Sandbox) -> None:
    payer, recipient = sandbox.funded(SOL), Keypair().pubkey()
    tx, _ = _transfer(sandbox, payer, recipient, 5 * SOL)

    result = sandbox.backend.simulate(tx, [payer.pubkey()])

    assert result.err == {"InstructionError": [0, {"Custom": 1}]}  # system: insufficient funds
    assert result.post_accounts == {}


def test_simulate_replace_recent_blockhash_accepts_an_expired_transaction(
    sandbox: Sandbox,
) -> None:
    payer, recipient = sandbox.funded(), Keypair().pubkey()
    tx, _ = _transfer(sandbox, payer, recipient, SOL)
    sandbox.admin.expire_blockhash()

    assert sandbox.backend.simulate(tx).err == "BlockhashNotFound"
    replaced = sandbox.backend.simulate(tx, replace_recent_blockhash=True)
    assert replaced.err is None
    assert replaced.replacement_blockhash is not None
    assert replaced.replacement_blockhash[0] == sandbox.backend.latest_blockhash()[0]
    with pytest.raises(SolanaRpcError) as info:
        sandbox.backend.simulate(tx, sig_verify=True, replace_recent_blockhash=True)
    assert info.value.code == -32602


def test_resending_the_same_bytes_never_executes_twice_even_after_many_transactions(
    sandbox: Sandbox,
) -> None:
    payer, recipient = sandbox.funded(100 * SOL), Keypair().pubkey()
    sandbox.admin.airdrop(recipient, SOL)
    tx, _ = _transfer(sandbox, payer, recipient, SOL)
    first = sandbox.backend.send_raw(bytes(tx))
    # LiteSVM's default history keeps ~32 transactions; push far past it.
    for i in range(40):
        other, _ = _transfer(sandbox, payer, recipient, 1000 + i)
        sandbox.backend.send_raw(bytes(other))
    balance = sandbox.backend.balance(recipient)

    again = sandbox.backend.send_raw(bytes(tx))  # skip_preflight: a node just answers the id

    assert again == first
    assert sandbox.backend.balance(recipient) == balance
    with pytest.raises(AlreadyProcessed) as info:
        sandbox.backend.send_raw(bytes(tx), skip_preflight=False)
    assert info.value.code == -32002 and info.value.tx_error == "AlreadyProcessed"
    assert sandbox.backend.balance(recipient) == balance
    state = sandbox.backend.signature_status(first)
    assert state is not None and state.err is None


def test_expired_blockhash_cannot_land(sandbox: Sandbox) -> None:
    payer, recipient = sandbox.funded(), Keypair().pubkey()
    tx, last_valid = _transfer(sandbox, payer, recipient, SOL)
    assert last_valid == sandbox.backend.block_height() + MAX_PROCESSING_AGE

    sandbox.admin.expire_blockhash()

    assert sandbox.backend.block_height() > last_valid
    with pytest.raises(BlockhashNotFound) as info:
        sandbox.backend.send_raw(bytes(tx), skip_preflight=False)
    assert info.value.code == -32002
    # Like a real node, skip_preflight returns the signature; the transaction never lands.
    assert sandbox.backend.send_raw(bytes(tx)) == tx.signatures[0]
    assert sandbox.backend.signature_status(tx.signatures[0]) is None
    assert sandbox.backend.transaction(tx.signatures[0]) is None
    assert sandbox.backend.balance(recipient) == 0


def test_blockhash_stays_valid_for_150_blocks(sandbox: Sandbox) -> None:
    payer, recipient = sandbox.funded(), Keypair().pubkey()
    tx, last_valid = _transfer(sandbox, payer, recipient, SOL)
    late, _ = _transfer(sandbox, payer, recipient, SOL + 1)
    sandbox.admin.advance_blocks(MAX_PROCESSING_AGE)
    assert sandbox.backend.block_height() == last_valid

    sandbox.backend.send_raw(bytes(tx))  # last valid block: still lands
    sandbox.admin.advance_blocks(1)
    sandbox.backend.send_raw(bytes(late))  # one block later: dropped

    assert sandbox.backend.signature_status(tx.signatures[0]) is not None
    assert sandbox.backend.signature_status(late.signatures[0]) is None


def test_failed_transaction_lands_with_error_and_fee(sandbox: Sandbox) -> None:
    authority = sandbox.funded()
    owner = sandbox.funded()
    mint = spl.create_mint(sandbox.backend, authority, mint_authority=authority.pubkey())
    source = spl.create_ata(sandbox.backend, authority, owner=owner.pubkey(), mint=mint)
    dest = spl.create_ata(sandbox.backend, authority, owner=authority.pubkey(), mint=mint)
    spl.mint_to(sandbox.backend, authority, mint=mint, destination=source, amount=10, decimals=6)
    blockhash, last_valid = sandbox.backend.latest_blockhash()
    tx = spl.build_transaction(
        owner,
        [
            spl.token_transfer_checked(
                source=source,
                mint=mint,
                destination=dest,
                owner=owner.pubkey(),
                amount=11,
                decimals=6,
            )
        ],
        blockhash,
    )
    before = sandbox.backend.balance(owner.pubkey())

    with pytest.raises(SolanaRpcError) as info:
        spl.send_and_confirm(sandbox.backend, tx, last_valid)

    assert info.value.tx_error == {"InstructionError": [0, {"Custom": 1}]}
    state = sandbox.backend.signature_status(tx.signatures[0])
    assert state is not None and state.err == {"InstructionError": [0, {"Custom": 1}]}
    assert sandbox.backend.balance(owner.pubkey()) == before - 5000  # the fee is charged
    assert sandbox.backend.token_balance(source) == 10
    details = sandbox.backend.transaction(tx.signatures[0])
    assert details is not None and not details.succeeded and details.fee == 5000


def test_bad_signature_is_rejected_by_preflight_and_dropped_without(sandbox: Sandbox) -> None:
    from solders.signature import Signature
    from solders.transaction import VersionedTransaction

    payer = sandbox.funded()
    tx, _ = _transfer(sandbox, payer, Keypair().pubkey(), SOL)
    forged = VersionedTransaction.populate(tx.message, [Signature.new_unique()])

    with pytest.raises(SolanaRpcError) as info:
        sandbox.backend.send_raw(bytes(forged), skip_preflight=False)
    assert info.value.code == -32003
    sandbox.backend.send_raw(bytes(forged))
    assert sandbox.backend.signature_status(forged.signatures[0]) is None
    assert sandbox.backend.balance(payer.pubkey()) == 10 * SOL


def test_accounts_and_rent(sandbox: Sandbox) -> None:
    payer = sandbox.funded()
    missing = Keypair().pubkey()

    found = sandbox.backend.accounts([payer.pubkey(), missing])

    assert found[payer.pubkey()] is not None and found[payer.pubkey()].lamports == 10 * SOL
    assert found[missing] is None
    assert sandbox.backend.account(missing) is None
    assert sandbox.backend.minimum_rent(0) == 890_880
    assert sandbox.backend.minimum_rent(165) == 2_039_280


def test_backend_is_safe_to_share_between_threads(sandbox: Sandbox) -> None:
    payer, recipient = sandbox.funded(100 * SOL), Keypair().pubkey()
    blockhash, _ = sandbox.backend.latest_blockhash()
    txs = [
        spl.build_transaction(payer, [spl.sol_transfer(payer.pubkey(), recipient, 10**6 + i)], blockhash)
        for i in range(64)
    ]
    errors: list[BaseException] = []

    def send(chunk) -> None:
        try:
            for tx in chunk:
                sandbox.backend.send_raw(bytes(tx))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(txs[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sandbox.backend.balance(recipient) == sum(10**6 + i for i in range(64))
    statuses = sandbox.backend.signature_statuses([tx.signatures[0] for tx in txs])
    assert all(s is not None and s.err is None for s in statuses)


def test_unreachable_node_raises_solana_unavailable() -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with SolanaBackend.from_url(f"http://127.0.0.1:{port}", timeout=1.0) as backend:
        with pytest.raises(SolanaUnavailable):
            backend.block_height()
        with pytest.raises(SolanaUnavailable):
            backend.send_raw(b"\x00" * 10)


def test_batched_calls_answer_each_request_and_fail_alone(sandbox: Sandbox) -> None:
    """The executor's batches: sends, simulations and transaction reads, each a JSON-RPC
    batch in one round trip, answered per request, an error belonging to its request."""
    payer = sandbox.funded()
    recipients = [Keypair().pubkey() for _ in range(3)]
    txs = [_transfer(sandbox, payer, to, (n + 1) * SOL)[0] for n, to in enumerate(recipients)]
    broke = Keypair()  # no lamports: its simulation fails on its own
    bad, _ = _transfer(sandbox, broke, Keypair().pubkey(), SOL)

    simulations = sandbox.backend.simulate_many([(tx, [to]) for tx, to in zip(txs, recipients, strict=True)]
                                                + [(bad, [])])
    assert [s.err for s in simulations[:3]] == [None, None, None]  # type: ignore[union-attr]
    assert [s.post_accounts[to].lamports for s, to in zip(simulations[:3], recipients, strict=True)] == [  # type: ignore[union-attr]
        SOL, 2 * SOL, 3 * SOL]
    assert simulations[3].err is not None  # type: ignore[union-attr]

    signatures = sandbox.backend.send_raw_many([bytes(tx) for tx in txs])
    assert signatures == [tx.signatures[0] for tx in txs]
    details = sandbox.backend.transactions([tx.signatures[0] for tx in txs] + [Keypair().sign_message(b"x")])
    assert [d.lamport_delta(to) for d, to in zip(details[:3], recipients, strict=True)] == [  # type: ignore[union-attr]
        SOL, 2 * SOL, 3 * SOL]
    assert details[3] is None  # never seen: no transaction, not an error

    # A lost answer to the whole batch: the sends happened, the caller cannot know it.
    more = [_transfer(sandbox, payer, Keypair().pubkey(), SOL)[0] for _ in range(2)]
    sandbox.admin.inject_faults(lose_send_responses=1)
    with pytest.raises(SolanaUnavailable):
        sandbox.backend.send_raw_many([bytes(tx) for tx in more])
    states = sandbox.backend.signature_statuses([tx.signatures[0] for tx in more])
    assert all(state is not None and state.err is None for state in states)
