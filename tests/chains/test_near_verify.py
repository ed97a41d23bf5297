"""NEAR payment verification: the borsh decoder checked against py-near, the sandbox check of a
signed transaction and the live check through a fake NEAR JSON-RPC node."""

from __future__ import annotations

import base64
import json

import base58
import httpx2
import pytest
from nacl.signing import SigningKey
from py_near.transactions import (
    calc_trx_hash,
    create_create_account_action,
    create_delete_access_key_action,
    create_deploy_global_contract_action,
    create_full_access_key_action,
    create_function_call_access_key_action,
    create_signed_delegate,
    create_transfer_action,
    create_use_global_contract_action_by_account_id,
    create_use_global_contract_action_by_code_hash,
    sign_and_serialize_transaction,
)
from py_near_primitives import (
    DelegateAction,
    DeleteAccountAction,
    DeployContractAction,
    FunctionCallAction,
    StakeAction,
    Transaction,
    TransferAction,
)

from settlement.chains.base import ChainUnavailable, PaymentInvalid
from settlement.chains.near import (
    AddKey,
    BorshError,
    CreateAccount,
    Delegate,
    DeleteAccount,
    DeleteKey,
    DeployContract,
    DeployGlobalContract,
    FunctionCall,
    NearRpcVerifier,
    NearSandboxVerifier,
    Stake,
    Transfer,
    UseGlobalContract,
    decode_signed_transaction,
)
from tests.fakes.near_rpc import FakeNearRpc, make_near_payment, near_keypair

PAYMENT_ACCOUNT = "payments.solpay.testnet"
NEAR = 10**24
BLOCK = bytes(range(32))


@pytest.fixture
def key():
    return near_keypair()


@pytest.fixture
def sandbox():
    return NearSandboxVerifier(PAYMENT_ACCOUNT)


def _secret(signing_key: SigningKey) -> bytes:
    return bytes(signing_key) + bytes(signing_key.verify_key)


def _sign(signing_key, actions, signer="alice.testnet", receiver=PAYMENT_ACCOUNT, nonce=7) -> str:
    return sign_and_serialize_transaction(signer, _secret(signing_key), receiver, nonce, actions, BLOCK)


def _refused(verify, *args) -> str:
    with pytest.raises(PaymentInvalid) as exc:
        verify(*args)
    return exc.value.code


# --------------------------------------------------------------------------- decoder


