"""Every provider fault the mock can inject, end to end, with its documented outcome.

Each fault runs on a connection beside a healthy "bystander" stream, which must finish
byte-exact whatever happens to its neighbour; afterwards no provider response may be left
open (the mock counts them). The outcomes are the table in PROTOCOL.md §10.2.
"""

from __future__ import annotations

import asyncio

import pytest
from e2e_helpers import assert_gapless, mock_request, raw_connect, stream_text

from wsgate.app import MOCK_ROUTES

BOTH_READERS = True  # the upstream contract: push and pull (conftest.py)

MODELS = sorted(MOCK_ROUTES)
BYSTANDER = "The bystander is not disturbed by its neighbour."
FAST_RETRIES = {"upstream.retry_base_ms": 1, "upstream.retry_max_ms": 5}


async def run_beside_bystander(app, request, *, options=None, timeout=20.0):
    """Run `request` as stream "f" next to a healthy paced stream; return f's frames."""
    bystander = mock_request({"text": BYSTANDER, "tokens_per_s": 100}, model="mock")
    async with raw_connect(app.url) as conn:
        await conn.start("ok", bystander)
        await conn.start("f", request, options)
        frames = await conn.finishes({"ok", "f"}, timeout=timeout)
    assert stream_text(frames["ok"]) == BYSTANDER
    assert frames["ok"][-1]["reason"] == "stop"
    assert_gapless(frames["ok"])
    assert_gapless(frames["f"])
    await no_response_left_open(app.mock)
    return frames["f"]


async def no_response_left_open(mock, timeout=5.0):
    async with asyncio.timeout(timeout):
        while mock.open_connections:  # noqa: ASYNC110 - the mock offers a counter, no event
            await asyncio.sleep(0.01)


def only(frames, kind):
    return [frame for frame in frames if frame["type"] == kind]


def assert_failed(frames, code, *, retryable):
    error, finish = frames[-2:]
    assert error["type"] == "error"
    assert (error["code"], error["retryable"]) == (code, retryable), error
    assert finish["reason"] == ("timeout" if code == "upstream_timeout" else "error")
    return error


def assert_one_start_and_role(frames):
    assert len(only(frames, "stream.started")) == 1
    assert len(only(frames, "delta.role")) <= 1


# --- HTTP status faults: retried before the first token ------------------------------------


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("status", [429, 500, 503, 529])
async def test_a_failing_status_before_the_first_token_is_retried_and_the_client_sees_one_stream(
    start_app, model, status
):
    app = await start_app(**FAST_RETRIES)
    tag = f"st-{model}-{status}"
    script = {"text": "Second time lucky.", "status": status, "fail_first": 2, "tag": tag}
    frames = await run_beside_bystander(app, mock_request(script, model=model))
    assert stream_text(frames) == "Second time lucky."
    assert frames[-1]["reason"] == "stop"
    assert_one_start_and_role(frames)
    assert len(app.mock.find_all(tag)) == 3
    assert app.gateway.shared.accounting.upstream_retries == 2


async def test_retry_after_is_honoured_between_attempts(start_app):
    app = await start_app(**FAST_RETRIES)
    script = {"text": "ok", "status": 429, "retry_after": 0.3, "fail_first": 1, "tag": "ra"}
    frames = await run_beside_bystander(app, mock_request(script))
    assert stream_text(frames) == "ok"
    first, second = app.mock.find_all("ra")[-2:]
    assert second.started_at - first.started_at >= 0.3


async def test_a_rate_limit_that_outlasts_the_retry_budget_reaches_the_client_typed(start_app):
    app = await start_app(**FAST_RETRIES, **{"upstream.retry_budget_s": 1})
    script = {"status": 429, "retry_after": 30, "tag": "budget"}
    frames = await run_beside_bystander(app, mock_request(script))
    error = assert_failed(frames, "upstream_rate_limited", retryable=True)
    assert error["retry_after_ms"] == 30_000
    assert len(app.mock.find_all("budget")) == 1  # a 30 s wait does not fit a 1 s budget


@pytest.mark.parametrize("model", MODELS)
async def test_a_persistent_server_error_ends_the_stream_after_the_retries(start_app, model):
    app = await start_app(**FAST_RETRIES)
    tag = f"5xx-{model}"
    frames = await run_beside_bystander(app, mock_request({"status": 503, "tag": tag}, model=model))
    assert_failed(frames, "upstream_error", retryable=True)
    assert len(app.mock.find_all(tag)) == 3  # the call and two retries
    assert stream_text(frames) == ""


