"""User-side write paths: wallet sign-in (challenge → signature → bearer token), wallet
claims, token revocation, and the operator account.

Nobody may act for a wallet they cannot sign for. A challenge is bound to one chain and
address, lives 5 minutes and is spent by the first verification attempt (good or bad), so a
captured signature can never be replayed. The one-owner-per-wallet rule is the database's
UNIQUE(chain, address); the code checks first only to give a clear 409.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import secrets
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from config.chains import Chain
from config.errors import Conflict, InvalidRequest, ServiceError, Unauthorized, Unavailable
from risk.audit import audit_record
from settlement.chains.near import is_implicit_account
from users.authentication import token_issue
from users.models import ApiToken, User, Wallet, WalletChallenge
from users.signatures import (
    BadSignature,
    ChainUnavailable,
    InvalidAddress,
    NearAccessKeyChecker,
    validate_address,
    verify_wallet_signature,
)

logger = logging.getLogger(__name__)

CHALLENGE_TTL = dt.timedelta(minutes=5)
CHALLENGE_NONCE_BYTES = 32  # NEP-413 wants exactly 32; the other chains reuse it
_WALLET_UNIQUE_CONSTRAINT = "wallet_unique_address"


@dataclass(frozen=True)
class SignIn:
    """A successful verification: the user, the wallet proven, and a fresh bearer token
    (returned once, only its hash is stored)."""

    user: User
    wallet: Wallet
    token: str
    user_created: bool
    wallet_created: bool


# ---------------------------------------------------------------------------------------
# Challenges
# ---------------------------------------------------------------------------------------


def challenge_message(*, chain: str, address: str, challenge_id: uuid.UUID, nonce: str,
                      issued_at: dt.datetime, expires_at: dt.datetime) -> str:
    """The human-readable text the wallet shows and signs (in the spirit of SIWS/EIP-4361):
    who asks, for which account, and until when, so a user can tell what they sign."""
    service = settings.AUTH_SERVICE_NAME
    return (
        f"{service} wants you to sign in with your {Chain(chain).label} account:\n"
        f"{address}\n"
        "\n"
        f"Sign this message to prove you own this wallet and sign in to {service}. "
        "It is not a transaction and costs nothing.\n"
        "\n"
        f"Chain: {chain}\n"
        f"Challenge ID: {challenge_id}\n"
        f"Nonce: {nonce}\n"
        f"Issued At: {_iso(issued_at)}\n"
        f"Expiration Time: {_iso(expires_at)}"
    )


def challenge_create(*, chain: str, address: str) -> WalletChallenge:
    """Issue a single-use sign-in challenge for `address` on `chain` (INVALID_ADDRESS 400
    unless the address is a valid account id on that chain)."""
    try:
        address = validate_address(chain, address)
    except InvalidAddress as exc:
        raise InvalidRequest(f"Invalid {chain} address: {exc}", code="INVALID_ADDRESS",
                             details={"chain": chain}) from exc
    if not _near_account_provable(chain=chain, address=address):
        raise InvalidRequest(
            "A named NEAR account's keys can only be checked on chain (CHAIN_MODE=live); "
            "in sandbox mode sign in with an implicit account (the hex of your public key)",
            code="INVALID_ADDRESS", details={"chain": chain})
    issued_at = timezone.now()
    expires_at = issued_at + CHALLENGE_TTL
    challenge_id = uuid.uuid4()
    nonce = base64.b64encode(secrets.token_bytes(CHALLENGE_NONCE_BYTES)).decode()
    message = challenge_message(chain=chain, address=address, challenge_id=challenge_id,
                                nonce=nonce, issued_at=issued_at, expires_at=expires_at)
    return WalletChallenge.objects.create(
        id=challenge_id, chain=chain, address=address, message=message, nonce=nonce,
        recipient=settings.AUTH_SERVICE_NAME, expires_at=expires_at,
    )


def challenge_verify(*, challenge_id: uuid.UUID, signature: str, public_key: str | None = None,
                     chain: str | None = None, address: str | None = None,
                     acting_user: User | None = None, client_ip: str | None = None) -> SignIn:
    """Check the wallet's signature over the challenge and sign in.

    Without `acting_user` this signs in the wallet's owner, creating the user on first
    sign-in; with it (a token was presented) the wallet is attached to that user.
    `chain`/`address`, when the client repeats them, must match the challenge.

    Refusals raise ServiceError (CHALLENGE_INVALID / CHALLENGE_EXPIRED / CHALLENGE_USED /
    INVALID_SIGNATURE 401, WALLET_ALREADY_CLAIMED 409, CHAIN_UNAVAILABLE 503) and are audited
    in their own transaction: call this outside `transaction.atomic()` so the audit row of a
    failed attempt commits although the request fails.
    """
    challenge = WalletChallenge.objects.filter(pk=challenge_id).first()
    try:
        return _challenge_verify(challenge=challenge, signature=signature, public_key=public_key,
                                 chain=chain, address=address, acting_user=acting_user)
    except ServiceError as exc:
        if challenge is not None and exc.code != "CHAIN_UNAVAILABLE":
            # Spent by any refused attempt: one guess per challenge. A chain outage is not
            # the client's fault, so that challenge stays usable until it expires.
            _challenge_spend(challenge_id=challenge.pk)
        audit_record(
            event_type="wallet_sign_in_refused",
            actor=f"{challenge.chain}:{challenge.address}" if challenge else "anonymous",
            entity_type="wallet_challenge",
            entity_id=challenge_id,
            user_id=acting_user.pk if acting_user else None,
            details={"error_code": exc.code, "message": exc.message, **exc.details,
                     "chain": challenge.chain if challenge else chain,
                     "address": challenge.address if challenge else address,
                     "client_ip": client_ip},
        )
        raise


def _challenge_verify(*, challenge: WalletChallenge | None, signature: str, public_key: str | None,
                      chain: str | None, address: str | None, acting_user: User | None) -> SignIn:
    if challenge is None:
        raise Unauthorized("Unknown sign-in challenge", code="CHALLENGE_INVALID")
    if (chain is not None and chain != challenge.chain) or (
            address is not None and address != challenge.address):
        raise Unauthorized("The challenge was issued for another chain or address",
                           code="CHALLENGE_INVALID")
    # Cheap pre-checks for a clear error; the conditional UPDATE below is what decides.
    _raise_if_spent(challenge, now=timezone.now())

    is_near = challenge.chain == Chain.NEAR
    try:
        verify_wallet_signature(
            challenge.chain, challenge.address, challenge.message, signature,
            public_key=public_key if is_near else None,
            nonce=base64.b64decode(challenge.nonce) if is_near else None,
            recipient=challenge.recipient if is_near else None,
        )
    except BadSignature as exc:
        raise Unauthorized("Signature verification failed", code="INVALID_SIGNATURE",
                           details={"reason": exc.reason}) from exc
    if is_near and settings.IS_LIVE:
        assert public_key is not None  # verify_wallet_signature refuses NEAR proofs without it
        _near_require_full_access_key(account_id=challenge.address, public_key=public_key)
    elif not _near_account_provable(chain=challenge.chain, address=challenge.address):
        raise Unauthorized("Signature verification failed", code="INVALID_SIGNATURE",
                           details={"reason": "named NEAR accounts need live mode"})

    wallet_public_key = public_key if is_near and public_key else challenge.address
    # Two attempts: an IntegrityError on the wallet's UNIQUE constraint means a concurrent
    # verification claimed the address first. Re-run once against the committed winner:
    # the same user (or an anonymous sign-in) then signs in as its owner, anyone else gets 409.
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                now = timezone.now()
                _challenge_consume(challenge_id=challenge.pk, now=now)
                return _wallet_sign_in(challenge=challenge, public_key=wallet_public_key,
                                       acting_user=acting_user, now=now)
        except IntegrityError as exc:
            if attempt == 2 or _constraint_name(exc) != _WALLET_UNIQUE_CONSTRAINT:
                raise
    raise AssertionError("unreachable")


def _raise_if_spent(challenge: WalletChallenge, *, now: dt.datetime) -> None:
    if challenge.used_at is not None:
        raise Unauthorized("This challenge was already used; request a new one",
                           code="CHALLENGE_USED")
    if challenge.expires_at <= now:
        raise Unauthorized("This challenge has expired; request a new one",
                           code="CHALLENGE_EXPIRED")


def _challenge_consume(*, challenge_id: uuid.UUID, now: dt.datetime) -> None:
    """Spend the challenge; exactly one concurrent caller can win this conditional UPDATE."""
    spent = (WalletChallenge.objects
             .filter(pk=challenge_id, used_at__isnull=True, expires_at__gt=now)
             .update(used_at=now))
    if not spent:
        _raise_if_spent(WalletChallenge.objects.get(pk=challenge_id), now=now)
        raise Unauthorized("Challenge could not be used", code="CHALLENGE_INVALID")


def challenges_purge(*, older_than: dt.timedelta = dt.timedelta(days=1)) -> int:
    """Delete challenges that expired more than `older_than` ago (periodic job). Anyone can
    request challenges, so they must not pile up; refused attempts live on in the audit log."""
    deleted, _ = WalletChallenge.objects.filter(expires_at__lt=timezone.now() - older_than).delete()
    return deleted


def _challenge_spend(*, challenge_id: uuid.UUID) -> None:
    WalletChallenge.objects.filter(pk=challenge_id, used_at__isnull=True).update(
        used_at=timezone.now())


def _near_account_provable(*, chain: str, address: str) -> bool:
    """Whether a signature can prove ownership of this account in the current mode.

    A NEP-413 signature proves control of a key. An implicit account IS its key, so that is
    ownership anywhere; a named account is owned by its FullAccess keys, which only the NEAR
    RPC can tell (live mode). The sandbox has no NEAR state, and trusting any key there would
    let anyone claim any named account, so named accounts are refused in sandbox mode.
    """
    return chain != Chain.NEAR or settings.IS_LIVE or is_implicit_account(address)


def _near_require_full_access_key(*, account_id: str, public_key: str) -> None:
    """NEP-413 proves control of a key only; the account is owned by whoever holds one of
    its FullAccess keys (a FunctionCall key can be handed to any dapp)."""
    checker = NearAccessKeyChecker(settings.NEAR_RPC_URL, timeout=settings.CHAIN_HTTP_TIMEOUT_SECONDS)
    try:
        full_access = checker.is_full_access_key(account_id, public_key)
    except ChainUnavailable as exc:
        logger.warning("NEAR access key check failed: %s", exc)
        raise Unavailable("NEAR RPC is unavailable; try again", code="CHAIN_UNAVAILABLE") from exc
    finally:
        checker.close()
    if not full_access:
        raise Unauthorized("Signature verification failed", code="INVALID_SIGNATURE",
                           details={"reason": "public key is not a full-access key of the account"})


def _wallet_sign_in(*, challenge: WalletChallenge, public_key: str, acting_user: User | None,
                    now: dt.datetime) -> SignIn:
    wallet = (Wallet.objects.select_related("user")
              .filter(chain=challenge.chain, address=challenge.address).first())
    user_created = wallet_created = False
    if wallet is not None:
        if acting_user is not None and wallet.user_id != acting_user.pk:
            raise Conflict("This wallet is already verified by another user",
                           code="WALLET_ALREADY_CLAIMED")
        if not wallet.user.is_active:
            raise Unauthorized("This account is disabled", code="UNAUTHORIZED")
        wallet.verified_at = now
        wallet.public_key = public_key
        wallet.save(update_fields=["verified_at", "public_key"])
        user = wallet.user
    else:
        if acting_user is None:
            user = _wallet_user_create()
            user_created = True
        else:
            user = acting_user
            _deposit_memo_ensure(user=user)
        # The UNIQUE(chain, address) constraint settles a race with a concurrent claim.
        wallet = Wallet.objects.create(user=user, chain=challenge.chain, address=challenge.address,
                                       public_key=public_key, verified_at=now)
        wallet_created = True
    audit_record(
        event_type="wallet_signed_in", actor=f"{wallet.chain}:{wallet.address}",
        entity_type="wallet", entity_id=wallet.pk, user_id=user.pk,
        details={"challenge_id": str(challenge.pk), "user_created": user_created,
                 "wallet_created": wallet_created},
    )
    return SignIn(user=user, wallet=wallet, token=token_issue(user=user),
                  user_created=user_created, wallet_created=wallet_created)


def _wallet_user_create() -> User:
    """A user known only by their wallets: no password (can never sign in to the admin), and
    a deposit memo for prepaid balances drawn from its own sequence."""
    user_id = uuid.uuid4()
    user = User(id=user_id, username=f"wallet-{user_id.hex}", deposit_memo=_deposit_memo_next())
    user.set_unusable_password()
    user.save(force_insert=True)
    audit_record(event_type="user_created", actor="system", entity_type="user",
                 entity_id=user.pk, user_id=user.pk)
    return user


def _deposit_memo_next() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval('user_deposit_memo_seq')")
        row = cursor.fetchone()
    return int(row[0])


def _deposit_memo_ensure(*, user: User) -> None:
    """A user becoming a wallet user gets a deposit memo. Locked so two concurrent wallet
    attachments cannot give one user two memos."""
    if user.deposit_memo is not None:
        return
    locked = User.objects.select_for_update().only("deposit_memo").get(pk=user.pk)
    if locked.deposit_memo is None:
        locked.deposit_memo = _deposit_memo_next()
        locked.save(update_fields=["deposit_memo"])
    user.deposit_memo = locked.deposit_memo


def _constraint_name(exc: IntegrityError) -> str | None:
    diag = getattr(exc.__cause__, "diag", None)
    return getattr(diag, "constraint_name", None)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------
# Tokens and operators
# ---------------------------------------------------------------------------------------


def token_revoke(*, token: ApiToken, actor: str = "user") -> bool:
    """Revoke a bearer token (logout). Returns False when it was already revoked."""
    revoked = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now())
    if revoked:
        audit_record(event_type="api_token_revoked", actor=actor, entity_type="api_token",
                     entity_id=token.pk, user_id=token.user_id)
    return bool(revoked)


@transaction.atomic
def operator_ensure(*, username: str, password: str) -> str | None:
    """Create the staff superuser if missing. Returns the password when it was created."""
    if User.objects.filter(username=username).exists():
        return None
    User.objects.create_superuser(username=username, password=password, email="")
    audit_record(event_type="operator_created", actor="system", entity_type="user",
                 entity_id=username)
    return password
