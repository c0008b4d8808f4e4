"""The official SDKs read the mock's streams exactly: text, tool calls, finish, usage, errors.

`openai` and `anthropic` async clients point at the mock (dummy key, no retries) and must
reconstruct exactly the scripted text and tool calls, multibyte and split surrogates
included. A Python client concatenates surrogate halves from separate events as two code
points (as any UTF-16 client would hold them), so texts are compared after
`join_surrogates`. Ollama has no SDK here: its byte shape is pinned in test_dialects.py.
"""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from wsgate.mock.script import join_surrogates

TEXT = "Héllo wörld, 日本語 👩‍👧 and 🎉!"
CALLS = [
    {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "°C"}', "id": "call_w"},
    {"name": "get_time", "arguments": '{"zone": "Europe/Paris"}', "id": "call_t"},
]


def prompt(script):
    return json.dumps({"mock": script})


@pytest.fixture
async def oai(mock):
    client = openai.AsyncOpenAI(base_url=mock.base_url, api_key="test", max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def claude(mock):
    client = anthropic.AsyncAnthropic(base_url=mock.root_url, api_key="test", max_retries=0)
    yield client
    await client.close()


async def collect_chat_text(stream, seen):
    async for chunk in stream:
        seen.extend(choice.delta.content for choice in chunk.choices if choice.delta.content)


async def collect_claude_text(stream, seen):
    async with stream as events:
        async for text in events.text_stream:
            seen.append(text)


# --- OpenAI chat completions ------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [{}, {"split_surrogates": True}, {"interleave_tools": True}, {"split_writes": 2}],
)
async def test_openai_chat_stream_rebuilds_text_and_parallel_tool_calls(oai, faults):
    script = {"text": TEXT, "tool_calls": CALLS, "args_chunk": 5, **faults}
    stream = await oai.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": prompt(script)}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, calls, finish, usage = "", {}, None, None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for call in choice.delta.tool_calls or ():
                entry = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = call.id or entry["id"]
                if call.function is not None:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    assert join_surrogates(text) == TEXT
    assert [(c["id"], c["name"], c["arguments"]) for c in calls.values()] == [
        (c["id"], c["name"], c["arguments"]) for c in CALLS
    ]
    assert finish == "tool_calls"
    assert usage.completion_tokens == len(TEXT.split())


async def test_openai_chat_stream_without_tool_indexes_is_matched_by_id(oai):
    script = {"tool_calls": CALLS, "tool_index": False, "args_chunk": 4}
    stream = await oai.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": prompt(script)}], stream=True
    )
    calls: dict[str, str] = {}
    last = None
    async for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
            assert getattr(call, "index", None) is None
            last = call.id or last
            calls[last] = calls.get(last, "") + (call.function.arguments or "")
    assert calls == {c["id"]: c["arguments"] for c in CALLS}


async def test_openai_chat_stream_helper_gives_the_final_completion(oai):
    script = {"text": TEXT, "tool_calls": CALLS, "args_chunk": 3}
    async with oai.chat.completions.stream(
        model="gpt-test", messages=[{"role": "user", "content": prompt(script)}]
    ) as stream:
        deltas = [event.delta async for event in stream if event.type == "content.delta"]
        final = await stream.get_final_completion()
    assert "".join(deltas) == TEXT
    message = final.choices[0].message
    assert message.content == TEXT
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls] == [
        (c["id"], c["name"], c["arguments"]) for c in CALLS
    ]
    assert final.choices[0].finish_reason == "tool_calls"


async def test_openai_chat_in_band_error_raises_the_sdks_api_error(oai):
    script = {"text": "one two", "error_after": 1}
    stream = await oai.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": prompt(script)}], stream=True
    )
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="mock: scripted stream error"):
        await collect_chat_text(stream, seen)
    assert seen == ["one"]


async def test_openai_rate_limit_status_is_the_sdks_rate_limit_error(oai):
    script = {"status": 429, "retry_after": 1}
    with pytest.raises(openai.RateLimitError) as caught:
        await oai.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": prompt(script)}], stream=True
        )
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"] == "1"


# --- OpenAI Responses -------------------------------------------------------------------


