"""The push client's HTTP side: one node's API with its login, token renewal and the split of
answers into "try again later" (Transient, Unreachable) and "will not work" (Refused)."""

from __future__ import annotations

import http.client
import json as jsonlib
import threading
import time
from dataclasses import dataclass
from email.message import Message
from typing import Any
from urllib.parse import urlsplit

MAX_RATE_WAITS = 30  # 429s waited out for one request before it counts as a failed attempt
CONNECT_TIMEOUT = 5.0  # seconds; a server that does not answer the connection is unreachable


class Transient(Exception):
    """Try again later: the server is unreachable, busy, or out of space for now."""


class Unreachable(Transient):
    """No connection to the server at all."""


class Refused(Exception):
    """The server will not take this file (or these credentials); retrying will not help."""


class CredentialsRefused(Refused):
    """The user name or password is not accepted: nothing can be sent, every file stays queued."""


@dataclass(frozen=True)
class Reply:
    """One answer, read whole (the API's answers are small JSON or empty)."""

    method: str
    path: str
    status_code: int
    reason_phrase: str
    headers: Message  # case-insensitive lookups
    body: bytes

    def json(self) -> Any:
        return jsonlib.loads(self.body)


class Api:
    """Authenticated requests to one node; renews the access token on 401 (threads share it)."""

    def __init__(self, server: str, username: str, password: str, timeout: float = 60.0) -> None:
        self.server = server.rstrip("/") + "/"
        problem = address_problem(server)
        if problem:
            raise ValueError(problem)
        parts = urlsplit(self.server)
        self._connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._netloc = parts.netloc
        self._prefix = parts.path
        self._timeout = timeout
        self._credentials = (username, password)
        self._lock = threading.Lock()
        self._access: str | None = None
        self._refresh: str | None = None
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []  # every thread's, for close()

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()

    def login(self) -> None:
        username, password = self._credentials
        self._take_tokens(self._post_token("api/token/", {"username": username, "password": password}))

    def call(self, method: str, url: str, *, json: Any = None, content: bytes | None = None,
             headers: dict[str, str] | None = None) -> Reply:
        """One request; 5xx (and 429 past its waits) are Transient, a dropped connection is
        Unreachable. A 429 is waited out as its Retry-After says (the node's per-user rate
        limit), a 401 renews the token once."""
        renewed, waits = False, 0
        while True:
            token = self._access
            response = self._request(method, url, json, content, {**(headers or {}), "Authorization": f"Bearer {token}"})
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
        response = self._request("POST", url, body, None, {})
        if response.status_code == 200:
            return response.json()
        if response.status_code == 429 or response.status_code >= 500:
            raise Transient(f"login: {response.status_code} {detail_of(response)}")
        raise CredentialsRefused(f"login refused: {detail_of(response)}")

    def _take_tokens(self, pair: dict[str, Any]) -> None:
        self._access, self._refresh = pair["access"], pair["refresh"]

    def _request(self, method: str, url: str, json: Any, content: bytes | None,
                 headers: dict[str, str]) -> Reply:
        """Send on this thread's connection. A kept-alive connection the server closed while
        idle fails before any answer: that request is sent once more on a new connection
        (every step of the protocol may be repeated)."""
        if json is not None:
            content = jsonlib.dumps(json).encode("utf-8")
            headers = {**headers, "Content-Type": "application/json"}
        path = self._prefix + url
        for fresh in (False, True):
            connection, reused = self._connection(fresh)
            try:
                if connection.sock is None:
                    connection.timeout = CONNECT_TIMEOUT
                    connection.connect()
                    connection.sock.settimeout(self._timeout)
                connection.request(method, path, body=content, headers=headers)
                answer = connection.getresponse()
                body = answer.read()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                if reused and isinstance(exc, (ConnectionError, http.client.RemoteDisconnected)):
                    continue
                raise Unreachable(f"{self.server}: {exc or type(exc).__name__}") from None
            if answer.will_close:
                connection.close()
            return Reply(method, path, answer.status, answer.reason, answer.headers, body)
        raise AssertionError("unreachable")  # pragma: no cover

    def _connection(self, fresh: bool) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection and whether it has carried a request before."""
        connection = getattr(self._local, "connection", None)
        if connection is not None and not fresh:
            return connection, connection.sock is not None
        replacement = self._connection_class(self._netloc)
        with self._lock:
            if connection is not None:
                connection.close()
                self._connections.remove(connection)
            self._connections.append(replacement)
        self._local.connection = replacement
        return replacement, False


def address_problem(server: str) -> str | None:
    """Why ``server`` is not a node address this client can use, or None."""
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{server}: not an http:// or https:// address"
    return None


def _retry_after(response: Reply) -> float:
    """Seconds to wait after a 429 (its Retry-After, at most 10 s)."""
    try:
        return min(10.0, max(0.05, float(response.headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


def detail_of(response: Reply) -> str:
    try:
        body = response.json()
        return str(body.get("detail") or body.get("title") or response.reason_phrase)
    except ValueError:
        return response.reason_phrase
