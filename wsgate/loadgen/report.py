"""Rendering a load test's result (the `--json` document): a text table and an HTML page.

Owns `format_table` (what `wsgate loadtest` prints), `format_html` (`--html FILE`: the same
tables, HDR percentile plots and throughput over time) and the helpers `text_table` and
`latency_rows`, which the bench reuses. Reads only the JSON-able dict, so a saved `--json`
result renders the same as a live one. No I/O here.
"""

from __future__ import annotations

import html
from typing import Any

import orjson

from wsgate.loadgen.charts import html_page, html_table, svg_chart

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


_LATENCY_HEADER = ["latency (ms)", "count", "p50", "p90", "p99", "max"]


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
        text_table(_LATENCY_HEADER, latency_rows(data["latency_ms"])),
    ]
    if data["slow_latency_ms"]:
        out += ["", "slow-reading connections:"]
        out.append(text_table(_LATENCY_HEADER, latency_rows(data["slow_latency_ms"])))
    stats = data.get("gateway_stats")
    if stats:
        out += ["", _stats_line(stats)]
    return "\n".join(out)


def _stats_line(stats: dict[str, Any]) -> str:
    """The gateway's own counters (`/stats`) that a load test can be checked against."""
    return (
        f"gateway /stats: finishes {_pairs(stats.get('finishes', {}))}; cancels "
        f"{_fmt(stats.get('cancels'))}; cancel_to_upstream_close_ms "
        f"{_pairs(stats.get('cancel_to_upstream_close_ms') or {})}; coalesced_frames "
        f"{_fmt(stats.get('coalesced_frames'))}; slow_consumers "
        f"{_fmt(stats.get('slow_consumers'))}"
    )


def format_html(data: dict[str, Any]) -> str:
    """A self-contained HTML report: tables, HDR percentile plots, throughput over time."""
    c = data["config"]
    curves = {LATENCY_ROWS.get(k, k): v for k, v in data["curves"].items()}
    timeline = data["timeline"]
    deltas = [(row["t"], row["deltas"]) for row in timeline]
    opened = [(row["t"], row["open"]) for row in timeline]
    summary = [[k, _fmt(v)] for k, v in {**data["streams"], **data["checks"]}.items()]
    sections = [
        ("Run", f"<pre>{html.escape(format_table(data))}</pre>"),
        ("Latency", html_table(_LATENCY_HEADER, latency_rows(data["latency_ms"]))),
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
