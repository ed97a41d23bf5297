"""Every refusal answers 4xx/503 with its code and writes nothing (no quote, transition,
audit event or memo consumed)."""

from __future__ import annotations

import base64
import datetime as dt
import os
from decimal import Decimal

import pytest
from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.message import Message, MessageAddressTableLookup, MessageV0, to_bytes_versioned
from solders.pubkey import Pubkey
from spl.token import instructions as token_ix
from spl.token.constants import TOKEN_PROGRAM_ID

from execution.solana import spl
from quotes.models import Quote, QuoteTransition
from risk.models import AuditEvent, UserDailySpending
from tests.factories import QuoteFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def nothing_written():
    """Assert the refusal left no trace."""
    before = (Quote.objects.count(), QuoteTransition.objects.count(),
              AuditEvent.objects.filter(event_type="quote_created").count())
    yield
    after = (Quote.objects.count(), QuoteTransition.objects.count(),
             AuditEvent.objects.filter(event_type="quote_created").count())
    assert after == before


def post(client, body, path="/api/v1/quotes"):
    return client.post(path, {"source_chain": "stellar", **body}, format="json")


def assert_refused(response, status: int, code: str):
    assert response.status_code == status, response.json()
    assert response.json()["error_code"] == code
    return response.json()


@pytest.mark.parametrize("payload", ["!!!not base64!!!", "AQABAgME=", "QUJD\n===="])
def test_bad_base64_is_invalid(quote_settings, client, nothing_written, payload):
    body = assert_refused(post(client, {"solana_transaction_base64": payload}), 400,
                          "INVALID_QUOTE_PARAMETERS")
    assert body["details"]["field"] == "solana_transaction_base64"


def test_the_seeds_own_example_gets_a_clear_error(quote_settings, client, nothing_written):
    # AQABAgME = 01 00 01 02 03 04: a header and an account count of 2, then nothing.
    body = assert_refused(post(client, {"solana_instructions_base64": "AQABAgME",
                                        "estimated_compute_units": 200000}, path="/quote"),
                          400, "INVALID_QUOTE_PARAMETERS")
    assert "serialized Solana message" in body["error"]


def test_truncated_message_is_invalid(quote_settings, client, work, nothing_written):
    raw = base64.b64decode(work.legacy_b64(work.sol_transfer(1_000)))
    truncated = base64.b64encode(raw[:-3]).decode()
    assert_refused(post(client, {"solana_transaction_base64": truncated}), 400,
                   "INVALID_QUOTE_PARAMETERS")


def test_trailing_garbage_is_invalid(quote_settings, client, work, nothing_written):
    raw = base64.b64decode(work.v0_b64(work.sol_transfer(1_000)))
    padded = base64.b64encode(raw + b"\x00\x01").decode()
    assert_refused(post(client, {"solana_transaction_base64": padded}), 400,
                   "INVALID_QUOTE_PARAMETERS")


def test_random_bytes_are_invalid(quote_settings, client, nothing_written):
    garbage = base64.b64encode(os.urandom(300)).decode()
    assert_refused(post(client, {"solana_transaction_base64": garbage}), 400,
                   "INVALID_QUOTE_PARAMETERS")


def test_oversized_message_is_invalid(quote_settings, client, nothing_written):
    garbage = base64.b64encode(b"\x01" * 1300).decode()
    assert_refused(post(client, {"solana_transaction_base64": garbage}), 400,
                   "INVALID_QUOTE_PARAMETERS")


def test_address_lookup_tables_are_refused(quote_settings, client, work, nothing_written):
    message = MessageV0.try_compile(work.treasury, work.sol_transfer(1_000), [], Hash.default())
    with_lookup = MessageV0(message.header, list(message.account_keys), message.recent_blockhash,
                            list(message.instructions),
                            [MessageAddressTableLookup(Pubkey.new_unique(), bytes([0]), b"")])
    payload = base64.b64encode(to_bytes_versioned(with_lookup)).decode()
    body = assert_refused(post(client, {"solana_transaction_base64": payload}), 400,
                          "INVALID_QUOTE_PARAMETERS")
    assert "lookup tables" in body["error"]


