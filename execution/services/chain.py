"""The executor's handles on Solana: one RPC backend and one treasury signer per process.

Services get them here instead of building SDK clients themselves, so a test that points
`SOLANA_RPC_URL` at its own sandbox, or a deployment that swaps the signer for a KMS,
changes one place. Both are cached per configured value: overriding the setting in a test
gives a fresh client, and a forked worker process builds its own event loop on first use
(`SolanaBackend` is fork-safe).
"""

from __future__ import annotations

import functools
import threading
import time

from django.conf import settings
from solders.hash import Hash
from solders.pubkey import Pubkey

from execution.solana.backend import SolanaBackend
from execution.solana.signer import KeypairSigner, TreasurySigner

# A blockhash stays valid for 150 blocks (~60 s on mainnet). Reusing one for a second saves
# an RPC round trip per execution and costs at most ~2.5 blocks of its validity.
BLOCKHASH_MAX_AGE_SECONDS = 1.0


@functools.lru_cache(maxsize=8)
def _backend_for(url: str, timeout: float) -> SolanaBackend:
    return SolanaBackend(url, timeout=timeout)


def solana_backend() -> SolanaBackend:
    return _backend_for(settings.SOLANA_RPC_URL, float(settings.SOLANA_RPC_TIMEOUT_SECONDS))


@functools.lru_cache(maxsize=4)
def _signer_for(key_setting: str) -> TreasurySigner:
    return KeypairSigner.from_setting(key_setting)


def treasury_signer() -> TreasurySigner:
    """The signer for SOLANA_TREASURY_KEY (base58, a JSON keypair, or a keypair file path)."""
    return _signer_for(settings.SOLANA_TREASURY_KEY)


def treasury_pubkey() -> Pubkey:
    return treasury_signer().pubkey


class _BlockhashCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Hash, int]] = {}

    def get(self, backend: SolanaBackend) -> tuple[Hash, int]:
        now = time.monotonic()
        with self._lock:
            cached = self._entries.get(backend.url)
            if cached is not None and now - cached[0] < BLOCKHASH_MAX_AGE_SECONDS:
                return cached[1], cached[2]
        blockhash, last_valid = backend.latest_blockhash()
        with self._lock:
            self._entries[backend.url] = (now, blockhash, last_valid)
        return blockhash, last_valid

    def forget(self, backend: SolanaBackend) -> None:
        with self._lock:
            self._entries.pop(backend.url, None)


_blockhashes = _BlockhashCache()


def recent_blockhash(backend: SolanaBackend, *, fresh: bool = False) -> tuple[Hash, int]:
    """(blockhash, lastValidBlockHeight), at most BLOCKHASH_MAX_AGE_SECONDS old."""
    if fresh:
        _blockhashes.forget(backend)
    return _blockhashes.get(backend)
