"""The transport-level limits (gateway/guard.py), and a pin per websockets internal they use.

The pins (`test_pin_*`) hold each assumption of guard.py's docstring against real websockets
17 servers on 127.0.0.1 and fail with a message naming it, so an upgrade past the pinned
range (`websockets>=17.0,<18`) that breaks one is caught here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import pytest
import trustme
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from wsgate.gateway import guard as guard_module
from wsgate.gateway.accounting import Accounting
from wsgate.gateway.guard import Guard, GuardedConnection, GuardOptions, fit_open_files

PIN = "websockets>=17.0,<18 (pyproject.toml)"
UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
PING = Frame(Opcode.PING, b"p" * 125).serialize(mask=True, extensions=[])


def make_guard(
    *, buffer_bytes: int = 64 * 1024, send_timeout: float = 5.0, **options: Any
) -> Guard:
    return Guard(
        GuardOptions(**options),
        Accounting(),
        buffer_bytes=buffer_bytes,
        send_timeout=send_timeout,
        probe_paths=frozenset({"/livez"}),
    )


@asynccontextmanager
async def guarded(
    guard: Guard,
    *,
    process_request: Callable[[ServerConnection, Request], Response | None] | None = None,
    **kwargs: Any,
) -> AsyncIterator[int]:
    """A websockets server whose connections report to `guard`; its port."""

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    kwargs.setdefault("open_timeout", guard.options.handshake_timeout)
    async with serve(
        handler,
        "127.0.0.1",
        0,
        compression=None,
        create_connection=guard.connection_class(),
        process_request=process_request or (lambda ws, _request: guard.admit(ws)),
        ping_interval=None,
        **kwargs,
    ) as server:
        yield server.sockets[0].getsockname()[1]


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polling the guard's counters
            await asyncio.sleep(0.01)


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Read until the server closes (EOF or reset); what it sent."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    return data


def never_reading_socket(port: int) -> socket.socket:
    """A blocking client socket with a small receive buffer, so the server's fills quickly."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


# --- pins of the websockets internals guard.py relies on ---------------------------------


async def test_pin_create_connection_builds_each_connection_at_tcp_accept_before_tls():
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    guard = make_guard(handshake_timeout=0.3)
    async with guarded(guard, ssl=context) as port:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await until(lambda: guard.pending == 1)  # no TLS byte was sent
        except TimeoutError:
            pytest.fail(f"create_connection(...) is no longer called at TCP accept ({PIN})")
        writer.close()


async def test_pin_a_failed_tls_handshake_tells_the_connection_nothing_so_its_deadline_frees_it():
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    guard = make_guard(handshake_timeout=0.5)
    async with guarded(guard, ssl=context) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(UPGRADE)  # plain HTTP to a TLS port: the TLS handshake fails
        await closed_by_server(reader)
        writer.close()
        await asyncio.sleep(0.1)
        assert guard.pending == 1, f"connection_lost now follows a failed TLS handshake ({PIN})"
        await until(lambda: guard.pending == 0)
    assert guard.accounting.handshake_timeouts == 1


async def test_pin_websockets_writes_its_pongs_into_the_transport_inside_data_received():
    guard = make_guard(buffer_bytes=10**9)
    async with guarded(guard) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(UPGRADE)
        response = await reader.readuntil(b"\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 101"), response
        writer.write(PING)
        pong = await asyncio.wait_for(reader.readexactly(2 + 125), 2)
        assert pong[0] == 0x8A, f"websockets answers a ping with a pong by itself ({PIN})"
        writer.close()
    # That pong went through data_received (the only place the guard checks the buffer).
    sent: list[bytes] = []
    connection = offline_connection(guard, sent)
    connection.data_received(PING)
    assert sent == [pong], f"the pong is written inside data_received ({PIN})"


async def test_pin_handshake_returns_with_the_refusal_in_response():
    guard = make_guard()

    def refuse(ws: ServerConnection, _request: Request) -> Response:
        return ws.respond(HTTPStatus.FORBIDDEN, "no\n")

    async with guarded(guard, process_request=refuse) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(UPGRADE)
        assert (await closed_by_server(reader)).startswith(b"HTTP/1.1 403")
        writer.close()
        await until(lambda: guard.pending == 0)
    assert guard.accounting.handshakes_refused == {"403": 1}, f"handshake() / response ({PIN})"


async def test_pin_an_unparsable_request_leaves_its_reason_in_handshake_exc():
    guard = make_guard()
    async with guarded(guard) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
        assert (await closed_by_server(reader)).startswith(b"HTTP/1.1 431")
        writer.close()
        await until(lambda: guard.pending == 0)
    assert guard.accounting.handshakes_refused == {"431": 1}, f"protocol.handshake_exc ({PIN})"


async def test_pin_a_protocol_error_leaves_websockets_close_frame_in_close_sent():
    guard = make_guard()
    async with guarded(guard) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(UPGRADE)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(Frame(Opcode.TEXT, b"unmasked").serialize(mask=False, extensions=[]))
        await closed_by_server(reader)
        writer.close()
        await until(lambda: guard.open == 0 and bool(guard.accounting.protocol_closes))
    assert guard.accounting.protocol_closes == {"1002": 1}, f"protocol.close_sent ({PIN})"


