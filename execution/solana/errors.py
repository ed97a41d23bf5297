"""What talking to a Solana node can raise (`execution.solana.backend` documents when)."""

from __future__ import annotations

from typing import Any

TxError = Any  # JSON value of a TransactionError; None means success


class SolanaError(Exception):
    """Base of everything the backend raises."""


class SolanaUnavailable(SolanaError):
    """The node did not answer (or answered 5xx/429/unhealthy). Outcome of a send unknown."""


class SolanaRpcError(SolanaError):
    """The node answered with a JSON-RPC error."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        data: Any = None,
        tx_error: TxError = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.data = data
        self.tx_error = tx_error


class BlockhashNotFound(SolanaRpcError):
    """Preflight: the transaction's blockhash is unknown or expired. It cannot land."""


class AlreadyProcessed(SolanaRpcError):
    """Preflight: this exact transaction (same signature) has already landed."""
