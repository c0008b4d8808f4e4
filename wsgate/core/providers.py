"""Per provider kind: how to phrase the request body and how to read the response stream.

Owns the table from a provider `kind` (as configured) to its request-body builder and to the
parser that turns its response bytes into provider-neutral events. Adding a provider is one
row here plus its translator and request-body modules. No I/O: the upstream shell sends
and feeds the bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from wsgate.core.anthropic import AnthropicTranslator
from wsgate.core.anthropic_request import anthropic_body
from wsgate.core.errors import WsgateError
from wsgate.core.events import UpstreamEvent
from wsgate.core.frames import ChatRequest
from wsgate.core.ndjson import NDJSONDecoder
from wsgate.core.ollama import OllamaTranslator
from wsgate.core.ollama_request import ollama_body
from wsgate.core.openai_chat import OpenAIChatTranslator
from wsgate.core.openai_responses import OpenAIResponsesTranslator
from wsgate.core.openai_responses_request import openai_responses_body
from wsgate.core.sse import SSEDecoder
from wsgate.core.stream import ParseItem, UpstreamParser

E = TypeVar("E")
E_contra = TypeVar("E_contra", contravariant=True)


class Decoder(Protocol[E]):
    """Framing of a response body (SSE events, NDJSON lines): bytes in, items out.

    A decoder that gives up (a line over the cap) sets `failure` and returns nothing more.
    """

    @property
    def failure(self) -> WsgateError | None:
        """The error that ended decoding, if any."""

    def feed(self, data: bytes) -> list[E]:
        """Consume bytes; return the items they complete."""

    def eof(self) -> list[E]:
        """The body ended; return what it completes.

        SSE discards an unfinished event; NDJSON returns an unterminated last line.
        """


class Translator(Protocol[E_contra]):
    """One provider's meaning: decoded items in, provider-neutral events out.

    Raises `WsgateError` for an in-band error or a malformed item; `finish` raises when the
    stream was cut short (a truncated stream is never a clean finish).
    """

    def feed(self, item: E_contra) -> list[UpstreamEvent]:
        """Translate one decoded item."""

    def finish(self) -> list[UpstreamEvent]:
        """The body ended: the closing events, or raise if the turn did not complete."""


class TranslatingParser(Generic[E]):
    """A decoder then a translator: one response's `UpstreamParser`.

    A failure ends the returned list as a `WsgateError` value, after every event decoded
    before it in the same read (a provider's `error` event often shares a read with text).
    """

    __slots__ = ("_decoder", "_translator")

    def __init__(self, decoder: Decoder[E], translator: Translator[E]) -> None:
        self._decoder = decoder
        self._translator = translator

    def feed(self, data: bytes) -> list[ParseItem]:
        """Consume response bytes."""
        return self._translate(self._decoder.feed(data), at_eof=False)

    def eof(self) -> list[ParseItem]:
        """The response ended."""
        return self._translate(self._decoder.eof(), at_eof=True)

    def _translate(self, items: list[E], *, at_eof: bool) -> list[ParseItem]:
        out: list[ParseItem] = []
        try:
            for item in items:
                out.extend(self._translator.feed(item))
            if self._decoder.failure is not None:
                out.append(self._decoder.failure)
            elif at_eof:
                out.extend(self._translator.finish())
        except WsgateError as exc:
            out.append(exc)
        return out


def openai_chat_parser(max_line_bytes: int, *, tool_snapshots: bool = False) -> UpstreamParser:
    """OpenAI chat-completions SSE."""
    return TranslatingParser(
        SSEDecoder(max_line_bytes=max_line_bytes),
        OpenAIChatTranslator(tool_snapshots=tool_snapshots),
    )


def openai_responses_parser(max_line_bytes: int, *, tool_snapshots: bool = False) -> UpstreamParser:
    """OpenAI Responses SSE."""
    return TranslatingParser(
        SSEDecoder(max_line_bytes=max_line_bytes),
        OpenAIResponsesTranslator(tool_snapshots=tool_snapshots),
    )


def anthropic_parser(max_line_bytes: int, *, tool_snapshots: bool = False) -> UpstreamParser:
    """Anthropic Messages SSE."""
    return TranslatingParser(
        SSEDecoder(max_line_bytes=max_line_bytes),
        AnthropicTranslator(tool_snapshots=tool_snapshots),
    )


def ollama_parser(max_line_bytes: int, *, tool_snapshots: bool = False) -> UpstreamParser:
    """Ollama /api/chat NDJSON."""
    return TranslatingParser(
        NDJSONDecoder(max_line_bytes=max_line_bytes),
        OllamaTranslator(tool_snapshots=tool_snapshots),
    )


PARSERS: dict[str, Callable[..., UpstreamParser]] = {
    "anthropic": anthropic_parser,
    "ollama": ollama_parser,
    "openai_chat": openai_chat_parser,
    "openai_responses": openai_responses_parser,
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
    "anthropic": anthropic_body,
    "ollama": ollama_body,
    "openai_chat": openai_chat_body,
    "openai_responses": openai_responses_body,
}


def build_body(kind: str, request: ChatRequest, upstream_model: str) -> dict[str, Any]:
    """The upstream request body for a provider of this kind."""
    return BODY_BUILDERS[kind](request, upstream_model)
