"""Doctor accounts and sign-in: Argon2 password hashes (pwdlib), account rules and sign-in throttling.

Every sign-in attempt is written to the `signinevent` table and logged. A username or a client address with
too many recent failures is refused without checking the password until the window has passed, so password
guessing is slowed per account and per machine. There is no default password anywhere: accounts are made
with `python -m xray users add NAME`, or (hosted Space) from the admin_username/admin_password secrets.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
import secrets
import unicodedata
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import Engine
from sqlmodel import Session

from xray.errors import AccountError
from xray.records import crud
from xray.records.db import Doctor, utcnow

logger = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{1,63}$")

_hasher = PasswordHash((Argon2Hasher(),))
# Verified against when the username is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH: str | None = None


# ---------------------------------------------------------------------------------------------- passwords


def hash_password(password: str) -> str:
    """An Argon2id hash of the password (salted; safe to store)."""
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str) -> tuple[bool, str | None]:
    """Check a password against a stored hash.

    Returns:
        (matches, new_hash): `new_hash` is set when the hash uses outdated parameters and should be replaced.
    """
    try:
        return _hasher.verify_and_update(password, password_hash)
    except Exception:  # noqa: BLE001 - a malformed stored hash must read as "no match", never crash sign-in
        logger.exception("unreadable password hash")
        return False, None


def _dummy_verify(password: str) -> None:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password("not-a-real-password-only-for-timing")
    verify_password(password, _DUMMY_HASH)


# ---------------------------------------------------------------------------------------------- accounts


def normalize_username(username: str) -> str:
    """The stored form of a sign-in name: NFKC, stripped, lower-case."""
    return unicodedata.normalize("NFKC", username or "").strip().lower()


def check_username(username: str) -> str:
    """Validate and normalise a new sign-in name.

    Raises:
        AccountError: not 2-64 characters of a-z, 0-9, '.', '_', '-', '@' starting with a letter or digit.
    """
    name = normalize_username(username)
    if not _USERNAME.match(name):
        raise AccountError(
            f"Invalid user name {username!r}: use 2 to 64 characters: letters, digits, '.', '_', '-' or '@', "
            "starting with a letter or digit."
        )
    return name


def check_password(password: str, *, username: str = "") -> None:
    """Enforce the password rules.

    Raises:
        AccountError: shorter than MIN_PASSWORD_LENGTH characters, too long, or containing the user name.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"Password too short: use at least {MIN_PASSWORD_LENGTH} characters.")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"Password too long: use at most {MAX_PASSWORD_LENGTH} characters.")
    if username and normalize_username(username) in password.lower():
        raise AccountError("Password must not contain the user name.")


def add_doctor(
    session: Session,
    *,
    username: str,
    password: str | None,
    display_name: str | None = None,
    hf_username: str | None = None,
) -> Doctor:
    """Create a doctor account.

    Args:
        session: database session.
        username: sign-in name (normalised to lower case).
        password: the password, or None for an account that signs in only with Hugging Face.
        display_name: how the app greets the doctor; default: the user name.
        hf_username: Hugging Face user name mapped to this account (OAuth sign-in on a Space).

    Raises:
        AccountError: invalid name, weak password, no way to sign in, or the name is taken.
    """
    name = check_username(username)
    if password is None and not hf_username:
        raise AccountError("Give the account a password or a Hugging Face user name, or it cannot sign in.")
    if password is not None:
        check_password(password, username=name)
    if crud.get_doctor(session, username=name) is not None:
        raise AccountError(f"User '{name}' already exists; use `users reset-password {name}` to change the password.")
    hub = normalize_username(hf_username) if hf_username else None
    if hub and crud.get_doctor_by_hf_username(session, hf_username=hub) is not None:
        raise AccountError(f"Hugging Face user '{hub}' is already linked to another account.")
    display = (display_name or "").strip() or name
    doctor = crud.create_doctor(
        session,
        username=name,
        display_name=display[:200],
        password_hash=hash_password(password) if password is not None else None,
        hf_username=hub,
    )
    logger.info("created doctor account %s", name)
    return doctor


