"""The registry of provider kinds: the one place that lists them.

Owns `KINDS`, from a kind's configured name (`openai_chat`, `openai_responses`,
`anthropic`, `ollama`) to its `ProviderKind` row, defined in that kind's module. Every other
list of kinds (the configuration's allowed values, the upstream shell's HTTP details, the
parsers) is read from here. Adding a provider is one module with its `KIND` and one line
below. No I/O.
"""

from __future__ import annotations

from typing import Any

from wsgate.core.frames import ChatRequest
from wsgate.core.providers import anthropic, ollama, openai_chat, openai_responses
from wsgate.core.providers.base import ProviderKind
from wsgate.core.stream import UpstreamParser

KINDS: dict[str, ProviderKind] = {
    module.KIND.name: module.KIND for module in (openai_chat, openai_responses, anthropic, ollama)
}

KIND_NAMES: tuple[str, ...] = tuple(sorted(KINDS))
"""The provider kinds a configuration may name."""


def kind(name: str) -> ProviderKind:
    """The registry row of a kind; `KeyError` naming the known kinds if there is none."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown provider kind {name!r}; one of {', '.join(KIND_NAMES)}") from None


def make_parser(name: str, max_line_bytes: int, *, tool_snapshots: bool = False) -> UpstreamParser:
    """A fresh parser for one response of a provider of this kind."""
    return kind(name).parser(max_line_bytes, tool_snapshots=tool_snapshots)


def build_body(name: str, request: ChatRequest, upstream_model: str) -> dict[str, Any]:
    """The upstream request body for a provider of this kind."""
    return kind(name).body(request, upstream_model)
