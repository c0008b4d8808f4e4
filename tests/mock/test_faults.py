"""Every fault key on the wire, in each dialect where it applies (raw bodies and raw sockets)."""

from __future__ import annotations

import itertools
import json
import time

import aiohttp
import orjson
import pytest
from mock_helpers import (
    DIALECTS,
    ROUTES,
    decode,
    ndjson,
    post,
    raw_post,
    request_body,
    sse_events,
)

# The bytes of the in-band error event each dialect ends a stream with (`error_after`).
ERROR_EVENT = {
    "openai_chat": b'data: {"error":{"message":"mock: scripted stream error",'
    b'"type":"server_error","param":null,"code":null}}\n\n',
    "anthropic": b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
    b'"message":"mock: scripted stream error"}}\n\n',
    "ollama": b'{"error":"mock: scripted stream error"}\n',
}
CONTENT_MARK = {  # a byte string found in content events only
    "openai_chat": b'"delta":{"content":',
    "openai_responses": b"event: response.output_text.delta\n",
    "anthropic": b'"type":"text_delta"',
    "ollama": b'"done":false',
}


def split_events(dialect, raw: bytes) -> list[bytes]:
    """The events of a body with their framing, in order."""
    sep = b"\n" if dialect == "ollama" else b"\n\n"
    return [part + sep for part in raw.split(sep)[:-1]]


def content_events(dialect, raw: bytes) -> list[bytes]:
    return [e for e in split_events(dialect, raw) if CONTENT_MARK[dialect] in e]


async def timed_events(mock, session, dialect, body):
    """(arrival time, event bytes) of each event, read as they arrive."""
    sep = b"\n" if dialect == "ollama" else b"\n\n"
    out = []
    async with session.post(mock.root_url + ROUTES[dialect], json=body) as response:
        while not response.content.at_eof():
            event = await response.content.readuntil(sep)
            if event:
                out.append((time.monotonic(), event))
    return out


# --- fail_first -------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_fail_first_fails_only_the_first_requests_of_a_tag(mock, session, dialect):
    script = {"text": "third time", "status": 429, "fail_first": 2, "tag": f"ff-{dialect}"}
    statuses = []
    for _ in range(3):
        status, _, raw = await post(mock, session, dialect, request_body(dialect, script))
        statuses.append(status)
    assert statuses == [429, 429, 200]
    assert decode(dialect, raw).text == "third time"
    assert [r.fault for r in mock.find_all(f"ff-{dialect}")] == ["status", "status", None]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_fail_first_with_error_after_fails_in_band_then_answers(mock, session, dialect):
    script = {"text": "a b", "error_after": 0, "fail_first": 1, "tag": "ffe"}
    first = decode(dialect, (await post(mock, session, dialect, request_body(dialect, script)))[2])
    second = decode(dialect, (await post(mock, session, dialect, request_body(dialect, script)))[2])
    assert first.error is not None
    assert first.text == ""
    assert not first.ended
    assert (second.error, second.text, second.ended) == (None, "a b", True)


async def test_fail_first_counts_per_tag_and_resets_with_the_records(mock, session):
    def script(tag):
        return {"text": "ok", "status": 503, "fail_first": 1, "tag": tag}

    async def status(tag):
        return (await post(mock, session, "openai_chat", request_body("openai_chat", script(tag))))[
            0
        ]

    assert [await status("a"), await status("b"), await status("a")] == [503, 503, 200]
    async with session.delete(mock.root_url + "/mock/requests"):
        pass
    assert await status("a") == 503


# --- error_after ------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["openai_chat", "anthropic", "ollama"])
@pytest.mark.parametrize("after", [0, 1, 3])
async def test_error_after_ends_the_body_with_the_in_band_error_event(
    mock, session, dialect, after
):
    script = {"text": "one two three four", "error_after": after, "tag": "ea"}
    status, _, raw = await post(mock, session, dialect, request_body(dialect, script))
    assert status == 200
    assert raw.endswith(ERROR_EVENT[dialect])
    assert raw.count(ERROR_EVENT[dialect]) == 1
    assert len(content_events(dialect, raw)) == after
    got = decode(dialect, raw)
    assert got.text == "".join(["one", " two", " three", " four"][:after])
    assert not got.ended
    assert got.finish is None
    assert mock.find("ea").fault == "error_after"