def test_a_second_signer_in_a_message_is_refused(quote_settings, client, work, nothing_written):
    other = Pubkey.new_unique()
    instructions = [*work.sol_transfer(1_000), spl.sol_transfer(other, work.treasury, 5)]
    body = assert_refused(post(client, {"solana_transaction_base64": work.legacy_b64(instructions)}),
                          400, "INVALID_QUOTE_PARAMETERS")
    assert str(other) in body["details"]["required_signers"]


def test_a_second_signer_in_an_instruction_list_is_refused(quote_settings, client, work,
                                                           nothing_written):
    other = Pubkey.new_unique()
    instructions = [spl.sol_transfer(other, Pubkey.new_unique(), 5)]
    body = assert_refused(post(client, {"instructions": work.as_json(instructions)}), 400,
                          "INVALID_QUOTE_PARAMETERS")
    assert body["details"]["signer"] == str(other)


def test_fee_payer_must_be_the_treasury(quote_settings, client, work, nothing_written):
    stranger = Pubkey.new_unique()
    payload = work.legacy_b64([spl.memo("hi")], payer=stranger)
    body = assert_refused(post(client, {"solana_transaction_base64": payload}), 400,
                          "INVALID_QUOTE_PARAMETERS")
    assert body["details"]["fee_payer"] == str(stranger)


def test_program_outside_the_allow_list(quote_settings, client, work, nothing_written):
    rogue = Pubkey.new_unique()
    instructions = [Instruction(rogue, b"\x01", [AccountMeta(work.treasury, True, True)])]
    body = assert_refused(post(client, {"instructions": work.as_json(instructions)}), 400,
                          "PROGRAM_NOT_ALLOWED")
    assert body["details"]["program_id"] == str(rogue)


def test_allow_list_is_configurable(quote_settings, client, work, nothing_written):
    quote_settings.SOLANA_ALLOWED_PROGRAMS = ["11111111111111111111111111111111"]
    assert_refused(post(client, {"instructions": work.as_json(work.memo())}), 400,
                   "PROGRAM_NOT_ALLOWED")


@pytest.mark.parametrize("name", ["approve", "set_authority", "close_account", "assign"])
def test_instructions_that_drain_later_are_refused(quote_settings, client, work, chain,
                                                   nothing_written, name):
    from solders.system_program import AssignParams, assign
    from spl.token import models as token_models
    from spl.token.instructions import AuthorityType

    account = chain.treasury_usdc_account
    attacker = Pubkey.new_unique()
    instruction = {
        "approve": lambda: token_ix.approve(token_models.ApproveParams(
            program_id=TOKEN_PROGRAM_ID, source=account, delegate=attacker,
            owner=work.treasury, amount=10**12)),
        "set_authority": lambda: token_ix.set_authority(token_models.SetAuthorityParams(
            program_id=TOKEN_PROGRAM_ID, account=account, authority=AuthorityType.ACCOUNT_OWNER,
            current_authority=work.treasury, new_authority=attacker)),
        "close_account": lambda: token_ix.close_account(token_models.CloseAccountParams(
            program_id=TOKEN_PROGRAM_ID, account=account, dest=attacker, owner=work.treasury)),
        "assign": lambda: assign(AssignParams(pubkey=work.treasury, owner=attacker)),
    }[name]()
    body = assert_refused(post(client, {"instructions": work.as_json([instruction])}), 400,
                          "PROGRAM_NOT_ALLOWED")
    assert body["details"]["program_instruction"] in {"Approve", "SetAuthority", "CloseAccount",
                                                      "Assign"}


@pytest.mark.parametrize("units", [0, -5, 1_400_001, 2**40])
def test_compute_units_outside_the_solana_range(quote_settings, client, work, nothing_written,
                                                units):
    assert_refused(post(client, {"instructions": work.as_json(work.memo()),
                                 "estimated_compute_units": units}), 400,
                   "INVALID_QUOTE_PARAMETERS")


def test_compute_units_from_the_clients_own_budget_instruction_are_checked(
        quote_settings, client, work, nothing_written):
    from solders.compute_budget import set_compute_unit_limit

    payload = work.legacy_b64([set_compute_unit_limit(1_400_001), *work.memo()])
    assert_refused(post(client, {"solana_transaction_base64": payload}), 400,
                   "INVALID_QUOTE_PARAMETERS")


