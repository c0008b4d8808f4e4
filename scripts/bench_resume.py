"""The resume store's measures for `scripts/bench.py`: resume latency, Redis counters, log memory.

- `RedisProbe`: the bench's view of its private `redis-server` (`wsgate.testing_redis`): its
  process id, and one `INFO all` per sample (CPU, commands, script calls, memory), so a
  window of the cost rounds can report what Redis did while the gateway logged every frame.
- `resume_latency`: generations dropped mid-stream and resumed. Rounds of `per_round`
  streams on one connection, each started with `options.on_disconnect: "continue"`; once
  every stream has `FRAMES_BEFORE_DROP` text deltas the TCP connection is reset (no close
  frame), the generations run on for `DETACHED_S`, a new connection resumes them one after
  the other: the time from writing `resume` to the arrival of the first frame with `seq`
  above `last_seq` (one `time.monotonic()` clock, read in the client's socket callback),
  then `cancel` of the resumed stream ends the generation.
- `log_memory`: streams of known length run to their end on the Redis store; the bytes their
  logs take in Redis (`MEMORY USAGE ... SAMPLES 0` of every `ev` and `meta` key, and the
  `used_memory` delta) per 1000 logged `delta.text` frames.

Loopback only (the WebSocket client refuses anything else); blocking Redis calls run outside
the event loop.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

try:
    import _common
except ImportError:  # loaded by path from elsewhere
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common

FRAMES_BEFORE_DROP = 3  # text deltas a stream has delivered when its connection is reset
DETACHED_S = 0.1  # the generations run on this long before the resumes: there is a backlog
RESUME_TIMEOUT_S = 5.0
RESUME_SCRIPT = {"words": 200, "ttft_ms": 0, "tokens_per_s": 50}  # outlasts every round
LOG_RATE = 50  # tokens/s of the streams whose logs are weighed


def mock_request(script: dict[str, Any]) -> dict[str, Any]:
    """A chat request whose one message is the mock's script."""
    content = orjson.dumps({"mock": script}).decode()
    return {"model": "mock", "messages": [{"role": "user", "content": content}]}


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """count, p50, p90, p99 (nearest rank) and max."""
    ordered = sorted(values)
    out: dict[str, float | int | None] = {"count": len(ordered)}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        out[name] = ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else None
    out["max"] = ordered[-1] if ordered else None
    return out


# --- Redis --------------------------------------------------------------------------------


class RedisProbe:
    """Counters and memory of the bench's private redis-server, over a client of its own."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=10.0)

    def pid(self) -> int:
        """The server's process id (`INFO server`)."""
        return int(self.client.info("server")["process_id"])

    def flushall(self) -> None:
        """Empty every database (the script cache stays)."""
        self.client.flushall()

    def sample(self) -> dict[str, float]:
        """One `INFO all`: CPU seconds, commands, script calls, XADDs, bytes in, memory."""
        info = self.client.info("all")

        def calls(name: str) -> float:
            return float((info.get(f"cmdstat_{name}") or {}).get("calls", 0))

        return {
            "cpu_s": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
            "commands": float(info["total_commands_processed"]),
            "scripts": calls("evalsha") + calls("eval"),
            "xadd": calls("xadd"),
            "net_in": float(info["total_net_input_bytes"]),
            "used_memory": float(info["used_memory"]),
        }

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


def window_stats(
    before: dict[str, float], after: dict[str, float], wall: float, tokens: float
) -> dict[str, float]:
    """What Redis did in a cost window of `wall` seconds in which `tokens` were sent."""
    delta = {key: after[key] - before[key] for key in before}
    commands = delta["commands"] - 1  # the first sample's own INFO is counted in it
    scripts = delta["scripts"]
    return {
        "redis_us_per_token": 1e6 * delta["cpu_s"] / tokens if tokens else 0.0,
        "redis_cpu_share": delta["cpu_s"] / wall,
        "commands_per_s": commands / wall,
        "scripts_per_s": scripts / wall,
        "xadd_per_s": delta["xadd"] / wall,
        "frames_per_script": delta["xadd"] / scripts if scripts else 0.0,
        "bytes_in_per_s": delta["net_in"] / wall,
    }


# --- resume latency -----------------------------------------------------------------------


