"""Per provider kind: how to phrase the request body and how to read the response stream.

Owns the table from a provider `kind` (as configured) to its request-body builder and to the
parser that turns its response bytes into provider-neutral events. Adding a provider is one
row here plus its translator module. No I/O: the upstream shell sends and feeds the bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from wsgate.core import events as ev
from wsgate.core.frames import ChatRequest
from wsgate.core.openai_chat import OpenAIChatTranslator
from wsgate.core.sse import SSEDecoder
from wsgate.core.stream import UpstreamParser


class OpenAIChatParser:
    """OpenAI chat-completions SSE: decoder then translator."""

    def __init__(self, max_line_bytes: int) -> None:
        self._decoder = SSEDecoder(max_line_bytes=max_line_bytes)
        self._translator = OpenAIChatTranslator()

    def feed(self, data: bytes) -> list[ev.UpstreamEvent]:
        """Consume response bytes."""
        out: list[ev.UpstreamEvent] = []
        for event in self._decoder.feed(data):
            out.extend(self._translator.feed(event))
        return out

    def eof(self) -> list[ev.UpstreamEvent]:
        """The response ended."""
        out: list[ev.UpstreamEvent] = []
        for event in self._decoder.eof():
            out.extend(self._translator.feed(event))
        out.extend(self._translator.finish())
        return out


PARSERS: dict[str, Callable[[int], UpstreamParser]] = {
    "openai_chat": OpenAIChatParser,
}


def make_parser(kind: str, max_line_bytes: int) -> UpstreamParser:
    """A fresh parser for one response of a provider of this kind."""
    return PARSERS[kind](max_line_bytes)


def openai_chat_body(request: ChatRequest, upstream_model: str) -> dict[str, Any]:
    """The chat-completions body: the client's request, streamed, with usage requested."""
    body: dict[str, Any] = msgspec.to_builtins(request)
    body["model"] = upstream_model
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return body


BODY_BUILDERS: dict[str, Callable[[ChatRequest, str], dict[str, Any]]] = {
    "openai_chat": openai_chat_body,
}


def build_body(kind: str, request: ChatRequest, upstream_model: str) -> dict[str, Any]:
    """The upstream request body for a provider of this kind."""
    return BODY_BUILDERS[kind](request, upstream_model)