def test_work_that_fails_in_simulation_is_refused_with_the_program_error(
        quote_settings, client, work, chain, nothing_written):
    # A token transfer into an account that does not exist: SPL Token fails.
    bogus = spl.token_transfer_checked(source=chain.treasury_usdc_account, mint=chain.usdc_mint,
                                       destination=Pubkey.new_unique(), owner=work.treasury,
                                       amount=1, decimals=chain.usdc_decimals)
    body = assert_refused(post(client, {"instructions": work.as_json([bogus])}), 400,
                          "INVALID_QUOTE_PARAMETERS")
    assert body["details"]["instruction"] == 0
    assert "InstructionError" in body["details"]["simulation_error"]


def test_too_few_compute_units_fail_in_simulation(quote_settings, client, work, nothing_written):
    assert_refused(post(client, {"instructions": work.as_json(work.usdc_transfer(1)),
                                 "estimated_compute_units": 100}), 400,
                   "INVALID_QUOTE_PARAMETERS")


def test_more_sol_than_the_treasury_holds(quote_settings, client, work, chain, nothing_written):
    too_much = chain.balance(chain.treasury) + 1
    body = assert_refused(post(client, {"instructions": work.as_json(work.sol_transfer(too_much))}),
                          503, "INSUFFICIENT_TREASURY")
    assert body["details"]["instruction"] == 0


def test_more_usdc_than_the_treasury_holds(quote_settings, client, work, chain, nothing_written):
    too_much = chain.token_balance(chain.treasury_usdc_account) + 1
    assert_refused(post(client, {"instructions": work.as_json(work.usdc_transfer(too_much))}),
                   503, "INSUFFICIENT_TREASURY")


def test_sol_already_promised_to_paid_quotes_is_not_offered_again(quote_settings, client, work,
                                                                  chain, stellar_user):
    balance = chain.balance(chain.treasury)
    QuoteFactory(user=stellar_user, status="committed", max_lamports_spend=Decimal(balance - 10**9),
                 destination_amount=Decimal(balance - 10**9))
    before = Quote.objects.count()
    body = assert_refused(post(client, {"instructions": work.as_json(work.sol_transfer(2 * 10**9))}),
                          503, "INSUFFICIENT_TREASURY")
    assert body["details"]["asset"] == "SOL"
    assert Quote.objects.count() == before
    # What is left is still offered.
    assert post(client, {"instructions": work.as_json(work.sol_transfer(10**8))}).status_code == 201


def test_usdc_already_promised_to_paid_quotes_is_not_offered_again(quote_settings, client, work,
                                                                   chain, stellar_user):
    usdc = chain.token_balance(chain.treasury_usdc_account)
    QuoteFactory(user=stellar_user, status="executing",
                 token_outflows={str(chain.usdc_mint): str(usdc - 1_000)})
    body = assert_refused(post(client, {"instructions": work.as_json(work.usdc_transfer(1_001))}),
                          503, "INSUFFICIENT_TREASURY")
    assert body["details"]["asset"] == str(chain.usdc_mint)
    assert post(client, {"instructions": work.as_json(work.usdc_transfer(1_000))}).status_code == 201


def test_per_transaction_limit(quote_settings, client, work, nothing_written):
    quote_settings.PER_TRANSACTION_LIMIT_SOL = Decimal("1")
    assert_refused(post(client, {"instructions": work.as_json(work.sol_transfer(10**9))}), 400,
                   "TRANSACTION_LIMIT_EXCEEDED")


def test_per_user_daily_limit(quote_settings, client, work, stellar_user):
    today = dt.datetime.now(dt.UTC).date()
    UserDailySpending.objects.create(user=stellar_user, day=today,
                                     amount_spent=Decimal(20 * 10**9 - 10**8))
    quote_settings.USER_DAILY_LIMIT_SOL = Decimal("20")
    before = Quote.objects.count()
    assert_refused(post(client, {"instructions": work.as_json(work.sol_transfer(2 * 10**8))}),
                   429, "DAILY_LIMIT_EXCEEDED")
    assert Quote.objects.count() == before


