"""Bearer authentication (a Starlette AuthenticationBackend) and the failed-login throttle."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from starlette.authentication import AuthCredentials, AuthenticationBackend, AuthenticationError, BaseUser
from starlette.requests import HTTPConnection

from node.tokens import InvalidToken, Principal, TokenService

# What each role may do; endpoints ask with ``@requires(...)``.
ROLE_SCOPES = {
    "admin": ("authenticated", "read", "upload", "admin"),
    "viewer": ("authenticated", "read"),
    "uploader": ("authenticated", "upload"),
}


class ApiUser(BaseUser):
    def __init__(self, principal: Principal) -> None:
        self.principal = principal

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.principal.username

    @property
    def identity(self) -> str:
        return self.principal.username

    @property
    def role(self) -> str:
        return self.principal.role


class BearerBackend(AuthenticationBackend):
    """Checks ``Authorization: Bearer`` on every path except the public ones.

    Public paths (health, token endpoints) ignore the header, so a client holding an expired
    access token can still refresh it.
    """

    def __init__(self, tokens: TokenService, public_paths: frozenset[str]) -> None:
        self.tokens = tokens
        self.public_paths = public_paths

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        if conn.scope["path"] in self.public_paths:  # as the router matches (conn.url builds a whole URL)
            return None
        header = conn.headers.get("authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("the Authorization header must be 'Bearer <access token>'")
        try:
            principal = self.tokens.verify_access(token.strip())
        except InvalidToken as exc:
            raise AuthenticationError(exc.reason) from None
        return AuthCredentials(list(ROLE_SCOPES[principal.role])), ApiUser(principal)


class LoginThrottle:
    """Counts failed logins per user name and per client address in a sliding window.

    Once either reaches ``max_failures``, logins for it answer 429 until the oldest failure
    leaves the window: guessing costs the attacker time without locking anyone out for good.
    Checked before the password hash is computed, so a flood costs the server nothing.
    """

    def __init__(self, max_failures: int, window: float, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10000) -> None:
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, username: str, address: str) -> float:
        """Seconds until a login for this user from this address may be tried; 0 if now."""
        now = self._clock()
        with self._lock:
            waits = [self._wait(key, now) for key in self._keys(username, address)]
        return max(waits)

    def failed(self, username: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            if len(self._failures) >= self._max_keys:
                self._prune(now)
            for key in self._keys(username, address):
                self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._failures.pop(f"user:{username}", None)

    @staticmethod
    def _keys(username: str, address: str) -> tuple[str, str]:
        return f"user:{username}", f"addr:{address}"

    def _wait(self, key: str, now: float) -> float:
        times = self._failures.get(key)
        if not times:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) < self.max_failures:
            return 0.0
        return times[-self.max_failures] + self.window - now

    def _prune(self, now: float) -> None:
        for key in [k for k, t in self._failures.items() if not t or t[-1] <= now - self.window]:
            del self._failures[key]
        while len(self._failures) >= self._max_keys:  # still full: forget the oldest
            del self._failures[next(iter(self._failures))]
