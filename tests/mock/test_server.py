"""The mock provider over real sockets: exact SSE bytes, pacing, faults and disconnect records."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from wsgate.mock import MockProvider


def chat(prompt="hello", *, script=None, stream=True, **extra):
    content = orjson.dumps({"mock": script}).decode() if script is not None else prompt
    return {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
        **extra,
    }


def sse_payloads(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n")
    events = raw[:-2].split(b"\n\n")
    assert all(event.startswith(b"data: ") for event in events)
    return [event[len(b"data: ") :] for event in events]


def text_of(raw: bytes) -> str:
    events = [orjson.loads(payload) for payload in sse_payloads(raw)[:-1]]
    return "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])


async def post(mock, session, body, headers=None):
    url = mock.base_url + "/chat/completions"
    async with session.post(url, json=body, headers=headers) as response:
        return response.status, response.headers, await response.read()


async def test_scripted_stream_bytes_are_exactly_the_openai_sequence(mock, session):
    body = chat(script={"text": "Hi there", "tag": "exact"}, stream_options={"include_usage": True})
    status, headers, raw = await post(mock, session, body)
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    record = mock.find("exact")
    assert headers["x-mock-request-id"] == record.id
    n = record.id.removeprefix("req-")
    created = orjson.loads(sse_payloads(raw)[0])["created"]
    head = (
        f'{{"id":"chatcmpl-mock-{n}","object":"chat.completion.chunk","created":{created},'
        '"model":"gpt-test","system_fingerprint":"fp_mock",'
    )
    expected = (
        f'data: {head}"choices":[{{"index":0,"delta":{{"role":"assistant","content":"",'
        '"refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
        f'data: {head}"choices":[{{"index":0,"delta":{{"content":"Hi"}},"logprobs":null,'
        '"finish_reason":null}],"usage":null}\n\n'
        f'data: {head}"choices":[{{"index":0,"delta":{{"content":" there"}},"logprobs":null,'
        '"finish_reason":null}],"usage":null}\n\n'
        f'data: {head}"choices":[{{"index":0,"delta":{{}},"logprobs":null,'
        '"finish_reason":"stop"}],"usage":null}\n\n'
        f'data: {head}"choices":[],"usage":{{"prompt_tokens":2,"completion_tokens":2,'
        '"total_tokens":4}}\n\n'
        "data: [DONE]\n\n"
    )
    assert raw.decode() == expected
    assert record.chunks_sent == 6
    assert record.completed_at is not None
    assert record.disconnected_at is None
    assert record.model == "gpt-test"


async def test_every_payload_of_an_unscripted_stream_is_openai_shaped_json(mock, session):
    _, _, raw = await post(mock, session, chat("Tell me a story"))
    payloads = sse_payloads(raw)
    assert payloads[-1] == b"[DONE]"
    events = [orjson.loads(p) for p in payloads[:-1]]
    for event in events:
        assert set(event) == {"id", "object", "created", "model", "system_fingerprint", "choices"}
        assert event["object"] == "chat.completion.chunk"
        assert isinstance(event["created"], int)
        (choice,) = event["choices"]
        assert set(choice) == {"index", "delta", "logprobs", "finish_reason"}
        assert choice["index"] == 0
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [e["choices"][0]["finish_reason"] for e in events].count("stop") == 1
    assert len(text_of(raw).split()) == mock.default_words


async def test_unscripted_answers_repeat_for_a_prompt_and_differ_across_prompts(mock, session):
    first = text_of((await post(mock, session, chat("What is tea?")))[2])
    again = text_of((await post(mock, session, chat("What is tea?")))[2])
    other = text_of((await post(mock, session, chat("What is bread?")))[2])
    assert first == again
    assert first != other


@pytest.mark.parametrize(
    ("script", "chunks"),
    [
        ({"text": "Héllo wörld 世界 🎉  "}, ["Héllo", " wörld", " 世界", " 🎉", "  "]),
        ({"text": "日本語🎉ok", "chunk": 2}, ["日本", "語🎉", "ok"]),
        ({"chunks": ["a", "🎉b", " c "]}, ["a", "🎉b", " c "]),
    ],
)
async def test_chunking_rules_reach_the_wire_and_join_back_to_the_text(
    mock, session, script, chunks
):
    _, _, raw = await post(mock, session, chat(script=script))
    events = [orjson.loads(p) for p in sse_payloads(raw)[1:-2]]
    assert [e["choices"][0]["delta"]["content"] for e in events] == chunks


async def test_header_script_overrides_the_message_script(mock, session):
    headers = {"x-mock-script": '{"text": "from header", "tag": "hdr"}'}
    _, _, raw = await post(mock, session, chat(script={"text": "from message"}), headers)
    assert text_of(raw) == "from header"
    assert mock.find("hdr") is not None


async def test_ttft_and_rate_pace_the_stream(mock, session):
    script = {"words": 20, "seed": 1, "ttft_ms": 60, "tokens_per_s": 200, "tag": "paced"}
    started = time.monotonic()
    url = mock.base_url + "/chat/completions"
    async with session.post(url, json=chat(script=script)) as response:
        headers_at = time.monotonic()
        await response.read()
    finished = time.monotonic()
    record = mock.find("paced")
    assert headers_at - started < 0.05  # headers go out at once, the first event at ttft
    assert record.first_byte_at - record.started_at >= 0.055
    assert record.completed_at - record.first_byte_at >= 0.08  # 19 gaps of 5 ms
    assert finished - started < 2.0
    assert record.chunks_sent == 1 + 20 + 1 + 1


async def test_raw_events_are_written_verbatim_and_done_false_omits_done(mock, session):
    lone = '{"choices":[{"index":0,"delta":{"content":"\\ud83d"}}]}'
    script = {"events": [lone, '{"error":{"message":"boom"}}'], "done": False}
    _, _, raw = await post(mock, session, chat(script=script))
    assert raw == (
        b'data: {"choices":[{"index":0,"delta":{"content":"\\ud83d"}}]}\n\n'
        b'data: {"error":{"message":"boom"}}\n\n'
    )


async def test_scripted_status_returns_an_openai_error_with_retry_after(mock, session):
    script = {"status": 429, "retry_after": 2, "tag": "limited"}
    status, headers, raw = await post(mock, session, chat(script=script))
    assert status == 429
    assert headers["Retry-After"] == "2"
    assert orjson.loads(raw) == {
        "error": {
            "message": "mock: scripted HTTP 429",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert mock.find("limited").status == 429
    status, headers, raw = await post(mock, session, chat(script={"status": 503}))
    assert status == 503
    assert "Retry-After" not in headers
    assert orjson.loads(raw)["error"]["type"] == "server_error"


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (chat(script={"text": "x", "colour": "red", "tag": "bad"}), None),
        (chat(script={"chunk": "letter", "tag": "bad"}), None),
        (chat("hi"), {"x-mock-script": '{"tag": "bad", "words": -1}'}),
        (chat(script={"events": ["{}"], "tag": "bad"}, stream=False), None),
    ],
)
async def test_a_malformed_script_is_a_400_with_an_openai_error_body(mock, session, body, headers):
    status, _, raw = await post(mock, session, body, headers)
    assert status == 400
    error = orjson.loads(raw)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None
    assert error["code"] == "mock_bad_script"
    assert error["message"]
    assert mock.find("bad").status == 400


async def test_a_body_that_is_not_json_is_a_400(mock, session):
    url = mock.base_url + "/chat/completions"
    async with session.post(url, data=b"{nope") as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] is None


async def test_a_non_streaming_request_gets_one_chat_completion(mock, session):
    status, headers, raw = await post(mock, session, chat(script={"text": "Hi"}, stream=False))
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    body = orjson.loads(raw)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "Hi"
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_a_client_leaving_mid_stream_is_recorded_within_milliseconds(mock, session):
    script = {"text": "one two", "ttft_ms": 0, "tokens_per_s": 0.2, "tag": "leaver"}
    url = mock.base_url + "/chat/completions"
    response = await session.post(url, json=chat(script=script))
    first = await response.content.readuntil(b"\n\n")
    assert b'"role":"assistant"' in first
    await response.content.readuntil(b"\n\n")  # "one"; " two" is 5 s away
    assert mock.open_connections == 1
    response.close()
    closed_at = time.monotonic()
    record = await mock.wait_disconnected("leaver", timeout=1.0)
    assert record.disconnected_at - closed_at < 0.2
    assert record.completed_at is None
    assert record.chunks_sent == 2
    await asyncio.sleep(0)
    assert mock.open_connections == 0


async def test_a_client_leaving_before_the_first_token_is_recorded(mock, session):
    script = {"text": "late", "ttft_ms": 5000, "tag": "early-leaver"}
    url = mock.base_url + "/chat/completions"
    async with session.post(url, json=chat(script=script)) as response:
        assert response.status == 200
    record = await mock.wait_disconnected("early-leaver", timeout=1.0)
    assert record.first_byte_at is None
    assert mock.open_connections == 0


async def test_a_client_leaving_during_an_unpaced_flood_is_recorded(mock, session):
    script = {"words": 20_000, "seed": 1, "tag": "flood"}
    url = mock.base_url + "/chat/completions"
    response = await session.post(url, json=chat(script=script))
    await response.content.readuntil(b"\n\n")
    response.close()
    record = await mock.wait_disconnected("flood", timeout=2.0)
    assert record.completed_at is None
    assert 0 < record.chunks_sent < 20_000 + 3
    await asyncio.sleep(0)
    assert mock.open_connections == 0


async def test_wait_disconnected_fails_at_once_for_a_completed_request(mock, session):
    await post(mock, session, chat(script={"text": "done", "tag": "stayer"}))
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="completed without a disconnect"):
        await mock.wait_disconnected("stayer", timeout=5.0)
    assert time.monotonic() - started < 0.5


async def test_wait_disconnected_times_out_while_the_client_stays(mock, session):
    url = mock.base_url + "/chat/completions"
    script = {"text": "slow", "ttft_ms": 5000, "tag": "waiting"}
    async with session.post(url, json=chat(script=script)):
        with pytest.raises(TimeoutError):
            await mock.wait_disconnected("waiting", timeout=0.05)


async def test_five_hundred_paced_streams_complete_from_one_provider(mock, session):
    count = 500

    async def one(i: int) -> str:
        script = {"words": 20, "seed": i, "tokens_per_s": 50, "tag": f"load-{i}"}
        return text_of((await post(mock, session, chat(script=script)))[2])

    started = time.monotonic()
    texts = await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.monotonic() - started
    assert elapsed < 5.0
    assert all(len(text.split()) == 20 for text in texts)
    assert len(set(texts)) > count // 2
    records = [mock.find(f"load-{i}") for i in range(count)]
    assert all(r.completed_at is not None and r.chunks_sent == 23 for r in records)
    assert all(r.completed_at - r.started_at >= 0.37 for r in records)
    assert mock.open_connections == 0


async def test_stop_cancels_in_flight_streams_promptly():
    provider = MockProvider()
    url = await provider.start()
    async with aiohttp.ClientSession() as client:
        response = await client.post(
            url + "/chat/completions",
            json=chat(script={"text": "never", "ttft_ms": 10_000, "tag": "cut"}),
        )
        started = time.monotonic()
        await provider.stop()
        assert time.monotonic() - started < 2.0
        with pytest.raises(aiohttp.ClientError):
            await response.read()
        response.close()
    assert provider.open_connections == 0
    assert provider.find("cut").disconnected_at is None


async def test_record_endpoints_list_and_clear_and_health_answers(mock, session):
    await post(mock, session, chat(script={"text": "x", "tag": "listed"}))
    root = mock.base_url.removesuffix("/v1")
    async with session.get(root + "/mock/requests") as response:
        listed = await response.json()
    assert listed[-1]["tag"] == "listed"
    assert set(listed[-1]) == {
        "id",
        "tag",
        "model",
        "dialect",
        "fault",
        "started_at",
        "first_byte_at",
        "completed_at",
        "disconnected_at",
        "chunks_sent",
        "status",
        "turn",
        "tool_results",
    }
    async with session.delete(root + "/mock/requests") as response:
        assert response.status == 200
    assert mock.records == {}
    async with session.get(root + "/healthz") as response:
        assert await response.json() == {"ok": True}
    async with session.get(mock.base_url + "/models") as response:
        assert (await response.json())["data"][0]["id"] == "mock"


# --- connection counts ------------------------------------------------------------------


async def test_tcp_connections_counts_client_connections_kept_alive_or_not(mock):
    assert mock.tcp_connections == 0
    async with aiohttp.ClientSession() as client:
        url = mock.base_url + "/chat/completions"
        async with client.post(url, json=chat(script={"text": "one"})) as response:
            await response.read()
        assert mock.tcp_connections == 1  # kept alive by the session's pool
        async with client.post(url, json=chat(script={"text": "two"})) as response:
            await response.read()
        assert mock.tcp_connections == 1  # the same connection, reused
        second = aiohttp.ClientSession()
        async with second.post(url, json=chat(script={"text": "x", "ttft_ms": 5000})) as r:
            assert r.status == 200
            assert mock.tcp_connections == 2
            assert mock.open_connections == 1
        await second.close()
    await mock.wait_tcp_connections(0, timeout=2.0)
    assert mock.open_connections == 0


async def test_tcp_connections_counts_a_silent_raw_socket(mock):
    reader, writer = await asyncio.open_connection("127.0.0.1", mock.port)
    await mock.wait_tcp_connections(1, timeout=2.0)
    assert mock.open_connections == 0  # no request yet: a connection, not a stream
    writer.close()
    await writer.wait_closed()
    await mock.wait_tcp_connections(0, timeout=2.0)
    assert await reader.read() == b""


async def test_open_connections_counts_streams_only_while_they_are_open(mock, session):
    url = mock.base_url + "/chat/completions"
    script = {"text": "a b", "tokens_per_s": 0.5, "tag": "open"}
    response = await session.post(url, json=chat(script=script))
    await response.content.readuntil(b"\n\n")
    assert mock.open_connections == 1
    await post(mock, session, chat(script={"text": "x"}, stream=False))
    assert mock.open_connections == 1  # a JSON answer is not a stream
    response.close()
    await mock.wait_disconnected("open", timeout=1.0)
    await asyncio.sleep(0)
    assert mock.open_connections == 0


async def test_tcp_connections_is_zero_before_start_and_after_stop():
    provider = MockProvider()
    assert provider.tcp_connections == 0
    await provider.start()
    assert provider.root_url + "/v1" == provider.base_url
    await provider.stop()
    assert provider.tcp_connections == 0