def require_account(session: Session, username: str) -> Doctor:
    """The account with this sign-in name, enabled or not.

    Raises:
        AccountError: no such account.
    """
    doctor = crud.get_doctor(session, username=normalize_username(username))
    if doctor is None:
        raise AccountError(f"No user named '{normalize_username(username)}'. List accounts with `users list`.")
    return doctor


def reset_password(session: Session, *, username: str, password: str) -> Doctor:
    """Replace a doctor's password (the account keeps its records).

    Raises:
        AccountError: unknown user or weak password.
    """
    doctor = require_account(session, username)
    check_password(password, username=doctor.username)
    updated = crud.update_doctor(session, username=doctor.username, password_hash=hash_password(password))
    # whoever knew the old password is signed out everywhere
    ended = end_all_sessions(session, username=doctor.username)
    logger.info("password reset for %s (%d sessions ended)", doctor.username, ended)
    assert updated is not None
    return updated


def set_active(session: Session, *, username: str, active: bool) -> Doctor:
    """Disable (or re-enable) an account: a disabled doctor cannot sign in; the records are kept.

    Raises:
        AccountError: unknown user.
    """
    doctor = require_account(session, username)
    updated = crud.update_doctor(session, username=doctor.username, is_active=active)
    if not active:
        end_all_sessions(session, username=doctor.username)
    logger.info("account %s %s", doctor.username, "enabled" if active else "disabled")
    assert updated is not None
    return updated


def active_doctor(session: Session, username: str | None) -> Doctor | None:
    """The enabled account with this sign-in name, or None (unknown, disabled or no name)."""
    if not username:
        return None
    doctor = crud.get_doctor(session, username=normalize_username(username))
    return doctor if doctor is not None and doctor.is_active else None


def doctor_for_hub_user(session: Session, hf_username: str | None) -> Doctor | None:
    """The enabled account mapped to a Hugging Face user name (OAuth sign-in), or None."""
    if not hf_username:
        return None
    doctor = crud.get_doctor_by_hf_username(session, hf_username=normalize_username(hf_username))
    return doctor if doctor is not None and doctor.is_active else None


def bootstrap_admin(session: Session, *, username: str | None, password: str | None) -> Doctor | None:
    """Create the account named by the admin_username/admin_password secrets if it does not exist yet.

    When it exists, its password is set to the secret only if the secret changed, so rotating the secret
    rotates the password. Returns None when the secrets are not both set.
    """
    if not username or not password:
        return None
    existing = crud.get_doctor(session, username=normalize_username(username))
    if existing is None:
        return add_doctor(session, username=username, password=password, display_name=username)
    if existing.password_hash is None or not verify_password(password, existing.password_hash)[0]:
        return reset_password(session, username=username, password=password)
    return existing


# ---------------------------------------------------------------------------------------------- sign-in


class SignInOutcome(enum.StrEnum):
    """How a sign-in attempt ended (stored in `signinevent.outcome`)."""

    SUCCESS = "success"
    BAD_CREDENTIALS = "bad_credentials"
    DISABLED = "disabled"
    THROTTLED = "throttled"


#: Outcomes that count towards throttling (a throttled attempt is refused unchecked, so it does not count).
FAILURES = (SignInOutcome.BAD_CREDENTIALS.value, SignInOutcome.DISABLED.value)


@dataclass(frozen=True)
class ThrottlePolicy:
    """How many failed sign-ins are allowed within `window` before further attempts are refused.

    Attributes:
        max_failures_per_username: failures for one user name since its last success.
        max_failures_per_address: failures from one client address, whatever the names tried.
        window: how far back failures count; a throttled name or address is free again once its failures
            are older than this.
    """

    max_failures_per_username: int = 5
    max_failures_per_address: int = 20
    window: timedelta = timedelta(minutes=15)


