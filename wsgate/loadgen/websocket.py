"""A lean WebSocket client for the load generator, driven by callbacks, and the socket limit.

Owns `RawWebSocket`, a minimal RFC 6455 client protocol. The load generator must not be the
bottleneck, so frames are parsed in `data_received` (no task or coroutine per message, no
per-frame `await`) and handed to a callback with one clock reading per socket read. Client
frames are masked with an all-zero key (valid RFC 6455 framing: the server unmasks by XOR;
the key's unpredictability only matters for intermediaries, and this client talks to
loopback only). Text messages only; pings are answered, a close is echoed. Also
`raise_nofile`: a load opens one socket per connection, thousands of them. Must not import
the gateway: the tools measure it from outside.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import resource
import time
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

from wsgate.loadgen.config import require_loopback

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_ZERO_MASK = b"\x00\x00\x00\x00"
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10

MessageCallback = Callable[[bytes, float], None]
CloseCallback = Callable[[str], None]


def raise_nofile() -> None:
    """Raise the soft open-files limit to the hard limit: one socket per connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class RawWebSocket(asyncio.Protocol):
    """A WebSocket client connection driven by callbacks (see the module docstring)."""

    def __init__(self, url: str, subprotocol: str, on_message: MessageCallback) -> None:
        parts = urlsplit(url)
        self.host = parts.netloc
        self.path = parts.path or "/"
        self.subprotocol = subprotocol
        self.on_message = on_message
        self.on_close: CloseCallback | None = None
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.bytes_received = 0
        self.close_code: int | None = None
        self._key = base64.b64encode(os.urandom(16))
        self._head = b""
        self._buf = b""
        self._fragments: list[bytes] = []

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the upgrade request."""
        # uvloop's TCP transport is not a subclass of asyncio.Transport, only shaped like it.
        self.transport = cast("asyncio.Transport", transport)
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key.decode()}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {self.subprotocol}\r\n\r\n"
        )
        self.transport.write(request.encode())

    def data_received(self, data: bytes) -> None:
        """Parse every complete frame in the buffer; one clock reading for all of them."""
        if not self.handshake.done():
            data = self._handshake(data)
            if not data:
                return
        now = time.monotonic()
        buf = self._buf + data if self._buf else data
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, length = buf[pos], buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            end = pos + head + length
            if end > size:
                break
            self._frame(b0, buf[pos + head : end], now)
            pos = end
        self._buf = buf[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        """Resolve the futures; tell the owner why the connection ended."""
        reason = f"closed_{self.close_code}" if self.close_code else "closed_1006"
        if exc is not None and self.close_code is None:
            reason = f"connection_{type(exc).__name__}"
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(reason))
        if not self.closed.done():
            self.closed.set_result(reason)
        if self.on_close is not None:
            self.on_close(reason)

    # --- commands ------------------------------------------------------------------------

    def send_text(self, payload: bytes) -> None:
        """Send one text message (masked with the zero key, so the payload goes as is)."""
        self._send(_OP_TEXT, payload)

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake; the server's close frame ends the connection."""
        if self.transport is not None and not self.transport.is_closing():
            self._send(_OP_CLOSE, code.to_bytes(2, "big"))

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (a client that vanished)."""
        if self.transport is not None:
            self.transport.abort()

    # --- internals -----------------------------------------------------------------------

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        size = len(payload)
        if size < 126:
            header = bytes((0x80 | opcode, 0x80 | size))
        elif size < 65536:
            header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
        else:
            header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
        self.transport.write(header + _ZERO_MASK + payload)

    def _handshake(self, data: bytes) -> bytes:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            return b""
        head, rest = self._head[:end], self._head[end + 4 :]
        self._head = b""
        status = head.split(b"\r\n", 1)[0]
        accept = base64.b64encode(hashlib.sha1(self._key + _WS_GUID).digest())  # noqa: S324 - RFC 6455 names SHA-1
        if b" 101 " not in status + b" " or accept not in head:
            self.handshake.set_exception(ConnectionError(status.decode(errors="replace")))
            assert self.transport is not None  # noqa: S101 - set before use
            self.transport.close()
            return b""
        self.handshake.set_result(None)
        return rest

    def _frame(self, b0: int, payload: bytes, now: float) -> None:
        opcode = b0 & 0x0F
        self.bytes_received += len(payload)
        if opcode == _OP_TEXT and b0 & 0x80:
            self.on_message(payload, now)
        elif opcode in (_OP_TEXT, _OP_CONT):
            self._fragments.append(payload)
            if b0 & 0x80:
                whole, self._fragments = b"".join(self._fragments), []
                self.on_message(whole, now)
        elif opcode == _OP_PING:
            self._send(_OP_PONG, payload)
        elif opcode == _OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self._send(_OP_CLOSE, payload[:2])
            assert self.transport is not None  # noqa: S101 - set before use
            self.transport.close()


async def open_websocket(
    url: str, on_message: MessageCallback, subprotocol: str = "wsgate.v1", within_s: float = 10.0
) -> RawWebSocket:
    """Connect, complete the upgrade and return the protocol; raise ConnectionError."""
    host, port = require_loopback(url)
    loop = asyncio.get_running_loop()
    protocol = RawWebSocket(url, subprotocol, on_message)
    try:
        async with asyncio.timeout(within_s):
            await loop.create_connection(lambda: protocol, host, port)
            await protocol.handshake
    except (OSError, TimeoutError) as exc:
        protocol.abort()
        raise ConnectionError(f"{url}: {type(exc).__name__}: {exc}") from None
    return protocol