async def test_responses_error_after_is_response_failed_with_the_next_sequence_number(
    mock, session
):
    script = {"text": "one two", "error_after": 1, "error_type": "rate_limit_exceeded"}
    _, _, raw = await post(
        mock, session, "openai_responses", request_body("openai_responses", script)
    )
    events = sse_events(raw)
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.failed",
    ]
    failed = json.loads(events[-1][1])
    assert failed["sequence_number"] == 5
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {
        "code": "rate_limit_exceeded",
        "message": "mock: scripted stream error",
    }


@pytest.mark.parametrize(
    ("dialect", "found"),
    [
        ("openai_chat", b'"type":"rate_limit_error"'),
        ("anthropic", b'"type":"rate_limit_error"'),
        ("ollama", b'{"error":"mock: scripted stream error"}'),  # Ollama errors have no type
    ],
)
async def test_error_type_names_the_in_band_error(mock, session, dialect, found):
    script = {"text": "x", "error_after": 1, "error_type": "rate_limit_error"}
    _, _, raw = await post(mock, session, dialect, request_body(dialect, script))
    assert found in split_events(dialect, raw)[-1]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_an_error_after_beyond_the_answer_is_a_script_error(mock, session, dialect):
    script = {"text": "one two", "error_after": 3}
    status, _, raw = await post(mock, session, dialect, request_body(dialect, script))
    assert status == 400
    assert b"error_after 3 exceeds the 2 content events" in raw


# --- json_error -------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        ("openai_chat", {"error": {"message": "mock: scripted error", "type": "server_error",
                                   "param": None, "code": None}}),
        ("openai_responses", {"error": {"message": "mock: scripted error", "type": "server_error",
                                        "param": None, "code": None}}),
        ("anthropic", {"type": "error", "error": {"type": "overloaded_error",
                                                  "message": "mock: scripted error"}}),
        ("ollama", {"error": "mock: scripted error"}),
    ],
)  # fmt: skip
async def test_json_error_is_http_200_with_the_dialects_json_error_body(
    mock, session, dialect, expected, stream
):
    body = request_body(dialect, {"json_error": True, "tag": "je"}, stream=stream)
    status, headers, raw = await post(mock, session, dialect, body)
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert orjson.loads(raw) == expected
    assert mock.find("je").fault == "json_error"


# --- time: headers_delay_ms, ttft_ms, stall_after ---------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_headers_delay_sends_nothing_at_all_until_it_passes(mock, dialect):
    delayed = await raw_post(
        mock, dialect, request_body(dialect, {"text": "x", "headers_delay_ms": 80})
    )
    assert delayed.first_byte_at - delayed.sent_at >= 0.075
    assert delayed.reads[0][1].startswith(b"HTTP/1.1 200")
    assert decode(dialect, delayed.body).text == "x"


async def test_ttft_sends_the_headers_at_once_and_the_first_event_later(mock):
    slow = await raw_post(
        mock, "openai_chat", request_body("openai_chat", {"text": "x", "ttft_ms": 150})
    )
    head_at = slow.reads[0][0]
    assert head_at - slow.sent_at < 0.1
    body_at = next(t for t, data in slow.reads if b"data: " in data)
    assert body_at - slow.sent_at >= 0.145


async def test_headers_delay_applies_to_json_answers_too(mock):
    body = request_body("anthropic", {"status": 529, "headers_delay_ms": 60})
    answer = await raw_post(mock, "anthropic", body)
    assert answer.status == 529
    assert answer.first_byte_at - answer.sent_at >= 0.055


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_stall_after_pauses_after_the_kth_content_event(mock, session, dialect):
    script = {"text": "a b c d", "stall_after": 2, "stall_ms": 120, "tokens_per_s": 200}
    events = await timed_events(mock, session, dialect, request_body(dialect, script))
    contents = [(t, e) for t, e in events if CONTENT_MARK[dialect] in e]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(contents)]
    assert gaps[1] >= 0.115  # between content 2 and 3
    assert gaps[0] < 0.1
    assert gaps[2] < 0.1
    assert decode(dialect, b"".join(e for _, e in events)).text == "a b c d"


