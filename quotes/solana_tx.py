"""The Solana work a quote prices: decoding, drain protection, and the one transaction builder.

A client describes the work either as a serialized message (legacy or v0, base64; a full
serialized transaction is accepted too and its signatures ignored) or as a JSON
instruction list. Both become the same normalized list, stored in `Quote.instructions`:

    [{"program_id": str, "accounts": [{"pubkey", "is_signer", "is_writable"}],
      "data_base64": str}]

Drain protection at quote time (DESIGN.md §8): the treasury is the fee payer and the ONLY
signer; address lookup tables are refused (we would have to trust their contents);
every program must be on `SOLANA_ALLOWED_PROGRAMS`, and inside the built-in programs
only instructions whose effect shows up as a balance change in simulation are allowed.
Instructions that hand the treasury's assets over LATER (token Approve, SetAuthority,
CloseAccount, system Assign, ...) would simulate as "no outflow" and then drain us, so
they are refused by name.

`build_execution_message` is the ONE function that turns a quote into the transaction:
the quote engine simulates exactly what it returns, and the executor signs exactly what it
returns, so the priced transaction and the executed one cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.message import Message, MessageV0, from_bytes_versioned, to_bytes_versioned
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction

from quotes.errors import InvalidQuoteParameters, ProgramNotAllowed
from quotes.pricing import priority_fee_lamports

SYSTEM_PROGRAM = "11111111111111111111111111111111"
TOKEN_PROGRAM = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"
TOKEN_2022_PROGRAM = "TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb"
ATA_PROGRAM = "ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL"
MEMO_PROGRAM = "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr"
MEMO_V1_PROGRAM = "Memo1UhkJRfHyvLMcVucJwxXeuD728EqVDDwQDxFMNo"
COMPUTE_BUDGET_PROGRAM = "ComputeBudget111111111111111111111111111111"
TOKEN_PROGRAMS = frozenset({TOKEN_PROGRAM, TOKEN_2022_PROGRAM})

LAMPORTS_PER_SIGNATURE = 5000
MAX_COMPUTE_UNITS = 1_400_000
DEFAULT_COMPUTE_UNITS = 200_000
MAX_PRIORITY_FEE_MICRO_LAMPORTS = 10**12  # 1M lamports per CU: far beyond any real market
PACKET_DATA_SIZE = 1232  # the largest transaction a validator accepts
MAX_INSTRUCTIONS = 32

# Instructions of the built-in programs whose whole effect is visible to simulation.
_SYSTEM_ALLOWED = {0: "CreateAccount", 2: "Transfer", 3: "CreateAccountWithSeed"}
_SYSTEM_NAMES = {1: "Assign", 4: "AdvanceNonceAccount", 5: "WithdrawNonceAccount",
                 6: "InitializeNonceAccount", 7: "AuthorizeNonceAccount", 8: "Allocate",
                 9: "AllocateWithSeed", 10: "AssignWithSeed", 11: "TransferWithSeed",
                 12: "UpgradeNonceAccount"}
_TOKEN_ALLOWED = {0: "InitializeMint", 1: "InitializeAccount", 3: "Transfer", 5: "Revoke",
                  8: "Burn", 12: "TransferChecked", 15: "BurnChecked",
                  16: "InitializeAccount2", 17: "SyncNative", 18: "InitializeAccount3",
                  20: "InitializeMint2", 21: "GetAccountDataSize",
                  22: "InitializeImmutableOwner", 23: "AmountToUiAmount",
                  24: "UiAmountToAmount"}
_TOKEN_NAMES = {2: "InitializeMultisig", 4: "Approve", 6: "SetAuthority", 7: "MintTo",
                9: "CloseAccount", 10: "FreezeAccount", 11: "ThawAccount",
                13: "ApproveChecked", 14: "MintToChecked", 19: "InitializeMultisig2"}
_ATA_ALLOWED = {0: "Create", 1: "CreateIdempotent"}
_PROGRAM_NAMES = {SYSTEM_PROGRAM: "System", TOKEN_PROGRAM: "SPL Token",
                  TOKEN_2022_PROGRAM: "Token-2022", ATA_PROGRAM: "Associated Token Account",
                  MEMO_PROGRAM: "Memo", MEMO_V1_PROGRAM: "Memo v1",
                  COMPUTE_BUDGET_PROGRAM: "Compute Budget"}


@dataclass(frozen=True, slots=True)
class SolanaWork:
    """The client's instructions (compute-budget ones stripped) and the budget they asked."""

    instructions: tuple[Instruction, ...]
    compute_unit_limit: int | None
    compute_unit_price: int | None

    def normalized(self) -> list[dict[str, Any]]:
        return instructions_to_json(self.instructions)


# -- decoding -------------------------------------------------------------------------------


