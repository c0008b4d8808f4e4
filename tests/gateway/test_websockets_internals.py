"""Pins of the websockets internals the writer relies on (gateway/writer.py).

Each test holds one assumption against a real server and client on 127.0.0.1 and fails
with a message naming it, so that an upgrade past the pinned range (`websockets>=17.0,<18`
in pyproject.toml) that breaks one is caught here, not in production.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection, serve
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

PIN = "websockets>=17.0,<18 (pyproject.toml)"


@asynccontextmanager
async def pair(**client: object) -> AsyncIterator[tuple[ServerConnection, ClientConnection]]:
    """A server connection and the client connected to it."""
    accepted: asyncio.Queue[ServerConnection] = asyncio.Queue()
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        accepted.put_nowait(ws)
        await done.wait()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:  # as the gateway
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}"
        async with connect(url, compression=None, **client) as ws:  # type: ignore[arg-type]
            server_ws = await accepted.get()
            try:
                yield server_ws, ws
            finally:
                done.set()


def server_frames(data: bytes) -> list[Frame]:
    """Decode server-to-client bytes with websockets' own client-side parser."""
    client = ClientProtocol(parse_uri("ws://pin.test/"), state=State.OPEN, max_size=None)
    client.receive_data(data)
    assert client.parser_exc is None, client.parser_exc
    return [event for event in client.events_received() if isinstance(event, Frame)]


async def test_the_server_connection_exposes_its_sans_io_protocol_and_transport():
    async with pair() as (server, _client):
        assert isinstance(server.protocol, ServerProtocol), f"ws.protocol changed ({PIN})"
        assert server.protocol.state is State.OPEN, f"ws.protocol.state / State.OPEN ({PIN})"
        transport = server.transport
        for method in ("write", "is_closing", "get_write_buffer_size", "abort"):
            assert callable(getattr(transport, method, None)), f"ws.transport.{method} ({PIN})"


async def test_send_text_in_the_open_state_queues_exactly_those_frames():
    async with pair() as (server, client):
        protocol = server.protocol
        assert protocol.data_to_send() == [], f"nothing pending between events ({PIN})"
        protocol.send_text(b'{"a":1}')
        protocol.send_text(b'{"b":2}')
        data = b"".join(protocol.data_to_send())
        frames = server_frames(data)
        assert [(f.opcode, f.data, f.fin) for f in frames] == [
            (Opcode.TEXT, b'{"a":1}', True),
            (Opcode.TEXT, b'{"b":2}', True),
        ], f"send_text + data_to_send frame text messages, nothing else ({PIN})"
        server.transport.write(data)  # what the writer does with them
        assert await client.recv() == '{"a":1}'
        assert await client.recv() == '{"b":2}'


async def test_send_context_is_an_argumentless_async_context_manager():
    assert hasattr(Connection, "send_context"), f"Connection.send_context() is gone ({PIN})"
    signature = inspect.signature(Connection.send_context)
    required = [
        p
        for name, p in signature.parameters.items()
        if name != "self" and p.default is inspect.Parameter.empty
    ]
    assert required == [], f"send_context() takes no required argument ({PIN})"
    async with pair() as (server, _client), server.send_context():
        pass  # an open, unpaused connection: enters and leaves at once


async def test_send_context_raises_connection_closed_once_the_connection_is_closed():
    async with pair() as (server, client):
        await client.close()
        await server.wait_closed()
        with pytest.raises(websockets.ConnectionClosed):
            async with server.send_context():
                pass


async def test_paused_follows_the_transports_flow_control_and_send_context_waits_for_it():
    async with pair() as (server, _client):
        assert server.paused is False, f"Connection.paused is a plain flag ({PIN})"
        server.pause_writing()  # what the transport calls past its high-water mark
        assert server.paused is True, f"pause_writing sets Connection.paused ({PIN})"
        entered = asyncio.Event()

        async def send() -> None:
            async with server.send_context():
                pass
            entered.set()

        waiting = asyncio.create_task(send())
        await asyncio.sleep(0.05)
        assert not entered.is_set(), f"send_context() waits while paused ({PIN})"
        server.resume_writing()
        assert server.paused is False, f"resume_writing clears Connection.paused ({PIN})"
        async with asyncio.timeout(1):
            await waiting
        assert entered.is_set()


async def test_a_client_that_stops_reading_pauses_the_server_connection():
    async with pair(max_queue=1) as (server, client):
        client.transport.pause_reading()  # the client stops reading its socket
        payload = b'"' + b"x" * 65_534 + b'"'
        async with asyncio.timeout(10):
            while not server.paused:
                server.protocol.send_text(payload)
                server.transport.write(b"".join(server.protocol.data_to_send()))
                await asyncio.sleep(0)
        assert server.transport.get_write_buffer_size() > 0, f"paused means buffered ({PIN})"
        server.transport.abort()  # no close handshake behind megabytes nobody reads
        client.transport.abort()