# --- truncate_after ---------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("after", [0, 2])
async def test_truncate_after_closes_the_connection_without_any_end(mock, dialect, after):
    script = {"text": "alpha beta gamma", "truncate_after": after, "tag": "tr"}
    answer = await raw_post(mock, dialect, request_body(dialect, script))
    assert answer.status == 200
    assert not answer.complete  # no terminating chunk: the body is cut off
    body = answer.body
    assert len(content_events(dialect, body)) == after
    assert body == b"" or body.endswith(b"\n")  # whole events, then nothing
    for end_marker in (b"[DONE]", b"message_stop", b"response.completed", b'"done":true'):
        assert end_marker not in body
    assert b'finish_reason":"stop' not in body
    record = mock.find("tr")
    assert record.fault == "truncate_after"
    assert record.completed_at is not None
    assert record.disconnected_at is None


async def test_a_truncated_body_is_a_payload_error_for_aiohttp(mock, session):
    body = request_body("openai_chat", {"text": "a b", "truncate_after": 1})
    async with session.post(mock.base_url + "/chat/completions", json=body) as response:
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


# --- split_writes and drip_bytes_per_s --------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("size", [1, 3])
async def test_split_writes_writes_every_event_in_pieces_of_n_bytes(mock, dialect, size):
    text = "Çà 日本語 👩‍👧 ok"
    answer = await raw_post(
        mock, dialect, request_body(dialect, {"text": text, "split_writes": size})
    )
    assert answer.complete
    assert all(len(chunk) <= size for chunk in answer.chunks)
    assert decode(dialect, answer.body).text == text
    # Every event starts a fresh piece: the pieces of one event never hold the next one.
    starts = {0}
    for chunk in answer.chunks:
        starts.add(max(starts) + len(chunk))
    for offset in _event_offsets(dialect, answer.body):
        assert offset in starts
    broken = [c for c in answer.chunks if not _is_utf8(c)]
    assert broken  # multibyte characters really are split across writes


def _event_offsets(dialect, body):
    sep = b"\n" if dialect == "ollama" else b"\n\n"
    offsets, position = [], 0
    for part in body.split(sep)[:-1]:
        offsets.append(position)
        position += len(part) + len(sep)
    return offsets


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


async def test_split_writes_keeps_the_pacing_of_events(mock, session):
    script = {"text": "a b c", "split_writes": 2, "tokens_per_s": 20}
    started = time.monotonic()
    events = await timed_events(mock, session, "ollama", request_body("ollama", script))
    assert [json.loads(e)["message"]["content"] for _, e in events] == ["a", " b", " c", ""]
    assert events[-1][0] - started >= 0.095  # three paced events 50 ms apart


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_drip_writes_the_whole_body_one_byte_per_write_at_the_rate(mock, dialect):
    rate = 40_000
    script = {"text": "Ünï 🎉", "drip_bytes_per_s": rate, "tag": "drip"}
    answer = await raw_post(mock, dialect, request_body(dialect, script))
    assert answer.complete
    assert {len(chunk) for chunk in answer.chunks} == {1}
    assert decode(dialect, answer.body).text == "Ünï 🎉"
    granularity = mock.pacer.granularity  # the pacer releases waiters up to 1 ms early
    assert answer.reads[-1][0] - answer.sent_at >= (len(answer.chunks) - 1) / rate - granularity
    assert mock.find("drip").chunks_sent == len(_event_offsets(dialect, answer.body))


# --- split_surrogates -------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_split_surrogates_ends_one_event_with_the_high_half_and_starts_the_next_with_the_low(
    mock, session, dialect
):
    text = "smile 😀 and 🎉!"
    script = {"text": text, "split_surrogates": True}
    usage = {"stream_options": {"include_usage": True}} if dialect == "openai_chat" else {}
    _, _, raw = await post(mock, session, dialect, request_body(dialect, script, **usage))
    contents = content_events(dialect, raw)
    assert len(contents) == 4 + 2  # four word chunks, two non-BMP characters
    high = [i for i, e in enumerate(contents) if b'\\ud83d"' in e or b'\\ud83c"' in e]
    low = [i for i, e in enumerate(contents) if b'"\\ude00' in e or b'"\\udf89' in e]
    assert [i + 1 for i in high] == low
    assert all("😀".encode() not in e and "🎉".encode() not in e for e in contents)
    got = decode(dialect, raw)
    assert got.text == text
    assert got.usage[1] == 4  # usage counts the scripted chunks, not the split events


