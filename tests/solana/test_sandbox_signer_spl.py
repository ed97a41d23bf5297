"""Treasury signer key handling and the instruction builders."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import MessageV0, to_bytes_versioned

from execution.solana import spl
from execution.solana.signer import KeypairSigner, SignerError


def test_keypair_signer_loads_every_supported_format(tmp_path: Path) -> None:
    keypair = Keypair()
    as_json = json.dumps(list(bytes(keypair)))
    key_file = tmp_path / "treasury.json"
    key_file.write_text(as_json)

    signers = [
        KeypairSigner.from_base58(str(keypair)),
        KeypairSigner.from_json(as_json),
        KeypairSigner.from_json_file(key_file),
        KeypairSigner.from_setting(as_json),
        KeypairSigner.from_setting(str(key_file)),
        KeypairSigner.from_setting(f"  {keypair}\n"),
    ]

    assert {s.pubkey for s in signers} == {keypair.pubkey()}


def test_signer_never_shows_or_serializes_its_secret() -> None:
    keypair = Keypair()
    signer = KeypairSigner.from_base58(str(keypair))
    secret = str(keypair)

    for text in (repr(signer), str(signer), f"{signer}", repr([signer])):
        assert secret not in text
        assert str(keypair.pubkey()) in text
    with pytest.raises(TypeError):
        pickle.dumps(signer)


@pytest.mark.parametrize(
    "value",
    ["", "not-base58-!!!", "[1, 2, 3]", json.dumps([300] * 64), "{}", "/no/such/key.json"],
)
def test_invalid_key_material_is_refused(value: str) -> None:
    with pytest.raises(SignerError) as info:
        KeypairSigner.from_setting(value)
    assert value.strip() == "" or value not in str(info.value)  # never echo key material


def test_sign_transaction_is_deterministic_and_verifiable() -> None:
    signer = KeypairSigner.generate()
    message = MessageV0.try_compile(
        signer.pubkey,
        [spl.sol_transfer(signer.pubkey, Keypair().pubkey(), 1)],
        [],
        Hash.new_unique(),
    )

    first = signer.sign_transaction(message)
    second = signer.sign_transaction(message)

    assert first.signatures == second.signatures
    assert first.signatures[0].verify(signer.pubkey, to_bytes_versioned(message))
    assert all(first.verify_with_results())


def test_treasury_refuses_to_co_sign_or_sign_for_another_payer() -> None:
    signer, other = KeypairSigner.generate(), Keypair()
    needs_two = MessageV0.try_compile(
        signer.pubkey,
        [
            spl.sol_transfer(signer.pubkey, other.pubkey(), 1),
            spl.sol_transfer(other.pubkey(), signer.pubkey, 1),
        ],
        [],
        Hash.new_unique(),
    )
    foreign_payer = MessageV0.try_compile(
        other.pubkey(), [spl.sol_transfer(other.pubkey(), signer.pubkey, 1)], [], Hash.new_unique()
    )

    with pytest.raises(SignerError):
        signer.sign_transaction(needs_two)
    with pytest.raises(SignerError):
        signer.sign_transaction(foreign_payer)


def test_instruction_builders_target_the_allowed_programs() -> None:
    payer, owner, mint = Keypair().pubkey(), Keypair().pubkey(), Keypair().pubkey()

    memo = spl.memo("quote 1", [payer])
    assert memo.program_id == spl.MEMO_PROGRAM_ID and memo.data == b"quote 1"
    assert memo.accounts[0].is_signer and not memo.accounts[0].is_writable
    ata = spl.create_ata_idempotent(payer=payer, owner=owner, mint=mint)
    assert ata.program_id == spl.ASSOCIATED_TOKEN_PROGRAM_ID and bytes(ata.data) == b"\x01"
    assert ata.accounts[1].pubkey == spl.associated_token_address(owner, mint)
    transfer = spl.token_transfer_checked(
        source=payer, mint=mint, destination=owner, owner=payer, amount=5, decimals=6
    )
    assert transfer.program_id == spl.TOKEN_PROGRAM_ID and bytes(transfer.data)[0] == 12
    assert spl.compute_unit_limit(1).program_id == spl.COMPUTE_BUDGET_PROGRAM_ID
    assert spl.sol_transfer(payer, owner, 1).program_id == spl.SYSTEM_PROGRAM_ID
    assert spl.priority_fee(200_000, 1) == 1  # 0.2 lamport rounds up
    assert spl.priority_fee(200_000, 0) == 0
    assert spl.priority_fee(1_400_000, 1_000_000) == 1_400_000
