"""Helpers of the mock provider's tests: request bodies per dialect, raw HTTP, and a small
reference reader of each dialect's stream (text, tool calls, finish, usage, error)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from wsgate.mock.script import join_surrogates

ROUTES = {
    "openai_chat": "/v1/chat/completions",
    "openai_responses": "/v1/responses",
    "anthropic": "/v1/messages",
    "ollama": "/api/chat",
}
DIALECTS = list(ROUTES)
SSE_DIALECTS = ["openai_chat", "openai_responses", "anthropic"]


def request_body(dialect, script=None, *, prompt="hello", stream=True, **extra):
    """A request of `dialect` whose last user message holds `script` (or `prompt`)."""
    content = json.dumps({"mock": script}) if script is not None else prompt
    messages = [{"role": "user", "content": content}]
    if dialect == "openai_responses":
        body = {"model": "gpt-test", "input": content}
    elif dialect == "anthropic":
        body = {"model": "claude-test", "max_tokens": 1024, "messages": messages}
    elif dialect == "ollama":
        body = {"model": "llama-test", "messages": messages}
    else:
        body = {"model": "gpt-test", "messages": messages}
    return {**body, "stream": stream, **extra}


async def post(mock, session, dialect, body, headers=None):
    """POST `body` to the dialect's route; (status, headers, raw body)."""
    async with session.post(mock.root_url + ROUTES[dialect], json=body, headers=headers) as r:
        return r.status, r.headers, await r.read()


def sse_events(raw: bytes) -> list[tuple[str | None, bytes]]:
    """(event name, data) of each SSE event of a body made of `event:`/`data:` lines."""
    assert raw.endswith(b"\n\n"), raw[-80:]
    out = []
    for block in raw[:-2].split(b"\n\n"):
        lines = block.split(b"\n")
        name = lines[0][len(b"event: ") :].decode() if lines[0].startswith(b"event: ") else None
        data = lines[-1]
        assert data.startswith(b"data: "), block
        out.append((name, data[len(b"data: ") :]))
    return out


def ndjson(raw: bytes) -> list[dict[str, Any]]:
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw[:-1].split(b"\n")]


@dataclass
class Decoded:
    """What a client reconstructs from a stream."""

    text: str = ""
    calls: dict[Any, dict[str, str]] = field(default_factory=dict)
    finish: str | None = None
    usage: tuple[int, int] | None = None
    error: str | None = None
    ended: bool = False  # the dialect's end marker arrived

    @property
    def tool_calls(self) -> list[tuple[str, str, str]]:
        return [(c["id"], c["name"], c["arguments"]) for c in self.calls.values()]


def decode(dialect: str, raw: bytes) -> Decoded:
    """Read a whole stream body the way a client of `dialect` would (json.loads per event)."""
    out = Decoded()
    if dialect == "ollama":
        for chunk in ndjson(raw):
            _ollama(out, chunk)
    else:
        reader = {"openai_chat": _chat, "openai_responses": _responses, "anthropic": _anthropic}
        for name, data in sse_events(raw):
            if data == b"[DONE]":
                out.ended = True
                continue
            reader[dialect](out, name, json.loads(data))
    out.text = join_surrogates(out.text)
    return out


def _chat(out: Decoded, _name: str | None, event: dict[str, Any]) -> None:
    if "error" in event:
        out.error = event["error"]["type"]
        return
    if event.get("usage"):
        out.usage = (event["usage"]["prompt_tokens"], event["usage"]["completion_tokens"])
    for choice in event["choices"]:
        delta = choice["delta"]
        out.text += delta.get("content") or ""
        for call in delta.get("tool_calls") or ():
            key = call.get("index", call.get("id", list(out.calls)[-1] if out.calls else None))
            entry = out.calls.setdefault(key, {"id": "", "name": "", "arguments": ""})
            entry["id"] = call.get("id", entry["id"])
            entry["name"] = call.get("function", {}).get("name", entry["name"])
            entry["arguments"] += call.get("function", {}).get("arguments", "")
        out.finish = choice["finish_reason"] or out.finish


