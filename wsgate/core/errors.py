"""The one exception tree of wsgate and the table of wire error codes.

Owns every error a client can see: its `code` on the wire, whether a retry may succeed, and
the WebSocket close code when the error ends the connection. Third-party exceptions (aiohttp,
websockets, msgspec) are translated into this tree at each boundary; their text never goes on
the wire, only the `public_message` chosen here or by the raiser. Imports nothing of wsgate.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar


class CloseCode(IntEnum):
    """WebSocket close codes wsgate sends (RFC 6455 §7.4; 4000-4999 are ours).

    4000-4499: the client may reconnect (with backoff). 4500-4999: it must not reconnect
    without changing something (credentials, protocol version, the request itself).
    """

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    TRY_AGAIN_LATER = 1013
    SLOW_CONSUMER = 4000
    PROTOCOL_VIOLATION = 4500
    AUTH_FAILED = 4501  # no credentials, bad ones, or none within auth.timeout_s
    AUTH_EXPIRED = 4502  # the credentials expired and no `auth` refreshed them


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """One row of the error table: what the wire says about an error code."""

    retryable: bool
    description: str


# The wire error codes. PROTOCOL.md documents the same table; a test keeps them equal.
ERROR_CODES: dict[str, ErrorSpec] = {
    "bad_frame": ErrorSpec(
        retryable=False, description="The frame is not valid JSON or not a valid wsgate.v1 frame."
    ),
    "frame_too_large": ErrorSpec(
        retryable=False, description="The frame exceeds limits.max_frame_bytes."
    ),
    "unsupported": ErrorSpec(
        retryable=False, description="`auth` on a gateway without authentication."
    ),
    "stream_exists": ErrorSpec(
        retryable=False, description="A stream with this stream_id is running on the connection."
    ),
    "unknown_stream": ErrorSpec(
        retryable=False, description="No running stream has this stream_id (it may have ended)."
    ),
    "too_many_streams": ErrorSpec(
        retryable=True, description="The connection already runs max_streams streams."
    ),
    "unknown_model": ErrorSpec(retryable=False, description="No provider route serves this model."),
    "bad_request": ErrorSpec(
        retryable=False, description="The request cannot be sent to the provider as given."
    ),
    "upstream_unavailable": ErrorSpec(
        retryable=True, description="The provider could not be reached."
    ),
    "upstream_timeout": ErrorSpec(
        retryable=True, description="The provider did not answer in time."
    ),
    "upstream_rate_limited": ErrorSpec(
        retryable=True, description="The provider rate-limited the request."
    ),
    "upstream_error": ErrorSpec(
        retryable=True, description="The provider failed while generating."
    ),
    "upstream_rejected": ErrorSpec(
        retryable=False, description="The provider refused the request (4xx)."
    ),
    "upstream_protocol": ErrorSpec(
        retryable=True, description="The provider's stream could not be parsed."
    ),
    "upstream_line_too_long": ErrorSpec(
        retryable=False, description="The provider sent a line over the size cap."
    ),
    "stream_timeout": ErrorSpec(
        retryable=False, description="The stream ran longer than limits.max_stream_duration_s."
    ),
    "shutting_down": ErrorSpec(
        retryable=True, description="The gateway shut down before the stream finished."
    ),
    "slow_consumer": ErrorSpec(
        retryable=True, description="The client did not read its frames in time."
    ),
    "too_many_bad_frames": ErrorSpec(
        retryable=False,
        description="The client sent limits.max_bad_frames refused frames; the connection closes.",
    ),
    "unknown_message": ErrorSpec(
        retryable=False,
        description="No generation with this message_id is known (never made, or forgotten).",
    ),
    "resume_expired": ErrorSpec(
        retryable=False, description="The generation's log expired (store.resume_window_s)."
    ),
    "resume_trimmed": ErrorSpec(
        retryable=False, description="Frames after last_seq are no longer in the log."
    ),
    "resume_epoch_changed": ErrorSpec(
        retryable=False, description="The generation's epoch is not the one the client gave."
    ),
    "resume_owner_lost": ErrorSpec(
        retryable=False,
        description="The node generating it stopped; the frames it logged were replayed.",
    ),
    "idempotency_conflict": ErrorSpec(
        retryable=False,
        description="The idempotency_key is bound to a different request.",
    ),
    "store_unavailable": ErrorSpec(
        retryable=True, description="The resume store cannot be reached now."
    ),
    "auth_required": ErrorSpec(
        retryable=False,
        description="The connection must authenticate first: an `auth` frame, a Bearer "
        "token or a ticket.",
    ),
    "auth_failed": ErrorSpec(
        retryable=False,
        description="The credentials were refused (unknown, revoked, badly signed, or "
        "not valid now).",
    ),
    "auth_timeout": ErrorSpec(
        retryable=False, description="No `auth` frame arrived within auth.timeout_s."
    ),
    "auth_expired": ErrorSpec(
        retryable=False,
        description="The connection's credentials expired without an `auth` refreshing them.",
    ),
    "forbidden": ErrorSpec(retryable=False, description="The principal may not use this model."),
    "rate_limited": ErrorSpec(
        retryable=True,
        description="A rate limit or quota of the principal is spent; retry after retry_after_ms.",
    ),
    "unknown_tool_call": ErrorSpec(
        retryable=False,
        description="No pending tool call of the stream has this call_id (or the gateway "
        "runs it): the result is not taken.",
    ),
    "duplicate_tool_result": ErrorSpec(
        retryable=False, description="The tool call already has a result; this one is not taken."
    ),
    "tool_result_too_large": ErrorSpec(
        retryable=False,
        description="The stream's tool results would pass limits.max_tool_result_bytes; the "
        "call stays open for a shorter result.",
    ),
    "tool_timeout": ErrorSpec(
        retryable=False,
        description="The client's tool results did not all come within tool_timeout_ms.",
    ),
    "tool_calls_invalid": ErrorSpec(
        retryable=False,
        description="A tool call of the turn has arguments that are not a JSON object; the "
        "agent loop cannot send it back to the model.",
    ),
    "max_steps_exceeded": ErrorSpec(
        retryable=False,
        description="The model still asked for tools after agent.max_steps turns.",
    ),
    "internal": ErrorSpec(
        retryable=True, description="An internal error; the operator's logs have the details."
    ),
}


class WsgateError(Exception):
    """Base of every error wsgate raises on purpose; carries its wire code.

    `public_message` is what the client reads; it must never contain exception text from a
    library, a prompt, or a secret.
    """

    code = "internal"
    transient: ClassVar[bool] = False
    """Whether the gateway may retry the provider call itself, before the first token:
    connect errors, rate limits, 5xx and overloaded errors. Never after the first token."""

    def __init__(self, public_message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(public_message)
        self.public_message = public_message
        self.retry_after_ms = retry_after_ms
        self.log_fields: dict[str, object] = {}
        """What the operator's log line adds (a provider's name, status, request id...)."""

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed if the client sends it again."""
        return ERROR_CODES[self.code].retryable


