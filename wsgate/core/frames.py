"""The wsgate.v1 frames: typed definitions, decoding that never escapes, encoding that never fails.

Owns the wire contract. `protocol/schema/*.json` is generated from these types
(`wsgate schema`), and a test keeps the committed files equal to the generated ones, so a
change here is a protocol change: update `protocol/PROTOCOL.md` and the fixtures with it.
Fields are only ever added, never repurposed.

Rules:
1. `decode_client_frame` returns a frame or a `FrameRejected` for *any* input; no exception
   escapes it (msgspec raises RecursionError on deep nesting, UnicodeDecodeError on bad
   bytes, ValidationError on huge integers: all become `bad_frame`).
2. `encode_frame` always returns valid UTF-8: a lone surrogate reaching websockets' `send()`
   would drop the connection and every stream on it, so surrogates become U+FFFD here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec

from wsgate.core.utf8 import scrub_value

PROTOCOL: Final = "wsgate.v1"
STREAM_ID_PATTERN: Final = r"^[A-Za-z0-9._:\-]{1,64}$"
MAX_STREAM_ID_LENGTH: Final = 64

StreamId = Annotated[
    str,
    msgspec.Meta(
        pattern=STREAM_ID_PATTERN,
        description="Client-chosen id, unique among the connection's running streams.",
    ),
]
Seq = Annotated[int, msgspec.Meta(ge=1, description="Gapless per-stream sequence number, from 1.")]
MessageId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9._:\-]{1,128}$",
        description="A generation's id, as `stream.started` gave it.",
    ),
]
IdempotencyKey = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=256,
        description="Client-chosen; a retried `start` with the same key and request attaches.",
    ),
]
FinishReason = Literal[
    "stop", "length", "tool_calls", "content_filter", "cancelled", "timeout", "error"
]


class _Frame(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    """Base of every frame: tagged by `type`, unknown fields rejected."""


# --- client -> gateway ---------------------------------------------------------------


class Message(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One chat message, in the OpenAI chat-completions shape."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The generation request, in the OpenAI chat-completions shape (`stream` is implied)."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    user: str | None = None
    thinking: dict[str, Any] | None = None  # Anthropic's extended thinking (and Ollama's think)
    extra_body: dict[str, Any] | None = None  # provider-specific fields, merged into the body


class StructuredOptions(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Delimited structured output: sections between `open` and `close` are parsed as JSON.

    `final_json`: the whole answer is JSON; it streams as text and a `structured` frame
    follows at the end if it parses.
    """

    mode: Literal["sections", "final_json"] = "sections"
    open: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "<<<JSON>>>"
    close: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "<<<END>>>"


Buffering = Literal["immediate", "word", "debounce", "sentence", "paragraph"]

