"""Access tokens (JWT, HS256 pinned) and rotating refresh tokens for the HTTP API.

Access tokens are short-lived and verified without the catalogue: signature, algorithm (only
HS256 is accepted, so ``alg: none`` and key-confusion tricks fail), ``iss``, ``aud``, ``exp``,
``iat`` and the claims the API needs. Refresh tokens are random strings stored as SHA-256;
each use retires the token and issues the next of its family (one login's chain), and a
retired token presented again revokes the whole family, as OAuth 2.0 Security BCP (RFC 9700,
4.14.2) recommends: one of the two holders is a thief.

    AuthError
    ├── InvalidCredentials   login refused (unknown user, wrong password, disabled)
    ├── InvalidToken         access token refused; ``reason`` says why
    └── InvalidRefresh       refresh token unknown, expired, revoked or reused
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jwt

from db import accounts
from db.models import database
from node.config import AuthSettings, Settings
from node.errors import ConfigError
from node.passwords import burn_verification_time, verify_password

ALGORITHM = "HS256"
SECRET_FILE = "jwt-secret"
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti"]
VERIFIED_CACHE = 4096  # access tokens remembered as verified (a client sends its token with every request)


class AuthError(Exception):
    """Authentication failed; ``reason`` is safe to show to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidCredentials(AuthError):
    """The user name and password do not open a session."""


class InvalidToken(AuthError):
    """The access token is not one this node issued, or no longer valid."""


class InvalidRefresh(AuthError):
    """The refresh token cannot be exchanged."""


@dataclass(frozen=True)
class Principal:
    """Who an access token speaks for."""

    username: str
    role: str
    token_id: str
    expires_at: int


@dataclass(frozen=True)
class TokenPair:
    access: str
    refresh: str
    expires_in: int  # seconds the access token lives


def load_or_create_secret(settings: Settings) -> bytes:
    """The configured secret, else ``data_dir/jwt-secret`` created once with mode 0600.

    Creation links a finished temp file into place, so concurrent starters agree on one
    secret and nobody ever reads a half-written file.
    """
    if settings.auth.secret:
        return settings.auth.secret.encode("utf-8")
    path = settings.data_dir / SECRET_FILE
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{SECRET_FILE}.{uuid.uuid4().hex}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)
        except FileExistsError:
            pass  # another process made it first; use theirs
        finally:
            temp.unlink()
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: the token secret is readable by others "
                          f"(mode {stat.S_IMODE(mode):o}); run chmod 600 on it")
    secret = path.read_bytes().strip()
    if len(secret) < 32:
        raise ConfigError(f"{path}: the token secret is shorter than 32 bytes")
    return secret


def hash_refresh(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenService:
    """Issues and checks tokens; ``clock`` (seconds since the epoch) is injectable for tests."""

    def __init__(self, settings: AuthSettings, secret: bytes,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._secret = secret
        self._clock = clock
        self._verified: dict[str, Principal] = {}

    @property
    def access_lifetime(self) -> int:
        return self.settings.access_token_minutes * 60

    def issue_access(self, username: str, role: str) -> str:
        now = int(self._clock())
        claims = {"iss": self.settings.issuer, "aud": self.settings.audience, "sub": username,
                  "role": role, "iat": now, "exp": now + self.access_lifetime,
                  "jti": uuid.uuid4().hex, "typ": "access"}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify_access(self, token: str) -> Principal:
        """The token's principal, or InvalidToken with the reason.

        A token that verified once is remembered until it expires: the checks are pure functions
        of the token and the secret, except ``exp``, which is checked again on every use, and
        they cost more than the rest of a small request."""
        known = self._verified.get(token)
        if known is not None and known.expires_at > time.time():  # PyJWT's own test, on its clock
            return known
        principal = self._decode_access(token)
        if len(self._verified) >= VERIFIED_CACHE:
            self._verified.clear()  # tokens are short-lived: starting again costs one decode each
        self._verified[token] = principal
        return principal

    def _decode_access(self, token: str) -> Principal:
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM],
                                audience=self.settings.audience, issuer=self.settings.issuer,
                                options={"require": _REQUIRED_CLAIMS})
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the access token has expired") from None
        except jwt.InvalidAlgorithmError:
            raise InvalidToken(f"the token's algorithm is not allowed (only {ALGORITHM})") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the token's signature does not verify") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("the token is meant for another audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the token was issued by someone else") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("the token is not valid yet") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"the token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError:
            raise InvalidToken("the token is malformed") from None
        if claims.get("typ") != "access" or claims.get("role") not in accounts.ROLES:
            raise InvalidToken("the token is not an access token of this node")
        return Principal(str(claims["sub"]), claims["role"], str(claims["jti"]), int(claims["exp"]))

    def login(self, username: str, password: str) -> TokenPair:
        """A new session (a new refresh family) for valid credentials."""
        with database.connection_context():
            account = accounts.find_user(username)
        if account is None:
            burn_verification_time(password)
            raise InvalidCredentials("unknown user name or wrong password")
        if not verify_password(password, account.password_hash):
            raise InvalidCredentials("unknown user name or wrong password")
        if account.disabled:
            raise InvalidCredentials("the user is disabled")
        with database.connection_context():
            return self._issue_pair(account, uuid.uuid4().hex)

    def refresh(self, token: str) -> TokenPair:
        """Retire ``token`` and issue the next pair of its family (rotation)."""
        with database.connection_context():
            with database.atomic():
                stored = accounts.find_refresh(hash_refresh(token))
                if stored is None:
                    raise InvalidRefresh("unknown refresh token")
                if stored.revoked:
                    raise InvalidRefresh("the refresh token has been revoked")
                if stored.used or not accounts.retire_refresh(stored.id):
                    accounts.revoke_family(stored.family)
                    reuse = True
                else:
                    reuse = False
                    account = accounts.user_by_id(stored.user_id)
            if reuse:  # committed above: the revocation must survive this refusal
                raise InvalidRefresh("the refresh token was used before; its session is revoked")
            if stored.expires_at <= self._now():
                raise InvalidRefresh("the refresh token has expired")
            if account is None or account.disabled:
                raise InvalidRefresh("the user is disabled")
            return self._issue_pair(account, stored.family)

    def _issue_pair(self, account: accounts.Account, family: str) -> TokenPair:
        refresh = secrets.token_urlsafe(32)
        expires = self._now() + dt.timedelta(days=self.settings.refresh_token_days)
        accounts.store_refresh(hash_refresh(refresh), family, account.id, expires)
        return TokenPair(self.issue_access(account.username, account.role), refresh,
                         self.access_lifetime)

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc).replace(tzinfo=None)
