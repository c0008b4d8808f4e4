"""Stream semantics end to end, against the mock's scripted streams: buffering modes,
grapheme safety, structured sections, tool calls exactly once, reasoning kept apart."""

from __future__ import annotations

import json

import pytest
from e2e_helpers import assert_gapless, mock_request, raw_connect, stream_text

TEXT = (
    "The first sentence is short. The second one has 3.14 in it! Does the third ask? "
    "Yes.\n\nA new paragraph starts here, and it goes on for a while without stopping "
    "until it finally ends.\n\nLast words"
)


async def run_stream(app, script, options=None):
    async with raw_connect(app.url) as conn:
        await conn.start("s", mock_request(script), options)
        return (await conn.finishes({"s"}, timeout=20))["s"]


def texts(frames):
    return [f["text"] for f in frames if f["type"] == "delta.text"]


@pytest.mark.parametrize("mode", ["immediate", "word", "debounce", "sentence", "paragraph"])
async def test_every_buffering_mode_delivers_the_whole_text_with_gapless_seq(app, mode):
    options = {"buffering": mode, "debounce_ms": 30, "max_latency_ms": 5000}
    frames = await run_stream(app, {"text": TEXT, "chunk": 3, "tokens_per_s": 400}, options)
    assert stream_text(frames) == TEXT
    assert_gapless(frames)
    assert frames[-1]["reason"] == "stop"
    pieces = texts(frames)
    if mode == "word":
        assert all(p[-1].isspace() for p in pieces[:-1])
    if mode == "sentence":
        assert all(p.rstrip()[-1] in ".!?" or p.endswith("\n") for p in pieces[:-1]), pieces
        assert not any(p.endswith("3.") for p in pieces)
    if mode == "paragraph":
        assert all(p.endswith("\n\n") for p in pieces[:-1]), pieces
        assert len(pieces) == 3


async def test_the_accessible_modes_still_deliver_a_long_sentence_within_the_latency_cap(app):
    text = "word " * 60 + "end."
    options = {"buffering": "sentence", "max_latency_ms": 200}
    async with raw_connect(app.url) as conn:
        await conn.start("s", mock_request({"text": text, "tokens_per_s": 50}), options)
        first = await conn.until(lambda f: f["type"] == "delta.text", timeout=3)
        frames = (await conn.finishes({"s"}, timeout=10))["s"]
    assert first[-1]["text"].startswith("word")
    assert stream_text(frames) == text


async def test_a_zwj_emoji_split_across_chunks_arrives_whole(app):
    text = "Coder: 👩\u200d💻 and flag 🇫🇷 ok"
    frames = await run_stream(app, {"text": text, "chunk": 1, "tokens_per_s": 500})
    assert stream_text(frames) == text
    for piece in texts(frames):
        assert not piece.endswith("\u200d")
        assert not piece.endswith("👩")
        assert not piece.endswith("\U0001f1eb")  # half of a flag


async def test_without_grapheme_safety_a_cluster_may_be_split(app):
    text = "👩\u200d💻"
    frames = await run_stream(
        app, {"text": text, "chunk": 1, "tokens_per_s": 200}, {"grapheme_safe": False}
    )
    assert stream_text(frames) == text
    assert len(texts(frames)) == 3


async def test_a_delimited_section_becomes_one_structured_frame_and_is_never_shown(app):
    text = 'Here: <<<JSON>>>{"city": "Paris", "n": 2}<<<END>>> done.'
    frames = await run_stream(app, {"text": text, "chunk": 1}, {"structured": {}})
    assert stream_text(frames) == "Here:  done."
    (structured,) = [f for f in frames if f["type"] == "structured"]
    assert structured["value"] == {"city": "Paris", "n": 2}
    assert "<<<" not in stream_text(frames)
    assert_gapless(frames)


