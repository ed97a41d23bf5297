"""Fixtures for the Solana sandbox tests: plain Python, no Django, no database.

Each test gets its own in-process sandbox server (in memory, blocks advance only when a
test says so) and a `SolanaBackend` pointed at it, exactly as services will use it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # importable without pytest-django / rootdir tricks
    sys.path.insert(0, str(REPO_ROOT))

from solders.keypair import Keypair  # noqa: E402

from execution.solana.backend import SolanaBackend  # noqa: E402
from execution.solana.sandbox import SandboxAdmin, serve_in_thread  # noqa: E402

SOL = 10**9


@dataclass
class Sandbox:
    url: str
    admin: SandboxAdmin
    backend: SolanaBackend

    def funded(self, lamports: int = 10 * SOL) -> Keypair:
        keypair = Keypair()
        self.admin.airdrop(keypair.pubkey(), lamports)
        return keypair


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    url, stop = serve_in_thread(slot_ms=0)
    backend = SolanaBackend.from_url(url, timeout=5.0)
    try:
        yield Sandbox(url=url, admin=SandboxAdmin(url), backend=backend)
    finally:
        backend.close()
        stop()
