"""Durable state of the Solana sandbox: accounts, landed transactions, chain metadata.

One SQLite file (`<data_dir>/chain.sqlite3`, WAL mode). Every state change of the sandbox
is one SQLite transaction, committed before the RPC answer is written, so a process
crash never loses a transaction a client was told about. With `data_dir=None` the same
schema lives in memory (tests, throw-away chains).

u64 values (lamports, rent_epoch) are stored as TEXT because SQLite integers are signed
64-bit and `rent_epoch` is u64::MAX for rent-exempt accounts on a real cluster.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from solders.account import Account
from solders.pubkey import Pubkey

DB_FILE_NAME = "chain.sqlite3"
LOCK_FILE_NAME = "chain.lock"


class DataDirInUse(RuntimeError):
    """Another sandbox process owns this data directory."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    pubkey BLOB PRIMARY KEY,
    lamports TEXT NOT NULL,
    data BLOB NOT NULL,
    owner BLOB NOT NULL,
    executable INTEGER NOT NULL,
    rent_epoch TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS transactions (
    signature BLOB PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    slot INTEGER NOT NULL,
    block_time INTEGER NOT NULL,
    err TEXT,
    raw BLOB,
    meta TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class StoredTransaction:
    """A landed transaction (successful or failed with its fee charged)."""

    signature: bytes
    slot: int
    block_time: int
    err: Any  # JSON value of the TransactionError, None on success
    raw: bytes | None  # wire bytes as sent; None never happens for sandbox-built txs
    meta: dict[str, Any]  # the `meta` object of getTransaction (json encoding)


class SandboxStore:
    """SQLite persistence. Not thread-safe: the chain calls it under its own lock."""

    def __init__(self, data_dir: Path | None) -> None:
        self._lock_file = None
        if data_dir is None:
            self.path: Path | None = None
            target = ":memory:"
        else:
            data_dir.mkdir(parents=True, exist_ok=True)
            # Two processes on one data dir would be two diverging chains: refuse the second.
            lock_file = open(data_dir / LOCK_FILE_NAME, "a+")  # noqa: SIM115 - held until close
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock_file.close()
                raise DataDirInUse(f"another solana sandbox is using {data_dir}") from None
            self._lock_file = lock_file
            self.path = data_dir / DB_FILE_NAME
            target = str(self.path)
        self._db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit survives a crash of this process (it is in the OS page cache);
        # only a power cut can lose the last commits. Good enough for a sandbox.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM transactions").fetchone()
        self._next_seq = int(row[0]) + 1

    # -- reads ---------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def iter_accounts(self) -> Iterator[tuple[Pubkey, Account]]:
        rows = self._db.execute("SELECT pubkey, lamports, data, owner, executable, rent_epoch FROM accounts")
        for pubkey, lamports, data, owner, executable, rent_epoch in rows:
            yield (
                Pubkey.from_bytes(pubkey),
                Account(
                    lamports=int(lamports),
                    data=bytes(data),
                    owner=Pubkey.from_bytes(owner),
                    executable=bool(executable),
                    rent_epoch=int(rent_epoch),
                ),
            )

    def has_transaction(self, signature: bytes) -> bool:
        row = self._db.execute("SELECT 1 FROM transactions WHERE signature = ?", (signature,)).fetchone()
        return row is not None

    def transaction_status(self, signature: bytes) -> tuple[int, Any] | None:
        """(slot, err) of a landed transaction, or None."""
        row = self._db.execute(
            "SELECT slot, err FROM transactions WHERE signature = ?", (signature,)
        ).fetchone()
        if row is None:
            return None
        return int(row[0]), (None if row[1] is None else json.loads(row[1]))

    def get_transaction(self, signature: bytes) -> StoredTransaction | None:
        row = self._db.execute(
            "SELECT slot, block_time, err, raw, meta FROM transactions WHERE signature = ?",
            (signature,),
        ).fetchone()
        if row is None:
            return None
        slot, block_time, err, raw, meta = row
        return StoredTransaction(
            signature=signature,
            slot=int(slot),
            block_time=int(block_time),
            err=None if err is None else json.loads(err),
            raw=None if raw is None else bytes(raw),
            meta=json.loads(meta),
        )

    def transaction_count(self) -> int:
        return self._next_seq - 1

    # -- writes --------------------------------------------------------------------------

    def commit(
        self,
        *,
        accounts: Iterable[tuple[Pubkey, Account | None]] = (),
        transaction: StoredTransaction | None = None,
        meta: dict[str, str] | None = None,
    ) -> None:
        """Write one state change atomically. An account of None (or 0 lamports) is deleted."""
        db = self._db
        db.execute("BEGIN")
        try:
            for pubkey, account in accounts:
                if account is None or account.lamports == 0:
                    db.execute("DELETE FROM accounts WHERE pubkey = ?", (bytes(pubkey),))
                    continue
                db.execute(
                    "INSERT OR REPLACE INTO accounts"
                    " (pubkey, lamports, data, owner, executable, rent_epoch)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        bytes(pubkey),
                        str(account.lamports),
                        bytes(account.data),
                        bytes(account.owner),
                        int(account.executable),
                        str(account.rent_epoch),
                    ),
                )
            if transaction is not None:
                db.execute(
                    "INSERT INTO transactions (signature, seq, slot, block_time, err, raw, meta)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        transaction.signature,
                        self._next_seq,
                        transaction.slot,
                        transaction.block_time,
                        None if transaction.err is None else json.dumps(transaction.err),
                        transaction.raw,
                        json.dumps(transaction.meta, separators=(",", ":")),
                    ),
                )
            for key, value in (meta or {}).items():
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if transaction is not None:
            self._next_seq += 1

    def close(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()
            if self._lock_file is not None:
                self._lock_file.close()  # releases the flock
                self._lock_file = None
