"""Stellar payment verification: the sandbox check of a signed envelope and the live check
through (fake) Horizon. Envelopes are real, built and signed with stellar-sdk."""

from __future__ import annotations

import base64
import time

import httpx2
import pytest
from stellar_sdk import Account, Asset, Keypair, Network, TransactionBuilder

from settlement.chains.base import (
    ChainUnavailable,
    PaymentInvalid,
    stroops_to_xlm,
    xlm_to_stroops,
)
from settlement.chains.stellar import StellarHorizonVerifier, StellarSandboxVerifier
from tests.fakes.horizon import FakeHorizon, make_stellar_payment

TESTNET = Network.TESTNET_NETWORK_PASSPHRASE


@pytest.fixture
def payer():
    return Keypair.random()


@pytest.fixture
def treasury():
    return Keypair.random()


@pytest.fixture
def sandbox(treasury):
    return StellarSandboxVerifier(TESTNET, treasury.public_key)


def _code(excinfo: pytest.ExceptionInfo[PaymentInvalid]) -> str:
    return excinfo.value.code


# --------------------------------------------------------------------------- amounts


class TestAmounts:
    @pytest.mark.parametrize(
        ("text", "stroops"),
        [
            ("12.3456789", 123_456_789),
            ("1", 10_000_000),
            ("0.0000001", 1),
            ("0.1", 1_000_000),
            ("922337203685.4775807", 2**63 - 1),
        ],
    )
    def test_exact_conversion(self, text, stroops):
        assert xlm_to_stroops(text) == stroops

    @pytest.mark.parametrize(
        "text", ["-1", "1.12345678", "1e3", "1E-7", " 1", "", "1.", ".5", "NaN", "922337203685.4775808"]
    )
    def test_rejects_anything_not_exact(self, text):
        with pytest.raises(ValueError):
            xlm_to_stroops(text)

    def test_rejects_floats(self):
        with pytest.raises(TypeError):
            xlm_to_stroops(1.5)  # type: ignore[arg-type]

    def test_round_trip(self):
        for stroops in (1, 10_000_000, 123_456_789, 2**63 - 1):
            assert xlm_to_stroops(stroops_to_xlm(stroops)) == stroops


# --------------------------------------------------------------------------- sandbox


class TestSandboxAccepts:
    def test_id_memo_payment(self, sandbox, payer, treasury):
        xdr = make_stellar_payment(payer, treasury.public_key, 123_456_789, memo_id=2**64 - 1)
        payment = sandbox.verify_envelope(xdr)
        env = TransactionBuilder.from_xdr(xdr, TESTNET)
        assert payment.chain == "stellar"
        assert payment.tx_hash == env.hash_hex()
        assert payment.from_address == payer.public_key
        assert payment.to_address == treasury.public_key
        assert (payment.asset, payment.amount) == ("XLM", 123_456_789)
        assert (payment.memo_type, payment.memo) == ("id", str(2**64 - 1))
        assert payment.successful and payment.final
        assert payment.quote_id is None

    def test_hash_memo_is_hex_and_one_stroop_is_exact(self, sandbox, payer, treasury):
        memo = bytes(range(32))
        payment = sandbox.verify_envelope(make_stellar_payment(payer, treasury.public_key, 1, memo_hash=memo))
        assert (payment.memo_type, payment.memo, payment.amount) == ("hash", memo.hex(), 1)

    def test_text_memo_and_no_memo(self, sandbox, payer, treasury):
        text = sandbox.verify_envelope(make_stellar_payment(payer, treasury.public_key, 5, memo_text="hello"))
        assert (text.memo_type, text.memo) == ("text", "hello")
        bare = sandbox.verify_envelope(make_stellar_payment(payer, treasury.public_key, 5))
        assert (bare.memo_type, bare.memo) == (None, None)

    def test_fee_bump_identity_is_the_inner_transaction(self, sandbox, payer, treasury):
        sponsor = Keypair.random()
        xdr = make_stellar_payment(payer, treasury.public_key, 50, memo_id=7, fee_bump_source=sponsor)
        outer = TransactionBuilder.from_xdr(xdr, TESTNET)
        payment = sandbox.verify_envelope(xdr)
        assert payment.tx_hash == outer.transaction.inner_transaction_envelope.hash_hex()
        assert payment.raw["fee_bump_hash"] == outer.hash_hex()
        assert payment.from_address == payer.public_key

    def test_operation_source_pays_when_it_signed(self, sandbox, payer, treasury):
        funder = Keypair.random()
        payment = sandbox.verify_envelope(
            make_stellar_payment(payer, treasury.public_key, 9, op_source=funder)
        )
        assert payment.from_address == funder.public_key

    def test_unbounded_time_is_accepted(self, sandbox, payer, treasury):
        payment = sandbox.verify_envelope(make_stellar_payment(payer, treasury.public_key, 9, timeout=None))
        assert payment.amount == 9


