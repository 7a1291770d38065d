"""Protecting the server from eager viewers: per-user rate and concurrency, capped bodies.

Both middlewares run on the event loop thread, so their counters need no locks. Their state
belongs to the app instance.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from web.errors import PayloadTooLarge, TooManyRequests, problem_response


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; a request takes one (RFC 6585 429 when none)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10000) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> float:
        """0 when the request may go ahead, else the seconds until a token is there."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._buckets.clear()  # all full buckets again: the only cost is one free burst
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


class UserLimitsMiddleware:
    """Per authenticated user: at most ``max_in_flight`` requests at once, and a token bucket.

    Runs after authentication; anonymous requests (health, token endpoints, refused ones)
    are not counted here (logins have their own throttle).
    """

    def __init__(self, app: ASGIApp, max_in_flight: int, bucket: TokenBucket) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.bucket = bucket
        self.in_flight: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user") if scope["type"] == "http" else None
        if user is None or not user.is_authenticated:
            await self.app(scope, receive, send)
            return
        key = user.identity
        if self.in_flight.get(key, 0) >= self.max_in_flight:
            await self._refuse(scope, send, TooManyRequests(
                f"more than {self.max_in_flight} requests in flight for this user", 1))
            return
        wait = self.bucket.take(key)
        if wait > 0:
            await self._refuse(scope, send, TooManyRequests("request rate limit exceeded", wait))
            return
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = self.in_flight[key] - 1
            if left:
                self.in_flight[key] = left
            else:
                del self.in_flight[key]

    @staticmethod
    async def _refuse(scope: Scope, send: Send, problem: TooManyRequests) -> None:
        response = problem_response(problem.status, problem.title, problem.detail, scope.get("path"),
                                    problem.headers)
        await response(scope, _no_receive, send)


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes``: by Content-Length at once, else while streaming.

    ``larger`` lists (method, path pattern, limit) for the few routes whose bodies are bigger
    by design (tus PATCH chunks of an upload session); the first full match wins.
    """

    def __init__(self, app: ASGIApp, max_bytes: int,
                 larger: Sequence[tuple[str, re.Pattern[str], int]] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = tuple(larger)

    def limit_for(self, scope: Scope) -> int:
        for method, pattern, limit in self.larger:
            if scope["method"] == method and pattern.fullmatch(scope["path"]):
                return limit
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.limit_for(scope)
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > max_bytes:
                await self._refuse(scope, send, max_bytes)
                return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise PayloadTooLarge(f"the request body exceeds {max_bytes} bytes")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except PayloadTooLarge:
            if not started:
                await self._refuse(scope, send, max_bytes)

    async def _refuse(self, scope: Scope, send: Send, max_bytes: int) -> None:
        response = problem_response(413, PayloadTooLarge.title,
                                    f"the request body exceeds {max_bytes} bytes", scope.get("path"))
        await response(scope, _no_receive, send)


async def _no_receive() -> Message:  # pragma: no cover - responses never read the request
    return {"type": "http.disconnect"}
