"""Ollama `/api/chat` stream translator and request body: NDJSON lines in, neutral events out.

Owns the meaning of Ollama's native chat stream (one JSON object per line,
https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion): text,
thinking, whole tool calls, the `done` line with its `done_reason` and token counts, and
in-stream `{"error": ...}` lines; and the translation of wsgate's OpenAI-shaped request into
an `/api/chat` body. It does no I/O and does not split lines (see `wsgate.core.ndjson`).
Only Ollama's own format is read: OpenAI-style fields (`choices`, `finish_reason`) that an
OpenAI-compatible server would send are not looked for (use the `openai_chat` kind there).

Rules:
1. Each line is one JSON object (`chunk`); malformed JSON, including a last line cut short
   at the end of the body, is `UpstreamProtocolError`. Lines after the `done` line are
   ignored. `RoleDelta` once, from the first `message.role`.
2. `message.thinking` is `ReasoningDelta` and `message.content` is `TextDelta`, each
   through its own `SurrogateJoiner`.
3. Tool calls arrive whole (`message.tool_calls[].function.name` and `arguments`, an object
   or sometimes a JSON string), each as a new call of one `ToolCallAccumulator`: a start,
   one arguments chunk (compact JSON) and, at the end of the turn, exactly one end (or
   `ToolCallFailed` when the arguments do not parse or the name is missing). Several calls
   in one turn are parallel calls; a call's `index` is its arrival position (Ollama's
   `function.index` is missing from older servers and not needed); its id is Ollama's `id`
   when it sent a fresh one, else `call_<index>`.
4. The `done: true` line ends the turn: its message is read first, then: flushed text and
   reasoning, tool-call ends (index order), one `Usage(prompt_eval_count, eval_count)` if
   it holds either count (Ollama omits a zero count), then `Finish`. A body that ends
   without a `done: true` line is truncated: `UpstreamProtocolError`, never a finish.
5. Finish reasons (`done_reason`; `raw_finish_reason` keeps the provider's word):

   | done_reason             | finish                                     |
   |-------------------------|--------------------------------------------|
   | `stop`                  | `tool_calls` if calls were made, else `stop` |
   | absent or empty         | as `stop` (older servers send no reason)   |
   | `length`                | `length`                                   |
   | `load`, `unload`        | `error` (the model was (un)loaded, no turn was generated) |
   | anything else           | `error`                                    |

6. A line with a non-null `error` raises `UpstreamError` (`UpstreamRateLimited` for a
   rate-limit code), naming only short identifiers from an error object: Ollama's error is
   free text, which never reaches the wire.

The body (`ollama_body`) is documented on the function; everything it cannot send
faithfully raises `BadRequest` naming the field.
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson

from wsgate.core.errors import BadRequest, UpstreamProtocolError
from wsgate.core.events import (
    Finish,
    FinishReason,
    ReasoningDelta,
    RoleDelta,
    TextDelta,
    UpstreamEvent,
    Usage,
)
from wsgate.core.frames import ChatRequest, Message
from wsgate.core.jsonio import loads
from wsgate.core.payloads import error_from, json_object, string, tool_events
from wsgate.core.toolcalls import ToolCallAccumulator, ToolCallFragment
from wsgate.core.utf8 import SurrogateJoiner

_REASONS: Final[dict[str, FinishReason]] = {
    "stop": "stop",
    "length": "length",
    "load": "error",
    "unload": "error",
}


class OllamaTranslator:
    """Feed the NDJSON lines of one Ollama `/api/chat` stream; collect upstream events."""

    __slots__ = (
        "_calls",
        "_done",
        "_ids",
        "_joiner",
        "_reason",
        "_reasoning",
        "_role_sent",
        "_tools",
    )

    def __init__(self, *, tool_snapshots: bool = False) -> None:
        self._done = False
        self._role_sent = False
        self._reason: str | None = None
        self._calls = 0  # tool calls seen: the next call's index
        self._ids: set[str] = set()  # Ollama's call ids already used
        self._joiner = SurrogateJoiner()
        self._reasoning = SurrogateJoiner()
        self._tools = ToolCallAccumulator(snapshots=tool_snapshots)

    @property
    def done(self) -> bool:
        """True once the stream ended (the `done` line, `finish()`, or an error line)."""
        return self._done

    @property
    def raw_finish_reason(self) -> str | None:
        """Ollama's own `done_reason`, before normalization (for logs)."""
        return self._reason

    def feed(self, line: str) -> list[UpstreamEvent]:
        """Translate one NDJSON line."""
        if self._done:
            return []
        chunk = json_object(line)
        error = chunk.get("error")
        if error is not None:
            self._done = True
            raise error_from(error)
        out: list[UpstreamEvent] = []
        message = chunk.get("message")
        if message is not None:
            if not isinstance(message, dict):
                raise UpstreamProtocolError("upstream chunk has a malformed message")
            self._message(message, out)
        if chunk.get("done") is True:
            self._end(chunk, out)
        return out

    def finish(self) -> list[UpstreamEvent]:
        """End of the body: nothing if the `done` line came, else raise (truncated)."""
        if self._done:
            return []
        self._done = True
        raise UpstreamProtocolError("upstream stream ended before it finished")

    def _message(self, message: dict[str, Any], out: list[UpstreamEvent]) -> None:
        role = message.get("role")
        if role and not self._role_sent:
            self._role_sent = True
            out.append(RoleDelta(string(role)))
        thinking = message.get("thinking")
        if thinking:
            thought = self._reasoning.push(string(thinking))
            if thought:
                out.append(ReasoningDelta(thought))
        content = message.get("content")
        if content:
            text = self._joiner.push(string(content))
            if text:
                out.append(TextDelta(text))
        calls = message.get("tool_calls")
        if calls:
            if not isinstance(calls, list):
                raise UpstreamProtocolError("upstream chunk has malformed tool_calls")
            for call in calls:
                self._call(call, out)

    def _call(self, call: Any, out: list[UpstreamEvent]) -> None:
        if not isinstance(call, dict):
            raise UpstreamProtocolError("upstream chunk has malformed tool_calls")
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        name = function.get("name")
        call_id = call.get("id")
        if call_id is not None:
            call_id = string(call_id)
            if not call_id or call_id in self._ids:
                call_id = None  # a repeated id would make two calls one
            else:
                self._ids.add(call_id)
        piece = ToolCallFragment(
            index=self._calls,  # a fresh index: always a new call (rule 3)
            call_id=call_id,
            name=string(name) if name else None,
            arguments=_arguments(function.get("arguments")),
        )
        self._calls += 1
        out.extend(tool_events(self._tools.feed(piece)))

    def _end(self, chunk: dict[str, Any], out: list[UpstreamEvent]) -> None:
        reason = chunk.get("done_reason")
        self._reason = string(reason) if reason is not None else None
        for joiner, kind in ((self._reasoning, ReasoningDelta), (self._joiner, TextDelta)):
            tail = joiner.flush()
            if tail:
                out.append(kind(tail))
        out.extend(tool_events(self._tools.finish()))
        if "prompt_eval_count" in chunk or "eval_count" in chunk:
            out.append(Usage(_count(chunk, "prompt_eval_count"), _count(chunk, "eval_count")))
        self._done = True
        out.append(Finish(self._finish_reason()))

    def _finish_reason(self) -> FinishReason:
        if not self._reason or self._reason == "stop":
            return "tool_calls" if self._tools.has_calls else "stop"
        return _REASONS.get(self._reason, "error")


