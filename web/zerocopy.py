"""Stored files sent by the kernel (``sendfile``) on uvicorn's HTTP/1.1 connections.

uvicorn (0.55) implements neither ASGI's ``http.response.zerocopysend`` nor ``pathsend``, and
a zerocopysend message would not reach it anyway: Starlette's GZipMiddleware drops message
types it does not know. So the outermost middleware here, when the server's ``send`` is
uvicorn's httptools ``RequestResponseCycle`` on a plain TCP socket of an asyncio selector
loop, puts a ``FileSender`` in ``scope["extensions"][SENDFILE]``; a response that finds it
sends its response head through ``send`` as usual and hands the parts of its body (a small
head and a stored file each) to ``FileSender.send_parts``, which keeps the cycle's
Content-Length accounting. Without it (TestClient, h11, TLS, another server or loop)
responses copy the bytes through Python as before.

``send_parts`` writes every part from one worker thread, on its own descriptor of the
connection's socket while the transport does not read it: write(2) for the heads,
sendfile(2) for the files, poll(2) while the socket is full. Per part there is no trip
through the event loop then; asyncio's ``loop.sendfile`` per file (a wait for the transport's
buffer, a pause and resume of reading, writer callbacks while the socket is full) cost a
250-file series retrieve about a third of its time here, against a bare sendfile loop.

The files go straight from the page cache to the socket, bypassing every middleware's
``send``: only a response whose framing no middleware rewrites may use it. ``send_parts``
checks the cycle sends a known Content-Length (a compressing middleware drops it) and
refuses otherwise, before any byte.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import select
from typing import Any, Sequence

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

try:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
except ImportError:  # uvicorn without httptools: the h11 cycle frames every byte itself
    RequestResponseCycle = None  # type: ignore[assignment,misc]

SENDFILE = "node.sendfile"  # scope["extensions"] key of the FileSender
STALL_SECONDS = 60.0  # a client that takes no byte for this long is cut off
_COPY_BLOCK = 1 << 20  # the copy when sendfile(2) refuses the file (e.g. some FUSE mounts)
_NO_SENDFILE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)

Part = tuple[bytes, str, int]  # a head, then a stored file's path and its size as stat'ed


class FileSender:
    """Sends stored files on one uvicorn request-response cycle's socket with sendfile(2)."""

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle

    async def send_parts(self, parts: Sequence[Part]) -> bool:
        """Each head, then its file's bytes, as the next parts of the body; False when the
        client went away (nothing more to send).

        A client gone before or during the send is silent, as uvicorn's ``send`` is; a file
        whose size changed since it was stat'ed, or a client that takes no byte for
        ``STALL_SECONDS``, fails the body (the connection is cut, never a wrong length).
        """
        cycle = self._cycle
        length = sum(len(head) + size for head, _, size in parts)
        if not await self._may_send(length):
            return not cycle.disconnected
        transport = cycle.transport
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STALL_SECONDS
        while transport.get_write_buffer_size() and not transport.is_closing():
            if loop.time() > deadline:
                self._cut(transport)
                return False
            await asyncio.sleep(0.001)  # the response head still queued: it goes first
        if transport.is_closing():
            cycle.disconnected = True
            return False
        reading = transport.is_reading()
        transport.pause_reading()  # as loop.sendfile does: nothing else touches the socket meanwhile
        fd = os.dup(transport.get_extra_info("socket").fileno())  # the thread's: it closes it
        started = []

        def write() -> None:
            started.append(True)
            _write_parts(fd, parts)

        try:
            await run_in_threadpool(write)
        except ConnectionError:  # the client left mid-body
            self._cut(transport)
            return False
        except BaseException:  # a file changed, the client stalled: part of the body may be out
            if not started:  # cancelled before a thread took it (never after: that wait is shielded)
                os.close(fd)
            self._cut(transport)
            raise
        finally:
            if reading and not transport.is_closing():
                transport.resume_reading()
        cycle.expected_content_length -= length
        return True

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


def _write_parts(fd: int, parts: Sequence[Part]) -> None:
    """``send_parts``' thread: every part on ``fd`` (non-blocking, as the transport keeps its
    socket), then ``fd`` closed. The next file is opened while the current one is sent, with
    a readahead hint (POSIX_FADV_WILLNEED starts its reads and returns), so a file not in the
    page cache is mostly read by then."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)

    def wait() -> None:
        if not poller.poll(STALL_SECONDS * 1000):
            raise TimeoutError(f"the client took no byte for {STALL_SECONDS:.0f} s")

    ahead = _open_with_readahead(parts[0][1]) if parts else None
    try:
        for index, (head, _, size) in enumerate(parts):
            current = ahead
            with current:  # type: ignore[union-attr]
                ahead = _open_with_readahead(parts[index + 1][1]) if index + 1 < len(parts) else None
                _check_size(current, size)  # a shorter file the send notices; a longer one it would not
                _write_all(fd, memoryview(head), wait)
                _send_file(fd, current, size, wait)  # type: ignore[arg-type]
    finally:
        if ahead is not None:
            ahead.close()
        os.close(fd)


def _write_all(fd: int, view: memoryview, wait: Any) -> None:
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            wait()


def _send_file(fd: int, file: io.FileIO, size: int, wait: Any) -> None:
    offset = 0
    while offset < size:
        try:
            sent = os.sendfile(fd, file.fileno(), offset, size - offset)
        except BlockingIOError:
            wait()
            continue
        except OSError as exc:
            if exc.errno not in _NO_SENDFILE or offset:
                raise
            _copy_file(fd, file, size, wait)  # this file's type refuses sendfile(2)
            return
        if not sent:
            raise OSError(f"{file.name} got shorter while it was being sent")
        offset += sent


def _copy_file(fd: int, file: io.FileIO, size: int, wait: Any) -> None:
    offset = 0
    while offset < size:
        block = os.pread(file.fileno(), min(size - offset, _COPY_BLOCK), offset)
        if not block:
            raise OSError(f"{file.name} got shorter while it was being sent")
        _write_all(fd, memoryview(block), wait)
        offset += len(block)


def _open_with_readahead(path: str) -> io.FileIO:
    fh = io.FileIO(path, "rb")
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
    return fh


def _check_size(fh: io.FileIO, size: int) -> None:
    now = os.fstat(fh.fileno()).st_size
    if now != size:
        raise OSError(f"{fh.name} got {'shorter' if now < size else 'longer'} while it was being sent")


def file_sender(scope: Scope, send: Send) -> FileSender | None:
    """A FileSender when ``send`` is uvicorn's httptools cycle on a plain TCP socket of an
    asyncio selector loop (where the transport's socket is a plain one), else None."""
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
    return FileSender(cycle)


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
