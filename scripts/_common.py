"""Shared pieces of the load-testing scripts: a lean WebSocket client, histograms, plots.

Owns what `loadtest.py` and `bench.py` both need and that is not the load model itself:

- `RawWebSocket`, a minimal RFC 6455 client protocol. The load generator must not be the
  bottleneck, so frames are parsed in `data_received` (no task or coroutine per message,
  no per-frame `await`) and handed to a callback with one clock reading per socket read.
  Client frames are masked with an all-zero key (valid RFC 6455 framing: the server
  unmasks by XOR; the key's unpredictability only matters for intermediaries, and this
  client talks to loopback only). Text messages only; pings are answered, a close is
  echoed.
- `Hist`, an HDR histogram of durations in microseconds (1 µs to 1 h, 3 significant
  digits) reporting milliseconds.
- `svg_chart` and `html_page`: a self-contained HTML report with inline SVG, no plotting
  library.
- `require_loopback` and `raise_nofile`: the scripts talk to 127.0.0.1 only and open
  thousands of sockets.

Must not import the gateway: the tools measure it from outside.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import math
import os
import resource
import time
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

import orjson
from hdrh.histogram import HdrHistogram

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_ZERO_MASK = b"\x00\x00\x00\x00"
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10

MessageCallback = Callable[[bytes, float], None]
CloseCallback = Callable[[str], None]


def require_loopback(url: str) -> tuple[str, int]:
    """Return (host, port) of `url`; raise ValueError unless it names a loopback host."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"{url}: the load tools talk to loopback hosts only")
    default = 443 if parts.scheme in ("https", "wss") else 80
    return host, parts.port or default


