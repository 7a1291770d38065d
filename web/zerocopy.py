"""Stored files sent by the kernel (``sendfile``) on uvicorn's HTTP/1.1 connections.

uvicorn (0.55) implements neither ASGI's ``http.response.zerocopysend`` nor ``pathsend``, and
a zerocopysend message would not reach it anyway: Starlette's GZipMiddleware drops message
types it does not know. So the outermost middleware here, when the server's ``send`` is
uvicorn's httptools ``RequestResponseCycle`` on a plain TCP socket of an asyncio selector
loop, puts a ``FileSender`` in ``scope["extensions"][SENDFILE]``; a response that finds it
writes its small pieces through ``send`` as usual and hands each stored file to
``FileSender.send_file``, which runs ``loop.sendfile`` on the cycle's transport (the loop
waits for the transport's buffer to empty first and pauses reading meanwhile) and keeps the
cycle's Content-Length accounting. Without it (TestClient, h11, TLS, another server or
loop) responses copy the bytes through Python as before.

The file goes straight from the page cache to the socket, bypassing every middleware's
``send``: only a response whose framing no middleware rewrites may use it. ``send_file``
checks the cycle sends a known Content-Length (a compressing middleware drops it) and
refuses otherwise, before any byte.
"""

from __future__ import annotations

import asyncio
from typing import Any, BinaryIO

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

try:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
except ImportError:  # uvicorn without httptools: the h11 cycle frames every byte itself
    RequestResponseCycle = None  # type: ignore[assignment,misc]

SENDFILE = "node.sendfile"  # scope["extensions"] key of the FileSender
_COPY_BLOCK = 1 << 20  # the copy when sendfile(2) refuses the file (e.g. some FUSE mounts)


class FileSender:
    """Sends stored files on one uvicorn request-response cycle's socket with sendfile(2)."""

    def __init__(self, cycle: Any, send: Send) -> None:
        self._cycle = cycle
        self._send = send

    @property
    def client_gone(self) -> bool:
        return bool(self._cycle.disconnected)

    async def send_file(self, file: BinaryIO, offset: int, count: int) -> None:
        """``count`` bytes of ``file`` from ``offset`` as the next part of the body.

        A client gone before or during the send is silent, as uvicorn's ``send`` is (later
        sends do nothing); a file shorter than ``count`` fails the body (the connection is
        cut, never a wrong length).
        """
        cycle = self._cycle
        if not await self._may_send(count):
            return
        transport = cycle.transport
        try:
            sent = await asyncio.get_running_loop().sendfile(transport, file, offset, count, fallback=False)
        except asyncio.SendfileNotAvailableError:  # nothing sent: the client left, or the file type
            if transport.is_closing():
                cycle.disconnected = True
                return
            await self._copy(file, offset, count)
            return
        except ConnectionError:  # the client left mid-file
            self._cut(transport)
            return
        except BaseException:  # a read error, or cancelled: part of the file may be out
            self._cut(transport)
            raise
        cycle.expected_content_length -= sent
        if sent < count:
            self._cut(transport)
            raise OSError(f"{getattr(file, 'name', file)} got shorter while it was being sent")

    async def send_bytes(self, data: bytes) -> None:
        """``data`` as the next part of the body, written to the transport as uvicorn's own
        ``send`` would, without passing through every middleware's ``send`` on the way
        (a multipart head before each file: hundreds per series)."""
        if await self._may_send(len(data)):
            self._cycle.expected_content_length -= len(data)
            self._cycle.transport.write(data)

    async def _may_send(self, count: int) -> bool:
        """False when there is nothing to send or nobody to send it to; waits while the
        transport's buffer is over its high-water mark, as uvicorn's ``send`` does."""
        cycle = self._cycle
        if cycle.disconnected or not count:
            return False
        if not cycle.response_started or cycle.response_complete or cycle.chunked_encoding is not False:
            raise RuntimeError("sendfile needs a started response with a Content-Length")
        if count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        if cycle.flow.write_paused:
            await cycle.flow.drain()
        if cycle.transport.is_closing():  # a failed write closed it; connection_lost is a turn away
            cycle.disconnected = True
        return not cycle.disconnected

    def _cut(self, transport: asyncio.BaseTransport) -> None:
        """End a body that cannot be completed: the client sees a short body, not a wrong one."""
        transport.abort()
        self._cycle.disconnected = True  # connection_lost says so too, one loop turn later

    async def _copy(self, file: BinaryIO, offset: int, count: int) -> None:
        file.seek(offset)
        while count and not self._cycle.disconnected:
            block = await run_in_threadpool(file.read, min(count, _COPY_BLOCK))
            if not block:
                raise OSError(f"{getattr(file, 'name', file)} got shorter while it was being sent")
            count -= len(block)
            await self._send({"type": "http.response.body", "body": block, "more_body": True})


def file_sender(scope: Scope, send: Send) -> FileSender | None:
    """A FileSender when ``send`` is uvicorn's httptools cycle on a plain TCP socket of an
    asyncio selector loop (where ``loop.sendfile`` uses sendfile(2)), else None."""
    cycle = getattr(send, "__self__", None)
    if RequestResponseCycle is None or not isinstance(cycle, RequestResponseCycle):
        return None
    if scope["type"] != "http" or scope["method"] == "HEAD":  # HEAD: uvicorn writes no body
        return None
    transport = cycle.transport
    if transport.get_extra_info("sslcontext") is not None or transport.get_extra_info("socket") is None:
        return None
    if not isinstance(asyncio.get_running_loop(), asyncio.SelectorEventLoop):
        return None
    return FileSender(cycle, send)


class SendfileMiddleware:
    """Outermost (around Starlette's own error middleware, which wraps ``send``): offers a
    FileSender to the app when the server allows it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = file_sender(scope, send) if scope["type"] == "http" else None
        if sender is not None:
            scope["extensions"] = {**(scope.get("extensions") or {}), SENDFILE: sender}
        await self.app(scope, receive, send)