def _b64decode(text: Any, field: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidQuoteParameters(f"{field} must be a base64 string", details={"field": field})
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidQuoteParameters(f"{field} is not valid base64",
                                     details={"field": field}) from None


def _parse_message(raw: bytes) -> Message | MessageV0:
    """A serialized message, or a serialized transaction whose message we take.

    Both must round-trip byte for byte: trailing or truncated bytes are refused, never
    guessed at.
    """
    parsed: Any = None
    try:
        message = from_bytes_versioned(raw)
        if to_bytes_versioned(message) == raw:
            parsed = message
    except Exception:  # noqa: S110 - solders raises several types; try the tx form next
        pass
    if parsed is None:
        try:
            tx = VersionedTransaction.from_bytes(raw)
            if bytes(tx) == raw:
                parsed = tx.message
        except Exception:  # noqa: S110 - fall through to the one clear error below
            pass
    # Legacy and v0 only: the executor signs v0, and newer formats are not on mainnet.
    if isinstance(parsed, Message | MessageV0):
        return parsed
    raise InvalidQuoteParameters(
        "solana_transaction_base64 is not a complete serialized Solana message "
        "(legacy or v0) or transaction",
        details={"field": "solana_transaction_base64", "bytes": len(raw)},
    )


def work_from_message_base64(text: Any, *, treasury: Pubkey) -> SolanaWork:
    raw = _b64decode(text, "solana_transaction_base64")
    if not raw:
        raise InvalidQuoteParameters("solana_transaction_base64 is empty",
                                     details={"field": "solana_transaction_base64"})
    if len(raw) > PACKET_DATA_SIZE:
        raise InvalidQuoteParameters("The message is larger than a Solana transaction can be",
                                     details={"bytes": len(raw), "max_bytes": PACKET_DATA_SIZE})
    message = _parse_message(raw)
    try:
        # Index bounds, duplicate keys, header consistency: the runtime's own sanity rules.
        VersionedTransaction.populate(
            message, [Signature.default()] * message.header.num_required_signatures).sanitize()
    except Exception as exc:
        raise InvalidQuoteParameters("The message is malformed",
                                     details={"reason": str(exc)[:200]}) from None
    if isinstance(message, MessageV0) and message.address_table_lookups:
        raise InvalidQuoteParameters(
            "Address lookup tables are not supported: list every account in the message",
            details={"address_table_lookups": len(message.address_table_lookups)},
        )
    keys = list(message.account_keys)
    if keys[0] != treasury:
        raise InvalidQuoteParameters("The fee payer must be the treasury",
                                     details={"fee_payer": str(keys[0]), "treasury": str(treasury)})
    if message.header.num_required_signatures != 1:
        raise InvalidQuoteParameters(
            "The treasury must be the only signer",
            details={"required_signers": [str(k) for k in
                                          keys[:message.header.num_required_signatures]]},
        )
    return _checked_work(_decompile(message), treasury)


def _decompile(message: Message | MessageV0) -> list[Instruction]:
    """Instructions with the account flags the message gives them (header arithmetic)."""
    header = message.header
    keys = list(message.account_keys)
    signed = header.num_required_signatures
    writable_signed = signed - header.num_readonly_signed_accounts
    writable_unsigned_end = len(keys) - header.num_readonly_unsigned_accounts

    def writable(index: int) -> bool:
        return index < writable_signed if index < signed else index < writable_unsigned_end

    return [
        Instruction(
            keys[ix.program_id_index],
            bytes(ix.data),
            [AccountMeta(keys[i], is_signer=i < signed, is_writable=writable(i))
             for i in bytes(ix.accounts)],
        )
        for ix in message.instructions
    ]


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidQuoteParameters(f"{field} must be true or false", details={"field": field})
    return value


def _pubkey(value: Any, field: str) -> Pubkey:
    if not isinstance(value, str):
        raise InvalidQuoteParameters(f"{field} must be a base58 public key", details={"field": field})
    try:
        return Pubkey.from_string(value)
    except ValueError:
        raise InvalidQuoteParameters(f"{field} is not a valid Solana public key",
                                     details={"field": field, "value": value[:64]}) from None


_INSTRUCTION_KEYS = frozenset({"program_id", "accounts", "data_base64"})
_ACCOUNT_KEYS = frozenset({"pubkey", "is_signer", "is_writable"})
MAX_ACCOUNTS_PER_INSTRUCTION = 64


def _no_unknown_keys(item: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(str(key)[:64] for key in item if key not in allowed)
    if unknown:
        raise InvalidQuoteParameters(f"{where} has unknown fields",
                                     details={"field": where, "unknown": unknown[:10]})


def instructions_from_json(items: Any) -> list[Instruction]:
    """The normalized JSON list → solders instructions (strict: no extra coercion)."""
    if not isinstance(items, list) or not items:
        raise InvalidQuoteParameters("instructions must be a non-empty list",
                                     details={"field": "instructions"})
    if len(items) > MAX_INSTRUCTIONS:
        raise InvalidQuoteParameters("Too many instructions",
                                     details={"count": len(items), "max": MAX_INSTRUCTIONS})
    out = []
    for n, item in enumerate(items):
        where = f"instructions[{n}]"
        if not isinstance(item, dict):
            raise InvalidQuoteParameters(f"{where} must be an object", details={"field": where})
        _no_unknown_keys(item, _INSTRUCTION_KEYS, where)
        accounts = item.get("accounts", [])
        if not isinstance(accounts, list) or len(accounts) > MAX_ACCOUNTS_PER_INSTRUCTION:
            raise InvalidQuoteParameters(
                f"{where}.accounts must be a list of at most {MAX_ACCOUNTS_PER_INSTRUCTION}",
                details={"field": f"{where}.accounts"})
        metas = []
        for m, account in enumerate(accounts):
            at = f"{where}.accounts[{m}]"
            if not isinstance(account, dict):
                raise InvalidQuoteParameters(f"{at} must be an object", details={"field": at})
            _no_unknown_keys(account, _ACCOUNT_KEYS, at)
            metas.append(AccountMeta(_pubkey(account.get("pubkey"), f"{at}.pubkey"),
                                     is_signer=_bool(account.get("is_signer", False), f"{at}.is_signer"),
                                     is_writable=_bool(account.get("is_writable", False),
                                                       f"{at}.is_writable")))
        data = _b64decode(item.get("data_base64", ""), f"{where}.data_base64")
        out.append(Instruction(_pubkey(item.get("program_id"), f"{where}.program_id"), data, metas))
    return out


def work_from_instructions(items: Any, *, treasury: Pubkey) -> SolanaWork:
    instructions = instructions_from_json(items)
    for n, ix in enumerate(instructions):
        for meta in ix.accounts:
            if meta.is_signer and meta.pubkey != treasury:
                raise InvalidQuoteParameters(
                    "The treasury must be the only signer",
                    details={"instruction": n, "signer": str(meta.pubkey)},
                )
    # Compile with the treasury as payer and read the flags back: each account's flags
    # are merged over the whole transaction (the fee payer is a writable signer
    # everywhere), so this list and the equivalent serialized message store the same work.
    try:
        message = Message.new_with_blockhash(instructions, treasury, Hash.default())
    except Exception as exc:
        raise InvalidQuoteParameters("The instructions cannot be compiled into a message",
                                     details={"reason": str(exc)[:200]}) from None
    return _checked_work(_decompile(message), treasury)


def instructions_to_json(instructions: Iterable[Instruction]) -> list[dict[str, Any]]:
    return [
        {
            "program_id": str(ix.program_id),
            "accounts": [{"pubkey": str(a.pubkey), "is_signer": a.is_signer,
                          "is_writable": a.is_writable} for a in ix.accounts],
            "data_base64": base64.b64encode(bytes(ix.data)).decode(),
        }
        for ix in instructions
    ]


# -- policy ---------------------------------------------------------------------------------


def _refuse(program: str, index: int, name: str) -> ProgramNotAllowed:
    label = _PROGRAM_NAMES.get(program, program)
    return ProgramNotAllowed(
        f"{label} instruction {name} is not allowed: its effect on the treasury cannot be "
        "bounded by simulation",
        details={"instruction": index, "program_id": program, "program_instruction": name},
    )


def _check_instruction(index: int, ix: Instruction) -> None:
    program = str(ix.program_id)
    data = bytes(ix.data)
    if program not in settings.SOLANA_ALLOWED_PROGRAMS:
        raise ProgramNotAllowed(
            "The transaction calls a program that is not on the allow-list",
            details={"instruction": index, "program_id": program,
                     "allowed_programs": list(settings.SOLANA_ALLOWED_PROGRAMS)},
        )
    if program == SYSTEM_PROGRAM:
        tag = struct.unpack_from("<I", data)[0] if len(data) >= 4 else -1
        if tag not in _SYSTEM_ALLOWED:
            raise _refuse(program, index, _SYSTEM_NAMES.get(tag, f"#{tag}"))
    elif program in TOKEN_PROGRAMS:
        tag = data[0] if data else -1
        if tag not in _TOKEN_ALLOWED:
            raise _refuse(program, index, _TOKEN_NAMES.get(tag, f"#{tag}"))
    elif program == ATA_PROGRAM:
        tag = data[0] if data else 0  # empty data is the original Create
        if tag not in _ATA_ALLOWED:
            raise _refuse(program, index, "RecoverNested" if tag == 2 else f"#{tag}")


def _checked_work(instructions: Sequence[Instruction], treasury: Pubkey) -> SolanaWork:
    """Apply the allow-list, then lift compute-budget instructions out of the list."""
    if len(instructions) > MAX_INSTRUCTIONS:
        raise InvalidQuoteParameters("Too many instructions",
                                     details={"count": len(instructions), "max": MAX_INSTRUCTIONS})
    limit: int | None = None
    price: int | None = None
    kept: list[Instruction] = []
    for index, ix in enumerate(instructions):
        _check_instruction(index, ix)
        if str(ix.program_id) != COMPUTE_BUDGET_PROGRAM:
            kept.append(ix)
            continue
        data = bytes(ix.data)
        if data[:1] == b"\x02" and len(data) == 5 and limit is None:
            limit = struct.unpack_from("<I", data, 1)[0]
        elif data[:1] == b"\x03" and len(data) == 9 and price is None:
            price = struct.unpack_from("<Q", data, 1)[0]
        else:
            # Heap frames, loaded-data limits or duplicates: the executor would drop them.
            raise InvalidQuoteParameters(
                "Only one SetComputeUnitLimit and one SetComputeUnitPrice are supported",
                details={"instruction": index},
            )
    if not kept:
        raise InvalidQuoteParameters("The transaction has no instructions besides compute budget")
    return SolanaWork(tuple(kept), limit, price)


def compute_budget(work: SolanaWork, *, compute_units: int | None,
                   priority_fee_micro_lamports: int | None) -> tuple[int, int]:
    """The CU limit and price the executor will set: explicit request fields first, then
    the client's own compute-budget instructions, then the defaults (200k CU, price 0)."""
    limit = compute_units if compute_units is not None else work.compute_unit_limit
    price = (priority_fee_micro_lamports if priority_fee_micro_lamports is not None
             else work.compute_unit_price)
    limit = DEFAULT_COMPUTE_UNITS if limit is None else limit
    price = 0 if price is None else price
    if not 1 <= limit <= MAX_COMPUTE_UNITS:
        raise InvalidQuoteParameters(
            f"Compute units must be between 1 and {MAX_COMPUTE_UNITS:,}",
            details={"estimated_compute_units": limit},
        )
    if not 0 <= price <= MAX_PRIORITY_FEE_MICRO_LAMPORTS:
        raise InvalidQuoteParameters(
            "priority_fee_micro_lamports is out of range",
            details={"priority_fee_micro_lamports": price,
                     "max": MAX_PRIORITY_FEE_MICRO_LAMPORTS},
        )
    return limit, price


# -- the one builder ------------------------------------------------------------------------


def execution_memo(execution_id: uuid.UUID | str) -> str:
    """The per-execution memo that makes every signed transaction unique.

    Always the same length (a UUID), so a quote can price the memo before the execution
    exists: `execution_memo(QUOTE_MEMO_PLACEHOLDER)`.
    """
    return f"solpay:{uuid.UUID(str(execution_id))}"


QUOTE_MEMO_PLACEHOLDER = uuid.UUID(int=0)


def execution_fee_lamports(cu_limit: int, cu_price: int, signatures: int = 1) -> int:
    """5000 lamports per signature + ceil(cu_limit × cu_price / 10^6)."""
    return LAMPORTS_PER_SIGNATURE * signatures + priority_fee_lamports(cu_limit, cu_price)


def build_execution_message(instructions: Sequence[Instruction] | list[dict[str, Any]],
                            cu_limit: int, cu_price: int, memo: str, payer: Pubkey,
                            blockhash: Hash) -> MessageV0:
    """The transaction a quote pays for, exactly as the executor signs it:

        [SetComputeUnitLimit(cu_limit), SetComputeUnitPrice(cu_price),
         *instructions, Memo(memo)]   — v0, fee payer `payer`, no lookup tables.

    `instructions` is `Quote.instructions` (the normalized JSON list) or solders
    instructions. Raises InvalidQuoteParameters when the result would not fit in a packet.
    """
    body = (instructions_from_json(instructions)
            if instructions and isinstance(instructions[0], dict) else list(instructions))
    memo_ix = Instruction(Pubkey.from_string(MEMO_PROGRAM), memo.encode(), [])
    all_ixs = [set_compute_unit_limit(cu_limit), set_compute_unit_price(cu_price),
               *body, memo_ix]  # type: ignore[list-item]
    try:
        message = MessageV0.try_compile(payer, all_ixs, [], blockhash)
    except Exception as exc:
        raise InvalidQuoteParameters("The instructions cannot be compiled into a transaction",
                                     details={"reason": str(exc)[:200]}) from None
    size = 1 + 64 * message.header.num_required_signatures + len(to_bytes_versioned(message))
    if size > PACKET_DATA_SIZE:
        raise InvalidQuoteParameters(
            "The transaction is too large once the treasury's compute budget and memo are added",
            details={"bytes": size, "max_bytes": PACKET_DATA_SIZE},
        )
    return message
