"""The mock provider's per-request script and the exact OpenAI chat SSE bytes it produces.

Owns the script format (`protocol/MOCK.md` is its documentation; keep them equal), finding a
script in a request, the deterministic answer text, the chunking rules and the plan: the list
of `data: ...` events with their time offsets from the request's arrival. Pure: no asyncio, no
clock (`created` comes in as an argument), no sockets; the server in `server.py` does the
pacing and the writing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import msgspec
import orjson

if TYPE_CHECKING:
    from collections.abc import Mapping

SCRIPT_HEADER: Final = "x-mock-script"
DONE_EVENT: Final = b"data: [DONE]\n\n"
SYSTEM_FINGERPRINT: Final = "fp_mock"

# "Plain English words" for generated answers. Changing this list changes every generated
# text, which tests and recorded load-test baselines pin: append nothing, reorder nothing.
VOCABULARY: Final = (
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "a", "river", "runs",
    "through", "green", "valley", "under", "bright", "morning", "sky", "people", "walk",
    "along", "quiet", "road", "and", "talk", "about", "small", "things", "like", "bread",
    "tea", "rain", "music", "books", "light", "stone", "window", "garden", "city", "train",
    "station", "evening", "friend", "letter", "story", "simple", "clear", "warm",
    "cold", "wind", "water", "tree", "house", "door", "table", "paper", "voice", "time",
    "day", "night", "slowly", "often", "never", "always",
)  # fmt: skip

# A "word" chunk is a run of non-space characters with the whitespace before it; whitespace
# after the last such run is one more chunk, so the chunks always join back to the text.
_WORD_CHUNK: Final = re.compile(r"\s*\S+|\s+")
_MASK64: Final = (1 << 64) - 1


class ScriptError(ValueError):
    """The script is malformed; the message is returned to the client in the 400 body."""


class ToolCallScript(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One scripted tool call: streamed after the text, arguments in `args_chunk` pieces."""

    name: str
    arguments: str = ""
    id: str | None = None


Millis = Annotated[float, msgspec.Meta(ge=0, le=3_600_000)]
Rate = Annotated[float, msgspec.Meta(ge=0, le=1_000_000)]


class Script(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """What one request answers and how; every key optional (see `protocol/MOCK.md`)."""

    text: str | None = None
    words: Annotated[int, msgspec.Meta(ge=0, le=100_000)] | None = None
    seed: int | None = None
    chunk: Literal["word"] | Annotated[int, msgspec.Meta(ge=1)] = "word"
    chunks: tuple[str, ...] | None = None
    ttft_ms: Millis = 0.0
    tokens_per_s: Rate = 0.0
    finish_reason: str | None = None
    tool_calls: tuple[ToolCallScript, ...] = ()
    args_chunk: Annotated[int, msgspec.Meta(ge=1)] = 8
    events: tuple[str, ...] | None = None
    done: bool = True
    status: Annotated[int, msgspec.Meta(ge=400, le=599)] | None = None
    retry_after: Annotated[float, msgspec.Meta(ge=0)] | None = None
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """One SSE event: `data` is the `data:` line with its blank line, `at_s` its offset."""

    at_s: float
    data: bytes


# Keys that describe generated chunks; `events` replaces those chunks, so they cannot mix.
_GENERATED_KEYS: Final = ("text", "words", "seed", "chunk", "chunks", "finish_reason",
                          "tool_calls", "args_chunk")  # fmt: skip


def parse_script(raw: object) -> Script:
    """Validate a decoded JSON value as a script; raise `ScriptError` naming the problem."""
    if not isinstance(raw, dict):
        raise ScriptError("the mock script must be a JSON object")
    try:
        script = msgspec.convert(raw, Script)
    except msgspec.ValidationError as exc:
        raise ScriptError(f"bad mock script: {exc}") from None
    given = [key for key in ("text", "words", "chunks") if key in raw]
    if len(given) > 1:
        raise ScriptError(f"bad mock script: {' and '.join(given)} exclude each other")
    if "chunks" in raw and "chunk" in raw:
        raise ScriptError("bad mock script: chunk and chunks exclude each other")
    if "seed" in raw and "words" not in raw:
        raise ScriptError("bad mock script: seed needs words")
    if "retry_after" in raw and "status" not in raw:
        raise ScriptError("bad mock script: retry_after needs status")
    if "events" in raw and (mixed := [key for key in _GENERATED_KEYS if key in raw]):
        raise ScriptError(f"bad mock script: events replace generated chunks; drop {mixed}")
    for value in _strings(script):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ScriptError("bad mock script: strings must be valid Unicode") from None
    return script


def _strings(script: Script) -> list[str]:
    found = [script.text or "", script.finish_reason or "", script.tag or ""]
    found += script.chunks or ()
    found += script.events or ()
    for call in script.tool_calls:
        found += [call.name, call.arguments, call.id or ""]
    return found


def extract_script(header: str | None, body: Mapping[str, Any]) -> object | None:
    """Return the raw (unvalidated) script of a request, or None when it is unscripted.

    First match wins: the `x-mock-script` header (must be a JSON object), then the last user
    message whose string content is a JSON object with a top-level `"mock"` key.
    """
    if header is not None:
        try:
            value = orjson.loads(header)
        except orjson.JSONDecodeError:
            raise ScriptError(f"the {SCRIPT_HEADER} header is not valid JSON") from None
        if not isinstance(value, dict):
            raise ScriptError(f"the {SCRIPT_HEADER} header must hold a JSON object")
        return value
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    last_user = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None
    )
    content = last_user.get("content") if last_user is not None else None
    if not isinstance(content, str) or not content.lstrip().startswith("{"):
        return None
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict) and "mock" in value:
        script: object = value["mock"]
        return script
    return None


