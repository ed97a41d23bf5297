"""Stellar payment verification: the sandbox check of a signed TransactionEnvelope and the
live check through Horizon, plus the Horizon payments poller the watcher uses.

Stellar facts relied on (stellar-sdk 16.1):
* The transaction hash is sha256 of the signature base, which includes sha256(network
  passphrase): the same envelope has a different hash (and signatures that do not verify)
  on another network. `env.hash()` is what each DecoratedSignature signs; a signature's
  `hint` is the last 4 bytes of the signer's public key.
* A fee bump wraps an inner envelope: the fee source signs the outer hash, the inner
  source signs the inner hash. The inner transaction is what pays and consumes the payer's
  sequence number, so its hash is the payment's identity (`VerifiedPayment.tx_hash`).
* Horizon only serves transactions from closed ledgers, which are final.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

from stellar_sdk import (
    Asset,
    FeeBumpTransactionEnvelope,
    HashMemo,
    IdMemo,
    Keypair,
    Network,
    NoneMemo,
    ReturnHashMemo,
    Server,
    StrKey,
    TextMemo,
    TransactionEnvelope,
)
from stellar_sdk import exceptions as sdk_exceptions
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.client.requests_client import RequestsClient
from stellar_sdk.operation import Payment

from settlement.chains.base import (
    ChainUnavailable,
    MemoType,
    PaymentInvalid,
    VerifiedPayment,
)

__all__ = [
    "KNOWN_PASSPHRASES",
    "PaymentHint",
    "StellarHorizonVerifier",
    "StellarSandboxVerifier",
    "parse_envelope",
]

KNOWN_PASSPHRASES = (
    Network.PUBLIC_NETWORK_PASSPHRASE,
    Network.TESTNET_NETWORK_PASSPHRASE,
    Network.FUTURENET_NETWORK_PASSPHRASE,
    Network.STANDALONE_NETWORK_PASSPHRASE,
    Network.SANDBOX_NETWORK_PASSPHRASE,
)
MAX_ENVELOPE_XDR_CHARS = 64 * 1024
_HASH_RE = re.compile(r"[0-9a-f]{64}")


def parse_envelope(
    envelope_xdr: str, network_passphrase: str
) -> TransactionEnvelope | FeeBumpTransactionEnvelope:
    """Parse base64 envelope XDR; any malformation -> PaymentInvalid(MALFORMED)."""
    return _read_envelope(envelope_xdr, network_passphrase)[0]


def _read_envelope(
    envelope_xdr: str, network_passphrase: str
) -> tuple[TransactionEnvelope | FeeBumpTransactionEnvelope, bytes]:
    """`parse_envelope`, with the envelope's bytes (its one canonical encoding)."""
    if not isinstance(envelope_xdr, str) or not envelope_xdr:
        raise PaymentInvalid(PaymentInvalid.MALFORMED, "envelope XDR must be a base64 string")
    if len(envelope_xdr) > MAX_ENVELOPE_XDR_CHARS:
        raise PaymentInvalid(PaymentInvalid.MALFORMED, "envelope XDR too large")
    try:
        raw = base64.b64decode(envelope_xdr, validate=True)
        # Read once (TransactionBuilder.from_xdr reads it twice: once to learn the kind).
        parsed = stellar_xdr.TransactionEnvelope.from_xdr_bytes(raw)
        kind = (FeeBumpTransactionEnvelope
                if parsed.type == stellar_xdr.EnvelopeType.ENVELOPE_TYPE_TX_FEE_BUMP
                else TransactionEnvelope)
        env = kind.from_xdr_object(parsed, network_passphrase)
        # Canonical means what was read packs back to the same bytes (zero padding, no
        # trailing bytes); packing the XDR objects skips rebuilding them from the SDK's.
        canonical = parsed.to_xdr_bytes()
    except Exception as exc:  # noqa: BLE001 - the XDR layer raises many unrelated types
        raise PaymentInvalid(PaymentInvalid.MALFORMED, "not a valid TransactionEnvelope XDR") from exc
    if canonical != raw:
        # The XDR reader ignores trailing bytes; one envelope must have one encoding.
        raise PaymentInvalid(PaymentInvalid.MALFORMED, "envelope XDR has trailing or extra bytes")
    return env, raw


_ENVELOPE_TYPE_TX = stellar_xdr.EnvelopeType.ENVELOPE_TYPE_TX.to_xdr_bytes()


def _inner(env: TransactionEnvelope | FeeBumpTransactionEnvelope) -> TransactionEnvelope:
    """The transaction a fee bump wraps, or the envelope itself."""
    if isinstance(env, FeeBumpTransactionEnvelope):
        return env.transaction.inner_transaction_envelope
    return env