def _responses(out: Decoded, name: str | None, event: dict[str, Any]) -> None:
    assert name == event["type"]
    kind = event["type"]
    if kind == "response.output_text.delta":
        out.text += event["delta"]
    elif kind == "response.output_item.added" and event["item"]["type"] == "function_call":
        item = event["item"]
        out.calls[event["output_index"]] = {"id": item["call_id"], "name": item["name"],
                                             "arguments": item["arguments"]}  # fmt: skip
    elif kind == "response.function_call_arguments.delta":
        out.calls[event["output_index"]]["arguments"] += event["delta"]
    elif kind in ("response.completed", "response.incomplete"):
        response = event["response"]
        out.finish = response["status"]
        out.usage = (response["usage"]["input_tokens"], response["usage"]["output_tokens"])
        out.ended = True
    elif kind == "response.failed":
        out.error = event["response"]["error"]["code"]


def _anthropic(out: Decoded, name: str | None, event: dict[str, Any]) -> None:
    assert name == event["type"]
    kind = event["type"]
    if kind == "content_block_start" and event["content_block"]["type"] == "tool_use":
        block = event["content_block"]
        out.calls[event["index"]] = {"id": block["id"], "name": block["name"], "arguments": ""}
    elif kind == "content_block_delta":
        delta = event["delta"]
        if delta["type"] == "text_delta":
            out.text += delta["text"]
        else:
            out.calls[event["index"]]["arguments"] += delta["partial_json"]
    elif kind == "message_start":
        out.usage = (event["message"]["usage"]["input_tokens"], 0)
    elif kind == "message_delta":
        out.finish = event["delta"]["stop_reason"]
        out.usage = (out.usage[0] if out.usage else 0, event["usage"]["output_tokens"])
    elif kind == "message_stop":
        out.ended = True
    elif kind == "error":
        out.error = event["error"]["type"]


def _ollama(out: Decoded, chunk: dict[str, Any]) -> None:
    if "error" in chunk:
        out.error = chunk["error"]
        return
    out.text += chunk["message"]["content"]
    for call in chunk["message"].get("tool_calls") or ():
        function = call["function"]
        arguments = json.dumps(function["arguments"], separators=(",", ":"))
        out.calls[function["index"]] = {"id": call["id"], "name": function["name"],
                                        "arguments": arguments}  # fmt: skip
    if chunk["done"]:
        out.finish = chunk["done_reason"]
        out.usage = (chunk["prompt_eval_count"], chunk["eval_count"])
        out.ended = True


@dataclass
class RawResponse:
    """One HTTP exchange read off a raw socket until the server closed it."""

    status: int
    headers: dict[str, str]
    chunks: list[bytes]  # the chunked body's chunks: one per server write
    complete: bool  # the terminating zero-size chunk arrived
    reads: list[tuple[float, bytes]]  # (monotonic time, bytes) per socket read
    sent_at: float

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def first_byte_at(self) -> float:
        return self.reads[0][0]


async def raw_post(mock, dialect, body, headers=None, *, timeout=10.0) -> RawResponse:
    """POST over a raw socket (`Connection: close`) and read until the server closes it."""
    payload = orjson.dumps(body)
    lines = [
        f"POST {ROUTES[dialect]} HTTP/1.1",
        f"Host: 127.0.0.1:{mock.port}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", mock.port)
    sent_at = time.monotonic()
    writer.write("\r\n".join(lines).encode() + b"\r\n\r\n" + payload)
    reads: list[tuple[float, bytes]] = []
    try:
        async with asyncio.timeout(timeout):
            while data := await reader.read(65536):
                reads.append((time.monotonic(), data))
    finally:
        writer.close()
    raw = b"".join(data for _, data in reads)
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers_out = dict(line.split(": ", 1) for line in header_lines)
    chunks, complete = dechunk(rest)
    return RawResponse(int(status_line.split()[1]), headers_out, chunks, complete, reads, sent_at)


def dechunk(data: bytes) -> tuple[list[bytes], bool]:
    """The chunks of a chunked body, and whether its terminating chunk arrived."""
    chunks = []
    while data:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            return chunks, False
        size = int(size_line, 16)
        if size == 0:
            return chunks, True
        if len(data) < size + 2:
            chunks.append(data[:size])
            return chunks, False
        chunks.append(data[:size])
        data = data[size + 2 :]
    return chunks, False