def prompt_seed(body: Mapping[str, Any]) -> int:
    """Derive a seed from the request's messages: same prompt, same generated answer."""
    digest = hashlib.sha256(orjson.dumps(body.get("messages"), option=orjson.OPT_SORT_KEYS))
    return int.from_bytes(digest.digest()[:8], "big")


def generate_text(words: int, seed: int) -> str:
    """`words` vocabulary words in sentences of 4 to 11 words, from a splitmix64 stream."""
    state = seed & _MASK64
    out: list[str] = []
    left_in_sentence = 0
    for position in range(words):
        state, value = _splitmix64(state)
        word = VOCABULARY[value % len(VOCABULARY)]
        if left_in_sentence == 0:
            word = word.capitalize()
            left_in_sentence = 4 + (value >> 32) % 8
        left_in_sentence -= 1
        if left_in_sentence == 0 or position == words - 1:
            word += "."
            left_in_sentence = 0
        out.append(word)
    return " ".join(out)


def _splitmix64(state: int) -> tuple[int, int]:
    # splitmix64 (Steele et al. 2014): tiny, stable across Python versions, unlike `random`.
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


def answer_text(script: Script, body: Mapping[str, Any], *, default_words: int = 48) -> str:
    """Return the whole answer text: `text`, the joined `chunks`, or generated words."""
    if script.text is not None:
        return script.text
    if script.chunks is not None:
        return "".join(script.chunks)
    words = script.words if script.words is not None else default_words
    seed = script.seed if script.seed is not None else prompt_seed(body)
    return generate_text(words, seed)


def split_chunks(script: Script, text: str) -> list[str]:
    """Cut `text` into content chunks by the script's rule; they always join back to `text`."""
    if script.chunks is not None:
        return list(script.chunks)
    if script.chunk == "word":
        return _WORD_CHUNK.findall(text)
    size = script.chunk
    return [text[i : i + size] for i in range(0, len(text), size)]


def prompt_tokens(body: Mapping[str, Any]) -> int:
    """Whitespace-separated words in all message contents (string or text parts)."""
    total = 0
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                total += len(text.split()) if isinstance(text, str) else 0
    return total


@dataclass(frozen=True, slots=True)
class Answer:
    """The resolved answer: content chunks, tool calls and finish reason after `max_tokens`."""

    chunks: list[str]
    tool_calls: tuple[ToolCallScript, ...]
    finish_reason: str


def resolve_answer(script: Script, body: Mapping[str, Any], *, default_words: int = 48) -> Answer:
    """Chunks, tool calls and finish reason, honouring the request's token limit.

    A `max_completion_tokens` (or `max_tokens`) below the number of content chunks cuts the
    answer there, drops the tool calls and finishes with `length` unless the script names one.
    """
    chunks = split_chunks(script, answer_text(script, body, default_words=default_words))
    tool_calls = script.tool_calls
    finish = script.finish_reason or ("tool_calls" if tool_calls else "stop")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < len(chunks):
        chunks, tool_calls = chunks[:limit], ()
        finish = script.finish_reason or "length"
    return Answer(chunks, tool_calls, finish)