async def test_pin_the_transport_pauses_the_connection_when_the_client_stops_reading():
    guard = make_guard(buffer_bytes=10**9, send_timeout=0.3)
    paused = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(Exception):
            while True:
                ws.transport.write(b"x" * 65536)  # below websockets, as pongs are
                if ws.paused:
                    paused.set()
                await asyncio.sleep(0)

    async with serve(
        handler, "127.0.0.1", 0, create_connection=guard.connection_class(), compression=None
    ) as server:
        sock = never_reading_socket(server.sockets[0].getsockname()[1])
        sock.sendall(UPGRADE)
        try:
            await asyncio.wait_for(paused.wait(), 5)
        except TimeoutError:
            pytest.fail(f"pause_writing no longer sets ServerConnection.paused ({PIN})")
        await until(lambda: bool(guard.accounting.transport_overflows))
        sock.close()
    assert guard.accounting.transport_overflows == {"send_timeout": 1}


# --- the write buffer ---------------------------------------------------------------------


class FakeServer:
    """What websockets' connection_made needs of its server: a handler and its task set."""

    def __init__(self) -> None:
        self.handler_tasks: set[asyncio.Task[None]] = set()

    async def handler(self, _ws: ServerConnection) -> None:
        return


class NeverReadTransport(asyncio.Transport):
    """A transport whose client never reads: every byte written stays buffered."""

    def __init__(self, sent: list[bytes]) -> None:
        super().__init__()
        self.sent = sent
        self.closing = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.sent))

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        self.reading = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 4242) if name == "peername" else default


def offline_connection(guard: Guard, sent: list[bytes]) -> GuardedConnection:
    """An upgraded guarded connection on a transport that keeps what is written to it."""
    cls = guard.connection_class()
    connection = cls(ServerProtocol(state=State.OPEN), FakeServer())  # type: ignore[arg-type]
    connection.connection_made(NeverReadTransport(sent))
    connection.request = Request("/", Headers())  # as the upgrade would
    connection._end_pending()
    return connection


async def test_a_client_pinging_without_reading_overflows_once_past_the_cap_and_is_read_no_more():
    guard = make_guard(buffer_bytes=16 * 1024)
    sent: list[bytes] = []
    connection = offline_connection(guard, sent)
    calls: list[tuple[str, int]] = []
    connection.on_overflow = lambda reason, buffered: calls.append((reason, buffered))
    for _ in range(1000):
        connection.data_received(PING * 10)
    assert len(calls) == 1
    reason, buffered = calls[0]
    assert reason == "buffer_full"
    assert 16 * 1024 < buffered <= 16 * 1024 + 10 * 127  # the cap, plus one read's pongs
    assert connection.transport.get_write_buffer_size() == buffered  # nothing answered since
    assert not connection.transport.reading  # type: ignore[attr-defined]
    assert guard.accounting.transport_overflows == {"buffer_full": 1}


