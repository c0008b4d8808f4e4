"""The Python client (wsgate/client.py) in the agent loop, against a real gateway and its mock.

`StreamHandle.send_tool_result` answers the calls of a `tool.awaiting`; the mock's multi-turn
scripts (`expect_tool_results`) check that every result reached the model as sent, so an
exact final text means each call was answered once and correctly. Refusals of results must
not end the stream, and a drop while the stream awaits its results must neither lose a
result nor send one twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from e2e_helpers import mock_request

from wsgate.app import App
from wsgate.client import (
    Backoff,
    GatewayError,
    StreamHandle,
    ToolResultRefusedError,
    connect,
)
from wsgate.core.frames import ErrorFrame, ToolAwaiting, ToolResultFrame, TurnStarted

WEATHER, CLOCK = "call_mock_0_0", "call_mock_0_1"
ANSWER = "Let me look.Sunny, 21 °C at noon."
LOOP: dict[str, Any] = {"agent": {"client_tools": True}}
DETACHABLE: dict[str, Any] = {**LOOP, "on_disconnect": "continue"}
FAST = Backoff(base=0.01, cap=0.05, timeout=5)


def weather_request(results: dict[str, Any] | None = None) -> dict[str, Any]:
    """Turn 0 calls weather and clock; turn 1 answers once it has exactly `results`."""
    expected = {WEATHER: {"temp_c": 21}, CLOCK: "12:00"} if results is None else results
    script = {
        "turns": [
            {
                "text": "Let me look.",
                "tool_calls": [
                    {"name": "weather", "arguments": '{"city": "Paris"}'},
                    {"name": "clock", "arguments": "{}"},
                ],
            },
            {"text": "Sunny, 21 °C at noon.", "expect_tool_results": expected},
        ]
    }
    return mock_request(script)


async def until_awaiting(stream: StreamHandle) -> ToolAwaiting:
    async for event in stream:
        if isinstance(event, ToolAwaiting):
            return event
    raise AssertionError(f"the stream ended without tool.awaiting: {stream.events}")


def drop_all(app: App) -> None:
    """Reset every client connection of the gateway (no close frame, as a lost network)."""
    assert app.gateway is not None
    for connection in list(app.gateway.connections):
        transport = connection.ws.transport
        assert transport is not None
        transport.abort()


def of_type(stream: StreamHandle, kind: type) -> list[Any]:
    return [event for event in stream.events if isinstance(event, kind)]


async def test_results_sent_while_the_stream_awaits_them_finish_it_with_the_exact_text(app):
    async with connect(app.url) as gateway:
        stream = gateway.stream(weather_request(), LOOP)
        awaiting = await until_awaiting(stream)
        assert awaiting.call_ids == [WEATHER, CLOCK]
        assert stream.awaiting is awaiting
        # The reader answers them: nothing iterates the stream meanwhile.
        weather, clock = await asyncio.gather(
            stream.send_tool_result(WEATHER, {"temp_c": 21}),
            stream.send_tool_result(CLOCK, "12:00"),
        )
        await stream.collect()
    assert isinstance(weather, ToolResultFrame)
    assert (weather.call_id, weather.source) == (WEATHER, "client")
    assert clock.call_id == CLOCK
    assert stream.text == ANSWER
    assert stream.finish_reason == "stop"
    assert stream.error is None
    assert stream.awaiting is None
    assert [f.turn for f in of_type(stream, TurnStarted)] == [2]


async def test_an_error_result_reaches_the_model_as_an_error_object(app):
    failed = {"error": {"code": "tool_error", "message": "no network"}}
    async with connect(app.url) as gateway:
        stream = gateway.stream(weather_request({WEATHER: failed, CLOCK: "12:00"}), LOOP)
        await until_awaiting(stream)
        error = {"code": "tool_error", "message": "no network"}
        taken = await stream.send_tool_result(WEATHER, error=error)
        await stream.send_tool_result(CLOCK, "12:00")
        await stream.collect()
    assert (taken.call_id, taken.source) == (WEATHER, "client")
    assert stream.text == ANSWER  # the mock got the error object
    assert stream.finish_reason == "stop"


async def test_refused_results_raise_and_the_stream_goes_on_to_its_finish(app):
    async with connect(app.url) as gateway:
        stream = gateway.stream(weather_request(), LOOP)
        await until_awaiting(stream)
        await stream.send_tool_result(WEATHER, {"temp_c": 21})
        with pytest.raises(ToolResultRefusedError) as duplicate:
            await stream.send_tool_result(WEATHER, {"temp_c": 99})
        with pytest.raises(ToolResultRefusedError) as unknown:
            await stream.send_tool_result("call_nobody", 1)
        await stream.send_tool_result(CLOCK, "12:00")
        await stream.collect()
        assert gateway.connection_errors == []
    assert duplicate.value.code == "duplicate_tool_result"
    assert duplicate.value.frame.stream_id == stream.stream_id
    assert unknown.value.code == "unknown_tool_call"
    assert stream.text == ANSWER  # the mock saw 21, not 99
    assert stream.finish_reason == "stop"
    assert stream.error is None, "a refused result is no error of the stream"
    refusals = [e.code for e in of_type(stream, ErrorFrame) if e.seq is None]
    assert refusals == ["duplicate_tool_result", "unknown_tool_call"]
    with pytest.raises(GatewayError, match="ended"):
        await stream.send_tool_result(CLOCK, "late")


async def test_a_refused_result_does_not_end_a_resumed_stream(app):
    async with connect(app.url, backoff=FAST) as gateway:
        stream = gateway.stream(weather_request(), DETACHABLE)
        await until_awaiting(stream)
        drop_all(app)
        await stream.send_tool_result(WEATHER, {"temp_c": 21})  # after the resume
        with pytest.raises(ToolResultRefusedError, match="duplicate_tool_result"):
            await stream.send_tool_result(WEATHER, {"temp_c": 21})
        await stream.send_tool_result(CLOCK, "12:00")
        await stream.collect()
    assert stream.resumes == 1
    assert stream.text == ANSWER
    assert stream.finish_reason == "stop"


def lose_from(mux: Any, first: Callable[[Any], bool]) -> None:
    """The first connection loses every frame from the one `first` picks on (it drops then),
    as a network that dies with that frame in flight: the client never reads it or later ones.
    """
    dispatch, lost = mux.dispatch, False

    def lossy(frame: Any) -> None:
        nonlocal lost
        if mux.gen == 0 and (lost or first(frame)):
            if not lost:
                lost = True
                mux.ws.transport.abort()
            return
        dispatch(frame)

    mux.dispatch = lossy


async def test_a_result_taken_just_before_a_drop_is_not_written_again(app):
    async with connect(app.url, backoff=FAST) as gateway:
        # Its tool.result dies with the first connection; the resume's replay brings it.
        lose_from(gateway._mux, lambda f: isinstance(f, ToolResultFrame))
        stream = gateway.stream(weather_request(), DETACHABLE)
        await until_awaiting(stream)
        taken = await stream.send_tool_result(WEATHER, {"temp_c": 21})
        await stream.send_tool_result(CLOCK, "12:00")
        await stream.collect()
    assert taken.call_id == WEATHER
    assert stream.resumes == 1
    assert stream.text == ANSWER
    assert stream.finish_reason == "stop"
    assert of_type(stream, ErrorFrame) == [], "no duplicate_tool_result: one write per call"
    assert [f.call_id for f in of_type(stream, ToolResultFrame)] == [WEATHER, CLOCK]


async def test_a_result_lost_with_the_connection_is_written_again_after_the_resume(app):
    async with connect(app.url, backoff=FAST) as gateway:
        mux = gateway._mux
        write, writes = mux._write, []

        async def lossy(ws: Any, data: bytes) -> None:
            writes.append(mux.gen)
            if mux.gen == 0:
                ws.transport.abort()  # the connection dies with the result unsent
                return
            await write(ws, data)

        mux._write = lossy
        stream = gateway.stream(weather_request(), DETACHABLE)
        await until_awaiting(stream)
        await asyncio.gather(
            stream.send_tool_result(WEATHER, {"temp_c": 21}),
            stream.send_tool_result(CLOCK, "12:00"),
        )
        await stream.collect()
    assert writes == [0, 1, 1], "the lost one again on the new connection, then the next"
    assert stream.resumes == 1
    assert stream.text == ANSWER
    assert stream.finish_reason == "stop"
    assert of_type(stream, ErrorFrame) == []


async def test_invalid_results_raise_value_error_before_anything_is_sent(app):
    async with connect(app.url) as gateway:
        stream = gateway.stream(weather_request(), LOOP)
        with pytest.raises(ValueError, match="not started"):
            await stream.send_tool_result(WEATHER, 1)
        await until_awaiting(stream)
        with pytest.raises(ValueError, match="exactly one"):
            await stream.send_tool_result(WEATHER)
        with pytest.raises(ValueError, match="exactly one"):
            await stream.send_tool_result(WEATHER, 1, error={"code": "x", "message": "y"})
        with pytest.raises(ValueError, match="invalid tool_result"):
            await stream.send_tool_result(WEATHER, error={"code": "Bad Code", "message": "y"})
        with pytest.raises(ValueError, match="invalid tool_result"):
            await stream.send_tool_result("", 1)
        with pytest.raises(ValueError, match="exceeds max"):
            await stream.send_tool_result(WEATHER, "x" * gateway.ready.limits.max_frame_bytes)
        await stream.cancel()
        await stream.collect()
    assert stream.finish_reason == "cancelled"
    assert of_type(stream, ErrorFrame) == []
