"""`manage.py solana_sandbox` serves SOLANA_RPC_URL's port and keeps its chain in
DATA_DIR/solana across restarts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from solders.keypair import Keypair

from execution.solana.backend import SolanaBackend
from execution.solana.sandbox import SandboxAdmin

REPO_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SOLANA_RPC_URL": f"http://127.0.0.1:{port}", "DATA_DIR": str(data_dir),
           "CHAIN_MODE": "sandbox", "DJANGO_SETTINGS_MODULE": "config.settings"}
    return subprocess.Popen([sys.executable, "manage.py", "solana_sandbox"], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_healthy(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if SandboxAdmin(url, timeout=1).call("getHealth") == "ok":
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("sandbox did not start")


def test_the_command_serves_the_configured_port_and_persists_balances(tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    recipient = Keypair().pubkey()
    proc = _start(port, tmp_path)
    try:
        _wait_healthy(url)
        SandboxAdmin(url).airdrop(recipient, 1_234_567)
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
    assert (tmp_path / "solana").is_dir()

    proc = _start(port, tmp_path)
    try:
        _wait_healthy(url)
        with SolanaBackend(url) as backend:
            assert backend.balance(recipient) == 1_234_567
    finally:
        proc.terminate()
        proc.wait(20)
