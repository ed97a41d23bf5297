"""Quotes price real Solana work: what the quote says the treasury spends is what LiteSVM
charges when the executor's transaction (the same builder) is executed."""

from __future__ import annotations

import uuid

import pytest
from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.pubkey import Pubkey

from execution.solana import spl
from execution.solana.signer import KeypairSigner
from quotes.models import Quote
from quotes.solana_tx import build_execution_message, execution_memo

pytestmark = pytest.mark.django_db


def execute_like_the_executor(chain, settings, quote: Quote):
    """Sign and land the quote's transaction exactly as the executor builds it."""
    signer = KeypairSigner.from_setting(settings.SOLANA_TREASURY_KEY)
    blockhash, last_valid = chain.backend.latest_blockhash()
    message = build_execution_message(quote.instructions, quote.estimated_compute_units,
                                      quote.priority_fee_micro_lamports,
                                      execution_memo(uuid.uuid4()), signer.pubkey, blockhash)
    tx = signer.sign_transaction(message)
    spl.send_and_confirm(chain.backend, tx, last_valid)
    details = chain.backend.transaction(tx.signatures[0])
    assert details is not None and details.succeeded
    return details


def create(client, **body):
    response = client.post("/api/v1/quotes", {"source_chain": "stellar", **body}, format="json")
    assert response.status_code == 201, response.json()
    return Quote.objects.get(pk=response.json()["quote_id"]), response.json()


def test_sol_transfer_quote_matches_what_litesvm_charges(quote_settings, client, work, chain):
    recipient = Pubkey.new_unique()
    instructions = [set_compute_unit_limit(20_000), set_compute_unit_price(2_500),
                    *work.sol_transfer(250_000_000, to=recipient)]

    quote, body = create(client, solana_transaction_base64=work.legacy_b64(instructions))

    # The client's compute budget is lifted out and becomes the quote's.
    assert quote.estimated_compute_units == 20_000
    assert quote.priority_fee_micro_lamports == 2_500
    assert [ix["program_id"] for ix in quote.instructions] == ["11111111111111111111111111111111"]
    assert quote.fee_lamports == 5_000 + 50  # ceil(20_000 × 2_500 / 10^6)
    assert quote.treasury_outflow_lamports == 250_000_000
    assert quote.max_lamports_spend == 250_005_050
    assert body["treasury_outflow"] == "250000000"

    details = execute_like_the_executor(chain, quote_settings, quote)
    assert details.fee == quote.fee_lamports
    assert -details.lamport_delta(chain.treasury) == quote.max_lamports_spend
    assert chain.balance(recipient) == 250_000_000


def test_usdc_transfer_prices_token_outflow_and_ata_rent(quote_settings, client, work, chain):
    recipient = Pubkey.new_unique()
    quote, body = create(client, solana_transaction_base64=work.v0_b64(
        work.usdc_transfer(12_345_678, to_owner=recipient)), estimated_compute_units=60_000)

    rent = chain.backend.minimum_rent(spl.TOKEN_ACCOUNT_SIZE)
    assert quote.token_outflows == {str(chain.usdc_mint): "12345678"}
    assert quote.treasury_outflow_lamports == rent  # the recipient's new token account
    assert quote.fee_lamports == 5_000

    usdc_before = chain.token_balance(chain.treasury_usdc_account)
    details = execute_like_the_executor(chain, quote_settings, quote)
    assert details.fee == quote.fee_lamports
    assert -details.lamport_delta(chain.treasury) == quote.max_lamports_spend == rent + 5_000
    assert usdc_before - chain.token_balance(chain.treasury_usdc_account) == 12_345_678
    # 12.345678 USDC at $1 plus the rent and fee in SOL, all in XLM at $0.10, + buffer + fee.
    assert int(body["total_cost"]) > 12_345_678 * 10 * 10  # stroops for > $12.34


def test_memo_only_costs_exactly_the_fee(quote_settings, client, work, chain):
    quote, body = create(client, instructions=work.as_json(work.memo("invoice 42")),
                         priority_fee_micro_lamports=1_000_000, estimated_compute_units=5_000)

    assert quote.treasury_outflow_lamports == 0
    assert quote.token_outflows == {}
    assert quote.fee_lamports == 5_000 + 5_000  # 5_000 CU × 1 lamport per CU
    details = execute_like_the_executor(chain, quote_settings, quote)
    assert details.fee == quote.fee_lamports
    assert -details.lamport_delta(chain.treasury) == quote.max_lamports_spend == 10_000
    assert body["treasury_outflow"] == "0"


def test_message_and_instruction_list_describe_the_same_work(quote_settings, client, work):
    instructions = work.usdc_transfer(1_000, to_owner=Pubkey.new_unique())
    from_legacy, _ = create(client, solana_transaction_base64=work.legacy_b64(instructions))
    from_v0, _ = create(client, solana_transaction_base64=work.v0_b64(instructions))
    from_json, _ = create(client, instructions=work.as_json(instructions))

    assert from_legacy.instructions == from_v0.instructions == from_json.instructions
    assert (from_legacy.max_lamports_spend == from_v0.max_lamports_spend
            == from_json.max_lamports_spend)


def test_full_serialized_transaction_is_read_for_its_message(quote_settings, client, work,
                                                             treasury_keypair):
    from solders.hash import Hash
    from solders.message import Message
    from solders.transaction import Transaction

    message = Message.new_with_blockhash(work.sol_transfer(10**6), work.treasury, Hash.default())
    tx = Transaction([treasury_keypair], message, Hash.default())
    import base64

    quote, _ = create(client, solana_transaction_base64=base64.b64encode(bytes(tx)).decode())
    assert quote.treasury_outflow_lamports == 10**6