def is_throttled(
    session: Session, *, username: str, address: str, policy: ThrottlePolicy, now: datetime | None = None
) -> bool:
    """Whether attempts for this user name or from this address are currently refused."""
    since = (now or utcnow()) - policy.window
    last_success = crud.last_sign_in_event(session, username=username, outcome=SignInOutcome.SUCCESS.value)
    user_since = max(since, last_success.at) if last_success is not None else since
    user_failures = crud.count_sign_in_events(session, outcomes=FAILURES, since=user_since, username=username)
    if user_failures >= policy.max_failures_per_username:
        return True
    if not address:
        return False
    address_failures = crud.count_sign_in_events(session, outcomes=FAILURES, since=since, address=address)
    return address_failures >= policy.max_failures_per_address


def authenticate(
    session: Session,
    *,
    username: str,
    password: str,
    address: str = "",
    policy: ThrottlePolicy | None = None,
) -> SignInOutcome:
    """Check a sign-in attempt, record it and log failures.

    Args:
        session: database session.
        username: the name typed (normalised here).
        password: the password typed.
        address: the client address (for per-address throttling and the log).
        policy: throttling limits; default `ThrottlePolicy()`.

    Returns:
        SUCCESS only for an enabled account with the right password, when neither the name nor the address is
        throttled. The password is not even checked while throttled.
    """
    policy = policy or ThrottlePolicy()
    name = normalize_username(username)[:200]
    if is_throttled(session, username=name, address=address, policy=policy):
        outcome = SignInOutcome.THROTTLED
    else:
        doctor = crud.get_doctor(session, username=name)
        if doctor is None or doctor.password_hash is None:
            _dummy_verify(password)
            outcome = SignInOutcome.BAD_CREDENTIALS
        else:
            matches, new_hash = verify_password(password, doctor.password_hash)
            if not matches:
                outcome = SignInOutcome.BAD_CREDENTIALS
            elif not doctor.is_active:
                outcome = SignInOutcome.DISABLED
            else:
                outcome = SignInOutcome.SUCCESS
                if new_hash is not None:
                    crud.update_doctor(session, username=name, password_hash=new_hash)
    crud.add_sign_in_event(session, username=name, address=address, outcome=outcome.value)
    if outcome is SignInOutcome.SUCCESS:
        logger.info("sign-in: %s from %s", name, address or "?")
    else:
        logger.warning("sign-in refused (%s): user %r from %s", outcome.value, name, address or "?")
    return outcome


# ------------------------------------------------------------------------------- the web server's side

#: The address of the client whose request is being served (set by `ClientAddressMiddleware`).
client_address: ContextVar[str] = ContextVar("xray_client_address", default="")


def address_from_scope(scope: MutableMapping[str, Any], *, trust_forwarded: bool = False) -> str:
    """The client address of an ASGI request: the socket peer, or the first X-Forwarded-For hop when trusted.

    Trust X-Forwarded-For only behind a proxy that sets it (e.g. a Hugging Face Space); otherwise any client
    could pick its own address and escape per-address throttling.
    """
    if trust_forwarded:
        for key, value in scope.get("headers") or []:
            if key.lower() == b"x-forwarded-for":
                first = value.decode("latin-1").split(",")[0].strip()
                if first:
                    return first[:100]
    client = scope.get("client")
    return str(client[0])[:100] if client else ""