class ProtocolError(WsgateError):
    """A state machine was asked for a transition its table does not allow (a bug)."""

    code = "internal"


class UpstreamError(WsgateError):
    """The provider failed; the subclass says how."""

    code = "upstream_error"
    transient = True


class UpstreamBroken(UpstreamError):
    """The provider's response broke off mid-body (reset, bad chunking): a truncation.

    Same wire code as `UpstreamError`, but never retried by the gateway: the provider may
    have generated (and billed) the turn, and a truncated stream is not a transient refusal.
    """

    transient = False


class UpstreamUnavailable(UpstreamError):
    """Connecting to the provider failed."""

    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    """The provider was silent past a configured timeout."""

    code = "upstream_timeout"
    transient = False


class UpstreamRateLimited(UpstreamError):
    """HTTP 429 from the provider."""

    code = "upstream_rate_limited"


class UpstreamRejected(UpstreamError):
    """A 4xx from the provider other than 429: the request itself is wrong."""

    code = "upstream_rejected"
    transient = False


class UpstreamProtocolError(UpstreamError):
    """The provider's bytes are not the stream format it promised."""

    code = "upstream_protocol"
    transient = False


class UpstreamLineTooLong(UpstreamError):
    """One SSE line grew past the decoder's cap."""

    code = "upstream_line_too_long"
    transient = False


class StreamTimeout(WsgateError):
    """The stream exceeded its maximum duration."""

    code = "stream_timeout"


class ShuttingDown(WsgateError):
    """The gateway's drain deadline passed with the stream still running."""

    code = "shutting_down"


class SlowConsumer(WsgateError):
    """The client did not read its frames fast enough."""

    code = "slow_consumer"


class UnknownMessage(WsgateError):
    """No generation with this `message_id` is known."""

    code = "unknown_message"


class ResumeExpired(WsgateError):
    """The generation's log expired."""

    code = "resume_expired"


class ResumeTrimmed(WsgateError):
    """Frames the resume needs are no longer logged."""

    code = "resume_trimmed"


class ResumeEpochChanged(WsgateError):
    """The generation's epoch is not the client's."""

    code = "resume_epoch_changed"


class ResumeOwnerLost(WsgateError):
    """The node generating the message is gone."""

    code = "resume_owner_lost"


class IdempotencyConflict(WsgateError):
    """The idempotency key names a different request."""

    code = "idempotency_conflict"


class StoreUnavailable(WsgateError):
    """The store's backend cannot be reached now; the same frame may succeed later."""

    code = "store_unavailable"


class ToolTimeout(WsgateError):
    """The client's tool results did not all come in time."""

    code = "tool_timeout"


class AgentLoopFailed(WsgateError):
    """The agent loop cannot go on (`tool_calls_invalid`, `max_steps_exceeded`)."""

    def __init__(self, code: str, public_message: str) -> None:
        super().__init__(public_message)
        self.code = code


class BadRequest(WsgateError):
    """The client's request cannot be served as given."""

    code = "bad_request"


class UnknownModel(WsgateError):
    """No route for the requested model."""

    code = "unknown_model"


class AuthRequired(WsgateError):
    """A frame other than `auth` came before the connection authenticated."""

    code = "auth_required"


class AuthFailed(WsgateError):
    """Credentials were refused; the message never says which check failed to the client."""

    code = "auth_failed"

    def __init__(self, public_message: str, *, reason: str = "invalid") -> None:
        super().__init__(public_message)
        self.reason = reason
        """Why, for the operator's log and counters (never a token): expired, signature..."""


class AuthTimeout(WsgateError):
    """No `auth` frame arrived in time."""

    code = "auth_timeout"


class AuthExpired(WsgateError):
    """The connection's credentials expired."""

    code = "auth_expired"


class Forbidden(WsgateError):
    """The principal may not do this (a model outside its list)."""

    code = "forbidden"


class RateLimited(WsgateError):
    """A rate limit or quota of the principal is spent; `retry_after_ms` says when to retry."""

    code = "rate_limited"