ToolName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class AgentOptions(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The agent loop (PROTOCOL.md §8.5): tool calls answered, then the next model turn.

    `client_tools`: the client answers calls to the tools its request declares with
    `tool_result` frames, within `tool_timeout_ms` of `tool.awaiting`. `server_tools`: the
    configured tools (`[tools.NAME]`) the model may call; the gateway runs them. At most
    `max_steps` model turns.
    """

    client_tools: bool = False
    server_tools: Annotated[list[ToolName], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=list
    )
    max_steps: Annotated[int, msgspec.Meta(ge=1, le=64)] = 8
    tool_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=600_000)] = 60_000


class StartOptions(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Per-stream delivery options."""

    telemetry: bool = False
    on_disconnect: Literal["cancel", "continue"] = "cancel"
    buffering: Buffering = "immediate"
    debounce_ms: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 50
    max_latency_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 2000
    grapheme_safe: bool = True
    tool_arguments: bool = True
    tool_snapshots: bool = False
    structured: StructuredOptions | None = None
    reasoning: bool = False
    resumable: bool = True
    idempotency_key: IdempotencyKey | None = None
    agent: AgentOptions | None = None


class Start(_Frame, tag="start"):
    """Begin a generation stream."""

    stream_id: StreamId
    request: ChatRequest
    options: StartOptions = msgspec.field(default_factory=StartOptions)


class Cancel(_Frame, tag="cancel"):
    """Stop a stream (by `stream_id`) or a generation from anywhere (by `message_id`).

    Exactly one of the two; the generation's upstream call is closed either way.
    """

    stream_id: StreamId | None = None
    message_id: MessageId | None = None


class Auth(_Frame, tag="auth"):
    """Authenticate (the first frame of a connection without credentials), or refresh.

    `token` is an API key or a JWT. Sent again before the token's `exp`, it refreshes the
    connection's credentials (the principal must stay the same): `auth.refreshed` answers.
    """

    token: Annotated[str, msgspec.Meta(min_length=1, max_length=16384)]


class Resume(_Frame, tag="resume"):
    """Continue a generation on this connection as `stream_id`: the frames after `last_seq`.

    `snapshot`: runs of replayed text deltas leave as one `delta.text` each (with
    `first_seq`). `epoch`, when given, must be the generation's (`stream.started`).
    """

    message_id: MessageId
    last_seq: Annotated[int, msgspec.Meta(ge=0)]
    stream_id: StreamId
    snapshot: bool = False
    epoch: str | None = None


class ToolError(msgspec.Struct, forbid_unknown_fields=True):
    """Why a tool call has no result: a code and a message the model reads."""

    code: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    message: Annotated[str, msgspec.Meta(max_length=4096)]


class ToolResult(_Frame, tag="tool_result"):
    """A client-side tool's result for a call of a stream's pending turn (§4.5).

    Exactly one of `content` (any JSON: a string goes to the model as is) and `error`.
    """

    stream_id: StreamId
    call_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    content: Any = msgspec.UNSET
    error: ToolError | None = None


ClientFrame = Start | Cancel | Auth | Resume | ToolResult

# --- gateway -> client ---------------------------------------------------------------


class ReadyLimits(msgspec.Struct, forbid_unknown_fields=True):
    """The limits in force on this connection."""

    max_streams: int
    max_frame_bytes: int
    max_stream_id_length: int


class ReadyAuth(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Who the connection acts for, and until when its credentials hold."""

    principal: str
    method: Literal["api_key", "jwt", "ticket", "anonymous"]
    expires_in_ms: int | None = None  # None: the credentials do not expire


class Ready(_Frame, tag="ready"):
    """First frame on every connection (after its `auth` frame when it sends one)."""

    protocol: str
    conn_id: str
    server_version: str
    limits: ReadyLimits
    auth: ReadyAuth | None = None  # absent on a gateway without [auth]


class AuthRefreshed(_Frame, tag="auth.refreshed"):
    """An `auth` frame on an authenticated connection was accepted: new expiry."""

    principal: str
    expires_in_ms: int | None = None


class StreamStarted(_Frame, tag="stream.started"):
    """The stream was accepted; `message_id` names the generation (for resume).

    `epoch` is present when the generation is logged (resumable).
    """

    stream_id: str
    seq: Seq
    message_id: str
    model: str
    epoch: str | None = None


class StreamResumed(_Frame, tag="stream.resumed"):
    """A `resume` was accepted: the frames after `last_seq` follow, then the live tail.

    `top_seq` is the last `seq` logged when it was answered; `state` `ended` means the
    generation finished (its frames up to its `finish` follow, none if `last_seq` is past it).
    """

    stream_id: str
    message_id: str
    epoch: str
    last_seq: int
    top_seq: int
    state: Literal["running", "ended"]


class DeltaRole(_Frame, tag="delta.role"):
    """The speaking role of the answer."""

    stream_id: str
    seq: Seq
    role: str


class DeltaText(_Frame, tag="delta.text"):
    """A piece of answer text; never a split code point or a lone surrogate.

    Under backpressure several queued text deltas leave as one frame: `seq` is the last one
    it covers and `first_seq` the first (absent when it covers only `seq`).
    """

    stream_id: str
    seq: Seq
    text: str
    first_seq: Seq | None = None


class DeltaReasoning(_Frame, tag="delta.reasoning"):
    """A piece of the model's reasoning; only sent when the stream asked for it."""

    stream_id: str
    seq: Seq
    text: str


class ToolCallStartFrame(_Frame, tag="tool_call.start"):
    """A tool call began."""

    stream_id: str
    seq: Seq
    call_id: str
    index: int
    name: str


class ToolCallArgumentsChunk(_Frame, tag="tool_call.arguments_chunk"):
    """A raw fragment of a tool call's JSON arguments, for progressive display."""

    stream_id: str
    seq: Seq
    call_id: str
    chunk: str


class ToolCallEndFrame(_Frame, tag="tool_call.end"):
    """A tool call completed with parsed arguments; exactly once per call."""

    stream_id: str
    seq: Seq
    call_id: str
    name: str
    arguments: Any


class ToolCallSnapshot(_Frame, tag="tool_call.snapshot"):
    """Opt-in: the arguments parsed so far (partial JSON completed), for progressive UIs."""

    stream_id: str
    seq: Seq
    call_id: str
    partial: Any


class ToolCallError(_Frame, tag="tool_call.error"):
    """A tool call ended without valid arguments: no `tool_call.end` for it; `raw` is kept."""

    stream_id: str
    seq: Seq
    call_id: str
    code: str
    message: str
    raw: str
    name: str | None = None


class StructuredFrame(_Frame, tag="structured"):
    """A delimited section (or the whole answer, in `final_json`) parsed as JSON."""

    stream_id: str
    seq: Seq
    value: Any


class StructuredError(_Frame, tag="structured.error"):
    """A delimited section that did not parse (or never closed); `raw` is its text."""

    stream_id: str
    seq: Seq
    code: str
    message: str
    raw: str


class UsageFrame(_Frame, tag="usage"):
    """Token counts reported by the provider."""

    stream_id: str
    seq: Seq
    input_tokens: int
    output_tokens: int


class ToolAwaiting(_Frame, tag="tool.awaiting"):
    """The turn ended in calls the client answers with `tool_result` within `timeout_ms`."""

    stream_id: str
    seq: Seq
    turn: int
    call_ids: list[str]
    timeout_ms: int


class ToolExecuting(_Frame, tag="tool.executing"):
    """The gateway runs a server-side tool's call now."""

    stream_id: str
    seq: Seq
    call_id: str
    name: str


class ToolResultFrame(_Frame, tag="tool.result"):
    """A call's result, taken for the next turn: from the client or a server-side tool."""

    stream_id: str
    seq: Seq
    call_id: str
    name: str
    source: Literal["client", "server"]
    content: Any = msgspec.UNSET
    error: ToolError | None = None


class TurnStarted(_Frame, tag="turn.started"):
    """The next model turn of the stream was sent to the provider (turn 2 onwards)."""

    stream_id: str
    seq: Seq
    turn: int


class FinishFrame(_Frame, tag="finish"):
    """The last frame of a stream; nothing of the stream follows it."""

    stream_id: str
    seq: Seq
    reason: FinishReason


class ErrorFrame(_Frame, tag="error"):
    """A typed error.

    With `seq`: a stream failed; its `finish` (reason `error`) follows. With `stream_id` but
    no `seq`: a client frame about that stream was refused; no running stream is affected.
    With neither: a connection-level refusal.
    """

    code: str
    message: str
    retryable: bool
    stream_id: str | None = None
    seq: Seq | None = None
    retry_after_ms: int | None = None
    call_id: str | None = None  # a refused `tool_result`: the call it named


class Telemetry(_Frame, tag="telemetry"):
    """Sheddable progress figures of a stream; carries no `seq` and may be dropped."""

    stream_id: str
    tokens: int
    tokens_per_s: float
    ttft_ms: float | None = None


class GoAway(_Frame, tag="goaway"):
    """The gateway is shutting down: start no new streams here; reconnect after the delay.

    Running streams may finish until `drain_ms` has passed; the rest are then cancelled.
    """

    reason: str
    reconnect_after_ms: int = 0
    drain_ms: int = 0


class Heartbeat(_Frame, tag="heartbeat"):
    """Sent after `heartbeat_interval_s` of silence, for clients that cannot see pings."""


ServerFrame = (
    Ready
    | AuthRefreshed
    | StreamStarted
    | StreamResumed
    | DeltaRole
    | DeltaText
    | DeltaReasoning
    | ToolCallStartFrame
    | ToolCallArgumentsChunk
    | ToolCallSnapshot
    | ToolCallEndFrame
    | ToolCallError
    | StructuredFrame
    | StructuredError
    | ToolAwaiting
    | ToolExecuting
    | ToolResultFrame
    | TurnStarted
    | UsageFrame
    | FinishFrame
    | ErrorFrame
    | Telemetry
    | GoAway
    | Heartbeat
)
StreamEventFrame = (
    StreamStarted
    | DeltaRole
    | DeltaText
    | DeltaReasoning
    | ToolCallStartFrame
    | ToolCallArgumentsChunk
    | ToolCallSnapshot
    | ToolCallEndFrame
    | ToolCallError
    | StructuredFrame
    | StructuredError
    | ToolAwaiting
    | ToolExecuting
    | ToolResultFrame
    | TurnStarted
    | UsageFrame
    | FinishFrame
    | ErrorFrame
)

CLIENT_TYPES: Final = frozenset({"start", "cancel", "resume", "auth", "tool_result"})
_STREAM_ID_RE: Final = re.compile(STREAM_ID_PATTERN)

# --- decoding ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """Why a client frame was refused; `stream_id` is set when it could be recovered."""

    code: str
    message: str
    stream_id: str | None = None


class _Probe(msgspec.Struct):
    """The two fields worth recovering from a frame that failed validation."""

    type: Any = None
    stream_id: Any = None


_client_decoder: msgspec.json.Decoder[ClientFrame] = msgspec.json.Decoder(ClientFrame)
_probe_decoder = msgspec.json.Decoder(_Probe)
_server_decoder: msgspec.json.Decoder[ServerFrame] = msgspec.json.Decoder(ServerFrame)


def decode_client_frame(data: str | bytes, max_bytes: int) -> ClientFrame | FrameRejected:
    """Decode one client text frame; every failure is a `FrameRejected`, never an exception."""
    size = len(data) if isinstance(data, bytes) else _utf8_length(data)
    if size > max_bytes:
        return FrameRejected("frame_too_large", f"frame of {size} bytes exceeds {max_bytes}")
    try:
        return _client_decoder.decode(data)
    except msgspec.ValidationError as exc:
        return _rejected_by_validation(data, exc)
    except RecursionError:
        return FrameRejected("bad_frame", "frame nests too deeply")
    except Exception:  # DecodeError, UnicodeDecodeError, ValueError: all are malformed input
        return FrameRejected("bad_frame", "frame is not valid JSON")


def _utf8_length(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _rejected_by_validation(data: str | bytes, exc: msgspec.ValidationError) -> FrameRejected:
    try:
        probe = _probe_decoder.decode(data)
    except Exception:  # only a non-object fails here: the probe accepts any object
        return FrameRejected("bad_frame", "a frame must be a JSON object")
    sid = probe.stream_id
    stream_id = sid if isinstance(sid, str) and _STREAM_ID_RE.fullmatch(sid) else None
    if not isinstance(probe.type, str):
        return FrameRejected("bad_frame", "frame has no string `type` field", stream_id)
    if probe.type not in CLIENT_TYPES:
        return FrameRejected("bad_frame", "unknown frame type", stream_id)
    # msgspec's validation text names the path and the expected type, never the payload.
    return FrameRejected("bad_frame", str(exc), stream_id)


def decode_server_frame(data: str | bytes) -> ServerFrame:
    """Decode a gateway frame (for clients and tests); raises msgspec errors on bad input."""
    return _server_decoder.decode(data)


# --- encoding ------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()


class FrameEncodeError(ValueError):
    """A frame holds a value JSON cannot carry here (nested deeper than the encoder allows)."""


def encode_frame(frame: ServerFrame | ClientFrame) -> bytes:
    """Encode a frame as UTF-8 JSON; lone surrogates anywhere become U+FFFD.

    Raises `FrameEncodeError` (and nothing else) for values nested too deeply to encode;
    the stream core encodes every frame it emits, so that error never reaches a shell.
    """
    try:
        return _encoder.encode(frame)
    except UnicodeEncodeError:
        pass
    except RecursionError:
        raise FrameEncodeError("frame nests too deeply to encode") from None
    try:
        return _encoder.encode(scrub_value(msgspec.to_builtins(frame)))
    except RecursionError:
        raise FrameEncodeError("frame nests too deeply to encode") from None


def json_schemas() -> dict[str, Any]:
    """The JSON Schemas of both directions, as committed under `protocol/schema/`."""
    out: dict[str, Any] = {}
    for name, union in (("client", ClientFrame), ("server", ServerFrame)):
        (schema,), components = msgspec.json.schema_components(
            [union], ref_template="#/$defs/{name}"
        )
        schema = dict(schema)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://wsgate.dev/protocol/v1/{name}.schema.json"
        schema["title"] = f"wsgate.v1 {name} frame"
        schema["$defs"] = components
        out[name] = schema
    return out
