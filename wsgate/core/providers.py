"""Per provider kind: how to phrase the request body and how to read the response stream.

Owns the table from a provider `kind` (as configured) to its request-body builder and to the
parser that turns its response bytes into provider-neutral events. Adding a provider is one
row here plus its translator module. No I/O: the upstream shell sends and feeds the bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from wsgate.core.errors import WsgateError
from wsgate.core.frames import ChatRequest
from wsgate.core.openai_chat import OpenAIChatTranslator
from wsgate.core.sse import SSEDecoder, SSEEvent
from wsgate.core.stream import ParseItem, UpstreamParser


class OpenAIChatParser:
    """OpenAI chat-completions SSE: decoder then translator.

    A failure ends the returned list as a `WsgateError` value, after every event decoded
    before it in the same read (a provider's `error` event often shares a read with text).
    """

    def __init__(self, max_line_bytes: int, *, tool_snapshots: bool = False) -> None:
        self._decoder = SSEDecoder(max_line_bytes=max_line_bytes)
        self._translator = OpenAIChatTranslator(tool_snapshots=tool_snapshots)

    def feed(self, data: bytes) -> list[ParseItem]:
        """Consume response bytes."""
        return self._translate(self._decoder.feed(data), at_eof=False)

    def eof(self) -> list[ParseItem]:
        """The response ended."""
        return self._translate(self._decoder.eof(), at_eof=True)

    def _translate(self, events: list[SSEEvent], *, at_eof: bool) -> list[ParseItem]:
        out: list[ParseItem] = []
        try:
            for event in events:
                out.extend(self._translator.feed(event))
            if self._decoder.failure is not None:
                out.append(self._decoder.failure)
            elif at_eof:
                out.extend(self._translator.finish())
        except WsgateError as exc:
            out.append(exc)
        return out


PARSERS: dict[str, Callable[..., UpstreamParser]] = {
    "openai_chat": OpenAIChatParser,
}


def make_parser(kind: str, max_line_bytes: int, *, tool_snapshots: bool = False) -> UpstreamParser:
    """A fresh parser for one response of a provider of this kind."""
    return PARSERS[kind](max_line_bytes, tool_snapshots=tool_snapshots)


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
