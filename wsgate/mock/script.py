"""The mock provider's per-request script: its format, where it is found, and the answer.

Owns the script format (`protocol/MOCK.md` is its documentation; keep them equal): the keys
and their types, ranges and combinations, finding a script in the last user message's text
or the `x-mock-script` header, the deterministic answer text, the chunking rules, the token
limit, and the split of non-BMP characters into surrogate halves. Dialect-neutral: how an
answer is phrased on the wire belongs to the dialect modules (`openai_chat.py`, ...), when it
is written to `server.py`. Pure: no asyncio, no clock, no sockets.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec
import orjson

SCRIPT_HEADER: Final = "x-mock-script"

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


class RawEvent(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A raw SSE event with an `event:` line (`event: <event>`, then `data: <data>`)."""

    event: str
    data: str


Millis = Annotated[float, msgspec.Meta(ge=0, le=3_600_000)]
Rate = Annotated[float, msgspec.Meta(ge=0, le=1_000_000)]
Count = Annotated[int, msgspec.Meta(ge=0)]


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
    events: tuple[str | RawEvent, ...] | None = None
    done: bool = True
    status: Annotated[int, msgspec.Meta(ge=400, le=599)] | None = None
    retry_after: Annotated[float, msgspec.Meta(ge=0)] | None = None
    tag: str | None = None
    # Fault injection (protocol/MOCK.md, "Fault injection").
    fail_first: Count | None = None
    error_after: Count | None = None
    error_type: str | None = None
    json_error: bool = False
    headers_delay_ms: Millis = 0.0
    stall_after: Count | None = None
    stall_ms: Millis | None = None
    truncate_after: Count | None = None
    split_writes: Annotated[int, msgspec.Meta(ge=1)] | None = None
    split_surrogates: bool = False
    tool_index: bool = True
    interleave_tools: bool = False
    pad_line: Annotated[int, msgspec.Meta(ge=1, le=64 * 1024 * 1024)] | None = None
    drip_bytes_per_s: Annotated[float, msgspec.Meta(gt=0, le=1_000_000)] | None = None
    # Multi-turn (protocol/MOCK.md, "Multi-turn scripts"): checked by `turns.py`.
    expect_tool_results: dict[str, Any] | list[Any] | None = None


# Keys that describe generated chunks; `events` replaces those chunks, so they cannot mix.
_GENERATED_KEYS: Final = ("text", "words", "seed", "chunk", "chunks", "finish_reason",
                          "tool_calls", "args_chunk", "error_after", "truncate_after",
                          "stall_after", "stall_ms", "split_surrogates", "tool_index",
                          "interleave_tools", "pad_line")  # fmt: skip
# The failures a script can inject; at most one per script, and `fail_first` needs one.
FAILURE_KEYS: Final = ("status", "json_error", "error_after", "truncate_after")
# Keys that only shape a stream: a non-streaming request with one of them is an error.
STREAM_KEYS: Final = ("events", "error_after", "truncate_after", "stall_after", "split_writes",
                      "split_surrogates", "pad_line", "drip_bytes_per_s", "tool_index",
                      "interleave_tools")  # fmt: skip


def parse_script(raw: object) -> Script:
    """Validate a decoded JSON value as a script; raise `ScriptError` naming the problem."""
    if not isinstance(raw, dict):
        raise ScriptError("the mock script must be a JSON object")
    try:
        script = msgspec.convert(raw, Script)
    except msgspec.ValidationError as exc:
        raise ScriptError(f"bad mock script: {exc}") from None
    for problem in _combination_problems(raw):
        raise ScriptError(f"bad mock script: {problem}")
    for value in _strings(script):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ScriptError("bad mock script: strings must be valid Unicode") from None
    return script


def _combination_problems(raw: dict[str, object]) -> list[str]:
    return _answer_problems(raw) + _fault_problems(raw)


def _answer_problems(raw: dict[str, object]) -> list[str]:
    has = raw.__contains__
    problems = []
    if len(given := [key for key in ("text", "words", "chunks") if has(key)]) > 1:
        problems.append(f"{' and '.join(given)} exclude each other")
    if has("chunks") and has("chunk"):
        problems.append("chunk and chunks exclude each other")
    if has("seed") and not has("words"):
        problems.append("seed needs words")
    if has("retry_after") and not has("status"):
        problems.append("retry_after needs status")
    if has("events") and (mixed := [key for key in _GENERATED_KEYS if has(key)]):
        problems.append(f"events replace generated chunks; drop {mixed}")
    return problems


