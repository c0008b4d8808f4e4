"""The Python client of wsgate: many generation streams over one WebSocket.

Owns the client side of wsgate.v1: opening the connection and waiting for `ready`, one reader
task that routes gateway frames by `stream_id` into per-stream queues, stream handles that
start, cancel and iterate typed frames, and `chat`, the one-shot helper behind `wsgate chat`.
Frames are the types of `wsgate.core.frames`, so client and gateway cannot drift. websockets'
exceptions are translated here into `GatewayError`. Must not import the gateway, upstream,
mock or app shells: a client needs none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Self, TextIO

import msgspec
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.typing import Subprotocol

from wsgate.core.errors import CloseCode
from wsgate.core.frames import (
    PROTOCOL,
    Cancel,
    ChatRequest,
    DeltaText,
    ErrorFrame,
    FinishFrame,
    FinishReason,
    GoAway,
    Heartbeat,
    Ready,
    ServerFrame,
    Start,
    StartOptions,
    StreamEventFrame,
    StreamStarted,
    Telemetry,
    decode_server_frame,
    encode_frame,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from websockets.asyncio.client import ClientConnection
    from websockets.datastructures import HeadersLike

StreamFrame = StreamEventFrame | Telemetry
# Gateway frames are not capped by ready.limits (that caps client frames); one tool_call.end
# carries a whole argument object, so allow more than websockets' 1 MiB default.
_MAX_SERVER_FRAME_BYTES: Final = 16 * 1024 * 1024
_MAX_CLOSE_REASON_BYTES: Final = 123  # RFC 6455 §5.5: control frame payload <= 125 bytes
_SUCCESS: Final = frozenset({"stop", "length", "tool_calls"})


class GatewayError(Exception):
    """Base of every error this client raises about the gateway or the connection."""


class ConnectError(GatewayError):
    """The connection could not be opened, or the gateway did not greet it with `ready`."""


class ConnectionClosedError(GatewayError):
    """The connection closed while a stream was open; `code` and `reason` are the close's."""

    def __init__(self, code: int, reason: str) -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"connection closed with code {code}{detail}")
        self.code = code
        self.reason = reason


class _ViolationError(Exception):
    """The gateway broke wsgate.v1; the client closes the connection with 1002."""


@dataclass(frozen=True, slots=True)
class _Broken:
    """Queued after a stream's last frame when the connection ended before its `finish`."""

    code: int
    reason: str
    cause: BaseException | None = None


def _ends_stream(frame: StreamFrame, started: bool) -> bool:
    # A refusal (error without seq) ends only a stream the gateway never started.
    if isinstance(frame, FinishFrame):
        return True
    return isinstance(frame, ErrorFrame) and frame.seq is None and not started


def _close_info(exc: ConnectionClosed) -> tuple[int, str]:
    if exc.rcvd is not None:
        return exc.rcvd.code, exc.rcvd.reason
    return 1006, "connection lost without a close frame"