def raise_nofile() -> None:
    """Raise the soft open-files limit to the hard limit: one socket per connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class RawWebSocket(asyncio.Protocol):
    """A WebSocket client connection driven by callbacks (see the module docstring)."""

    def __init__(self, url: str, subprotocol: str, on_message: MessageCallback) -> None:
        parts = urlsplit(url)
        self.host = parts.netloc
        self.path = parts.path or "/"
        self.subprotocol = subprotocol
        self.on_message = on_message
        self.on_close: CloseCallback | None = None
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.bytes_received = 0
        self.close_code: int | None = None
        self._key = base64.b64encode(os.urandom(16))
        self._head = b""
        self._buf = b""
        self._fragments: list[bytes] = []

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the upgrade request."""
        # uvloop's TCP transport is not a subclass of asyncio.Transport, only shaped like it.
        self.transport = cast("asyncio.Transport", transport)
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key.decode()}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {self.subprotocol}\r\n\r\n"
        )
        self.transport.write(request.encode())

    def data_received(self, data: bytes) -> None:
        """Parse every complete frame in the buffer; one clock reading for all of them."""
        if not self.handshake.done():
            data = self._handshake(data)
            if not data:
                return
        now = time.monotonic()
        buf = self._buf + data if self._buf else data
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, length = buf[pos], buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            end = pos + head + length
            if end > size:
                break
            self._frame(b0, buf[pos + head : end], now)
            pos = end
        self._buf = buf[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        """Resolve the futures; tell the owner why the connection ended."""
        reason = f"closed_{self.close_code}" if self.close_code else "closed_1006"
        if exc is not None and self.close_code is None:
            reason = f"connection_{type(exc).__name__}"
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(reason))
        if not self.closed.done():
            self.closed.set_result(reason)
        if self.on_close is not None:
            self.on_close(reason)

    # --- commands ------------------------------------------------------------------------

    def send_text(self, payload: bytes) -> None:
        """Send one text message (masked with the zero key, so the payload goes as is)."""
        self._send(_OP_TEXT, payload)

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake; the server's close frame ends the connection."""
        if self.transport is not None and not self.transport.is_closing():
            self._send(_OP_CLOSE, code.to_bytes(2, "big"))

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (a client that vanished)."""
        if self.transport is not None:
            self.transport.abort()

    # --- internals -----------------------------------------------------------------------

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        size = len(payload)
        if size < 126:
            header = bytes((0x80 | opcode, 0x80 | size))
        elif size < 65536:
            header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
        else:
            header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
        self.transport.write(header + _ZERO_MASK + payload)

    def _handshake(self, data: bytes) -> bytes:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            return b""
        head, rest = self._head[:end], self._head[end + 4 :]
        self._head = b""
        status = head.split(b"\r\n", 1)[0]
        accept = base64.b64encode(hashlib.sha1(self._key + _WS_GUID).digest())  # noqa: S324 - RFC 6455 names SHA-1
        if b" 101 " not in status + b" " or accept not in head:
            self.handshake.set_exception(ConnectionError(status.decode(errors="replace")))
            assert self.transport is not None  # noqa: S101 - set before use
            self.transport.close()
            return b""
        self.handshake.set_result(None)
        return rest

    def _frame(self, b0: int, payload: bytes, now: float) -> None:
        opcode = b0 & 0x0F
        self.bytes_received += len(payload)
        if opcode == _OP_TEXT and b0 & 0x80:
            self.on_message(payload, now)
        elif opcode in (_OP_TEXT, _OP_CONT):
            self._fragments.append(payload)
            if b0 & 0x80:
                whole, self._fragments = b"".join(self._fragments), []
                self.on_message(whole, now)
        elif opcode == _OP_PING:
            self._send(_OP_PONG, payload)
        elif opcode == _OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self._send(_OP_CLOSE, payload[:2])
            assert self.transport is not None  # noqa: S101 - set before use
            self.transport.close()


async def open_websocket(
    url: str, on_message: MessageCallback, subprotocol: str = "wsgate.v1", within_s: float = 10.0
) -> RawWebSocket:
    """Connect, complete the upgrade and return the protocol; raise ConnectionError."""
    host, port = require_loopback(url)
    loop = asyncio.get_running_loop()
    protocol = RawWebSocket(url, subprotocol, on_message)
    try:
        async with asyncio.timeout(within_s):
            await loop.create_connection(lambda: protocol, host, port)
            await protocol.handshake
    except (OSError, TimeoutError) as exc:
        protocol.abort()
        raise ConnectionError(f"{url}: {type(exc).__name__}: {exc}") from None
    return protocol


class Hist:
    """An HDR histogram of durations recorded in seconds, stored in µs, reported in ms.

    `signed_floor_s` > 0 keeps values down to minus that (stored shifted up by it, reported
    shifted back): a token the mock released a little before its schedule is then shown as
    early, not clamped to zero, so differences between targets stay unbiased.
    """

    __slots__ = ("hist", "shift_us")

    LOWEST_US = 1
    HIGHEST_US = 3_600_000_000

    def __init__(self, signed_floor_s: float = 0.0) -> None:
        self.hist = HdrHistogram(self.LOWEST_US, self.HIGHEST_US, 3)
        self.shift_us = int(signed_floor_s * 1e6)

    def record(self, seconds: float) -> None:
        """Record one duration; values below the floor count as the floor."""
        micros = int(seconds * 1e6) + self.shift_us
        self.hist.record_value(min(max(micros, self.LOWEST_US), self.HIGHEST_US))

    def merge(self, other: Hist) -> None:
        """Add another histogram's counts to this one."""
        self.hist.add(other.hist)

    @property
    def count(self) -> int:
        """Recorded values."""
        return int(self.hist.get_total_count())

    def ms_at(self, percentile: float) -> float:
        """The value at `percentile` (0..100) in milliseconds."""
        return self._ms(self.hist.get_value_at_percentile(percentile))

    def _ms(self, micros: int) -> float:
        return round((micros - self.shift_us) / 1000, 3)

    def summary(self) -> dict[str, float | int | None]:
        """count, p50, p90, p99 and max in milliseconds (None when empty)."""
        if not self.count:
            return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
        return {
            "count": self.count,
            "p50": self.ms_at(50),
            "p90": self.ms_at(90),
            "p99": self.ms_at(99),
            "max": self._ms(self.hist.get_max_value()),
        }

    def curve(self) -> list[tuple[float, float]]:
        """(percentile, ms) pairs spaced evenly in log(1 / (1 - p)), for the plots."""
        if not self.count:
            return []
        points = []
        for step in range(41):
            percentile = 100 * (1 - 10 ** (-step / 10))
            points.append((round(percentile, 4), self.ms_at(percentile)))
        points.append((100.0, self._ms(self.hist.get_max_value())))
        return points


# --- the HTML report ---------------------------------------------------------------------

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
_W, _H, _PAD = 720, 300, 48


def _nines(percentile: float) -> float:
    """The x position of a percentile on an HDR plot: 90% -> 1, 99% -> 2, 99.9% -> 3."""
    return min(-math.log10(max(1 - percentile / 100, 1e-5)), 5.0)


