"""Reading the mock's OpenAI SSE directly, without a gateway: the floor of every comparison.

Owns `DirectReader`: one aiohttp session (no connection cap) posting each stream's request
to the mock's `/chat/completions` and reading its SSE into the same `Stream` bookkeeping a
gateway's frames feed, so `--direct` is measured exactly like a gateway. Cancelling a stream
here is leaving the response early, which closes the socket. The run's counters live on the
`Runner`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from wsgate.loadgen.plan import request_body
from wsgate.loadgen.stream import Stream

if TYPE_CHECKING:  # the runner owns its reader and imports this module
    from wsgate.loadgen.runner import Runner


def status_code(status: int) -> str:
    """The gateway's error code for a provider's HTTP status (PROTOCOL.md §9.2)."""
    if status == 429:
        return "upstream_rate_limited"
    return "upstream_error" if status >= 500 else "upstream_rejected"


class DirectReader:
    """Streams answers straight from the mock at `base_url` (see the module docstring)."""

    def __init__(self, runner: Runner, base_url: str) -> None:
        self.runner = runner
        self.base_url = base_url
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def stream(self, stream: Stream) -> None:
        """Read one answer and end the stream with its outcome."""
        runner = self.runner
        body = {**request_body(runner.config, stream.plan), "stream": True}
        body["stream_options"] = {"include_usage": True}
        stream.sent_at = time.monotonic()
        try:
            async with self.session.post(
                f"{self.base_url}/chat/completions",
                data=orjson.dumps(body),
                headers={"Content-Type": "application/json"},
            ) as resp:
                if resp.status != 200:
                    outcome = f"error:{status_code(resp.status)}"
                else:
                    outcome = await self._read_sse(stream, resp)
        except aiohttp.ClientError:
            outcome = "error:upstream_unavailable"
        if outcome.startswith("error:"):
            runner.errors[outcome[6:]] += 1
        runner.end(stream, outcome, time.monotonic())

    async def close(self) -> None:
        """Close the session and its connections."""
        await self.session.close()

    async def _read_sse(self, stream: Stream, resp: aiohttp.ClientResponse) -> str:
        runner = self.runner
        buf, reason, done, failed = b"", "", False, False
        if stream.cancel_due():
            stream.cancel_at = time.monotonic()
            return "cancelled"
        async for data in resp.content.iter_any():
            now = time.monotonic()
            runner.bytes += len(data)
            runner.last_at = now
            events = (buf + data).split(b"\n\n")
            buf = events.pop()
            for event in events:
                if event == b"data: [DONE]":
                    done = True
                    continue
                chunk = orjson.loads(event[6:])
                failed = failed or "error" in chunk
                reason = self._take_chunk(stream, chunk, now) or reason
            if stream.cancel_due():
                stream.cancel_at = time.monotonic()
                return "cancelled"
        if failed:
            return "error:upstream_error"
        return reason if done and reason else "error:upstream_protocol"

    def _take_chunk(self, stream: Stream, chunk: dict[str, Any], now: float) -> str:
        reason = ""
        for choice in chunk.get("choices") or ():
            text = choice.get("delta", {}).get("content")
            if text:
                self.runner.frames += 1
                self.runner.delivered(stream.text(text, now))
            reason = choice.get("finish_reason") or reason
        return reason