class ClientAddressMiddleware:
    """Pure ASGI middleware that makes the client address available to the sign-in check via `client_address`.

    The web framework calls the password check with only (username, password); this carries the address there.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], *, trust_forwarded: bool = False) -> None:
        self.app = app
        self.trust_forwarded = trust_forwarded

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        """Set `client_address` for the duration of an HTTP request."""
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        token = client_address.set(address_from_scope(scope, trust_forwarded=self.trust_forwarded))
        try:
            await self.app(scope, receive, send)
        finally:
            client_address.reset(token)


def make_password_checker(engine: Engine, *, policy: ThrottlePolicy | None = None) -> Callable[[str, str], bool]:
    """A `(username, password) -> bool` check for the web server, reading the client address from context."""

    def check(username: str, password: str) -> bool:
        with Session(engine) as session:
            outcome = authenticate(
                session, username=username, password=password, address=client_address.get(), policy=policy
            )
        return outcome is SignInOutcome.SUCCESS

    return check


# ---------------------------------------------------------------------------------------------- sessions

#: How long a sign-in lasts (a working day); after that the browser signs in again.
SESSION_HOURS = 12.0


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def start_session(session: Session, *, username: str, hours: float = SESSION_HOURS, token: str | None = None) -> str:
    """Sign a doctor in: store the hash of a new (or given) cookie token, valid for `hours`; returns the token.

    Raises:
        AccountError: no enabled account of that name.
    """
    doctor = active_doctor(session, username)
    if doctor is None:
        raise AccountError(f"No enabled doctor account '{username}'.")
    token = token or secrets.token_urlsafe(32)
    crud.create_sign_in_session(
        session, doctor=doctor, token_sha256=_token_hash(token), expires_at=utcnow() + timedelta(hours=hours)
    )
    return token


def session_username(session: Session, *, token: str | None) -> str | None:
    """The doctor signed in with this cookie token (unexpired, not signed out, account enabled), or None."""
    if not token:
        return None
    doctor = crud.active_session_doctor(session, token_sha256=_token_hash(token), now=utcnow())
    return None if doctor is None else doctor.username


def end_session(session: Session, *, token: str | None) -> bool:
    """Sign one browser out (its token stops working on every app process); returns whether it was signed in."""
    if not token:
        return False
    return crud.revoke_sign_in_sessions(session, token_sha256=_token_hash(token), now=utcnow()) > 0


def end_all_sessions(session: Session, *, username: str) -> int:
    """Sign a doctor out everywhere (after a password reset or when the account is disabled)."""
    doctor = crud.get_doctor(session, username=normalize_username(username))
    return 0 if doctor is None else crud.revoke_sign_in_sessions(session, doctor=doctor, now=utcnow())


def session_cookie_id(database_url: str) -> str:
    """The suffix of the sign-in cookie's name, the same for every process on one database.

    Gradio names its cookie `access-token-<cookie_id>` with a random id per process, so a restart or a second
    replica would not even read the cookie. Derived from the database URL, two apps on one host with different
    databases still keep their cookies apart. Not a secret: the token inside the cookie is.
    """
    return hashlib.sha256(f"xray-session:{database_url}".encode()).hexdigest()[:32]


class DatabaseTokens(MutableMapping[str, str]):
    """Gradio's `app.tokens` (cookie token -> user name), kept in the database instead of process memory.

    Gradio's `/login` stores a new token with `tokens[token] = username` and every request looks the cookie up
    with `tokens.get(token)`; here both go to the `signinsession` table, hashed, with an expiry. Raw tokens are
    never stored, so the mapping cannot be listed (iteration yields nothing); sign-out goes through `del`.
    """

    def __init__(self, engine: Engine, *, hours: float = SESSION_HOURS) -> None:
        self.engine = engine
        self.hours = hours

    def __getitem__(self, token: str) -> str:
        with Session(self.engine) as session:
            username = session_username(session, token=token)
        if username is None:
            raise KeyError("unknown, expired or signed-out session")
        return username

    def __setitem__(self, token: str, username: str) -> None:
        with Session(self.engine) as session:
            start_session(session, username=username, hours=self.hours, token=token)

    def __delitem__(self, token: str) -> None:
        with Session(self.engine) as session:
            if not end_session(session, token=token):
                raise KeyError("not signed in")

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        with Session(self.engine) as session:
            return crud.count_active_sessions(session, now=utcnow())