def _arguments(value: Any) -> str:
    """A call's arguments as JSON text: a string as sent, a value as compact JSON.

    No arguments at all are "{}", so every call still gets its one arguments chunk.
    """
    if value is None:
        return "{}"
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # lone surrogates from escapes (orjson refuses them)
        pass
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except RecursionError:
        raise UpstreamProtocolError("upstream tool call arguments nest too deeply") from None


def _count(chunk: dict[str, Any], key: str) -> int:
    value = chunk.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --- the request body -------------------------------------------------------------------------

_OPTIONS: Final = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")
_REASONING_EFFORTS: Final = frozenset({"minimal", "low", "medium", "high", "xhigh"})
_DATA_URL: Final = "data:"
_BASE64: Final = ";base64,"


def ollama_body(request: ChatRequest, upstream_model: str) -> dict[str, Any]:
    r"""The `/api/chat` body for `request`, streamed.

    - messages: system and developer become `system`; content parts are joined (text parts
      with "\n"; base64 `data:` image URLs become the message's `images`; an image
      `detail` hint is not sent: Ollama sizes images itself); any other URL or part type
      is refused. Assistant `tool_calls` become `{"id", "function": {"name", "arguments"}}`
      with the arguments parsed into the object Ollama takes; a tool result becomes a
      `tool` message with `tool_name` when an earlier assistant call has its id. A
      message `name` is refused (Ollama has no participant names).
    - tools are sent as given (Ollama takes OpenAI's function shape); `tool_choice` may only
      be absent or "auto" and `parallel_tool_calls` only absent or true (Ollama cannot
      force, forbid or serialize calls).
    - options: temperature, top_p, seed, presence_penalty, frequency_penalty and stop (a
      list) keep their names; max_tokens is `num_predict`.
    - response_format: `json_object` is `"format": "json"`, `json_schema` is the schema
      itself as `format` (Ollama always enforces it, as `strict` asks), `text` is the default.
    - reasoning_effort: "none" is `"think": false`; minimal/low/medium/high/xhigh are
      `"think": true`. The level itself is not sent: most thinking models refuse a level
      ("think value ... is not supported for this model") and only gpt-oss reads one.
    - user is not sent: it is end-user metadata for abuse monitoring, which the model
      never sees, and Ollama has no such field.
    """
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": _messages(request.messages),
        "stream": True,
    }
    if request.tools:
        body["tools"] = _tools(request.tools)
    if request.tool_choice not in (None, "auto"):
        raise BadRequest('tool_choice: only "auto" is supported by Ollama')
    if request.parallel_tool_calls is False:
        raise BadRequest("parallel_tool_calls: false is not supported by Ollama")
    options = _options(request)
    if options:
        body["options"] = options
    if request.response_format is not None:
        body.update(_format(request.response_format))
    if request.reasoning_effort is not None:
        body["think"] = _think(request.reasoning_effort)
    return body