@dataclass
class _Dropped:
    """The connection whose streams are dropped: message ids and the last `seq` seen."""

    ready: bool = False
    message_ids: dict[str, str] = field(default_factory=dict)
    last_seq: dict[str, int] = field(default_factory=dict)
    texts: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)

    def on_message(self, payload: bytes, _now: float) -> None:
        frame = orjson.loads(payload)
        kind, sid = frame.get("type"), frame.get("stream_id")
        if kind == "ready":
            self.ready = True
        elif kind == "stream.started":
            self.message_ids[sid] = frame["message_id"]
        elif kind == "error" and sid is not None and "seq" not in frame:
            self.refused[frame.get("code", "?")] += 1
        if sid is not None and "seq" in frame:
            self.last_seq[sid] = frame["seq"]
            if kind == "delta.text":
                self.texts[sid] += 1


@dataclass
class _Resumer:
    """The new connection: resolves a future at the first frame after `last_seq`."""

    ready: bool = False
    waiting: dict[str, tuple[int, asyncio.Future[tuple[str, float, int]]]] = field(
        default_factory=dict
    )
    top_seq: dict[str, int] = field(default_factory=dict)

    def on_message(self, payload: bytes, now: float) -> None:
        frame = orjson.loads(payload)
        kind, sid = frame.get("type"), frame.get("stream_id")
        if kind == "ready":
            self.ready = True
        held = self.waiting.get(sid) if sid is not None else None
        if held is None:
            return
        last, done = held
        if kind == "stream.resumed":
            self.top_seq[sid] = int(frame["top_seq"])
        elif kind == "error" and "seq" not in frame:
            del self.waiting[sid]
            done.set_result((str(frame.get("code", "?")), now, 0))
        elif "seq" in frame and frame["seq"] > last:
            del self.waiting[sid]
            done.set_result(("frame", now, int(frame.get("first_seq", frame["seq"]))))


