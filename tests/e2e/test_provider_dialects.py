"""Every provider dialect through the gateway: one event schema whatever the provider.

The built-in mock speaks OpenAI chat completions, OpenAI Responses, Anthropic Messages and
Ollama NDJSON byte-faithfully; the gateway routes one model alias to each
(`wsgate.app.MOCK_ROUTES`). The same script must reach the client as the same frames.
"""

from __future__ import annotations

import pytest
from e2e_helpers import assert_gapless, mock_request, raw_connect, stream_text

from wsgate.app import MOCK_ROUTES

BOTH_READERS = True  # the upstream contract: push and pull (conftest.py)

MODELS = sorted(MOCK_ROUTES)
TEXT = "Grüße, 世界! 👩🏽‍💻 says “hi” — ok."


def of_type(frames, kind):
    return [frame for frame in frames if frame["type"] == kind]


@pytest.mark.parametrize("model", MODELS)
async def test_every_dialect_streams_the_exact_text_then_usage_and_stop(app, model):
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"text": TEXT, "chunk": 3}, model=model))
        frames = (await conn.finishes({"s1"}))["s1"]
    assert_gapless(frames)
    assert [f["type"] for f in frames[:2]] == ["stream.started", "delta.role"]
    assert stream_text(frames) == TEXT
    (usage,) = of_type(frames, "usage")
    assert usage["input_tokens"] > 0
    assert usage["output_tokens"] > 0
    assert frames[-1]["reason"] == "stop"


@pytest.mark.parametrize("model", MODELS)
async def test_every_dialect_delivers_parallel_tool_calls_with_parsed_arguments(app, model):
    script = {
        "text": "Let me check.",
        "tool_calls": [
            {"name": "get_weather", "arguments": '{"city": "Zürich", "unit": "c"}'},
            {"name": "get_time", "arguments": '{"tz": "Europe/Zurich"}'},
        ],
    }
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script, model=model))
        frames = (await conn.finishes({"s1"}))["s1"]
    assert_gapless(frames)
    assert stream_text(frames) == "Let me check."
    starts, ends = of_type(frames, "tool_call.start"), of_type(frames, "tool_call.end")
    assert [s["name"] for s in starts] == ["get_weather", "get_time"]
    assert [e["arguments"] for e in ends] == [
        {"city": "Zürich", "unit": "c"},
        {"tz": "Europe/Zurich"},
    ]
    assert len({s["call_id"] for s in starts}) == 2
    assert frames[-1]["reason"] == "tool_calls"


@pytest.mark.parametrize("model", MODELS)
async def test_every_dialect_reports_a_max_tokens_cut_as_length(app, model):
    words = [f"w{i}" for i in range(20)]
    # 16: the smallest limit every provider accepts (OpenAI Responses' minimum).
    request = mock_request({"text": " ".join(words)}, model=model, max_tokens=16)
    async with raw_connect(app.url) as conn:
        await conn.start("s1", request)
        frames = (await conn.finishes({"s1"}))["s1"]
    assert stream_text(frames) == " ".join(words[:16])
    assert frames[-1]["reason"] == "length"


@pytest.mark.parametrize(
    ("model", "extra", "field"),
    [
        ("mock-responses", {"stop": ["\n\n"]}, "stop"),
        ("mock-anthropic", {"temperature": 1.5}, "temperature"),
        ("mock-anthropic", {"seed": 7}, "seed"),
        ("mock-ollama", {"tool_choice": "required"}, "tool_choice"),
    ],
)
async def test_a_request_the_provider_cannot_express_is_a_bad_request_naming_the_field(
    app, model, extra, field
):
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"text": "never", "tag": "br"}, model=model, **extra))
        frames = (await conn.finishes({"s1"}))["s1"]
    error, finish = frames[-2:]
    assert (error["code"], error["retryable"]) == ("bad_request", False)
    assert field in error["message"]
    assert finish["reason"] == "error"
    assert app.mock.find("br") is None  # nothing was sent to the provider