def svg_chart(
    series: dict[str, list[tuple[float, float]]], *, x_label: str, y_label: str, percentiles: bool
) -> str:
    """One line chart as an inline SVG string; x is in "nines" when `percentiles`."""
    shown = {name: pts for name, pts in series.items() if pts}
    if not shown:
        return "<p><em>no data</em></p>"

    def x_of(x: float) -> float:
        return _nines(x) if percentiles else x

    xs = [x_of(x) for pts in shown.values() for x, _ in pts]
    ys = [y for pts in shown.values() for _, y in pts]
    x_max = max(*xs, 1e-09)
    y_min, y_max = min(*ys, 0.0), max(*ys, 1e-09) * 1.05

    def sx(x: float) -> float:
        return _PAD + (x_of(x) / x_max) * (_W - 2 * _PAD)

    def sy(y: float) -> float:
        return _H - _PAD + 8 - ((y - y_min) / (y_max - y_min)) * (_H - 2 * _PAD)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}">']
    parts.append(_axes(x_label, y_label, (y_min, y_max), sy))
    parts += _x_ticks(x_max, sx, percentiles=percentiles)
    for i, (name, pts) in enumerate(shown.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        parts.append(
            f'<text x="{_W - 190}" y="{20 + 16 * i}" fill="{colour}" font-size="12">'
            f"{html.escape(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _axes(
    x_label: str, y_label: str, y_range: tuple[float, float], sy: Callable[[float], float]
) -> str:
    bottom, right = _H - _PAD + 8, _W - _PAD
    out = [
        f'<line x1="{_PAD}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>',
        f'<line x1="{_PAD}" y1="{bottom}" x2="{_PAD}" y2="16" stroke="#333"/>',
        (
            f'<text x="{_W / 2}" y="{_H - 6}" font-size="12" text-anchor="middle">'
            f"{html.escape(x_label)}</text>"
        ),
        (
            f'<text x="12" y="{_H / 2}" font-size="12" transform="rotate(-90 12 {_H / 2})" '
            f'text-anchor="middle">{html.escape(y_label)}</text>'
        ),
    ]
    y_min, y_max = y_range
    for k in range(5):
        value = y_min + (y_max - y_min) * k / 4
        y = sy(value)
        out.append(f'<line x1="{_PAD}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(
            f'<text x="{_PAD - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
            f"{value:.3g}</text>"
        )
    return "".join(out)


def _x_ticks(x_max: float, sx: Callable[[float], float], *, percentiles: bool) -> list[str]:
    bottom = _H - _PAD + 8
    if percentiles:
        labels = {0.0: "0%", 90.0: "90%", 99.0: "99%", 99.9: "99.9%", 99.99: "99.99%"}
        ticks = [(p, text) for p, text in labels.items() if _nines(p) <= x_max + 1e-9]
    else:
        step = max(1, math.ceil(x_max / 10))
        ticks = [(float(t), f"{t}") for t in range(0, int(x_max) + 1, step)]
    return [
        f'<text x="{sx(x):.1f}" y="{bottom + 14}" font-size="10" text-anchor="middle">{text}</text>'
        for x, text in ticks
    ]


def html_table(header: list[str], rows: list[list[object]]) -> str:
    """A plain HTML table."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def html_page(title: str, sections: list[tuple[str, str]]) -> str:
    """A self-contained page: a title and (heading, html) sections."""
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:900px}"
        "table{border-collapse:collapse;margin:0.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "th{background:#f4f4f4}pre{background:#f8f8f8;padding:0.5em}"
    )
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )


# --- rendering a load test's result (the `--json` document) --------------------------------

LATENCY_ROWS = {
    "ttft": "TTFT (from scheduled start)",
    "token": "token latency (vs schedule)",
    "gap": "inter-token gap",
    "gap_excess": "gap excess (gap - 1/rate)",
    "e2e": "end-to-end (completed)",
    "cancel": "cancel -> finish",
    "cancel_upstream": "cancel -> upstream closed",
    "drop_upstream": "drop -> upstream closed",
}


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 100 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def latency_rows(latency: dict[str, dict[str, object]]) -> list[list[object]]:
    """Rows of (name, count, p50, p90, p99, max) for the latencies that have samples."""
    rows: list[list[object]] = []
    for key, label in LATENCY_ROWS.items():
        summary = latency.get(key) or {}
        if summary.get("count"):
            rows.append([label, *(summary.get(k) for k in ("count", "p50", "p90", "p99", "max"))])
    return rows


def text_table(header: list[str], rows: list[list[object]]) -> str:
    """A plain monospace table, first column left-aligned, the others right-aligned."""
    cells = [header, *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        first = str(row[0]).ljust(widths[0])
        rest = [str(c).rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]).rstrip())
    return "\n".join(lines)


def _pairs(mapping: dict[str, object]) -> str:
    return "  ".join(f"{k} {_fmt(v)}" for k, v in mapping.items()) or "none"


def format_table(data: dict[str, Any]) -> str:
    """The readable report of one run."""
    c, t = data["config"], data["throughput"]
    rate = f"{c['tokens_per_s']:g} tok/s" if c["tokens_per_s"] else "burst"
    out = [
        (
            f"loadtest {data['target']} {data['url']}: {c['connections']} conns x "
            f"{c['streams_per_connection']} streams, {rate}, ttft {c['ttft_ms']:g} ms, "
            f"{c['words']} tokens/stream, {data['elapsed_s']:.1f} s"
        ),
        f"streams     {_pairs(data['streams'])}",
        f"checks      {_pairs(data['checks'])}   => {'OK' if data['ok'] else 'FAILED'}",
        f"errors      {_pairs(data['errors'])}",
        (
            f"throughput  {t['deltas_per_s']:,.0f} deltas/s  {t['frames_per_s']:,.0f} frames/s  "
            f"{t['bytes_per_s'] / 1e6:.2f} MB/s  ({t['deltas']:,} deltas in {t['active_s']:.1f} s)"
        ),
        f"anchors     {_pairs(data['anchors'])}   load generator CPU {data['loadgen_cpu_s']:.2f} s",
        "",
        text_table(
            ["latency (ms)", "count", "p50", "p90", "p99", "max"], latency_rows(data["latency_ms"])
        ),
    ]
    if data["slow_latency_ms"]:
        out += ["", "slow-reading connections:"]
        out.append(
            text_table(
                ["latency (ms)", "count", "p50", "p90", "p99", "max"],
                latency_rows(data["slow_latency_ms"]),
            )
        )
    stats = data.get("gateway_stats")
    if stats:
        out += [
            "",
            (
                f"gateway /stats: finishes {_pairs(stats.get('finishes', {}))}; cancels "
                f"{_fmt(stats.get('cancels'))}; cancel_to_upstream_close_ms "
                f"{_pairs(stats.get('cancel_to_upstream_close_ms') or {})}; coalesced_frames "
                f"{_fmt(stats.get('coalesced_frames'))}; slow_consumers "
                f"{_fmt(stats.get('slow_consumers'))}"
            ),
        ]
    return "\n".join(out)


def format_html(data: dict[str, Any]) -> str:
    """A self-contained HTML report: tables, HDR percentile plots, throughput over time."""
    c = data["config"]
    header = ["latency (ms)", "count", "p50", "p90", "p99", "max"]
    curves = {LATENCY_ROWS.get(k, k): v for k, v in data["curves"].items()}
    timeline = data["timeline"]
    deltas = [(row["t"], row["deltas"]) for row in timeline]
    opened = [(row["t"], row["open"]) for row in timeline]
    summary = [[k, _fmt(v)] for k, v in {**data["streams"], **data["checks"]}.items()]
    sections = [
        ("Run", f"<pre>{html.escape(format_table(data))}</pre>"),
        ("Latency", html_table(header, latency_rows(data["latency_ms"]))),
        (
            "Latency by percentile",
            svg_chart(curves, x_label="percentile", y_label="ms", percentiles=True),
        ),
        (
            "Throughput over time",
            svg_chart({"deltas/s": deltas}, x_label="s", y_label="deltas/s", percentiles=False)
            + svg_chart(
                {"open streams": opened}, x_label="s", y_label="streams", percentiles=False
            ),
        ),
        ("Streams and checks", html_table(["", "count"], summary)),
        (
            "Errors by code",
            html_table(["code", "count"], [[k, v] for k, v in data["errors"].items()]),
        ),
        (
            "Configuration",
            f"<pre>{html.escape(orjson.dumps(c, option=orjson.OPT_INDENT_2).decode())}</pre>",
        ),
    ]
    return html_page(f"wsgate load test: {data['target']} {data['url']}", sections)
