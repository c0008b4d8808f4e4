"""Structured logs: one JSON line per event, with connection context and no secrets.

Owns the structlog configuration and the redaction every line passes through: keys that
name credentials are redacted, prompt and completion text is omitted unless the operator
opts in (`include_prompts`), and strings that look like bearer tokens, `sk-` keys or JWTs are
scrubbed wherever they appear, tracebacks included. stdlib logging (aiohttp, websockets) at
WARNING and above goes through the same processors into the same stream. Context such as
`conn_id`, `stream_id` and `message_id` rides in contextvars (`bind`, `bound`), so each
asyncio task logs its own. This module configures logging and nothing else: it must not
decide what is logged or read settings itself.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from typing import IO, TYPE_CHECKING, Any, Final, TextIO, cast

import orjson
import structlog
from structlog.typing import FilteringBoundLogger

if TYPE_CHECKING:
    from collections.abc import Iterator

    from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "FilteringBoundLogger",
    "bind",
    "bound",
    "configure",
    "get_logger",
    "reset",
    "scrub",
    "unbind",
]

LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
REDACTED: Final = "[redacted]"
OMITTED: Final = "[omitted]"

_SECRET_KEY_PARTS: Final = ("key", "token", "secret", "password", "authorization", "cookie")
_PROMPT_KEYS: Final = frozenset({"messages", "prompt", "content", "text"})
_SECRET_VALUE = re.compile(
    r"(?i:bearer)\s+[A-Za-z0-9\-._~+/]+=*"  # RFC 6750 b64token
    r"|\bsk-[A-Za-z0-9_\-]{8,}"  # OpenAI / Anthropic style keys (sk-, sk-proj-, sk-ant-)
    r"|\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"  # JWT
    r"|(?i:basic)\s+[A-Za-z0-9+/]{8,}=*"  # HTTP Basic credentials
    r"|\b(?:gsk_|xai-|hf_|AIza|ghp_|github_pat_)[A-Za-z0-9_\-]{8,}"  # Groq, xAI, HF, Google, GitHub
    r"|(?<=[?&])(?i:key|api[-_]?key|token|access_token|sig)=[^&\s]+"  # a secret in a query
)
_HEAD_KEYS: Final = ("timestamp", "level", "event")
_MAX_DEPTH: Final = 8  # deeper values are replaced: a log line is not a data dump


class _Redactor:
    """The redaction processor; one instance per `configure` call."""

    def __init__(self, *, include_prompts: bool) -> None:
        self.include_prompts = include_prompts

    def __call__(self, _logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
        return {key: self._value(key, value, 0) for key, value in event_dict.items()}

    def _value(self, key: Any, value: Any, depth: int) -> Any:
        if isinstance(key, str):
            lowered = key.lower()
            if _names_secret(lowered):
                return REDACTED
            if lowered in _PROMPT_KEYS and not self.include_prompts:
                return OMITTED
        return self._scrub(value, depth)

    def _scrub(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return _SECRET_VALUE.sub(REDACTED, value)
        if depth >= _MAX_DEPTH:
            return "[too deep]" if isinstance(value, dict | list | tuple) else value
        if isinstance(value, dict):
            return {k: self._value(k, v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(item, depth + 1) for item in value]
        return value


def scrub(text: str) -> str:
    """`text` with what looks like a credential (a bearer token, an `sk-` key, a JWT) redacted."""
    return _SECRET_VALUE.sub(REDACTED, text)


def _names_secret(key: str) -> bool:
    parts = [part for part in _SECRET_KEY_PARTS if part in key]
    # "max_tokens", "prompt_tokens", "tokens_per_s" count tokens and "first_token_timeout_s"
    # times one; they are not credentials.
    counts_or_times = "tokens" in key or "token_timeout" in key
    return bool(parts) and not (parts == ["token"] and counts_or_times)


class _NamedPrintLogger(structlog.PrintLogger):
    """A PrintLogger that remembers the name given to `get_logger`."""

    def __init__(self, file: TextIO, name: str | None = None) -> None:
        super().__init__(file)
        self.name = name


def _add_logger_name(logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", None)
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


def _render_json(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> str:
    # The fixed keys first so a line reads left to right; default=repr so an unknown
    # object still logs (its repr; a config Secret masks itself).
    head = {key: event_dict.pop(key) for key in _HEAD_KEYS if key in event_dict}
    line = orjson.dumps({**head, **event_dict}, default=repr, option=orjson.OPT_NON_STR_KEYS)
    return line.decode()


_HANDLER_NAME: Final = "wsgate.log"


class _Stdout:
    """`sys.stdout` as it is when a line is written, not when logging was configured.

    A process that swaps its stdout (a test runner capturing output, a daemon redirecting
    it) must not leave the loggers writing into a closed file: a line that cannot be
    written would raise inside whatever was logging.
    """

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()

    def isatty(self) -> bool:
        return sys.stdout.isatty()


def configure(
    level: str = "info",
    fmt: str = "json",
    stream: IO[str] | None = None,
    *,
    include_prompts: bool = False,
) -> None:
    """Send wsgate's logs (and stdlib WARNING+) to `stream` as JSON lines or console text.

    Idempotent: a second call replaces the first configuration. `stream` defaults to
    stdout as it is when each line is written.
    """
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in {"json", "console"}:
        raise ValueError(f"log format must be 'json' or 'console', got {fmt!r}")
    out: IO[str] = cast("IO[str]", _Stdout()) if stream is None else stream
    renderer: Processor
    if fmt == "json":
        renderer = _render_json
    else:
        is_tty = getattr(out, "isatty", lambda: False)()
        # The exception is already text (format_exc_info ran before redaction).
        renderer = structlog.dev.ConsoleRenderer(
            colors=is_tty, exception_formatter=structlog.dev.plain_traceback
        )
    common: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]
    # Exceptions become text before redaction so tracebacks are scrubbed too.
    tail: list[Processor] = [
        structlog.processors.format_exc_info,
        _Redactor(include_prompts=include_prompts),
        renderer,
    ]
    structlog.configure(
        processors=[
            _add_logger_name,
            *common,
            structlog.processors.StackInfoRenderer(),
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=lambda *args: _NamedPrintLogger(cast("TextIO", out), *args[:1]),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *common],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )
    _route_stdlib(out, max(LEVELS[level], logging.WARNING), formatter)


def _route_stdlib(out: IO[str], level: int, formatter: logging.Formatter) -> None:
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setLevel(level)
    handler.setFormatter(formatter)
    _remove_stdlib_handler()
    logging.getLogger().addHandler(handler)


def _remove_stdlib_handler() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
            handler.close()


def reset() -> None:
    """Undo `configure` and clear bound context (for tests)."""
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    _remove_stdlib_handler()


def get_logger(name: str | None = None) -> FilteringBoundLogger:
    """Return a logger; `name` appears on each line as `logger`."""
    # The name goes to the logger factory: an initial value would make the proxy bind early.
    logger: FilteringBoundLogger = structlog.get_logger(*([name] if name else []))
    return logger


def bind(**kw: Any) -> None:
    """Add keys to every line logged from this context (task) on."""
    structlog.contextvars.bind_contextvars(**kw)


def unbind(*keys: str) -> None:
    """Remove keys that `bind` added in this context."""
    structlog.contextvars.unbind_contextvars(*keys)


@contextlib.contextmanager
def bound(**kw: Any) -> Iterator[None]:
    """Bind keys for the body of a `with` block, restoring the previous values after."""
    with structlog.contextvars.bound_contextvars(**kw):
        yield