@pytest.mark.parametrize("body", [
    {},
    {"instructions": [], "solana_transaction_base64": "AA=="},
    {"instructions": []},
    {"instructions": [{"program_id": "nope", "accounts": [], "data_base64": ""}]},
    {"instructions": [{"program_id": "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr",
                       "accounts": [], "data_base64": "%%%"}]},
    {"instructions": "not a list"},
    {"instructions": [{"program_id": "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr",
                       "accounts": [], "data_base64": "aGk=", "extra": 1}]},
    {"instructions": [{"program_id": "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr",
                       "accounts": [{"pubkey": "11111111111111111111111111111111",
                                     "is_signer": "yes", "is_writable": False}],
                       "data_base64": "aGk="}]},
    {"instructions": [{"program_id": 7, "accounts": [], "data_base64": "aGk="}]},
    {"estimated_compute_units": "many", "instructions": []},
    {"instructions": [], "surprise": 1},
])
def test_malformed_bodies(quote_settings, client, nothing_written, body):
    assert_refused(post(client, body), 400, "INVALID_QUOTE_PARAMETERS")


def test_unknown_source_chain(quote_settings, client, work, nothing_written):
    response = client.post("/api/v1/quotes", {"source_chain": "solana",
                                              "instructions": work.as_json(work.memo())},
                           format="json")
    assert_refused(response, 400, "INVALID_QUOTE_PARAMETERS")


def test_refund_to_must_be_an_address_on_the_source_chain(quote_settings, client, work,
                                                          nothing_written):
    body = assert_refused(post(client, {"instructions": work.as_json(work.memo()),
                                        "refund_to": "alice.near"}),
                          400, "INVALID_QUOTE_PARAMETERS")
    assert body["details"]["field"] == "refund_to"


def test_no_wallet_on_the_source_chain_and_no_refund_to(quote_settings, client, work,
                                                        nothing_written):
    response = client.post("/api/v1/quotes", {"source_chain": "near",
                                              "instructions": work.as_json(work.memo())},
                           format="json")
    body = assert_refused(response, 400, "INVALID_QUOTE_PARAMETERS")
    assert body["details"]["field"] == "refund_to"


def test_anonymous_callers_get_401(quote_settings, anon_client, work, nothing_written):
    response = anon_client.post("/api/v1/quotes", {"source_chain": "stellar",
                                                   "instructions": work.as_json(work.memo())},
                                format="json")
    assert_refused(response, 401, "UNAUTHORIZED")


def test_a_refused_quote_consumes_no_deposit_memo(quote_settings, client, work):
    from django.db import connection

    def last_memo():
        with connection.cursor() as cursor:
            cursor.execute("SELECT last_value FROM quote_memo_id_seq")
            return cursor.fetchone()[0]

    before = last_memo()
    post(client, {"instructions": work.as_json([Instruction(Pubkey.new_unique(), b"", [])])})
    assert last_memo() == before


def test_legacy_message_helper_is_really_legacy(work):
    # Guard for the builders above: a legacy message has no version prefix.
    raw = base64.b64decode(work.legacy_b64(work.memo()))
    assert raw[0] & 0x80 == 0
    assert Message.from_bytes(raw)


def test_no_quotes_while_the_circuit_breaker_is_open(quote_settings, client, work,
                                                     nothing_written):
    from django.utils import timezone

    from risk.models import CircuitBreaker

    CircuitBreaker.objects.update_or_create(pk=1, defaults={"is_open": True,
                                                            "opened_at": timezone.now(),
                                                            "reason": "test"})
    assert_refused(post(client, {"instructions": work.as_json(work.memo())}), 503,
                   "CIRCUIT_BREAKER_TRIGGERED")


def test_solana_node_unavailable_is_503_and_retryable(quote_settings, client, work, chain):
    before = Quote.objects.count()
    # Every read is tried twice by the backend: four refusals cover both reads.
    chain.admin.inject_faults(unavailable=4)
    try:
        body = assert_refused(post(client, {"instructions": work.as_json(work.memo())}), 503,
                              "CHAIN_UNAVAILABLE")
    finally:
        chain.admin.clear_faults()
    assert "Solana" in body["error"]
    assert Quote.objects.count() == before
    assert post(client, {"instructions": work.as_json(work.memo())}).status_code == 201
