"""The quote engine's chain read: the JSON-RPC batch it sends and the account states it reads
back (quotes.solana), without a node: the wire format is built and parsed here."""

from __future__ import annotations

import base64
import json

from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.token.state import TokenAccount, TokenAccountState
from solders.transaction import VersionedTransaction

from execution.solana import spl
from quotes.solana import _account_state, _batch_body, _token_state
from quotes.solana_tx import TOKEN_PROGRAM


def unsigned_transfer() -> tuple[VersionedTransaction, list[Pubkey]]:
    payer, recipient = Keypair().pubkey(), Pubkey.new_unique()
    message = MessageV0.try_compile(payer, [spl.sol_transfer(payer, recipient, 1_000_000)], [],
                                    Hash.default())
    return VersionedTransaction.populate(message, [Signature.default()]), [payer, recipient]


def test_the_batch_is_the_json_of_both_calls_byte_for_byte():
    tx, watched = unsigned_transfer()
    addresses = [str(pubkey) for pubkey in watched]
    expected = [
        {"jsonrpc": "2.0", "id": 0, "method": "getMultipleAccounts",
         "params": [addresses, {"encoding": "base64", "commitment": "confirmed"}]},
        {"jsonrpc": "2.0", "id": 1, "method": "simulateTransaction",
         "params": [base64.b64encode(bytes(tx)).decode(),
                    {"encoding": "base64", "sigVerify": False,
                     "replaceRecentBlockhash": True, "commitment": "confirmed",
                     "accounts": {"addresses": addresses, "encoding": "base64"}}]},
    ]
    body = _batch_body(tx, watched)
    assert json.loads(body) == expected
    assert body == json.dumps(expected, separators=(",", ":")).encode()


def test_one_watched_account_is_still_a_list():
    tx, watched = unsigned_transfer()
    sent = json.loads(_batch_body(tx, watched[:1]))
    assert sent[0]["params"][0] == [str(watched[0])]
    assert sent[1]["params"][1]["accounts"]["addresses"] == [str(watched[0])]


def test_account_states_read_the_nodes_json():
    owner, mint = Pubkey.new_unique(), Pubkey.new_unique()
    token = bytes(TokenAccount(mint=mint, owner=owner, amount=1234, delegate=None,
                               state=TokenAccountState.Initialized, is_native=None,
                               delegated_amount=0, close_authority=None))
    answer = json.loads(json.dumps(
        {"lamports": 2039280, "owner": TOKEN_PROGRAM, "executable": False, "rentEpoch": 0,
         "space": len(token), "data": [base64.b64encode(token).decode(), "base64"]}))
    state = _account_state(answer)
    assert state is not None
    assert (state.lamports, state.owner, state.data) == (2039280, TOKEN_PROGRAM, token)
    parsed = _token_state(state)
    assert parsed is not None and (parsed.mint, parsed.owner, parsed.amount) == (mint, owner, 1234)

    system = _account_state({"lamports": 5, "owner": "11111111111111111111111111111111",
                             "data": ["", "base64"]})
    assert system is not None and system.data == b"" and _token_state(system) is None
    assert _account_state(None) is None