def _fault_problems(raw: dict[str, object]) -> list[str]:
    has = raw.__contains__
    problems = []
    failures = [key for key in FAILURE_KEYS if _given(raw.get(key))]
    if len(failures) > 1:
        problems.append(f"{' and '.join(failures)} exclude each other")
    if has("fail_first") and not (has("tag") and failures):
        problems.append(f"fail_first needs tag and one of {', '.join(FAILURE_KEYS)}")
    if has("error_type") and not {"status", "error_after", "json_error"} & set(failures):
        problems.append("error_type needs status, error_after or json_error")
    if has("stall_after") != has("stall_ms"):
        problems.append("stall_after and stall_ms go together")
    if has("drip_bytes_per_s") and (mixed := [k for k in _DRIP_EXCLUDES if has(k)]):
        problems.append(f"drip_bytes_per_s writes its own schedule; drop {mixed}")
    if raw.get("tool_index") is False and raw.get("interleave_tools") is True:
        problems.append("interleaved tool calls need tool_index")
    return problems


_DRIP_EXCLUDES: Final = ("tokens_per_s", "stall_after", "split_writes")


def _strings(script: Script) -> list[str]:
    found = [script.text or "", script.finish_reason or "", script.tag or ""]
    found += [script.error_type or ""]
    found += script.chunks or ()
    for entry in script.events or ():
        found += [entry] if isinstance(entry, str) else [entry.event, entry.data]
    for call in script.tool_calls:
        found += [call.name, call.arguments, call.id or ""]
    return found


def failure_of(script: Script) -> str | None:
    """The failure a script injects (a `FAILURE_KEYS` name), or None."""
    return next((key for key in FAILURE_KEYS if _given(getattr(script, key))), None)


def without_failure(script: Script) -> Script:
    """The script of a `fail_first` request past its failures: every failure key cleared."""
    return msgspec.structs.replace(
        script,
        status=None,
        retry_after=None,
        json_error=False,
        error_after=None,
        truncate_after=None,
        error_type=None,
    )


def _given(value: object) -> bool:
    return value is not None and value is not False


def check_streaming(raw: dict[str, object], *, stream: bool) -> None:
    """Reject keys that shape a stream on a request that does not stream."""
    if not stream and (given := [key for key in STREAM_KEYS if key in raw]):
        raise ScriptError(f"bad mock script: {', '.join(given)} need a streaming request")


def extract_script(header: str | None, user_text: str | None) -> object | None:
    """Return the raw (unvalidated) script of a request, or None when it is unscripted.

    First match wins: the `x-mock-script` header (must be a JSON object), then the text of
    the last user message (found by the dialect) if it is a JSON object with a `"mock"` key.
    """
    if header is not None:
        try:
            value = orjson.loads(header)
        except orjson.JSONDecodeError:
            raise ScriptError(f"the {SCRIPT_HEADER} header is not valid JSON") from None
        if not isinstance(value, dict):
            raise ScriptError(f"the {SCRIPT_HEADER} header must hold a JSON object")
        return value
    if user_text is None or not user_text.lstrip().startswith("{"):
        return None
    try:
        value = orjson.loads(user_text)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict) and "mock" in value:
        script: object = value["mock"]
        return script
    return None


def content_text(content: object, part_types: tuple[str, ...] = ("text",)) -> str | None:
    """The text of a message content: a string, or its text parts joined with no separator.

    A part is a JSON object whose `type` is one of `part_types` and whose `text` is a
    string; other parts (images, tool results) are skipped. None when there is no text.
    """
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts = [
        part["text"]
        for part in content
        if isinstance(part, dict)
        and part.get("type") in part_types
        and isinstance(part.get("text"), str)
    ]
    return "".join(texts) if texts else None


def last_user_content(messages: object) -> object:
    """The `content` of the last message with `role: "user"`, or None."""
    if not isinstance(messages, list):
        return None
    last = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None
    )
    return last.get("content") if last is not None else None


def count_words(value: object) -> int:
    """Whitespace-separated words in a string, a list of text parts, or message contents."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(count_words(item) for item in value)
    if isinstance(value, dict):
        if "content" in value:
            return count_words(value["content"])
        text = value.get("text")
        return len(text.split()) if isinstance(text, str) else 0
    return 0


def prompt_seed(conversation: object) -> int:
    """Derive a seed from a request's conversation: same prompt, same generated answer."""
    digest = hashlib.sha256(orjson.dumps(conversation, option=orjson.OPT_SORT_KEYS))
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