async def test_an_overflowing_connection_whose_hook_does_not_close_it_is_aborted_after_a_grace(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(guard_module, "OVERFLOW_GRACE_S", 0.05)
    guard = make_guard(buffer_bytes=1024)
    connection = offline_connection(guard, [])
    connection.on_overflow = lambda _reason, _buffered: None
    connection.data_received(PING * 20)
    assert not connection.transport.is_closing()
    await asyncio.sleep(0.1)
    assert connection.transport.is_closing()


async def test_without_a_hook_an_overflow_counts_a_slow_consumer_and_aborts_at_once():
    guard = make_guard(buffer_bytes=1024)
    connection = offline_connection(guard, [])
    connection.data_received(PING * 20)
    assert connection.transport.is_closing()
    assert guard.accounting.slow_consumers == 1


async def test_a_client_pinging_and_never_reading_on_a_real_socket_is_cut():
    guard = make_guard(buffer_bytes=256 * 1024)
    async with guarded(guard) as port:
        sock = never_reading_socket(port)
        sock.sendall(UPGRADE)
        sock.settimeout(5)
        with contextlib.suppress(OSError):  # the reset ends the flood
            for _ in range(200_000):
                sock.sendall(PING * 64)
                await asyncio.sleep(0)
        sock.close()
        await until(lambda: guard.open == 0)
    assert guard.accounting.transport_overflows["buffer_full"] == 1
    assert guard.accounting.slow_consumers == 1


# --- pending handshakes and their deadline --------------------------------------------------


async def test_past_max_pending_handshakes_a_new_connection_is_aborted_at_once():
    guard = make_guard(max_pending_handshakes=2)
    async with guarded(guard) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await until(lambda: guard.pending == 2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_by_server(reader, timeout=1) == b""
        writer.close()
        assert guard.accounting.pending_handshakes_refused == 1
        for _reader, held_writer in held:
            held_writer.close()
        await until(lambda: guard.pending == 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # room again
        writer.write(UPGRADE)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        writer.close()


async def test_a_handshake_past_its_deadline_is_aborted_and_counted():
    guard = make_guard(handshake_timeout=0.3)
    async with guarded(guard, open_timeout=10) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(UPGRADE[:40])  # half a request, and nothing more
        loop = asyncio.get_running_loop()
        began = loop.time()
        await closed_by_server(reader)
        assert loop.time() - began < 1.0
        writer.close()
    assert guard.accounting.handshake_timeouts == 1
    assert guard.pending == 0


async def test_a_handshake_cancelled_by_websockets_open_timeout_gives_its_slot_back():
    guard = make_guard(handshake_timeout=10)
    async with guarded(guard, open_timeout=0.2) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await closed_by_server(reader)
        writer.close()
        await until(lambda: guard.pending == 0)
    assert guard.accounting.handshake_timeouts == 1


async def test_a_probe_answer_is_not_a_refusal():
    guard = make_guard()

    def probe(ws: ServerConnection, request: Request) -> Response:
        status = HTTPStatus.SERVICE_UNAVAILABLE if request.path == "/livez" else HTTPStatus.OK
        return ws.respond(status, "probe\n")

    async with guarded(guard, process_request=probe) as port:
        for path in (b"/livez", b"/other"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            await closed_by_server(reader)
            writer.close()
        await until(lambda: guard.pending == 0)
    assert guard.accounting.handshakes_refused == {}


# --- connection caps ---------------------------------------------------------------------


async def upgrade(port: int) -> tuple[bytes, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(UPGRADE)
    return await reader.readuntil(b"\r\n\r\n"), writer


async def test_past_max_connections_per_ip_a_new_upgrade_gets_503_with_retry_after():
    guard = make_guard(max_connections_per_ip=2)
    async with guarded(guard) as port:
        first, second = await upgrade(port), await upgrade(port)
        assert first[0].startswith(b"HTTP/1.1 101")
        assert second[0].startswith(b"HTTP/1.1 101")
        head, writer = await upgrade(port)
        assert head.startswith(b"HTTP/1.1 503")
        assert b"\r\nRetry-After: 5\r\n" in head
        writer.close()
        assert guard.per_ip == {"127.0.0.1": 2}
        for _, open_writer in (first, second):
            open_writer.close()
        await until(lambda: guard.open == 0)
        assert guard.per_ip == {}  # slots are given back
        head, writer = await upgrade(port)
        assert head.startswith(b"HTTP/1.1 101")
        writer.close()
    assert guard.accounting.connection_cap_refusals == {"max_connections_per_ip": 1}
    assert guard.accounting.handshakes_refused == {"503": 1}


async def test_past_max_connections_a_new_upgrade_gets_503():
    guard = make_guard(max_connections=1, max_connections_per_ip=0)
    async with guarded(guard) as port:
        head, first = await upgrade(port)
        assert head.startswith(b"HTTP/1.1 101")
        head, writer = await upgrade(port)
        assert head.startswith(b"HTTP/1.1 503")
        writer.close()
        first.close()
    assert guard.accounting.connection_cap_refusals == {"max_connections": 1}
    assert guard.per_ip == {}  # 0: addresses are not tracked


# --- open files ----------------------------------------------------------------------------


class FakeRlimit:
    """resource.getrlimit / setrlimit for RLIMIT_NOFILE, without touching the process."""

    def __init__(self, soft: int, hard: int, *, settable: bool = True) -> None:
        self.limits = (soft, hard)
        self.settable = settable

    def getrlimit(self, _which: int) -> tuple[int, int]:
        return self.limits

    def setrlimit(self, _which: int, limits: tuple[int, int]) -> None:
        if not self.settable:
            raise ValueError("not allowed")
        self.limits = limits


@pytest.mark.parametrize(
    ("soft", "hard", "settable", "effective", "now"),
    [
        (1024, 65536, True, 10_000, 65536),  # raised: it fits
        (1024, 4096, True, 4096 - 384, 4096),  # raised, still too small: lowered
        (1024, 65536, False, 1024 - 384, 1024),  # cannot raise: lowered
    ],
)
def test_fit_open_files_raises_the_soft_limit_and_lowers_a_cap_that_does_not_fit(  # noqa: PLR0917 - the table's columns
    monkeypatch: pytest.MonkeyPatch, soft: int, hard: int, settable: bool, effective: int, now: int
):
    fake = FakeRlimit(soft, hard, settable=settable)
    monkeypatch.setattr(guard_module.resource, "getrlimit", fake.getrlimit)
    monkeypatch.setattr(guard_module.resource, "setrlimit", fake.setrlimit)
    assert fit_open_files(10_000, reserve=384) == effective
    assert fake.limits[0] == now


async def test_a_warning_is_logged_once_open_connections_pass_ninety_percent_of_the_cap():
    guard = make_guard(max_connections=10, max_connections_per_ip=0)
    async with guarded(guard) as port:
        writers = []
        for _ in range(9):
            head, writer = await upgrade(port)
            assert head.startswith(b"HTTP/1.1 101")
            writers.append(writer)
        assert guard._log_near.count == 1
        for writer in writers:
            writer.close()
