"""Treasury signing: the only place that holds the treasury's Solana secret key.

`TreasurySigner` is the interface the executor uses; `KeypairSigner` keeps an ed25519
keypair in memory (from `SOLANA_TREASURY_KEY`). A remote signer (KMS/HSM) only has to
implement `pubkey` and `sign_message`. The secret never appears in repr/str, and a signer
refuses to be pickled, so it cannot leak into logs or a task queue payload.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from solders.keypair import Keypair
from solders.message import Message, MessageV0, to_bytes_versioned
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction


class SignerError(ValueError):
    """The key material is invalid, or the message is not ours alone to sign."""


class TreasurySigner(ABC):
    @property
    @abstractmethod
    def pubkey(self) -> Pubkey: ...

    @abstractmethod
    def sign_message(self, message: bytes) -> Signature:
        """ed25519 signature over raw bytes."""

    def sign_transaction(self, message: Message | MessageV0) -> VersionedTransaction:
        """Sign a message whose only required signer is this treasury (it pays the fee).

        A message that needs another signature is refused: the treasury never co-signs.
        ed25519 is deterministic, so the signature (= transaction id) is a pure function
        of the message and can be stored before the transaction is sent.
        """
        header = message.header
        if header.num_required_signatures != 1 or message.account_keys[0] != self.pubkey:
            raise SignerError("the treasury must be the fee payer and the only signer")
        signature = self.sign_message(to_bytes_versioned(message))
        return VersionedTransaction.populate(message, [signature])

    def __reduce__(self) -> Any:
        raise TypeError(f"{type(self).__name__} must not be pickled (it holds a secret key)")


class KeypairSigner(TreasurySigner):
    """In-memory keypair. Build it with one of the `from_*` constructors."""

    __slots__ = ("__keypair",)

    def __init__(self, keypair: Keypair) -> None:
        self.__keypair = keypair

    @classmethod
    def from_base58(cls, secret: str) -> KeypairSigner:
        """A base58 64-byte secret key (what Phantom/solana-keygen export)."""
        try:
            return cls(Keypair.from_base58_string(secret.strip()))
        except Exception:
            raise SignerError("invalid base58 Solana secret key") from None

    @classmethod
    def from_json(cls, text: str) -> KeypairSigner:
        """Solana CLI keypair JSON: a list of 64 integers 0..255."""
        try:
            values = json.loads(text)
        except ValueError:
            raise SignerError("keypair JSON is not valid JSON") from None
        if (
            not isinstance(values, list)
            or len(values) != 64
            or not all(isinstance(v, int) and 0 <= v <= 255 for v in values)
        ):
            raise SignerError("keypair JSON must be a list of 64 integers 0..255")
        try:
            return cls(Keypair.from_bytes(bytes(values)))
        except Exception:
            raise SignerError("keypair JSON does not hold a valid ed25519 keypair") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> KeypairSigner:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise SignerError(f"cannot read keypair file: {exc.strerror}") from None
        return cls.from_json(text)

    @classmethod
    def from_setting(cls, value: str) -> KeypairSigner:
        """`SOLANA_TREASURY_KEY`: a JSON list, a path to a keypair file, or base58."""
        value = value.strip()
        if not value:
            raise SignerError("SOLANA_TREASURY_KEY is empty")
        if value.startswith("["):
            return cls.from_json(value)
        if value.endswith(".json") or "/" in value:
            return cls.from_json_file(value)
        return cls.from_base58(value)

    @classmethod
    def generate(cls) -> KeypairSigner:
        return cls(Keypair())

    @property
    def pubkey(self) -> Pubkey:
        return self.__keypair.pubkey()

    def sign_message(self, message: bytes) -> Signature:
        return self.__keypair.sign_message(message)

    def __repr__(self) -> str:
        return f"KeypairSigner(pubkey={self.pubkey})"

    __str__ = __repr__


__all__ = ["KeypairSigner", "SignerError", "TreasurySigner"]
