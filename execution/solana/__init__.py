"""Solana chain access for the executor: RPC backend, treasury signer, SPL helpers, sandbox.

Plain Python (no Django), so management commands and the sandbox process can import it.
Modules: `backend` (SolanaBackend), `signer` (TreasurySigner), `spl` (instruction builders
and setup helpers), `sandbox` (local JSON-RPC server over LiteSVM).
"""
