"""The push client's HTTP side: one node's API with its login, token renewal and the split of
answers into "try again later" (Transient, Unreachable) and "will not work" (Refused)."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

MAX_RATE_WAITS = 30  # 429s waited out for one request before it counts as a failed attempt


class Transient(Exception):
    """Try again later: the server is unreachable, busy, or out of space for now."""


class Unreachable(Transient):
    """No connection to the server at all."""


class Refused(Exception):
    """The server will not take this file (or these credentials); retrying will not help."""


class CredentialsRefused(Refused):
    """The user name or password is not accepted: nothing can be sent, every file stays queued."""


class Api:
    """Authenticated requests to one node; renews the access token on 401 (threads share it)."""

    def __init__(self, server: str, username: str, password: str, connections: int,
                 timeout: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        self.server = server.rstrip("/") + "/"
        self._credentials = (username, password)
        self._lock = threading.Lock()
        self._access: str | None = None
        self._refresh: str | None = None
        self.http = httpx.Client(base_url=self.server, timeout=httpx.Timeout(timeout, connect=5.0),
                                 limits=httpx.Limits(max_connections=connections,
                                                     max_keepalive_connections=connections),
                                 transport=transport)

    def close(self) -> None:
        self.http.close()

    def login(self) -> None:
        username, password = self._credentials
        self._take_tokens(self._post_token("api/token/", {"username": username, "password": password}))

    def call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request; 5xx (and 429 past its waits) are Transient, a dropped connection is
        Unreachable. A 429 is waited out as its Retry-After says (the node's per-user rate
        limit), a 401 renews the token once."""
        headers = kwargs.pop("headers", {})
        renewed, waits = False, 0
        while True:
            token = self._access
            try:
                response = self.http.request(method, url, headers={**headers, "Authorization": f"Bearer {token}"},
                                             **kwargs)
            except httpx.TransportError as exc:
                raise Unreachable(f"{self.server}: {exc or type(exc).__name__}") from None
            if response.status_code == 401 and not renewed:
                self._renew(token)
                renewed = True
                continue
            if response.status_code == 401:
                raise CredentialsRefused(f"the server refuses these credentials: {detail_of(response)}")
            if response.status_code == 429 and waits < MAX_RATE_WAITS:
                waits += 1
                time.sleep(_retry_after(response))
                continue
            if response.status_code == 429 or response.status_code >= 500:
                raise Transient(f"{method} {url}: {response.status_code} {detail_of(response)}")
            return response

    def _renew(self, stale: str | None) -> None:
        with self._lock:
            if self._access != stale:
                return  # another thread renewed it meanwhile
            try:
                self._take_tokens(self._post_token("api/token/refresh/", {"refresh": self._refresh}))
            except Refused:
                self.login()

    def _post_token(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self.http.post(url, json=body)
        except httpx.TransportError as exc:
            raise Unreachable(f"{self.server}: {exc or type(exc).__name__}") from None
        if response.status_code == 200:
            return response.json()
        if response.status_code == 429 or response.status_code >= 500:
            raise Transient(f"login: {response.status_code} {detail_of(response)}")
        raise CredentialsRefused(f"login refused: {detail_of(response)}")

    def _take_tokens(self, pair: dict[str, Any]) -> None:
        self._access, self._refresh = pair["access"], pair["refresh"]


def _retry_after(response: httpx.Response) -> float:
    """Seconds to wait after a 429 (its Retry-After, at most 10 s)."""
    try:
        return min(10.0, max(0.05, float(response.headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


def detail_of(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("detail") or body.get("title") or response.reason_phrase)
    except ValueError:
        return response.reason_phrase