async def test_a_section_that_does_not_parse_or_never_closes_is_a_typed_error(app):
    bad = await run_stream(app, {"text": "a <<<JSON>>>{nope<<<END>>> b"}, {"structured": {}})
    (error,) = [f for f in bad if f["type"] == "structured.error"]
    assert (error["code"], error["raw"]) == ("structured_invalid", "{nope")
    unclosed = await run_stream(app, {"text": 'a <<<JSON>>>{"x": 1'}, {"structured": {}})
    assert [f["code"] for f in unclosed if f["type"] == "structured.error"] == [
        "structured_unclosed"
    ]
    assert stream_text(unclosed) == "a "


async def test_final_json_streams_the_text_and_adds_structured_only_when_it_parses(app):
    good = await run_stream(
        app, {"text": '{"ok": true}', "chunk": 2}, {"structured": {"mode": "final_json"}}
    )
    assert stream_text(good) == '{"ok": true}'
    assert [f["value"] for f in good if f["type"] == "structured"] == [{"ok": True}]
    bad = await run_stream(
        app, {"text": '{"ok": tr', "chunk": 2}, {"structured": {"mode": "final_json"}}
    )
    assert not [f for f in bad if f["type"] == "structured"]


async def test_parallel_tool_calls_end_exactly_once_with_parsed_arguments(app):
    calls = [
        {"name": "weather", "arguments": json.dumps({"city": "Oslo", "days": 3})},
        {"name": "time", "arguments": json.dumps({"tz": "UTC"})},
    ]
    frames = await run_stream(app, {"text": "Checking.", "tool_calls": calls, "args_chunk": 3})
    ends = [f for f in frames if f["type"] == "tool_call.end"]
    assert [(e["name"], e["arguments"]) for e in ends] == [
        ("weather", {"city": "Oslo", "days": 3}),
        ("time", {"tz": "UTC"}),
    ]
    starts = [f for f in frames if f["type"] == "tool_call.start"]
    assert len(starts) == 2
    chunks = [f for f in frames if f["type"] == "tool_call.arguments_chunk"]
    assert (
        "".join(c["chunk"] for c in chunks if c["call_id"] == ends[0]["call_id"])
        == calls[0]["arguments"]
    )
    assert frames[-1]["reason"] == "tool_calls"
    assert_gapless(frames)


async def test_argument_chunks_can_be_switched_off(app):
    calls = [{"name": "f", "arguments": '{"a": 1}'}]
    frames = await run_stream(app, {"tool_calls": calls}, {"tool_arguments": False})
    assert not [f for f in frames if f["type"] == "tool_call.arguments_chunk"]
    assert [f["arguments"] for f in frames if f["type"] == "tool_call.end"] == [{"a": 1}]


async def test_tool_arguments_that_never_parse_end_in_a_typed_error_with_the_raw_text(app):
    start = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
    more = {"index": 0, "function": {"arguments": '{"a": '}}
    deltas = [
        ({"role": "assistant", "content": None, "tool_calls": [start]}, None),
        ({"tool_calls": [more]}, None),
        ({}, "tool_calls"),
    ]
    events = [
        json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": reason}]})
        for delta, reason in deltas
    ]
    frames = await run_stream(app, {"events": events})
    (error,) = [f for f in frames if f["type"] == "tool_call.error"]
    assert (error["call_id"], error["code"], error["raw"]) == (
        "c1",
        "tool_arguments_invalid",
        '{"a": ',
    )
    assert not [f for f in frames if f["type"] == "tool_call.end"]


@pytest.mark.parametrize("asked", [True, False])
async def test_reasoning_is_kept_apart_and_sent_only_when_asked_for(app, asked):
    events = [
        '{"choices":[{"index":0,"delta":{"role":"assistant","reasoning_content":"hmm"}}]}',
        '{"choices":[{"index":0,"delta":{"content":"Answer"}}]}',
        '{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
    ]
    frames = await run_stream(app, {"events": events}, {"reasoning": asked})
    reasoning = [f["text"] for f in frames if f["type"] == "delta.reasoning"]
    assert reasoning == (["hmm"] if asked else [])
    assert stream_text(frames) == "Answer"