async def _until(predicate: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def _resume_round(url: str, count: int, tally: dict[str, Any]) -> None:
    """Start `count` streams, drop them, resume each on a new connection; add to `tally`."""
    dropped = _Dropped()
    first = await _common.open_websocket(url, dropped.on_message)
    await _until(lambda: dropped.ready, RESUME_TIMEOUT_S)
    request = mock_request(RESUME_SCRIPT)
    for i in range(count):
        start = {"type": "start", "stream_id": f"s{i}", "request": request,
                 "options": {"on_disconnect": "continue"}}  # fmt: skip
        first.send_text(orjson.dumps(start))
    sids = [f"s{i}" for i in range(count)]
    await _until(
        lambda: all(dropped.texts[s] >= FRAMES_BEFORE_DROP for s in sids) or dropped.refused,
        RESUME_TIMEOUT_S,
    )
    held = {s: (dropped.message_ids[s], dropped.last_seq[s]) for s in sids if dropped.texts[s]}
    first.abort()  # a reset: no close frame, the generations go on (on_disconnect continue)
    tally["failed"].update({f"start refused: {k}": v for k, v in dropped.refused.items()})
    tally["failed"]["no text before the drop"] += count - len(held)
    await asyncio.sleep(DETACHED_S)
    resumer = _Resumer()
    second = await _common.open_websocket(url, resumer.on_message)
    await _until(lambda: resumer.ready, RESUME_TIMEOUT_S)
    loop = asyncio.get_running_loop()
    for i, (message_id, last_seq) in enumerate(held.values()):
        sid = f"r{i}"
        done: asyncio.Future[tuple[str, float, int]] = loop.create_future()
        resumer.waiting[sid] = (last_seq, done)
        frame = {"type": "resume", "message_id": message_id, "last_seq": last_seq,
                 "stream_id": sid}  # fmt: skip
        sent = time.monotonic()
        second.send_text(orjson.dumps(frame))
        try:
            kind, arrived, first_seq = await asyncio.wait_for(done, RESUME_TIMEOUT_S)
        except TimeoutError:
            tally["failed"]["timeout"] += 1
            continue
        if kind != "frame":
            tally["failed"][kind] += 1
            continue
        tally["ms"].append(1000 * (arrived - sent))
        if first_seq <= resumer.top_seq.get(sid, -1):
            tally["replayed"] += 1
        second.send_text(orjson.dumps({"type": "cancel", "stream_id": sid}))
    second.close()
    try:
        await asyncio.wait_for(asyncio.shield(second.closed), 2.0)
    except TimeoutError:
        second.abort()


async def resume_latency(url: str, resumes: int, per_round: int) -> dict[str, Any]:
    """`resumes` resumes of dropped generations, `per_round` per dropped connection.

    Returns the latency summary (ms), how many resumes got a replayed frame first (its `seq`
    at or under the `stream.resumed`'s `top_seq`) and the failures by kind.
    """
    tally: dict[str, Any] = {"ms": [], "replayed": 0, "failed": Counter()}
    done = 0
    while done < resumes:
        count = min(per_round, resumes - done)
        await _resume_round(url, count, tally)
        done += count
    return {
        "resumes": resumes,
        "per_round": per_round,
        "latency_ms": percentiles(tally["ms"]),
        "replayed_first": tally["replayed"],
        "failed": {k: v for k, v in tally["failed"].items() if v},
    }


# --- Redis memory per logged token --------------------------------------------------------


def log_lengths(streams: int, words: int) -> list[int]:
    """The answers' lengths: every other stream a fifth as long (a per-log overhead shows)."""
    return [words if i % 2 == 0 else max(1, words // 5) for i in range(streams)]


async def run_streams(url: str, lengths: list[int], per_conn: int = 100) -> dict[str, int]:
    """A paced stream of each of `lengths` tokens, to their finish; frames counted by kind."""
    streams = len(lengths)
    finished: Counter[str] = Counter()
    texts = Counter[str]()

    def on_message(payload: bytes, _now: float) -> None:
        frame = orjson.loads(payload)
        kind = frame.get("type")
        if kind == "finish":
            finished[frame.get("reason", "?")] += 1
        elif kind == "delta.text":
            texts["frames"] += 1

    conns = [
        await _common.open_websocket(url, on_message) for _ in range(math.ceil(streams / per_conn))
    ]
    for i, words in enumerate(lengths):
        request = mock_request({"words": words, "ttft_ms": 0, "tokens_per_s": LOG_RATE})
        start = {"type": "start", "stream_id": f"m{i}", "request": request}
        conns[i % len(conns)].send_text(orjson.dumps(start))
    await _until(lambda: finished.total() >= streams, 30 + 2 * max(lengths) / LOG_RATE)
    for conn in conns:
        conn.abort()
    received = texts.total()  # a client may get fewer than were logged: queued deltas merge
    return {"finished": finished.total(), "stopped": finished["stop"], "received_texts": received}


def log_keys(probe: RedisProbe) -> set[bytes]:
    """Every event log key (`<prefix>:{<message_id>}:ev`) in the database."""
    return set(probe.client.scan_iter(match="*:ev", count=1000))


def log_memory(probe: RedisProbe, keys: set[bytes], base_used: float) -> dict[str, float]:
    """What the logs `keys` (and their records) take in Redis, per 1000 `delta.text` frames.

    Besides the totals, the marginal bytes of a text frame: the least-squares slope of an `ev`
    key's bytes over its text frames across the logs (of two lengths), and its intercept, a
    log's own overhead.
    """
    client = probe.client
    text_bytes = entries = meta_bytes = 0
    points: list[tuple[int, int]] = []  # per log: text frames, ev bytes
    for key in keys:
        size = int(client.memory_usage(key, samples=0) or 0)
        meta_bytes += int(client.memory_usage(key[:-2] + b"meta", samples=0) or 0)
        logged: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(key)  # type: ignore[assignment]
        texts = 0
        for _entry_id, fields in logged:
            entries += 1
            data = fields.get(b"d", b"")
            if data and orjson.loads(data).get("type") == "delta.text":
                texts += 1
                text_bytes += len(data)
        points.append((texts, size))
    used = probe.sample()["used_memory"] - base_used
    text_frames = sum(x for x, _ in points)
    ev_bytes = sum(y for _, y in points)
    per = 1000 / text_frames if text_frames else 0.0
    slope, intercept = _fit(points)
    return {
        "messages": len(keys),
        "entries": entries,
        "text_frames": text_frames,
        "text_frame_bytes": text_bytes / text_frames if text_frames else 0.0,
        "ev_bytes_per_1000": ev_bytes * per,
        "meta_bytes_per_1000": meta_bytes * per,
        "used_memory_per_1000": used * per,
        "marginal_bytes_per_1000": 1000 * slope,
        "bytes_per_log": intercept,
    }


def _fit(points: list[tuple[int, int]]) -> tuple[float, float]:
    """Least-squares slope and intercept of y over x (0, mean y when x does not vary)."""
    if not points:
        return 0.0, 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    if not var:
        return 0.0, my
    slope = sum((x - mx) * (y - my) for x, y in points) / var
    return slope, my - slope * mx