@pytest.mark.parametrize("model", MODELS)
async def test_a_rejection_is_not_retried(start_app, model):
    app = await start_app(**FAST_RETRIES)
    tag = f"400-{model}"
    frames = await run_beside_bystander(app, mock_request({"status": 400, "tag": tag}, model=model))
    assert_failed(frames, "upstream_rejected", retryable=False)
    assert len(app.mock.find_all(tag)) == 1


# --- 200, then trouble -----------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
async def test_an_in_band_error_before_the_first_token_is_retried(start_app, model):
    app = await start_app(**FAST_RETRIES)
    tag = f"ib0-{model}"
    script = {"text": "After the storm.", "error_after": 0, "fail_first": 1, "tag": tag}
    frames = await run_beside_bystander(app, mock_request(script, model=model))
    assert stream_text(frames) == "After the storm."
    assert_one_start_and_role(frames)
    assert len(app.mock.find_all(tag)) == 2


@pytest.mark.parametrize("model", MODELS)
async def test_an_in_band_error_after_tokens_keeps_them_and_ends_retryable_without_retry(
    start_app, model
):
    app = await start_app(**FAST_RETRIES)
    tag = f"ib2-{model}"
    script = {"text": "one two three four", "error_after": 2, "tag": tag}
    frames = await run_beside_bystander(app, mock_request(script, model=model))
    assert stream_text(frames) == "one two"
    error = assert_failed(frames, "upstream_error", retryable=True)
    assert "one" not in error["message"]  # provider text never reaches the wire
    assert len(app.mock.find_all(tag)) == 1


@pytest.mark.parametrize("model", MODELS)
async def test_a_json_error_body_with_status_200_is_an_error_not_a_stream(start_app, model):
    app = await start_app(**{"upstream.retry_attempts": 0})
    frames = await run_beside_bystander(app, mock_request({"json_error": True}, model=model))
    assert_failed(frames, "upstream_error", retryable=True)


@pytest.mark.parametrize("model", MODELS)
async def test_a_truncated_stream_is_an_error_never_a_stop(app, model):
    tag = f"trunc-{model}"
    script = {"text": "alpha beta gamma delta", "truncate_after": 2, "tag": tag}
    frames = await run_beside_bystander(app, mock_request(script, model=model))
    assert stream_text(frames) == "alpha beta"
    error, finish = frames[-2:]
    assert error["code"] in {"upstream_error", "upstream_protocol"}
    assert error["retryable"] is True
    assert finish["reason"] == "error"


# --- time ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
async def test_a_stall_before_the_headers_times_out_and_closes_the_call(start_app, model):
    app = await start_app(**{"upstream.first_byte_timeout_s": 0.3})
    tag = f"hstall-{model}"
    script = {"text": "late", "headers_delay_ms": 5000, "tag": tag}
    frames = await run_beside_bystander(app, mock_request(script, model=model))
    assert_failed(frames, "upstream_timeout", retryable=True)
    await app.mock.wait_disconnected(tag, timeout=5)


@pytest.mark.parametrize("model", MODELS)
async def test_a_stall_mid_stream_longer_than_the_idle_timeout_keeps_the_text_and_times_out(
    start_app, model
):
    app = await start_app(**{"upstream.idle_timeout_s": 0.3})
    tag = f"mstall-{model}"
    script = {"text": "a b c d", "stall_after": 2, "stall_ms": 5000, "tag": tag}
    frames = await run_beside_bystander(app, mock_request(script, model=model))
    assert stream_text(frames) == "a b"
    assert_failed(frames, "upstream_timeout", retryable=True)
    await app.mock.wait_disconnected(tag, timeout=5)


async def test_a_short_stall_mid_stream_is_only_a_pause(start_app):
    app = await start_app(**{"upstream.idle_timeout_s": 2})
    script = {"text": "a b c d", "stall_after": 2, "stall_ms": 200}
    frames = await run_beside_bystander(app, mock_request(script))
    assert stream_text(frames) == "a b c d"
    assert frames[-1]["reason"] == "stop"


async def test_a_one_byte_per_second_drip_is_bounded_by_the_first_token_timeout(start_app):
    app = await start_app(**{"upstream.first_token_timeout_s": 1.0})
    script = {"text": "drip", "drip_bytes_per_s": 1, "tag": "drip"}
    frames = await run_beside_bystander(app, mock_request(script))
    assert_failed(frames, "upstream_timeout", retryable=True)
    await app.mock.wait_disconnected("drip", timeout=5)