class TestBorshDecoder:
    def test_header_and_hash_match_py_near(self, key):
        signing_key, public_key, _ = key
        actions = [FunctionCallAction("execute_payment", b'{"quote_id":"q"}', 30 * 10**12, NEAR)]
        b64 = _sign(signing_key, actions)
        raw = base64.b64decode(b64)
        decoded = decode_signed_transaction(b64)
        reference = Transaction.deserialize(raw[:-65])
        tx = decoded.transaction
        assert (tx.signer_id, tx.receiver_id, tx.nonce) == (
            reference.signer_id,
            reference.receiver_id,
            reference.nonce,
        )
        assert tx.public_key.data == bytes(reference.public_key)
        assert str(tx.public_key) == public_key
        assert tx.block_hash == bytes(reference.block_hash) == BLOCK
        assert tx.hash == bytes(reference.get_hash())
        assert tx.hash_b58 == calc_trx_hash(
            "alice.testnet", _secret(signing_key), PAYMENT_ACCOUNT, 7, actions, BLOCK
        )
        assert decoded.signature == raw[-64:] and decoded.signature_type == 0

    def test_every_action_variant_py_near_builds(self, key):
        signing_key, _, _ = key
        other = SigningKey.generate().verify_key.encode()
        delegate = DelegateAction(
            "alice.testnet", PAYMENT_ACCOUNT, [create_transfer_action(5)], 9, 1000, other
        )
        cases = [
            (create_create_account_action(), CreateAccount()),
            (DeployContractAction(b"\x00asm"), DeployContract(b"\x00asm")),
            (
                FunctionCallAction("deposit", b'{"memo":"m"}', 10**13, 3),
                FunctionCall("deposit", b'{"memo":"m"}', 10**13, 3),
            ),
            (TransferAction(2**127 + 5), Transfer(2**127 + 5)),
            (StakeAction(10**28, other), None),
            (create_full_access_key_action(other), None),
            (create_function_call_access_key_action(other, 10**20, "c.near", ["a", "b"]), None),
            (create_delete_access_key_action(other), None),
            (DeleteAccountAction("bene.near"), DeleteAccount("bene.near")),
            (create_signed_delegate(delegate, bytes(64)), None),
            (create_deploy_global_contract_action(b"wasm", True), DeployGlobalContract(b"wasm", True)),
            (
                create_use_global_contract_action_by_code_hash(BLOCK),
                UseGlobalContract(BLOCK, None),
            ),
            (
                create_use_global_contract_action_by_account_id("g.near"),
                UseGlobalContract(None, "g.near"),
            ),
        ]
        for action, expected in cases:
            decoded = decode_signed_transaction(_sign(signing_key, [action])).transaction
            assert len(decoded.actions) == 1
            got = decoded.actions[0]
            if expected is not None:
                assert got == expected
        # Spot-check the structured ones.
        stake = decode_signed_transaction(_sign(signing_key, [StakeAction(10**28, other)]))
        assert isinstance(stake.transaction.actions[0], Stake)
        assert stake.transaction.actions[0].public_key.data == other
        fc_key = decode_signed_transaction(
            _sign(signing_key, [create_function_call_access_key_action(other, 7, "c.near", ["a"])])
        ).transaction.actions[0]
        assert isinstance(fc_key, AddKey)
        assert (fc_key.full_access, fc_key.allowance, fc_key.receiver_id, fc_key.method_names) == (
            False,
            7,
            "c.near",
            ("a",),
        )
        delete = decode_signed_transaction(_sign(signing_key, [create_delete_access_key_action(other)]))
        assert delete.transaction.actions[0] == DeleteKey(delete.transaction.actions[0].public_key)
        meta = decode_signed_transaction(
            _sign(signing_key, [create_signed_delegate(delegate, bytes(64))])
        ).transaction.actions[0]
        assert isinstance(meta, Delegate)
        assert meta.actions == (Transfer(5),) and meta.max_block_height == 1000

    def test_many_actions_in_order(self, key):
        signing_key, _, _ = key
        actions = [TransferAction(1), FunctionCallAction("execute_payment", b"{}", 1, 2), TransferAction(3)]
        decoded = decode_signed_transaction(_sign(signing_key, actions)).transaction
        assert [type(a) for a in decoded.actions] == [Transfer, FunctionCall, Transfer]

    def test_every_truncation_and_any_trailing_byte_is_refused(self, key):
        raw = base64.b64decode(make_near_payment("alice.testnet", key[0], PAYMENT_ACCOUNT, quote_id="q"))
        for cut in range(len(raw)):
            with pytest.raises(BorshError):
                decode_signed_transaction(base64.b64encode(raw[:cut]).decode())
        with pytest.raises(BorshError):
            decode_signed_transaction(base64.b64encode(raw + b"\x00").decode())

    def test_unknown_variants_and_versions_are_refused(self, key):
        raw = bytearray(base64.b64decode(make_near_payment("alice.testnet", key[0], PAYMENT_ACCOUNT)))
        # Layout: u32 len + "alice.testnet" + key type + 32 + nonce 8 + u32 len + receiver + 32
        # block hash + u32 action count, then the action tag.
        tag_at = 4 + 13 + 1 + 32 + 8 + 4 + len(PAYMENT_ACCOUNT) + 32 + 4
        assert raw[tag_at] == 3  # Transfer
        for mutate in (
            lambda b: b.__setitem__(tag_at, 42),  # unknown action
            lambda b: b.__setitem__(17, 9),  # unknown key type
            lambda b: b.__setitem__(len(b) - 65, 7),  # unknown signature type
            lambda b: b.__setitem__(slice(0, 2), b"\x01\x0d"),  # TransactionV1 marker
            lambda b: b.__setitem__(slice(tag_at - 4, tag_at), (10**6).to_bytes(4, "little")),
        ):
            bad = bytearray(raw)
            mutate(bad)
            with pytest.raises(BorshError):
                decode_signed_transaction(base64.b64encode(bytes(bad)).decode())
        for bad in ("", "@@@", "AAAA", None):
            with pytest.raises(BorshError):
                decode_signed_transaction(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- sandbox


class TestSandboxAccepts:
    def test_execute_payment_with_quote_id(self, sandbox, key):
        signing_key, public_key, _ = key
        b64 = make_near_payment(
            "alice.testnet", signing_key, PAYMENT_ACCOUNT, quote_id="q-123", deposit_yocto=NEAR + 1
        )
        payment = sandbox.verify_signed_transaction(b64)
        assert payment.chain == "near" and payment.asset == "NEAR"
        assert payment.tx_hash == decode_signed_transaction(b64).transaction.hash_b58
        assert (payment.from_address, payment.to_address) == ("alice.testnet", PAYMENT_ACCOUNT)
        assert (payment.amount, payment.quote_id, payment.method_name) == (
            NEAR + 1,
            "q-123",
            "execute_payment",
        )
        assert (payment.memo_type, payment.memo) == (None, None)
        assert payment.successful and payment.final
        assert payment.raw["public_key"] == public_key
        assert payment.raw["signer_key_checked"] is False  # named account: live mode decides

    def test_balance_deposit_with_memo(self, sandbox, key):
        payment = sandbox.verify_signed_transaction(
            make_near_payment("alice.testnet", key[0], PAYMENT_ACCOUNT, memo="dep-9", deposit_yocto=5)
        )
        assert (payment.method_name, payment.memo_type, payment.memo, payment.quote_id) == (
            "deposit",
            "text",
            "dep-9",
            None,
        )

    def test_plain_transfer_has_no_memo(self, sandbox, key):
        signing_key, _, implicit = key
        payment = sandbox.verify_signed_transaction(
            make_near_payment(implicit, signing_key, PAYMENT_ACCOUNT, deposit_yocto=3 * NEAR)
        )
        assert (payment.amount, payment.memo, payment.quote_id, payment.method_name) == (
            3 * NEAR,
            None,
            None,
            None,
        )
        assert payment.raw["signer_key_checked"] is True

    def test_amount_is_the_sum_of_attached_deposits(self, sandbox, key):
        actions = [
            TransferAction(2),
            FunctionCallAction("execute_payment", json.dumps({"quote_id": "q"}).encode(), 10**13, 3),
        ]
        payment = sandbox.verify_signed_transaction(_sign(key[0], actions))
        assert (payment.amount, payment.quote_id) == (5, "q")


class TestSandboxRefuses:
    def test_signature_by_another_key(self, sandbox, key):
        raw = bytearray(base64.b64decode(make_near_payment("alice.testnet", key[0], PAYMENT_ACCOUNT)))
        tx_hash = decode_signed_transaction(base64.b64encode(bytes(raw)).decode()).transaction.hash
        raw[-64:] = SigningKey.generate().sign(tx_hash).signature
        code = _refused(sandbox.verify_signed_transaction, base64.b64encode(bytes(raw)).decode())
        assert code == "BAD_SIGNATURE"

    def test_tampered_deposit(self, sandbox, key):
        b64 = make_near_payment("alice.testnet", key[0], PAYMENT_ACCOUNT, deposit_yocto=1)
        raw = bytearray(base64.b64decode(b64))
        deposit_at = len(raw) - 65 - 16  # Transfer's u128 is the last field before the signature
        assert int.from_bytes(raw[deposit_at : deposit_at + 16], "little") == 1
        raw[deposit_at : deposit_at + 16] = (10**30).to_bytes(16, "little")
        code = _refused(sandbox.verify_signed_transaction, base64.b64encode(bytes(raw)).decode())
        assert code == "BAD_SIGNATURE"

    def test_implicit_signer_with_a_key_that_is_not_its_own(self, sandbox, key):
        _, _, implicit = key
        b64 = make_near_payment(implicit, SigningKey.generate(), PAYMENT_ACCOUNT)
        assert _refused(sandbox.verify_signed_transaction, b64) == "BAD_SIGNATURE"

    def test_wrong_receiver(self, sandbox, key):
        b64 = make_near_payment("alice.testnet", key[0], "someone-else.testnet", quote_id="q")
        assert _refused(sandbox.verify_signed_transaction, b64) == "WRONG_DESTINATION"

    def test_non_payment_actions(self, sandbox, key):
        signing_key = key[0]
        other = SigningKey.generate().verify_key.encode()
        fc = FunctionCallAction("execute_payment", b'{"quote_id":"q"}', 1, 1)
        for actions in (
            [create_full_access_key_action(other)],  # would hand over the account
            [TransferAction(5), create_full_access_key_action(other)],
            [DeleteAccountAction("alice.testnet")],
            [StakeAction(5, other)],
            [FunctionCallAction("ft_transfer", b"{}", 1, 1)],
            [fc, fc],
            [
                create_signed_delegate(
                    DelegateAction("a.near", PAYMENT_ACCOUNT, [create_transfer_action(5)], 1, 9, other),
                    bytes(64),
                )
            ],
            [],
        ):
            code = _refused(sandbox.verify_signed_transaction, _sign(signing_key, actions))
            assert code == "NOT_A_PAYMENT", actions

    def test_zero_deposit_is_not_a_payment(self, sandbox, key):
        b64 = make_near_payment("alice.testnet", key[0], PAYMENT_ACCOUNT, quote_id="q", deposit_yocto=0)
        assert _refused(sandbox.verify_signed_transaction, b64) == "NOT_A_PAYMENT"

    def test_bad_function_call_args(self, sandbox, key):
        for args in (b"not json", b'{"quote":"q"}', b'{"quote_id": 5}', b"[]", b"\xff"):
            b64 = make_near_payment(
                "alice.testnet", key[0], PAYMENT_ACCOUNT, method_name="execute_payment", args=args
            )
            assert _refused(sandbox.verify_signed_transaction, b64) == "MALFORMED", args

    def test_malformed_and_truncated(self, sandbox, key):
        raw = base64.b64decode(make_near_payment("alice.testnet", key[0], PAYMENT_ACCOUNT))
        for bad in (
            "",
            "%%%",
            base64.b64encode(raw[:-1]).decode(),
            base64.b64encode(raw[:40]).decode(),
            base64.b64encode(raw + b"\x01").decode(),
            "A" * 200_000,
        ):
            assert _refused(sandbox.verify_signed_transaction, bad) == "MALFORMED"


# --------------------------------------------------------------------------- live RPC


@pytest.fixture(scope="module")
def rpc():
    with FakeNearRpc() as server:
        yield server


@pytest.fixture
def live(rpc):
    verifier = NearRpcVerifier(rpc.url, PAYMENT_ACCOUNT, timeout=0.5)
    yield verifier
    verifier.close()


class TestRpcShapes:
    def test_tx_status_has_nearcore_fields(self, rpc, key):
        tx_hash = rpc.add_transaction(
            make_near_payment("alice.testnet", key[0], PAYMENT_ACCOUNT, quote_id="q", nonce=101)
        )
        body = httpx2.post(
            rpc.url,
            json={
                "jsonrpc": "2.0",
                "id": "dontcare",
                "method": "EXPERIMENTAL_tx_status",
                "params": {"tx_hash": tx_hash, "sender_account_id": "alice.testnet", "wait_until": "FINAL"},
            },
        ).json()["result"]
        assert body["final_execution_status"] == "FINAL"
        assert body["status"] == {"SuccessValue": ""}
        assert body["transaction"]["hash"] == tx_hash
        call = body["transaction"]["actions"][0]["FunctionCall"]
        assert json.loads(base64.b64decode(call["args"])) == {"quote_id": "q"}
        assert isinstance(call["deposit"], str)
        assert {"transaction_outcome", "receipts_outcome", "receipts"} <= body.keys()

    def test_unknown_transaction_error_shape(self, rpc):
        response = httpx2.post(
            rpc.url,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tx",
                "params": [base58.b58encode(bytes(32)).decode(), "alice.testnet"],
            },
        )
        error = response.json()["error"]
        assert response.status_code == 200
        assert error["name"] == "HANDLER_ERROR" and error["cause"]["name"] == "UNKNOWN_TRANSACTION"


