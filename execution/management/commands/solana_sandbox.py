"""`manage.py solana_sandbox`: the local Solana JSON-RPC sandbox (LiteSVM) on the host and
port of SOLANA_RPC_URL, persisting its chain in DATA_DIR/solana. `make run` starts it;
web and worker processes then share this one chain."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from execution.solana import sandbox


class Command(BaseCommand):
    help = "Run the Solana JSON-RPC sandbox server (LiteSVM) for SOLANA_RPC_URL."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--slot-ms", type=int, default=400,
                            help="block time in ms (0: blocks advance only via sandbox_ calls)")
        parser.add_argument("--memory", action="store_true",
                            help="keep the chain in memory only (nothing persisted)")
        parser.add_argument("--log-requests", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.IS_LIVE:
            raise CommandError("CHAIN_MODE=live: the sandbox is for sandbox mode only")
        url = urlparse(settings.SOLANA_RPC_URL)
        if url.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise CommandError(f"SOLANA_RPC_URL {settings.SOLANA_RPC_URL} is not a local address")
        argv = ["--host", "127.0.0.1" if url.hostname == "localhost" else str(url.hostname),
                "--port", str(url.port or 8899), "--slot-ms", str(options["slot_ms"])]
        if not options["memory"]:
            data_dir = settings.DATA_DIR / "solana"
            data_dir.mkdir(parents=True, exist_ok=True)
            argv += ["--data-dir", str(data_dir)]
        if options["log_requests"]:
            argv.append("--log-requests")
        code = sandbox.main(argv)
        if code:
            raise CommandError(f"solana sandbox exited with {code}")
