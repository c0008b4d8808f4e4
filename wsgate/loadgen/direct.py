"""Reading the mock's OpenAI SSE directly, without a gateway: the floor of every comparison.

Owns `DirectReader` and its per-stream `asyncio.Protocol`, `_Exchange`: one TCP connection
per stream, one hand-written HTTP/1.1 `POST` to the mock's `/chat/completions`
(`Connection: close`), and the whole answer decoded inside `data_received` (status line,
headers, chunked / `Content-Length` / read-to-close framing, SSE events, `orjson`), feeding
the same `Stream` bookkeeping a gateway's frames feed, so `--direct` is measured exactly like
a gateway. No task wakes up per token: the instrument must cost less than what it measures.
The stream's coroutine only connects and awaits one future with the outcome. Cancelling a
stream here is closing its socket. It must not grow a general HTTP client: no TLS, no
redirects, no keep-alive. The run's counters live on the `RunHost`.

Outcomes: the finish reason; `cancelled`; `error:<code>` with `status_code(status)` for a
non-200 answer (known at its headers, reported once its body ended or the socket closed),
`upstream_unavailable` when the connection fails or closes before the answer's end (a
chunked or sized body cut short, or no complete head), `upstream_error` when a chunk carries
`"error"`, and `upstream_protocol` when a complete 200 body (its last chunk, its length, or
the close of a read-to-close body) lacks `data: [DONE]` or a finish reason, or when the
bytes are not HTTP/SSE at all.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import urlsplit

import orjson

from wsgate.loadgen.host import RunHost
from wsgate.loadgen.plan import request_body

if TYPE_CHECKING:
    from wsgate.loadgen.stream import Stream

# A response head or a chunk-size line longer than this is not the mock: the most a
# stream buffers outside an SSE event is this many bytes (plus the one segment read).
MAX_LINE: Final = 64 * 1024
# An SSE event longer than this is not the mock's either (its largest is well under 1 KiB).
MAX_EVENT: Final = 1024 * 1024

# Body framing (RFC 9112 §6.3), chosen from the head.
_CHUNKED, _SIZED, _TO_CLOSE = 0, 1, 2


def status_code(status: int) -> str:
    """The gateway's error code for a provider's HTTP status (PROTOCOL.md §9.2)."""
    if status == 429:
        return "upstream_rate_limited"
    return "upstream_error" if status >= 500 else "upstream_rejected"


class _ProtocolError(ValueError):
    """The answer is not the HTTP/1.1 + SSE the mock speaks."""


def _size(digits: bytes | str, base: int = 16) -> int:
    size = int(digits, base)
    if size < 0:
        raise _ProtocolError(f"negative size {size}")
    return size


class DirectReader:
    """Streams answers straight from the mock at `base_url` (see the module docstring)."""

    def __init__(self, runner: RunHost, base_url: str) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"{base_url}: direct mode reads plain http:// only")
        self.runner = runner
        self.base_url = base_url
        self.host, self.port = url.hostname, url.port or 80
        authority = f"[{self.host}]" if ":" in self.host else self.host
        path = f"{url.path.rstrip('/')}/chat/completions"
        self._head = (
            f"POST {path} HTTP/1.1\r\nHost: {authority}:{self.port}\r\n"
            "Content-Type: application/json\r\nConnection: close\r\n"
        ).encode()

    def request(self, stream: Stream) -> bytes:
        """The whole HTTP request for `stream`: its head and its JSON body."""
        body = {**request_body(self.runner.config, stream.plan), "stream": True}
        body["stream_options"] = {"include_usage": True}
        data = orjson.dumps(body)
        return b"%bContent-Length: %d\r\n\r\n%b" % (self._head, len(data), data)

    async def stream(self, stream: Stream) -> None:
        """Read one answer and end the stream with its outcome."""
        runner = self.runner
        request = self.request(stream)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()
        stream.sent_at = time.monotonic()
        try:
            transport, _ = await loop.create_connection(
                lambda: _Exchange(runner, stream, request, done), self.host, self.port
            )
        except OSError:
            outcome = "error:upstream_unavailable"
        else:
            try:
                outcome = await done
            finally:  # ended, or the run is stopping and cancelled this task
                transport.close()
        if outcome.startswith("error:"):
            runner.errors[outcome[6:]] += 1
        runner.end(stream, outcome, time.monotonic())

    async def close(self) -> None:
        """Nothing to close: every stream closes its own socket when it ends."""


class _Exchange(asyncio.Protocol):
    """One stream's request and answer, decoded as the bytes arrive (module docstring)."""

    __slots__ = (
        "done",
        "ended",
        "failed",
        "finished",
        "framing",
        "left",
        "raw",
        "reason",
        "request",
        "runner",
        "sse",
        "status",
        "stream",
        "transport",
    )

    def __init__(
        self, runner: RunHost, stream: Stream, request: bytes, done: asyncio.Future[str]
    ) -> None:
        self.runner, self.stream, self.request, self.done = runner, stream, request, done
        self.transport: asyncio.Transport | None = None
        self.status = 0  # 0 until the head is complete
        self.framing = _TO_CLOSE
        self.left = 0  # bytes left of the current chunk (chunked) or of the body (sized)
        self.ended = False  # the body's framing says it is complete
        self.raw = b""  # undecoded head or chunk-size line
        self.sse = b""  # the SSE event in progress
        self.reason, self.finished, self.failed = "", False, False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the whole request at once."""
        # uvloop's TCP transport is not a subclass of asyncio.Transport, only shaped like it.
        self.transport = cast("asyncio.Transport", transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        """Decode what arrived; end the stream when its answer ends or its plan cancels it."""
        if self.done.done():
            return
        try:
            if not self.status:
                rest = self._head(data)
                if rest is None or self._cancelled():  # the plan may cancel before any token
                    return
                data = rest
            payload = self._unframe(data)
            if self.status == 200 and payload:
                self._events(payload)
        # orjson's error is a ValueError; the other two are JSON of the wrong shape.
        except (ValueError, TypeError, AttributeError):
            self._end("error:upstream_protocol")
            return
        if self._cancelled():
            return
        if self.ended:
            self._end(self._outcome())

    def eof_received(self) -> bool:
        """The server closed its side: let the transport close (and report it)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """The end of a read-to-close body, or an answer cut short."""
        if self.done.done():
            return
        if self.status and self.status != 200:
            self._end(f"error:{status_code(self.status)}")
        elif self.status and self.framing == _TO_CLOSE and exc is None:
            self._end(self._outcome())
        else:
            self._end("error:upstream_unavailable")

    def _end(self, outcome: str) -> None:
        if not self.done.done():
            self.done.set_result(outcome)
        if self.transport is not None:
            self.transport.close()

    def _cancelled(self) -> bool:
        stream = self.stream
        if self.status != 200 or not stream.cancel_due():
            return False
        stream.cancel_at = time.monotonic()
        self._end("cancelled")
        return True

    def _outcome(self) -> str:
        if self.status != 200:
            return f"error:{status_code(self.status)}"
        if self.failed:
            return "error:upstream_error"
        return self.reason if self.finished and self.reason else "error:upstream_protocol"

    # --- HTTP/1.1 (RFC 9112) -----------------------------------------------------------------

    def _head(self, data: bytes) -> bytes | None:
        """Take the response head from `data`; the bytes after it, or None until complete."""
        raw = self.raw + data
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            if len(raw) > MAX_LINE:
                raise _ProtocolError("response head too long")
            self.raw = raw
            return None
        self.raw = b""
        lines = raw[:end].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1."):
            raise _ProtocolError(f"not an HTTP/1 status line: {lines[0]!r}")
        status = int(rest[:3])
        if status < 200:  # 1xx: an interim answer, the real head follows
            return self._head(raw[end + 4 :])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        if "chunked" in headers.get("transfer-encoding", ""):
            self.framing = _CHUNKED
        elif "content-length" in headers:
            self.framing, self.left = _SIZED, _size(headers["content-length"], 10)
            self.ended = self.left == 0
        self.ended = self.ended or status in (204, 304)
        self.status = status
        return raw[end + 4 :]

    def _unframe(self, data: bytes) -> bytes:
        """The body bytes in `data`, without the framing; sets `ended` at the body's end."""
        if self.ended:
            return b""
        if self.framing == _SIZED:
            piece = data[: self.left]
            self.left -= len(piece)
            self.ended = not self.left
            return piece
        if self.framing == _TO_CLOSE:
            return data
        return self._dechunk(self.raw + data if self.raw else data)

    def _dechunk(self, raw: bytes) -> bytes:
        # A chunk is `size[;ext]\r\n data \r\n`; the data's closing CRLF is read as an empty
        # size line. The mock sends each paced token as one chunk in one segment: that case
        # is one slice, before the general loop.
        if not self.left and raw[-2:] == b"\r\n":
            eol = raw.find(b"\r\n")
            size = int(raw[:eol], 16) if 0 < eol < len(raw) - 4 and raw[:eol].isalnum() else 0
            if size > 0 and eol + 4 + size == len(raw):
                self.raw = b""
                return raw[eol + 2 : -2]
        pieces: list[bytes] = []
        pos, end = 0, len(raw)
        self.raw = b""
        while pos < end:
            if self.left:
                piece = raw[pos : pos + self.left]
                pieces.append(piece)
                pos += len(piece)
                self.left -= len(piece)
                continue
            eol = raw.find(b"\r\n", pos)
            if eol < 0:
                if end - pos > MAX_LINE:
                    raise _ProtocolError("chunk-size line too long")
                self.raw = raw[pos:]
                break
            line = raw[pos:eol]
            pos = eol + 2
            if line:
                self.left = _size(line.partition(b";")[0])
                if not self.left:  # the last chunk; trailers and anything after are ignored
                    self.ended = True
                    break
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    # --- SSE (the mock's OpenAI chat dialect) --------------------------------------------------

    def _events(self, payload: bytes) -> None:
        now = time.monotonic()
        runner, stream = self.runner, self.stream
        runner.bytes += len(payload)
        runner.last_at = now
        events = (self.sse + payload).split(b"\n\n") if self.sse else payload.split(b"\n\n")
        self.sse = events.pop()
        if len(self.sse) > MAX_EVENT:
            raise _ProtocolError("SSE event too long")
        for event in events:
            if event == b"data: [DONE]":
                self.finished = True
                continue
            chunk: dict[str, Any] = orjson.loads(event[6:])
            if "error" in chunk:
                self.failed = True
            for choice in chunk.get("choices") or ():
                text = choice.get("delta", {}).get("content")
                if text:
                    runner.frames += 1
                    runner.delivered(stream.text(text, now))
                self.reason = choice.get("finish_reason") or self.reason