class TestRpcVerify:
    def test_final_successful_payment(self, rpc, live, key):
        b64 = make_near_payment(
            "alice.testnet", key[0], PAYMENT_ACCOUNT, quote_id="q-live", deposit_yocto=2 * NEAR, nonce=201
        )
        tx_hash = rpc.add_transaction(b64)
        payment = live.verify_tx(tx_hash, "alice.testnet")
        sandbox_view = NearSandboxVerifier(PAYMENT_ACCOUNT).verify_signed_transaction(b64)
        assert payment.tx_hash == sandbox_view.tx_hash == tx_hash
        assert (payment.amount, payment.quote_id, payment.method_name) == (
            2 * NEAR,
            "q-live",
            "execute_payment",
        )
        assert payment.final and payment.successful
        assert payment.ledger_time is not None and payment.ledger_time.tzinfo is not None

    def test_plain_transfer_and_deposit(self, rpc, live, key):
        signing_key, _, implicit = key
        transfer = rpc.add_transaction(
            make_near_payment(implicit, signing_key, PAYMENT_ACCOUNT, deposit_yocto=9, nonce=202)
        )
        deposit = rpc.add_transaction(
            make_near_payment(implicit, signing_key, PAYMENT_ACCOUNT, memo="u-1", deposit_yocto=8, nonce=203)
        )
        t = live.verify_tx(transfer, implicit)
        d = live.verify_tx(deposit, implicit)
        assert (t.amount, t.memo, t.quote_id) == (9, None, None)
        assert (d.amount, d.memo, d.method_name) == (8, "u-1", "deposit")

    def test_failed_receipt(self, rpc, live, key):
        tx_hash = rpc.add_transaction(
            make_near_payment("alice.testnet", key[0], PAYMENT_ACCOUNT, quote_id="q", nonce=301),
            status="failure",
        )
        assert _refused(live.verify_tx, tx_hash, "alice.testnet") == "TX_FAILED"

    def test_not_final_yet(self, rpc, key):
        tx_hash = rpc.add_transaction(
            make_near_payment("alice.testnet", key[0], PAYMENT_ACCOUNT, quote_id="q", nonce=401),
            status="not_final",
        )
        waiting = NearRpcVerifier(rpc.url, PAYMENT_ACCOUNT, timeout=2)  # wait_until FINAL
        with pytest.raises(ChainUnavailable):  # the node's TIMEOUT_ERROR: retry later
            waiting.verify_tx(tx_hash, "alice.testnet")
        polling = NearRpcVerifier(rpc.url, PAYMENT_ACCOUNT, timeout=2, wait_until="NONE")
        assert _refused(polling.verify_tx, tx_hash, "alice.testnet") == "NOT_FINAL"
        rpc.set_status(tx_hash, "success")
        assert polling.verify_tx(tx_hash, "alice.testnet").quote_id == "q"
        assert waiting.verify_tx(tx_hash, "alice.testnet").final

    def test_wrong_receiver(self, rpc, live, key):
        tx_hash = rpc.add_transaction(
            make_near_payment("alice.testnet", key[0], "other.testnet", quote_id="q", nonce=501)
        )
        assert _refused(live.verify_tx, tx_hash, "alice.testnet") == "WRONG_DESTINATION"

    def test_non_payment_on_chain(self, rpc, live, key):
        tx_hash = rpc.add_transaction(
            _sign(
                key[0], [create_full_access_key_action(SigningKey.generate().verify_key.encode())], nonce=601
            )
        )
        assert _refused(live.verify_tx, tx_hash, "alice.testnet") == "NOT_A_PAYMENT"

    def test_unknown_transaction_or_sender(self, rpc, live, key):
        tx_hash = rpc.add_transaction(
            make_near_payment("alice.testnet", key[0], PAYMENT_ACCOUNT, quote_id="q", nonce=701)
        )
        assert (
            _refused(live.verify_tx, base58.b58encode(b"\x01" * 32).decode(), "alice.testnet") == "NOT_FOUND"
        )
        assert _refused(live.verify_tx, tx_hash, "mallory.testnet") == "NOT_FOUND"

    def test_malformed_inputs(self, live):
        for tx_hash, sender in (
            ("not-base58-0OIl", "alice.testnet"),
            ("abc", "alice.testnet"),
            (base58.b58encode(bytes(32)).decode(), "Bad Sender"),
        ):
            assert _refused(live.verify_tx, tx_hash, sender) == "MALFORMED"

    def test_timeouts_and_server_errors_are_chain_unavailable(self, rpc, live, key):
        tx_hash = rpc.add_transaction(
            make_near_payment("alice.testnet", key[0], PAYMENT_ACCOUNT, quote_id="q", nonce=801)
        )
        rpc.fault_delay = 1.5
        rpc.set_fault("timeout", times=1)
        with pytest.raises(ChainUnavailable):
            live.verify_tx(tx_hash, "alice.testnet")
        for status in ("500", "502", "503"):
            rpc.set_fault(status, times=1)
            with pytest.raises(ChainUnavailable):
                live.verify_tx(tx_hash, "alice.testnet")
        assert live.verify_tx(tx_hash, "alice.testnet").quote_id == "q"

    def test_unreachable_node(self):
        dead = NearRpcVerifier("http://127.0.0.1:9", PAYMENT_ACCOUNT, timeout=0.5)
        with pytest.raises(ChainUnavailable):
            dead.verify_tx(base58.b58encode(bytes(32)).decode(), "alice.testnet")