async def test_split_surrogates_on_adjacent_emoji_carries_a_low_and_a_high_half(mock, session):
    script = {"text": "🎉🎉", "split_surrogates": True}
    _, _, raw = await post(mock, session, "ollama", request_body("ollama", script))
    contents = [line["message"]["content"] for line in ndjson(raw)[:-1]]
    assert len(contents) == 3
    assert contents[1] == "\udf89\ud83c"


# --- tool_index and interleave_tools ----------------------------------------------------

TWO_CALLS = [
    {"name": "first", "arguments": '{"q":"one two"}', "id": "call_a"},
    {"name": "second", "arguments": '{"q":"three"}', "id": "call_b"},
]


async def test_tool_index_false_sends_chat_tool_calls_without_an_index(mock, session):
    script = {"tool_calls": TWO_CALLS, "tool_index": False, "args_chunk": 5}
    _, _, raw = await post(mock, session, "openai_chat", request_body("openai_chat", script))
    deltas = [
        json.loads(data)["choices"][0]["delta"]
        for _, data in sse_events(raw)
        if b'"tool_calls":[' in data
    ]
    calls = [d["tool_calls"][0] for d in deltas]
    assert all("index" not in call for call in calls)
    assert calls[0] == {
        "id": "call_a",
        "type": "function",
        "function": {"name": "first", "arguments": ""},
    }
    assert calls[1] == {"function": {"arguments": '{"q":'}}
    assert decode("openai_chat", raw).tool_calls == [
        ("call_a", "first", '{"q":"one two"}'),
        ("call_b", "second", '{"q":"three"}'),
    ]


@pytest.mark.parametrize("dialect", ["openai_chat", "openai_responses"])
async def test_interleave_tools_alternates_fragments_after_opening_every_call(
    mock, session, dialect
):
    script = {"tool_calls": TWO_CALLS, "interleave_tools": True, "args_chunk": 4}
    _, _, raw = await post(mock, session, dialect, request_body(dialect, script))
    order = []
    for _, data in sse_events(raw)[:-1]:  # the last is [DONE] or response.completed
        event = json.loads(data)
        if dialect == "openai_chat":
            calls = event["choices"][0]["delta"].get("tool_calls") or ()
            order += [("open" if "id" in call else "frag", call["index"]) for call in calls]
        elif event["type"] == "response.output_item.added" and event["output_index"] > 0:
            order.append(("open", event["output_index"] - 1))
        elif event["type"] == "response.function_call_arguments.delta":
            order.append(("frag", event["output_index"] - 1))
    # '{"q":"one two"}' is 4 fragments of 4, '{"q":"three"}' is 4 as well.
    assert order == [("open", 0), ("open", 1)] + [("frag", i % 2) for i in range(8)]
    assert decode(dialect, raw).tool_calls[1][2] == '{"q":"three"}'


# --- pad_line ---------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_pad_line_pads_the_first_content_line_and_leaves_the_text(mock, session, dialect):
    width = 1 << 20
    script = {"text": "after a long line", "pad_line": width}
    _, _, raw = await post(mock, session, dialect, request_body(dialect, script))
    lines = raw.split(b"\n")
    long_lines = [line for line in lines if len(line) > 1000]
    assert [len(line) for line in long_lines] == [width]
    assert b'"mock_padding":"xxx' in long_lines[0]
    assert CONTENT_MARK[dialect].strip(b"\n").split(b"\n")[0] in raw
    assert decode(dialect, raw).text == "after a long line"


async def test_pad_line_never_shortens_a_line(mock, session):
    script = {"text": "x", "pad_line": 10}
    _, _, raw = await post(mock, session, "ollama", request_body("ollama", script))
    first = ndjson(raw)[0]
    assert "mock_padding" not in first