def answer_text(script: Script, conversation: object, *, default_words: int = 48) -> str:
    """Return the whole answer text: `text`, the joined `chunks`, or generated words."""
    if script.text is not None:
        return script.text
    if script.chunks is not None:
        return "".join(script.chunks)
    words = script.words if script.words is not None else default_words
    seed = script.seed if script.seed is not None else prompt_seed(conversation)
    return generate_text(words, seed)


def split_chunks(script: Script, text: str) -> list[str]:
    """Cut `text` into content chunks by the script's rule; they always join back to `text`."""
    if script.chunks is not None:
        return list(script.chunks)
    if script.chunk == "word":
        return _WORD_CHUNK.findall(text)
    size = script.chunk
    return [text[i : i + size] for i in range(0, len(text), size)]


def split_surrogate_pairs(chunks: list[str]) -> list[str]:
    r"""Cut every non-BMP character into its UTF-16 halves across two pieces.

    The high surrogate ends one piece and the low surrogate starts the next, so a chunk
    with k non-BMP characters becomes k + 1 pieces. The pieces hold lone surrogates: they
    can only be written as JSON `\uXXXX` escapes (`json_text`).
    """
    pieces: list[str] = []
    for chunk in chunks:
        current: list[str] = []
        for char in chunk:
            point = ord(char)
            if point < 0x10000:
                current.append(char)
                continue
            point -= 0x10000
            current.append(chr(0xD800 + (point >> 10)))
            pieces.append("".join(current))
            current = [chr(0xDC00 + (point & 0x3FF))]
        pieces.append("".join(current))
    return pieces


def json_text(text: str) -> str | orjson.Fragment:
    r"""`text` as a JSON string value; lone surrogates become lowercase `\uXXXX` escapes.

    Text without surrogates is returned as is (orjson encodes it); otherwise a pre-encoded
    `orjson.Fragment`, since a lone surrogate is not UTF-8 and orjson refuses it.
    """
    if not any(0xD800 <= ord(char) <= 0xDFFF for char in text):
        return text
    out = bytearray(b'"')
    run: list[str] = []
    for char in text:
        if 0xD800 <= ord(char) <= 0xDFFF:
            out += orjson.dumps("".join(run))[1:-1] + f"\\u{ord(char):04x}".encode()
            run = []
        else:
            run.append(char)
    out += orjson.dumps("".join(run))[1:-1] + b'"'
    return orjson.Fragment(bytes(out))


def join_surrogates(text: str) -> str:
    """Join surrogate halves back into characters (what a UTF-16 client sees)."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")


@dataclass(frozen=True, slots=True)
class Answer:
    """The resolved answer: content chunks, tool calls and finish reason after the limit.

    `chunks` are the content events' texts (after `split_surrogates`, which may leave lone
    surrogates in them); `completion_tokens` counts the chunks before that split, so usage
    is the same with and without the fault. `finish_reason` is already the dialect's name.
    """

    chunks: list[str]
    tool_calls: tuple[ToolCallScript, ...]
    finish_reason: str
    completion_tokens: int

    @property
    def text(self) -> str:
        """The whole answer text, surrogate halves joined again."""
        return join_surrogates("".join(self.chunks))


def resolve_answer(
    script: Script, conversation: object, limit: int | None, *, default_words: int = 48
) -> tuple[list[str], tuple[ToolCallScript, ...], str]:
    """Chunks, tool calls and the neutral finish reason, honouring the token limit.

    A `limit` below the number of content chunks cuts the answer there, drops the tool calls
    and finishes with `length` unless the script names a finish reason.
    """
    chunks = split_chunks(script, answer_text(script, conversation, default_words=default_words))
    tool_calls = script.tool_calls
    finish = script.finish_reason or ("tool_calls" if tool_calls else "stop")
    if limit is not None and 0 <= limit < len(chunks):
        chunks, tool_calls = chunks[:limit], ()
        finish = script.finish_reason or "length"
    return chunks, tool_calls, finish


def int_limit(value: object) -> int | None:
    """A token limit from a request field: an int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def script_tag(raw: object) -> str | None:
    """Return the `tag` of a raw script even when the rest is malformed, for the record."""
    if isinstance(raw, dict) and isinstance(tag := raw.get("tag"), str):
        return tag
    return None


def unscripted(*, words: int, ttft_ms: float, tokens_per_s: float) -> Script:
    """Return the script of a request that has none: generated words at the defaults."""
    return Script(words=words, ttft_ms=ttft_ms, tokens_per_s=tokens_per_s)