def _sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def _offsets(count: int, script: Script) -> list[float]:
    ttft = script.ttft_ms / 1000
    rate = script.tokens_per_s
    return [ttft + (i / rate if rate > 0 else 0.0) for i in range(count)]


def plan_events(
    script: Script,
    body: Mapping[str, Any],
    *,
    completion_id: str = "chatcmpl-mock-0",
    created: int = 0,
    default_words: int = 48,
) -> list[PlannedEvent]:
    """Every SSE event of a streamed answer with its offset in seconds from arrival.

    Paced events (content chunks, tool-call fragments, or raw `events`) are numbered from 0
    and due at `ttft + i / tokens_per_s`; the role chunk goes with the first, and the finish,
    usage and `[DONE]` events go right after the last.
    """
    if script.events is not None:
        times = _offsets(len(script.events), script)
        plan = [
            PlannedEvent(t, _sse(p.encode())) for t, p in zip(times, script.events, strict=True)
        ]
    else:
        plan = _generated_plan(script, body, completion_id, created, default_words)
    if script.done:
        plan.append(PlannedEvent(plan[-1].at_s if plan else script.ttft_ms / 1000, DONE_EVENT))
    return plan


def _generated_plan(
    script: Script, body: Mapping[str, Any], completion_id: str, created: int, default_words: int
) -> list[PlannedEvent]:
    answer = resolve_answer(script, body, default_words=default_words)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    head: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": _model(body),
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        event: dict[str, Any] = {**head, "choices": [choice]}
        if include_usage:
            event["usage"] = None
        return _sse(orjson.dumps(event))

    pieces = [chunk({"content": text}) for text in answer.chunks]
    for index, call in enumerate(answer.tool_calls):
        call_id = call.id if call.id is not None else f"call_mock_{index}"
        function = {"name": call.name, "arguments": ""}
        first = {"index": index, "id": call_id, "type": "function", "function": function}
        pieces.append(chunk({"tool_calls": [first]}))
        args, step = call.arguments, script.args_chunk
        for start in range(0, len(args), step):
            fragment = {"index": index, "function": {"arguments": args[start : start + step]}}
            pieces.append(chunk({"tool_calls": [fragment]}))
    times = _offsets(max(len(pieces), 1), script)
    role = chunk({"role": "assistant", "content": "", "refusal": None})
    plan = [PlannedEvent(times[0], role)]
    plan += [PlannedEvent(t, data) for t, data in zip(times, pieces, strict=False)]
    plan.append(PlannedEvent(times[-1], chunk({}, answer.finish_reason)))
    if include_usage:
        usage = _usage(body, len(answer.chunks))
        plan.append(PlannedEvent(times[-1], _sse(orjson.dumps({**head, "choices": [], **usage}))))
    return plan


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    return model if isinstance(model, str) else "mock"


def _usage(body: Mapping[str, Any], completion: int) -> dict[str, Any]:
    prompt = prompt_tokens(body)
    return {
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    }


def completion_body(
    script: Script,
    body: Mapping[str, Any],
    *,
    completion_id: str = "chatcmpl-mock-0",
    created: int = 0,
    default_words: int = 48,
) -> bytes:
    """Build the non-streaming `chat.completion` JSON of the answer the stream would give."""
    answer = resolve_answer(script, body, default_words=default_words)
    text = "".join(answer.chunks)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not answer.tool_calls else None,
        "refusal": None,
    }
    if answer.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id if call.id is not None else f"call_mock_{index}",
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for index, call in enumerate(answer.tool_calls)
        ]
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": answer.finish_reason,
    }
    return orjson.dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": _model(body),
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [choice],
            **_usage(body, len(answer.chunks)),
        }
    )


def script_tag(raw: object) -> str | None:
    """Return the `tag` of a raw script even when the rest is malformed, for the record."""
    if isinstance(raw, dict) and isinstance(tag := raw.get("tag"), str):
        return tag
    return None


def unscripted(*, words: int, ttft_ms: float, tokens_per_s: float) -> Script:
    """Return the script of a request that has none: generated words at the defaults."""
    return Script(words=words, ttft_ms=ttft_ms, tokens_per_s=tokens_per_s)