def _options(request: ChatRequest) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key in _OPTIONS:
        value = getattr(request, key)
        if value is not None:
            options[key] = value
    if request.stop is not None:
        options["stop"] = [request.stop] if isinstance(request.stop, str) else request.stop
    if request.max_tokens is not None:
        options["num_predict"] = request.max_tokens
    return options


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for i, tool in enumerate(tools):
        if tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise BadRequest(f"tools[{i}]: only function tools are supported by Ollama")
    return tools


def _format(response_format: dict[str, Any]) -> dict[str, Any]:
    kind = response_format.get("type")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"format": "json"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema: a JSON schema object is needed")
        return {"format": schema}
    raise BadRequest("response_format: only text, json_object and json_schema are supported")


def _think(effort: str) -> bool:
    if effort == "none":
        return False
    if effort in _REASONING_EFFORTS:
        return True
    raise BadRequest("reasoning_effort: not one of none, minimal, low, medium, high, xhigh")


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    names: dict[str, str] = {}  # tool call id -> function name, from assistant messages
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.name is not None:
            raise BadRequest(f"{where}.name: not supported by Ollama")
        role = "system" if message.role == "developer" else message.role
        item: dict[str, Any] = {"role": role}
        item.update(_content(message.content, where))
        if message.tool_calls:
            if message.role != "assistant":
                raise BadRequest(f"{where}.tool_calls: only assistant messages make tool calls")
            item["tool_calls"] = [
                _tool_call(call, f"{where}.tool_calls[{j}]", names)
                for j, call in enumerate(message.tool_calls)
            ]
        if message.role == "tool" and message.tool_call_id in names:
            item["tool_name"] = names[message.tool_call_id]
        out.append(item)
    return out


def _content(content: str | list[dict[str, Any]] | None, where: str) -> dict[str, Any]:
    if content is None or isinstance(content, str):
        return {"content": content or ""}
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise BadRequest(f"{where}.content[{j}].{kind}: a string is needed")
            texts.append(text)
        elif kind == "image_url":
            images.append(_image(part.get("image_url"), f"{where}.content[{j}].image_url"))
        else:
            raise BadRequest(f"{where}.content[{j}]: this part type is not supported by Ollama")
    item: dict[str, Any] = {"content": "\n".join(texts)}
    if images:
        item["images"] = images
    return item


def _image(image: Any, where: str) -> str:
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(url, str) and url.startswith(_DATA_URL):
        header, sep, data = url.partition(",")
        if sep and (header + ",").endswith(_BASE64) and data:
            return data
    raise BadRequest(f"{where}: Ollama takes only base64 data: URLs")


def _tool_call(call: dict[str, Any], where: str, names: dict[str, str]) -> dict[str, Any]:
    function = call.get("function")
    if call.get("type", "function") != "function" or not isinstance(function, dict):
        raise BadRequest(f"{where}: only function calls are supported by Ollama")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{where}.function.name: a name is needed")
    text = function.get("arguments")
    if text is None or (isinstance(text, str) and not text.strip()):
        arguments: Any = {}
    else:
        try:
            arguments = loads(text, scrub=True) if isinstance(text, str) else None
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise BadRequest(f"{where}.function.arguments: not a JSON object")
    out: dict[str, Any] = {"function": {"name": name, "arguments": arguments}}
    call_id = call.get("id")
    if isinstance(call_id, str) and call_id:
        out["id"] = call_id
        names[call_id] = name
    return out
