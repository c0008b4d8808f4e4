"""What every provider kind is made of: its HTTP details, request body and response parser.

Owns `ProviderKind` (one row of the registry: name, `ProviderHTTP`, body builder, parser
factory), the `Decoder` and `Translator` protocols a parser is built from, and
`TranslatingParser`, which chains them. Each kind's module (`openai_chat.py`, ...) defines
its row; `registry.py` collects them. No I/O: the upstream shell sends and feeds the bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from wsgate.core.errors import WsgateError
from wsgate.core.events import UpstreamEvent
from wsgate.core.frames import ChatRequest
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


@dataclass(frozen=True, slots=True)
class ProviderHTTP:
    """How a provider kind is called: path under the base URL, media type, key header.

    Base URLs end where the provider's versioned API starts: `https://api.openai.com/v1`,
    `https://api.anthropic.com/v1`, `http://localhost:11434` for Ollama.
    """

    path: str
    accept: str
    key_header: str = "authorization"  # "authorization" sends `Bearer <key>`
    headers: tuple[tuple[str, str], ...] = ()


BodyBuilder = Callable[[ChatRequest, str], dict[str, Any]]
"""The upstream request body for a request and the provider's model name."""

ParserFactory = Callable[..., UpstreamParser]
"""A fresh parser for one response: `(max_line_bytes, *, tool_snapshots=False)`."""


@dataclass(frozen=True, slots=True)
class ProviderKind:
    """Everything wsgate knows about one kind of provider: one row of the registry."""

    name: str
    http: ProviderHTTP
    body: BodyBuilder
    parser: ParserFactory


def translating(
    decoder: Callable[..., Decoder[Any]], translator: Callable[..., Translator[Any]]
) -> ParserFactory:
    """The parser factory of a kind: its decoder (SSE, NDJSON) then its translator."""

    def parser(max_line_bytes: int, *, tool_snapshots: bool = False) -> UpstreamParser:
        return TranslatingParser(
            decoder(max_line_bytes=max_line_bytes), translator(tool_snapshots=tool_snapshots)
        )

    return parser