@pytest.mark.parametrize("faults", [{}, {"split_surrogates": True}, {"interleave_tools": True}])
async def test_openai_responses_stream_helper_rebuilds_text_calls_and_usage(oai, faults):
    script = {"text": TEXT, "tool_calls": CALLS, "args_chunk": 6, **faults}
    async with oai.responses.stream(
        model="gpt-test", input=prompt(script), instructions="Be brief."
    ) as stream:
        deltas, arguments = [], {}
        async for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.function_call_arguments.delta":
                arguments[event.output_index] = arguments.get(event.output_index, "") + event.delta
        final = await stream.get_final_response()
    assert join_surrogates("".join(deltas)) == TEXT
    assert list(arguments.values()) == [c["arguments"] for c in CALLS]
    assert final.output_text == TEXT
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        (c["id"], c["name"], c["arguments"]) for c in CALLS
    ]
    assert final.status == "completed"
    assert final.usage.output_tokens == len(TEXT.split())
    assert final.usage.input_tokens == len(prompt(script).split()) + 2
    assert final.usage.total_tokens == final.usage.input_tokens + final.usage.output_tokens


async def test_openai_responses_create_stream_yields_typed_events(oai):
    stream = await oai.responses.create(
        model="gpt-test", input=prompt({"text": "a b"}), stream=True
    )
    events = [event async for event in stream]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "a b"
    assert events[-1].type == "response.completed"
    assert events[-1].response.output[0].content[0].text == "a b"


async def test_openai_responses_length_cut_is_incomplete(oai):
    stream = await oai.responses.create(
        model="gpt-test", input=prompt({"text": "a b c"}), max_output_tokens=2, stream=True
    )
    events = [event async for event in stream]
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "a b"


async def test_openai_responses_mid_stream_failure_is_response_failed(oai):
    async with oai.responses.stream(
        model="gpt-test", input=prompt({"text": "one two", "error_after": 1})
    ) as stream:
        events = [event async for event in stream]
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            await stream.get_final_response()
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.code == "server_error"


# --- Anthropic Messages -----------------------------------------------------------------


@pytest.mark.parametrize("faults", [{}, {"split_surrogates": True}, {"split_writes": 1}])
async def test_anthropic_stream_helper_rebuilds_text_tool_input_and_usage(claude, faults):
    script = {"text": TEXT, "tool_calls": CALLS, "args_chunk": 4, **faults}
    async with claude.messages.stream(
        model="claude-test",
        max_tokens=1024,
        system="Be brief.",
        messages=[{"role": "user", "content": prompt(script)}],
    ) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert join_surrogates("".join(texts)) == TEXT
    text_block, *tool_blocks = final.content
    assert join_surrogates(text_block.text) == TEXT
    assert [(b.id, b.name, b.input) for b in tool_blocks] == [
        (c["id"], c["name"], json.loads(c["arguments"])) for c in CALLS
    ]
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == len(TEXT.split())
    assert final.usage.input_tokens == len(prompt(script).split()) + 2


async def test_anthropic_length_cut_stops_with_max_tokens(claude):
    async with claude.messages.stream(
        model="claude-test",
        max_tokens=2,
        messages=[{"role": "user", "content": prompt({"text": "a b c"})}],
    ) as stream:
        final = await stream.get_final_message()
    assert (final.content[0].text, final.stop_reason) == ("a b", "max_tokens")


async def test_anthropic_mid_stream_overloaded_error_raises_the_sdks_error(claude):
    script = {"text": "one two", "error_after": 1}
    seen: list[str] = []
    stream = claude.messages.stream(
        model="claude-test", max_tokens=64, messages=[{"role": "user", "content": prompt(script)}]
    )
    with pytest.raises(anthropic.APIStatusError) as caught:
        await collect_claude_text(stream, seen)
    assert seen == ["one"]
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "mock: scripted stream error"},
    }


async def test_anthropic_529_is_the_sdks_overloaded_error(claude):
    with pytest.raises(anthropic.OverloadedError) as caught:
        await claude.messages.create(
            model="claude-test",
            max_tokens=64,
            messages=[{"role": "user", "content": prompt({"status": 529})}],
        )
    assert caught.value.body["error"]["type"] == "overloaded_error"


async def test_anthropic_non_streaming_message_is_parsed(claude):
    message = await claude.messages.create(
        model="claude-test",
        max_tokens=64,
        messages=[{"role": "user", "content": prompt({"text": TEXT, "tool_calls": CALLS[:1]})}],
    )
    assert message.content[0].text == TEXT
    assert message.content[1].input == {"city": "Paris", "unit": "°C"}
    assert message.stop_reason == "tool_use"