@functools.lru_cache(maxsize=8)
def _network_id(network_passphrase: str) -> bytes:
    return bytes(Network(network_passphrase).network_id())


def _transaction_hash(env: TransactionEnvelope | FeeBumpTransactionEnvelope, raw: bytes,
                      network_passphrase: str) -> bytes:
    """The (inner) transaction's hash: what its signers signed, and its id.

    For a plain v1 envelope (what wallets send) it is taken from the envelope's own bytes,
    which `_read_envelope` checked are its one canonical encoding: the transaction's XDR is
    the envelope's less the 4-byte type before it and the signatures after it. The SDK's
    `hash()` encodes the whole transaction again (about 5% of a payment's acceptance).
    Older v0 envelopes and fee bumps (the inner transaction's hash) go through the SDK."""
    if isinstance(env, TransactionEnvelope) and env.transaction.v1:
        # XDR: count, then per signature a 4-byte hint and opaque<64> (length + padded data)
        tail = 4 + sum(8 + (len(d.signature) + 3) // 4 * 4 for d in env.signatures)
        body = raw[4:len(raw) - tail]
        return hashlib.sha256(_network_id(network_passphrase) + _ENVELOPE_TYPE_TX + body).digest()
    return _inner(env).hash()


def _signed_by(env: TransactionEnvelope | FeeBumpTransactionEnvelope, account_id: str,
               digest: bytes | None = None) -> bool:
    """Whether `env` carries a valid signature by `account_id`. `digest`: env.hash(), when
    the caller has it already (it re-encodes the whole transaction)."""
    keypair = Keypair.from_public_key(account_id)
    hint = keypair.signature_hint()
    digest = env.hash() if digest is None else digest
    for decorated in env.signatures:
        if decorated.signature_hint != hint:
            continue
        try:
            keypair.verify(digest, decorated.signature)
            return True
        except sdk_exceptions.BadSignatureError:
            continue
    return False


def _memo_fields(memo: Any) -> tuple[MemoType | None, str | None]:
    if isinstance(memo, IdMemo):
        return "id", str(memo.memo_id)
    if isinstance(memo, HashMemo):
        return "hash", memo.memo_hash.hex()
    if isinstance(memo, ReturnHashMemo):
        return "return", memo.memo_return.hex()
    if isinstance(memo, TextMemo):
        return "text", memo.memo_text.decode("utf-8", errors="backslashreplace")
    if memo is None or isinstance(memo, NoneMemo):
        return None, None
    raise PaymentInvalid(PaymentInvalid.MALFORMED, f"unknown memo type {type(memo).__name__}")


def _read_payment(
    env: TransactionEnvelope | FeeBumpTransactionEnvelope,
    treasury_address: str,
    *,
    ledger_time: datetime | None,
    mode: str,
    inner_hash: bytes | None = None,
) -> VerifiedPayment:
    """The payment a (parsed, already authenticated) envelope makes to the treasury.
    `inner_hash`: the (inner) transaction's hash, when the caller has it already.

    One operation, a native Payment to the treasury: anything else (a second op, a path
    payment, an account merge) is refused rather than guessed at.
    """
    inner = _inner(env)
    tx = inner.transaction
    if len(tx.operations) != 1:
        raise PaymentInvalid(
            PaymentInvalid.NOT_A_PAYMENT,
            f"expected exactly one payment operation, found {len(tx.operations)} operations",
        )
    op = tx.operations[0]
    if not isinstance(op, Payment):
        raise PaymentInvalid(PaymentInvalid.NOT_A_PAYMENT, f"{type(op).__name__} operation is not a payment")
    if op.destination.account_id != treasury_address:
        raise PaymentInvalid(PaymentInvalid.WRONG_DESTINATION, f"payment goes to {op.destination.account_id}")
    if op.asset != Asset.native():
        raise PaymentInvalid(PaymentInvalid.WRONG_ASSET, f"asset {op.asset.code} is not native XLM")
    # The exact int64 stroops from the XDR: the SDK's `op.amount` string comes from
    # str(Decimal), which can be exponent notation ('1E-7' for one stroop).
    payment_op = op.to_xdr_object().body.payment_op
    if payment_op is None:
        raise PaymentInvalid(PaymentInvalid.MALFORMED, "payment operation without a body")
    amount = int(payment_op.amount.int64)
    if amount <= 0:
        raise PaymentInvalid(PaymentInvalid.NOT_A_PAYMENT, "payment amount is zero")
    memo_type, memo = _memo_fields(tx.memo)
    payer = (op.source or tx.source).account_id
    raw: dict[str, Any] = {
        "mode": mode,
        "source_account": tx.source.account_id,
        "sequence": tx.sequence,
        "fee": tx.fee,
    }
    if op.destination.account_muxed_id is not None:
        raw["destination_muxed_id"] = op.destination.account_muxed_id
    if isinstance(env, FeeBumpTransactionEnvelope):
        raw["fee_bump_hash"] = env.hash_hex()
        raw["fee_source"] = env.transaction.fee_source.account_id
    return VerifiedPayment(
        chain="stellar",
        tx_hash=(inner.hash() if inner_hash is None else inner_hash).hex(),
        from_address=payer,
        to_address=treasury_address,
        asset="XLM",
        amount=amount,
        memo_type=memo_type,
        memo=memo,
        quote_id=None,
        method_name=None,
        successful=True,
        final=True,
        ledger_time=ledger_time,
        raw=raw,
    )


class StellarSandboxVerifier:
    """Stateless check of a signed payment envelope (sandbox mode: no ledger, no balances).

    Proves: well-formed XDR; signed for OUR network by the transaction's source account's
    own key (and by the operation's source if it has one; the fee source for a fee bump);
    time bounds open; one native payment to the treasury. It cannot see account
    multisig settings, so a master-key signature is required.
    """

    def __init__(
        self,
        network_passphrase: str,
        treasury_address: str,
        *,
        clock: Callable[[], float] = time.time,
        other_passphrases: tuple[str, ...] = KNOWN_PASSPHRASES,
    ) -> None:
        if not StrKey.is_valid_ed25519_public_key(treasury_address):
            raise ValueError("invalid treasury address")
        self.network_passphrase = network_passphrase
        self.treasury_address = treasury_address
        self._clock = clock
        self._other_passphrases = tuple(p for p in other_passphrases if p != network_passphrase)

    def verify_envelope(self, envelope_xdr: str) -> VerifiedPayment:
        env, raw = _read_envelope(envelope_xdr, self.network_passphrase)
        inner = _inner(env)
        inner_hash = _transaction_hash(env, raw, self.network_passphrase)
        self._check_signatures(env, envelope_xdr, inner_hash=inner_hash)
        self._check_time_bounds(inner)
        return _read_payment(env, self.treasury_address, ledger_time=None, mode="sandbox",
                             inner_hash=inner_hash)

    def _missing_signers(self, env: TransactionEnvelope | FeeBumpTransactionEnvelope,
                         inner_hash: bytes | None = None) -> list[str]:
        missing: list[str] = []
        if isinstance(env, FeeBumpTransactionEnvelope):
            fee_source = env.transaction.fee_source.account_id
            if not _signed_by(env, fee_source):
                missing.append(f"fee source {fee_source}")
            env = env.transaction.inner_transaction_envelope
        tx = env.transaction
        required = [tx.source.account_id]
        required += [op.source.account_id for op in tx.operations if op.source is not None]
        digest = env.hash() if inner_hash is None else inner_hash
        for account_id in dict.fromkeys(required):
            if not _signed_by(env, account_id, digest):
                missing.append(account_id)
        return missing

    def _check_signatures(
        self, env: TransactionEnvelope | FeeBumpTransactionEnvelope, envelope_xdr: str,
        *, inner_hash: bytes | None = None,
    ) -> None:
        missing = self._missing_signers(env, inner_hash)
        if not missing:
            return
        # The hash commits to the passphrase: if the same bytes verify under another known
        # network, the client signed for the wrong network rather than forging anything.
        for passphrase in self._other_passphrases:
            other = parse_envelope(envelope_xdr, passphrase)
            if not self._missing_signers(other):
                raise PaymentInvalid(
                    PaymentInvalid.WRONG_NETWORK,
                    "transaction was signed for another Stellar network",
                )
        raise PaymentInvalid(
            PaymentInvalid.BAD_SIGNATURE, f"missing a valid signature by {', '.join(missing)}"
        )

    def _check_time_bounds(self, inner: TransactionEnvelope) -> None:
        preconditions = inner.transaction.preconditions
        bounds = preconditions.time_bounds if preconditions is not None else None
        if bounds is None:
            return
        now = self._clock()
        if bounds.max_time != 0 and now > bounds.max_time:
            raise PaymentInvalid(PaymentInvalid.EXPIRED, "transaction time bounds have expired")
        if bounds.min_time > now:
            raise PaymentInvalid(PaymentInvalid.NOT_YET_VALID, "transaction is not valid yet")


class PaymentHint(NamedTuple):
    """An incoming payment seen by the watcher; verify it with `verify_tx(tx_hash)`."""

    paging_token: str
    tx_hash: str


def _parse_horizon_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class StellarHorizonVerifier:
    """Reads payments back from Horizon (live mode). Amount, memo, destination and success
    all come from the chain: Horizon's `successful` flag and the stored envelope XDR."""

    def __init__(
        self,
        horizon_url: str,
        network_passphrase: str,
        treasury_address: str,
        timeout: float = 10.0,
    ) -> None:
        if not StrKey.is_valid_ed25519_public_key(treasury_address):
            raise ValueError("invalid treasury address")
        self.network_passphrase = network_passphrase
        self.treasury_address = treasury_address
        # No SDK-level retries: the caller (task queue, watcher loop) owns retry policy,
        # and a blocked request must not hold a webhook worker for minutes.
        client = RequestsClient(num_retries=0, request_timeout=timeout, post_timeout=timeout)  # type: ignore[arg-type]
        self.server = Server(horizon_url=horizon_url, client=client)

    def close(self) -> None:
        self.server.close()

    def _call(self, builder: Any) -> dict[str, Any]:
        try:
            return builder.call()  # type: ignore[no-any-return]
        except sdk_exceptions.NotFoundError as exc:
            raise PaymentInvalid(PaymentInvalid.NOT_FOUND, "not found on Horizon") from exc
        except sdk_exceptions.BadRequestError as exc:
            raise PaymentInvalid(PaymentInvalid.MALFORMED, f"Horizon refused: {exc}") from exc
        except (sdk_exceptions.BaseRequestError, ValueError) as exc:
            # ConnectionError (timeouts included), BadResponseError (5xx), bad JSON.
            raise ChainUnavailable(f"Horizon unavailable: {type(exc).__name__}") from exc

    def verify_tx(self, tx_hash: str) -> VerifiedPayment:
        if not isinstance(tx_hash, str) or not _HASH_RE.fullmatch(tx_hash.lower()):
            raise PaymentInvalid(PaymentInvalid.MALFORMED, "tx hash must be 64 hex characters")
        tx_hash = tx_hash.lower()
        record = self._call(self.server.transactions().transaction(tx_hash))
        if record.get("successful") is not True:
            raise PaymentInvalid(PaymentInvalid.TX_FAILED, "transaction failed on chain")
        try:
            env = parse_envelope(record["envelope_xdr"], self.network_passphrase)
        except KeyError as exc:
            raise ChainUnavailable("Horizon record has no envelope_xdr") from exc
        hashes = {env.hash_hex()}
        if isinstance(env, FeeBumpTransactionEnvelope):
            hashes.add(env.transaction.inner_transaction_envelope.hash_hex())
        if tx_hash not in hashes or record.get("hash") not in hashes:
            # Hashes commit to the passphrase: Horizon serves a different network.
            raise PaymentInvalid(
                PaymentInvalid.WRONG_NETWORK, "Horizon's transaction hash does not match ours"
            )
        payment = _read_payment(
            env,
            self.treasury_address,
            ledger_time=_parse_horizon_time(record.get("created_at")),
            mode="live",
        )
        payment.raw.update({"ledger": record.get("ledger"), "paging_token": record.get("paging_token")})
        return payment

    def poll_payments(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[PaymentHint], str | None]:
        """One page of the treasury's payments after `cursor`, oldest first.

        Returns hints for successful INCOMING payment-like operations (deduplicated per
        transaction) and the cursor to persist: the last record's paging token even when it
        was filtered out, or the given cursor when the page was empty.
        """
        builder = (
            self.server.payments()
            .for_account(self.treasury_address)
            .order(desc=False)
            .limit(limit)
            .join("transactions")
        )
        if cursor:
            builder = builder.cursor(cursor)
        page = self._call(builder)
        records = page.get("_embedded", {}).get("records", [])
        hints: list[PaymentHint] = []
        seen: set[str] = set()
        next_cursor = cursor
        for record in records:
            next_cursor = record["paging_token"]
            if record.get("transaction_successful") is False:
                continue
            receiver = record.get("to") or record.get("account") or record.get("into")
            if receiver != self.treasury_address:
                continue  # outgoing payment, or one to another account
            tx_hash = record["transaction_hash"]
            if tx_hash not in seen:
                seen.add(tx_hash)
                hints.append(PaymentHint(record["paging_token"], tx_hash))
        return hints, next_cursor