class TestSandboxRefuses:
    def test_signature_by_another_key(self, sandbox, payer, treasury):
        xdr = make_stellar_payment(payer, treasury.public_key, 10, signers=[Keypair.random()])
        with pytest.raises(PaymentInvalid) as exc:
            sandbox.verify_envelope(xdr)
        assert _code(exc) == "BAD_SIGNATURE"

    def test_unsigned(self, sandbox, payer, treasury):
        xdr = make_stellar_payment(payer, treasury.public_key, 10, signers=[])
        with pytest.raises(PaymentInvalid) as exc:
            sandbox.verify_envelope(xdr)
        assert _code(exc) == "BAD_SIGNATURE"

    def test_tampered_amount_breaks_the_signature(self, sandbox, payer, treasury):
        xdr = make_stellar_payment(payer, treasury.public_key, 10)
        env = TransactionBuilder.from_xdr(xdr, TESTNET)
        forged = make_stellar_payment(payer, treasury.public_key, 10_000_000_000, signers=[])
        forged_env = TransactionBuilder.from_xdr(forged, TESTNET)
        forged_env.signatures = env.signatures  # replay the old signature on new terms
        with pytest.raises(PaymentInvalid) as exc:
            sandbox.verify_envelope(forged_env.to_xdr())
        assert _code(exc) == "BAD_SIGNATURE"

    def test_signed_for_another_known_network(self, sandbox, payer, treasury):
        xdr = make_stellar_payment(
            payer, treasury.public_key, 10, network_passphrase=Network.PUBLIC_NETWORK_PASSPHRASE
        )
        with pytest.raises(PaymentInvalid) as exc:
            sandbox.verify_envelope(xdr)
        assert _code(exc) == "WRONG_NETWORK"

    def test_signed_for_an_unknown_network_is_a_bad_signature(self, sandbox, payer, treasury):
        xdr = make_stellar_payment(payer, treasury.public_key, 10, network_passphrase="My Net ; 2030")
        with pytest.raises(PaymentInvalid) as exc:
            sandbox.verify_envelope(xdr)
        assert _code(exc) == "BAD_SIGNATURE"

    def test_operation_source_must_sign(self, sandbox, payer, treasury):
        funder = Keypair.random()
        xdr = make_stellar_payment(payer, treasury.public_key, 9, op_source=funder, signers=[payer])
        with pytest.raises(PaymentInvalid) as exc:
            sandbox.verify_envelope(xdr)
        assert _code(exc) == "BAD_SIGNATURE"

    def test_fee_bump_needs_the_fee_source_signature(self, sandbox, payer, treasury):
        inner = TransactionBuilder.from_xdr(make_stellar_payment(payer, treasury.public_key, 10), TESTNET)
        bump = TransactionBuilder.build_fee_bump_transaction(Keypair.random(), 200, inner, TESTNET)
        bump.sign(Keypair.random())
        with pytest.raises(PaymentInvalid) as exc:
            sandbox.verify_envelope(bump.to_xdr())
        assert _code(exc) == "BAD_SIGNATURE"

    def test_fee_bump_needs_the_inner_source_signature(self, sandbox, payer, treasury):
        sponsor = Keypair.random()
        xdr = make_stellar_payment(
            payer, treasury.public_key, 10, signers=[Keypair.random()], fee_bump_source=sponsor
        )
        with pytest.raises(PaymentInvalid) as exc:
            sandbox.verify_envelope(xdr)
        assert _code(exc) == "BAD_SIGNATURE"

    def test_wrong_destination(self, sandbox, payer):
        xdr = make_stellar_payment(payer, Keypair.random().public_key, 10)
        with pytest.raises(PaymentInvalid) as exc:
            sandbox.verify_envelope(xdr)
        assert _code(exc) == "WRONG_DESTINATION"

    def test_wrong_asset(self, sandbox, payer, treasury):
        usdc = Asset("USDC", Keypair.random().public_key)
        xdr = make_stellar_payment(payer, treasury.public_key, 10, asset=usdc)
        with pytest.raises(PaymentInvalid) as exc:
            sandbox.verify_envelope(xdr)
        assert _code(exc) == "WRONG_ASSET"

    def test_two_operations_or_a_non_payment(self, sandbox, payer, treasury):
        two = TransactionBuilder(Account(payer.public_key, 1), TESTNET, 100)
        two.append_payment_op(treasury.public_key, Asset.native(), "1")
        two.append_payment_op(treasury.public_key, Asset.native(), "1")
        env = two.set_timeout(300).build()
        env.sign(payer)
        merge = TransactionBuilder(Account(payer.public_key, 1), TESTNET, 100)
        merge.append_account_merge_op(treasury.public_key)
        merge_env = merge.set_timeout(300).build()
        merge_env.sign(payer)
        for xdr in (env.to_xdr(), merge_env.to_xdr()):
            with pytest.raises(PaymentInvalid) as exc:
                sandbox.verify_envelope(xdr)
            assert _code(exc) == "NOT_A_PAYMENT"

    def test_expired_and_not_yet_valid_time_bounds(self, payer, treasury):
        xdr = make_stellar_payment(payer, treasury.public_key, 10, timeout=60)
        later = StellarSandboxVerifier(TESTNET, treasury.public_key, clock=lambda: time.time() + 120)
        with pytest.raises(PaymentInvalid) as exc:
            later.verify_envelope(xdr)
        assert _code(exc) == "EXPIRED"

        builder = TransactionBuilder(Account(payer.public_key, 1), TESTNET, 100)
        builder.append_payment_op(treasury.public_key, Asset.native(), "1")
        builder.add_time_bounds(int(time.time()) + 3600, 0)
        env = builder.build()
        env.sign(payer)
        with pytest.raises(PaymentInvalid) as exc:
            StellarSandboxVerifier(TESTNET, treasury.public_key).verify_envelope(env.to_xdr())
        assert _code(exc) == "NOT_YET_VALID"

    def test_malformed_truncated_and_padded_xdr(self, sandbox, payer, treasury):
        xdr = make_stellar_payment(payer, treasury.public_key, 10)
        raw = base64.b64decode(xdr)
        cases = [
            "",
            "not base64 at all!",
            "AAAA",
            base64.b64encode(raw[:-5]).decode(),  # truncated
            base64.b64encode(raw[: len(raw) // 2]).decode(),
            base64.b64encode(raw + b"\x00\x00\x00\x00").decode(),  # trailing bytes
            "A" * 200_000,  # huge
        ]
        for bad in cases:
            with pytest.raises(PaymentInvalid) as exc:
                sandbox.verify_envelope(bad)
            assert _code(exc) == "MALFORMED", bad[:40]
        with pytest.raises(PaymentInvalid):
            sandbox.verify_envelope(None)  # type: ignore[arg-type]

    def test_an_envelope_with_non_zero_xdr_padding_is_refused(self, sandbox, payer, treasury):
        """The same envelope with other padding bytes would have another encoding (and the
        hash is read off the bytes): only the canonical, zero-padded one is accepted."""
        from stellar_sdk import DecoratedSignature

        envelope = TransactionBuilder.from_xdr(make_stellar_payment(payer, treasury.public_key, 10),
                                               TESTNET)
        # A hash-x preimage of 5 bytes ends the envelope, padded with 3 zero bytes.
        envelope.signatures.append(DecoratedSignature(b"\x01\x02\x03\x04", b"12345"))
        raw = base64.b64decode(envelope.to_xdr())
        assert raw.endswith(b"12345\x00\x00\x00")
        assert sandbox.verify_envelope(base64.b64encode(raw).decode()).amount == 10

        with pytest.raises(PaymentInvalid) as exc:
            sandbox.verify_envelope(base64.b64encode(raw[:-1] + b"\x01").decode())
        assert _code(exc) == "MALFORMED"


# --------------------------------------------------------------------------- Horizon


@pytest.fixture(scope="module")
def horizon():
    with FakeHorizon(TESTNET) as server:
        yield server


@pytest.fixture
def live(horizon, treasury):
    verifier = StellarHorizonVerifier(horizon.url, TESTNET, treasury.public_key, timeout=0.5)
    yield verifier
    verifier.close()


class TestHorizonShapes:
    def test_transaction_record_fields(self, horizon, payer, treasury):
        record = horizon.add_transaction(
            make_stellar_payment(payer, treasury.public_key, 10, memo_hash=b"\x07" * 32)
        )
        body = httpx2.get(f"{horizon.url}/transactions/{record['hash']}").json()
        for field in (
            "id",
            "hash",
            "successful",
            "ledger",
            "created_at",
            "source_account",
            "fee_charged",
            "memo_type",
            "memo",
            "envelope_xdr",
            "result_xdr",
            "paging_token",
        ):
            assert field in body
        assert body["memo_type"] == "hash"
        assert base64.b64decode(body["memo"]) == b"\x07" * 32  # Horizon sends hash memos base64

    def test_not_found_is_problem_json(self, horizon):
        response = httpx2.get(f"{horizon.url}/transactions/{'ab' * 32}")
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["title"] == "Resource Missing"


class TestHorizonVerify:
    def test_successful_payment_is_read_from_the_chain(self, horizon, live, payer, treasury):
        record = horizon.add_transaction(
            make_stellar_payment(payer, treasury.public_key, 42_000_001, memo_id=99)
        )
        payment = live.verify_tx(record["hash"])
        assert payment.tx_hash == record["hash"]
        assert (payment.amount, payment.memo_type, payment.memo) == (42_000_001, "id", "99")
        assert payment.from_address == payer.public_key
        assert payment.final and payment.successful
        assert payment.ledger_time is not None and payment.ledger_time.tzinfo is not None
        assert payment.raw["ledger"] == record["ledger"]

    def test_fee_bump_found_by_either_hash_has_one_identity(self, horizon, live, payer, treasury):
        record = horizon.add_transaction(
            make_stellar_payment(
                payer, treasury.public_key, 77, memo_id=1, sequence=5000, fee_bump_source=Keypair.random()
            )
        )
        by_outer = live.verify_tx(record["hash"])
        by_inner = live.verify_tx(record["inner_transaction"]["hash"])
        assert by_outer.tx_hash == by_inner.tx_hash == record["inner_transaction"]["hash"]

    def test_failed_transaction(self, horizon, live, payer, treasury):
        record = horizon.add_transaction(
            make_stellar_payment(payer, treasury.public_key, 10, sequence=6000), successful=False
        )
        with pytest.raises(PaymentInvalid) as exc:
            live.verify_tx(record["hash"])
        assert _code(exc) == "TX_FAILED"

    def test_payment_to_someone_else(self, horizon, live, payer):
        record = horizon.add_transaction(
            make_stellar_payment(payer, Keypair.random().public_key, 10, sequence=7000)
        )
        with pytest.raises(PaymentInvalid) as exc:
            live.verify_tx(record["hash"])
        assert _code(exc) == "WRONG_DESTINATION"

    def test_not_found_and_malformed_hash(self, live):
        with pytest.raises(PaymentInvalid) as exc:
            live.verify_tx("cd" * 32)
        assert _code(exc) == "NOT_FOUND"
        for bad in ("xyz", "ab" * 31, "", "ab" * 32 + "/../x"):
            with pytest.raises(PaymentInvalid) as exc:
                live.verify_tx(bad)
            assert _code(exc) == "MALFORMED"

    def test_horizon_on_another_network(self, horizon, payer, treasury):
        record = horizon.add_transaction(make_stellar_payment(payer, treasury.public_key, 10))
        public = StellarHorizonVerifier(
            horizon.url, Network.PUBLIC_NETWORK_PASSPHRASE, treasury.public_key, timeout=0.5
        )
        with pytest.raises(PaymentInvalid) as exc:
            public.verify_tx(record["hash"])
        assert _code(exc) == "WRONG_NETWORK"

    def test_timeout_and_5xx_are_chain_unavailable(self, horizon, live, payer, treasury):
        record = horizon.add_transaction(make_stellar_payment(payer, treasury.public_key, 10))
        horizon.fault_delay = 1.5
        horizon.set_fault("timeout", times=1)
        with pytest.raises(ChainUnavailable):
            live.verify_tx(record["hash"])
        horizon.set_fault("500", times=1)
        with pytest.raises(ChainUnavailable):
            live.verify_tx(record["hash"])
        assert live.verify_tx(record["hash"]).amount == 10  # recovers

    def test_unreachable_horizon(self, treasury):
        dead = StellarHorizonVerifier("http://127.0.0.1:9", TESTNET, treasury.public_key, timeout=0.5)
        with pytest.raises(ChainUnavailable):
            dead.verify_tx("ab" * 32)


class TestHorizonPolling:
    def test_pages_of_incoming_payments_with_a_persistable_cursor(self, treasury):
        payer = Keypair.random()
        with FakeHorizon(TESTNET) as horizon:
            verifier = StellarHorizonVerifier(horizon.url, TESTNET, treasury.public_key, timeout=1)
            first = horizon.add_transaction(make_stellar_payment(payer, treasury.public_key, 1, sequence=1))
            horizon.add_transaction(  # outgoing: not a deposit
                make_stellar_payment(treasury, payer.public_key, 2, sequence=1)
            )
            horizon.add_transaction(  # failed: not listed
                make_stellar_payment(payer, treasury.public_key, 3, sequence=2), successful=False
            )
            second = horizon.add_transaction(make_stellar_payment(payer, treasury.public_key, 4, sequence=3))

            hints, cursor = verifier.poll_payments(None, limit=2)
            assert [h.tx_hash for h in hints] == [first["hash"]]
            hints, cursor = verifier.poll_payments(cursor, limit=2)
            assert [h.tx_hash for h in hints] == [second["hash"]]
            assert all(verifier.verify_tx(h.tx_hash).amount == 4 for h in hints)

            hints, same = verifier.poll_payments(cursor, limit=2)
            assert hints == [] and same == cursor  # nothing new: keep the cursor

            third = horizon.add_transaction(make_stellar_payment(payer, treasury.public_key, 5, sequence=4))
            hints, cursor = verifier.poll_payments(cursor, limit=10)
            assert [(h.paging_token, h.tx_hash) for h in hints] == [
                (str(int(third["paging_token"]) + 1), third["hash"])
            ]


class TestTransactionHash:
    """The verifier takes a plain envelope's hash from its own bytes: it must be the SDK's
    hash of the transaction for every shape (what the signers signed, and its id)."""

    @pytest.mark.parametrize("shape", [
        {"memo_id": 7},
        {"memo_hash": "ab" * 32},
        {"memo_text": "hello"},
        {"timeout": None},
        {"signers": []},
        {"op_source": "extra signer"},
        {"fee_bump_source": "sponsor"},
    ])
    def test_the_hash_is_the_sdks(self, payer, treasury, shape):
        from settlement.chains.stellar import _read_envelope, _transaction_hash

        kwargs = {k: (Keypair.random() if isinstance(v, str) and k in ("op_source", "fee_bump_source")
                      else v) for k, v in shape.items()}
        xdr = make_stellar_payment(payer, treasury.public_key, 10, **kwargs)
        for passphrase in (TESTNET, Network.PUBLIC_NETWORK_PASSPHRASE):  # it commits to it
            env, raw = _read_envelope(xdr, passphrase)
            inner = getattr(env.transaction, "inner_transaction_envelope", env)
            assert _transaction_hash(env, raw, passphrase) == inner.hash()

    def test_a_v0_envelope_hashes_as_the_sdk_does(self, payer, treasury):
        from stellar_sdk import xdr as stellar_xdr

        from settlement.chains.stellar import _read_envelope, _transaction_hash

        v1 = TransactionBuilder.from_xdr(make_stellar_payment(payer, treasury.public_key, 10), TESTNET)
        v0 = TransactionBuilder.from_xdr(v1.to_xdr(), TESTNET)
        v0.transaction.v1 = False
        v0.signatures = []
        v0.sign(payer)
        xdr = v0.to_xdr()
        v0_type = stellar_xdr.EnvelopeType.ENVELOPE_TYPE_TX_V0
        assert stellar_xdr.TransactionEnvelope.from_xdr(xdr).type == v0_type
        env, raw = _read_envelope(xdr, TESTNET)
        assert _transaction_hash(env, raw, TESTNET) == env.hash() == v1.hash()

    def test_signatures_of_any_length_are_skipped_exactly(self, payer, treasury):
        """A hash-x signer's "signature" is its preimage, of any length up to 64: XDR pads it
        to 4 bytes, and the slice must skip the padding too."""
        from stellar_sdk import DecoratedSignature

        from settlement.chains.stellar import _read_envelope, _transaction_hash

        envelope = TransactionBuilder.from_xdr(make_stellar_payment(payer, treasury.public_key, 10),
                                               TESTNET)
        envelope.signatures.append(DecoratedSignature(b"\x01\x02\x03\x04", b"12345"))
        env, raw = _read_envelope(envelope.to_xdr(), TESTNET)
        assert _transaction_hash(env, raw, TESTNET) == env.hash()