@pytest.mark.parametrize("model", MODELS)
async def test_a_fast_drip_one_byte_per_write_still_gives_the_exact_text(app, model):
    script = {"text": "Ünïcödé 🎉 drip", "drip_bytes_per_s": 20000}
    frames = await run_beside_bystander(app, mock_request(script, model=model), timeout=40)
    assert stream_text(frames) == "Ünïcödé 🎉 drip"


# --- bytes and shapes ------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
async def test_multibyte_characters_split_across_tcp_writes_arrive_whole(app, model):
    text = "Çà et là: 日本語のテキスト, emoji 👩‍👩‍👧 and ﷽."
    script = {"text": text, "split_writes": 1}
    frames = await run_beside_bystander(app, mock_request(script, model=model))
    assert stream_text(frames) == text
    assert "\ufffd" not in stream_text(frames)


@pytest.mark.parametrize("model", MODELS)
async def test_a_surrogate_pair_split_across_events_is_joined(app, model):
    text = "smile 😀 and 🎉 party"
    script = {"text": text, "split_surrogates": True}
    frames = await run_beside_bystander(app, mock_request(script, model=model))
    assert stream_text(frames) == text


async def test_tool_calls_without_an_index_are_assembled(app):
    script = {
        "tool_index": False,
        "tool_calls": [
            {"name": "a", "arguments": '{"x": 1}', "id": "call_a"},
            {"name": "b", "arguments": '{"y": [2, 3]}', "id": "call_b"},
        ],
    }
    frames = await run_beside_bystander(app, mock_request(script))
    ends = only(frames, "tool_call.end")
    assert [(e["call_id"], e["arguments"]) for e in ends] == [
        ("call_a", {"x": 1}),
        ("call_b", {"y": [2, 3]}),
    ]
    assert frames[-1]["reason"] == "tool_calls"


@pytest.mark.parametrize("model", ["mock", "mock-responses"])
async def test_parallel_interleaved_tool_calls_are_assembled_per_call(app, model):
    script = {
        "interleave_tools": True,
        "args_chunk": 3,
        "tool_calls": [
            {"name": "first", "arguments": '{"query": "interleaved one"}'},
            {"name": "second", "arguments": '{"query": "interleaved two"}'},
        ],
    }
    frames = await run_beside_bystander(app, mock_request(script, model=model))
    ends = only(frames, "tool_call.end")
    assert [e["arguments"]["query"] for e in ends] == ["interleaved one", "interleaved two"]
    chunks = only(frames, "tool_call.arguments_chunk")
    assert len({c["call_id"] for c in chunks[:4]}) == 2  # really interleaved on the wire


@pytest.mark.parametrize("model", MODELS)
async def test_a_one_mebibyte_line_is_relayed(app, model):
    script = {"text": "after a long line", "pad_line": 1 << 20}
    frames = await run_beside_bystander(app, mock_request(script, model=model))
    assert stream_text(frames) == "after a long line"


@pytest.mark.parametrize("model", MODELS)
async def test_a_line_over_the_cap_ends_the_stream_typed(start_app, model):
    app = await start_app(**{"upstream.max_line_bytes": 65536})
    script = {"text": "never shown", "pad_line": 1 << 20}
    frames = await run_beside_bystander(app, mock_request(script, model=model))
    assert_failed(frames, "upstream_line_too_long", retryable=False)


@pytest.mark.parametrize("model", MODELS)
async def test_a_stream_cut_off_before_its_first_token_is_not_retried(start_app, model):
    app = await start_app(**FAST_RETRIES)
    tag = f"trunc0-{model}"
    script = {"text": "alpha beta", "truncate_after": 0, "tag": tag}
    frames = await run_beside_bystander(app, mock_request(script, model=model))
    error = frames[-2]
    assert error["code"] in {"upstream_error", "upstream_protocol"}
    assert frames[-1]["reason"] == "error"
    assert len(app.mock.find_all(tag)) == 1  # truncation is never retried (§7.1)


async def test_a_retry_after_beyond_the_first_token_timeout_gives_the_typed_rate_limit(start_app):
    app = await start_app(**{"upstream.first_token_timeout_s": 1.0})
    script = {"status": 429, "retry_after": 3, "tag": "late-retry"}
    frames = await run_beside_bystander(app, mock_request(script))
    error = assert_failed(frames, "upstream_rate_limited", retryable=True)
    assert error["retry_after_ms"] == 3000
    assert len(app.mock.find_all("late-retry")) == 1