def _close_reason(text: str) -> str:
    return text.encode()[:_MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


class _Route:
    """The reader's side of one started stream: its queue, and whether it has started.

    The queue is unbounded on purpose: its consumer is the app itself, and a full queue would
    block the one reader that feeds every stream of the connection, so one stream read slowly
    would stall all the others. Worst case: one stream's whole output (bounded by its
    max_tokens) waits here; an app that stops reading a stream should cancel it.
    """

    __slots__ = ("queue", "started")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[StreamFrame | _Broken] = asyncio.Queue()
        self.started = False

    def push(self, frame: StreamFrame) -> bool:
        """Queue a frame; True when it is the stream's last."""
        self.queue.put_nowait(frame)
        self.started = self.started or isinstance(frame, StreamStarted)
        return _ends_stream(frame, self.started)


class _Mux:
    """What a Gateway and its streams share: the socket, the routes, the reader's outcome."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.routes: dict[str, _Route] = {}  # started streams whose last frame has not come
        self.connection_errors: list[ErrorFrame] = []
        self.goaway: GoAway | None = None
        self.closed: tuple[int, str] | None = None

    def add(self, stream_id: str, route: _Route) -> None:
        if self.closed is not None:
            raise ConnectionClosedError(*self.closed)
        if stream_id in self.routes:
            raise ValueError(f"stream {stream_id!r} is already open on this connection")
        self.routes[stream_id] = route

    async def send(self, encoded: bytes) -> None:
        try:
            await self.ws.send(encoded, text=True)
        except ConnectionClosed as exc:
            raise ConnectionClosedError(*_close_info(exc)) from exc

    async def read(self) -> None:
        """Route frames until the connection ends, then end every open stream."""
        closed: tuple[int, str] = (CloseCode.NORMAL, "reader stopped by the client")
        cause: BaseException | None = None
        try:
            closed = await self._pump()
        except Exception as exc:
            cause = exc
            closed = (CloseCode.INTERNAL, f"client reader failed: {type(exc).__name__}")
            await self.ws.close(*closed)
            raise
        finally:
            self.closed = closed
            for route in self.routes.values():
                route.queue.put_nowait(_Broken(*closed, cause))
            self.routes.clear()

    async def _pump(self) -> tuple[int, str]:
        while True:
            try:
                data = await self.ws.recv()
            except ConnectionClosed as exc:
                return _close_info(exc)
            try:
                frame = decode_server_frame(data)
            except (ValueError, RecursionError) as exc:  # msgspec.DecodeError is a ValueError
                return await self._violated(f"undecodable frame: {exc}")
            try:
                self.dispatch(frame)
            except _ViolationError as exc:
                return await self._violated(str(exc))

    async def _violated(self, what: str) -> tuple[int, str]:
        # The gateway broke wsgate.v1: nothing after this frame can be trusted.
        reason = _close_reason(f"protocol violation: {what}")
        await self.ws.close(1002, reason)
        return 1002, reason

    def dispatch(self, frame: ServerFrame) -> None:
        if isinstance(frame, GoAway):
            self.goaway = frame
            return
        if isinstance(frame, Heartbeat):
            return  # liveness only
        if isinstance(frame, Ready):
            raise _ViolationError("a second ready frame")
        sid = frame.stream_id
        route = self.routes.get(sid) if sid is not None else None
        if route is None or sid is None:
            if isinstance(frame, ErrorFrame):
                self.connection_errors.append(frame)
            elif not isinstance(frame, Telemetry):  # telemetry is sheddable; late is harmless
                raise _ViolationError(f"{type(frame).__name__} for {sid!r}, not open")
            return
        if route.push(frame):
            del self.routes[sid]


class StreamHandle:
    """One generation stream on a `Gateway`: start it, iterate its frames, cancel it.

    Iteration sends the start frame on first use and yields the stream's frames in order,
    telemetry included; it ends after `finish`, or after a refusal of a stream that never
    started (the `ErrorFrame` is yielded first). If the connection ends before that, the
    frames that arrived are yielded, then `ConnectionClosedError` is raised. The attributes
    (`text`, `events`, `finish_reason`, ...) reflect the frames yielded so far.
    """

    def __init__(self, mux: _Mux, start: Start, encoded: bytes) -> None:
        self.stream_id: str = start.stream_id
        self.request: ChatRequest = start.request
        self.options: StartOptions = start.options
        self.message_id: str | None = None
        self.model: str | None = None
        self.finish_reason: FinishReason | None = None
        self.error: ErrorFrame | None = None
        self.events: list[StreamFrame] = []
        self._mux = mux
        self._encoded = encoded
        self._route = _Route()
        self._texts: list[str] = []
        self._start_sent = False
        self._cancel_sent = False
        self._done = False  # the last frame was yielded
        self._broken: _Broken | None = None

    @property
    def text(self) -> str:
        """All `delta.text` yielded so far, concatenated."""
        if len(self._texts) > 1:
            self._texts[:] = ["".join(self._texts)]
        return self._texts[0] if self._texts else ""

    @property
    def done(self) -> bool:
        """Whether the stream's last frame was yielded (or it was cancelled before starting)."""
        return self._done

    async def start(self) -> None:
        """Send the start frame; later calls, and calls after `cancel`, do nothing.

        Raises `ValueError` if another stream with this id is open, `ConnectionClosedError`
        if the connection has ended.
        """
        if self._start_sent:
            return
        try:
            # Routed before sending: the gateway may answer before send() returns.
            self._mux.add(self.stream_id, self._route)
        except ConnectionClosedError as exc:
            self._start_sent, self._broken = True, _Broken(exc.code, exc.reason)
            raise
        self._start_sent = True
        await self._mux.send(self._encoded)

    async def cancel(self) -> None:
        """Ask the gateway to stop the stream; iterate on to read its `finish` (cancelled).

        Before `start`, the stream is dropped without sending anything. On an ended stream or
        a closed connection it does nothing: iteration reports how the stream ended.
        """
        if not self._start_sent:
            self._start_sent = self._done = True
            return
        if self._cancel_sent or self._mux.routes.get(self.stream_id) is not self._route:
            return
        self._cancel_sent = True
        with contextlib.suppress(ConnectionClosedError):
            await self._mux.send(encode_frame(Cancel(stream_id=self.stream_id)))

    async def collect(self) -> Self:
        """Iterate to the end of the stream and return this handle."""
        async for _ in self:
            pass
        return self

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamFrame:
        await self.start()
        if self._broken is not None:
            raise ConnectionClosedError(self._broken.code, self._broken.reason)
        if self._done:
            raise StopAsyncIteration
        item = await self._route.queue.get()
        if isinstance(item, _Broken):
            self._broken = item
            raise ConnectionClosedError(item.code, item.reason) from item.cause
        self._record(item)
        return item

    def _record(self, frame: StreamFrame) -> None:
        self._done = _ends_stream(frame, self.message_id is not None)
        self.events.append(frame)
        if isinstance(frame, StreamStarted):
            self.message_id, self.model = frame.message_id, frame.model
        elif isinstance(frame, DeltaText):
            self._texts.append(frame.text)
        elif isinstance(frame, ErrorFrame):
            self.error = frame
        elif isinstance(frame, FinishFrame):
            self.finish_reason = frame.reason


class Gateway:
    """One open wsgate connection: creates streams and runs the reader that feeds them.

    `ready` is the gateway's greeting; `connection_errors` collects error frames about no
    open stream (connection-level refusals, and refusals about streams that already ended);
    `goaway` is set when the gateway announces its shutdown.
    """

    def __init__(self, ws: ClientConnection, ready: Ready) -> None:
        self.ready = ready
        self._mux = _Mux(ws)
        self.connection_errors: list[ErrorFrame] = self._mux.connection_errors
        self._ids = itertools.count(1)
        self._reader = asyncio.create_task(self._mux.read(), name=f"wsgate-read-{ready.conn_id}")

    @classmethod
    async def open(
        cls, url: str, *, open_timeout: float = 10, additional_headers: HeadersLike | None = None
    ) -> Self:
        """Open a connection and wait for `ready`, all within `open_timeout` seconds."""
        ws: ClientConnection | None = None
        try:
            async with asyncio.timeout(open_timeout):
                ws = await ws_connect(
                    url,
                    subprotocols=[Subprotocol(PROTOCOL)],
                    additional_headers=additional_headers,
                    compression=None,  # token frames are tiny; deflate costs more than it saves
                    max_size=_MAX_SERVER_FRAME_BYTES,
                    open_timeout=None,
                )
                ready = await _receive_ready(ws)
        except BaseException as exc:
            if ws is not None:
                ws.transport.abort()  # a gateway that did not greet us gets no close handshake
            if isinstance(exc, TimeoutError):
                raise ConnectError(f"{url}: no ready frame within {open_timeout} s") from exc
            if isinstance(exc, OSError | WebSocketException):
                raise ConnectError(f"cannot open {url}: {exc}") from exc
            raise
        return cls(ws, ready)

    @property
    def goaway(self) -> GoAway | None:
        """The gateway's shutdown notice, once it sent one."""
        return self._mux.goaway

    @property
    def closed(self) -> bool:
        """Whether the connection has ended."""
        return self._mux.closed is not None

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code, once the connection has ended."""
        return self._mux.closed[0] if self._mux.closed else None

    @property
    def close_reason(self) -> str | None:
        """The WebSocket close reason, once the connection has ended."""
        return self._mux.closed[1] if self._mux.closed else None

    def stream(
        self,
        request: ChatRequest | dict[str, Any],
        options: StartOptions | dict[str, Any] | None = None,
        *,
        stream_id: str | None = None,
    ) -> StreamHandle:
        """Prepare a stream; nothing is sent until it is started or iterated.

        Raises `ValueError` when the request, options or stream id are invalid, when the
        stream id is open on this connection, or when the start frame exceeds the gateway's
        `max_frame_bytes`.
        """
        if stream_id is None:
            stream_id = next(f"s{n}" for n in self._ids if f"s{n}" not in self._mux.routes)
        elif stream_id in self._mux.routes:
            raise ValueError(f"stream {stream_id!r} is already open on this connection")
        try:
            if not isinstance(request, ChatRequest):
                request = msgspec.convert(request, ChatRequest)
            if options is None:
                options = StartOptions()
            elif not isinstance(options, StartOptions):
                options = msgspec.convert(options, StartOptions)
            start = Start(stream_id=stream_id, request=request, options=options)
            encoded = encode_frame(start)
            # Struct constructors skip constraints (patterns, lengths, ranges); decoding the
            # encoded frame applies them exactly as the gateway will.
            msgspec.json.decode(encoded, type=Start)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid start frame: {exc}") from exc
        limit = self.ready.limits.max_frame_bytes
        if len(encoded) > limit:
            raise ValueError(f"start frame of {len(encoded)} bytes exceeds max {limit}")
        return StreamHandle(self._mux, start, encoded)

    async def close(self) -> None:
        """Close the connection, then stop the reader; open streams raise on iteration.

        Re-raises an exception the reader failed with: it is never swallowed.
        """
        try:
            await self._mux.ws.close()
        finally:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise


async def _receive_ready(ws: ClientConnection) -> Ready:
    if ws.subprotocol != PROTOCOL:
        raise ConnectError(f"the gateway did not agree to subprotocol {PROTOCOL}")
    data = await ws.recv()
    try:
        frame = decode_server_frame(data)
    except (ValueError, RecursionError) as exc:
        raise ConnectError(f"the gateway's first frame is not wsgate.v1: {exc}") from exc
    if not isinstance(frame, Ready):
        raise ConnectError(f"the gateway's first frame is {type(frame).__name__}, not ready")
    return frame


@contextlib.asynccontextmanager
async def connect(
    url: str, *, open_timeout: float = 10, additional_headers: HeadersLike | None = None
) -> AsyncIterator[Gateway]:
    """Open a `Gateway` (waiting for `ready`) and close it on exit; see `Gateway.open`."""
    gateway = await Gateway.open(
        url, open_timeout=open_timeout, additional_headers=additional_headers
    )
    try:
        yield gateway
    finally:
        await gateway.close()


async def chat(
    url: str,
    prompt: str,
    *,
    model: str = "mock",
    out: TextIO | None = None,
    system: str | None = None,
) -> int:
    """Stream one answer to `out` (stdout by default) as it arrives; return an exit code.

    0 when the stream finishes with stop, length or tool_calls; 1 on any error, reported on
    stderr as `wsgate: error <code>: <message>`; 130 on KeyboardInterrupt, after sending
    cancel. On task cancellation (how `asyncio.run` and `uvloop.run` deliver Ctrl-C) it sends
    cancel and re-raises; the runner then raises KeyboardInterrupt, which the CLI maps to 130.
    """
    out = sys.stdout if out is None else out
    messages = [{"role": "user", "content": prompt}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    stream: StreamHandle | None = None
    try:
        async with connect(url) as gateway:
            stream = gateway.stream({"model": model, "messages": messages})
            try:
                async for event in stream:
                    if isinstance(event, DeltaText):
                        out.write(event.text)
                        out.flush()
            except (KeyboardInterrupt, asyncio.CancelledError):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1):  # a stuck socket must not hold Ctrl-C
                        await stream.cancel()
                raise
            return _outcome(out, stream)
    except KeyboardInterrupt:
        _end_line(out, stream)
        return 130
    except asyncio.CancelledError:
        _end_line(out, stream)
        raise
    except ValueError as exc:
        return _fail(out, stream, "bad_request", str(exc))
    except GatewayError as exc:
        code = "connection_closed" if isinstance(exc, ConnectionClosedError) else "connect_failed"
        return _fail(out, stream, code, str(exc))


def _outcome(out: TextIO, stream: StreamHandle) -> int:
    if stream.finish_reason in _SUCCESS:
        out.write("\n")
        out.flush()
        return 0
    if stream.error is not None:
        return _fail(out, stream, stream.error.code, stream.error.message)
    reason = stream.finish_reason or "unfinished"
    return _fail(out, stream, reason, f"the stream finished with reason {reason}")


def _end_line(out: TextIO, stream: StreamHandle | None) -> None:
    if stream is not None and stream.text:
        out.write("\n")
        out.flush()


def _fail(out: TextIO, stream: StreamHandle | None, code: str, message: str) -> int:
    _end_line(out, stream)
    sys.stderr.write(f"wsgate: error {code}: {message}\n")
    sys.stderr.flush()
    return 1
