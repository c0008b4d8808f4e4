"""Shared pieces of the load-testing scripts, now living in the package `wsgate.loadgen`.

`bench.py` uses the lean WebSocket client, the socket limit and the text table of the load
generator; they are defined once, in `wsgate.loadgen` (so `wsgate loadtest` works from an
installed wheel), and re-exported here under the names the scripts have always used.
"""

from __future__ import annotations

from wsgate.loadgen.charts import html_page, html_table, svg_chart
from wsgate.loadgen.config import LOOPBACK_HOSTS, require_loopback
from wsgate.loadgen.hist import Hist
from wsgate.loadgen.report import (
    LATENCY_ROWS,
    format_html,
    format_table,
    latency_rows,
    text_table,
)
from wsgate.loadgen.websocket import (
    CloseCallback,
    MessageCallback,
    RawWebSocket,
    open_websocket,
    raise_nofile,
)

__all__ = [
    "LATENCY_ROWS",
    "LOOPBACK_HOSTS",
    "CloseCallback",
    "Hist",
    "MessageCallback",
    "RawWebSocket",
    "format_html",
    "format_table",
    "html_page",
    "html_table",
    "latency_rows",
    "open_websocket",
    "raise_nofile",
    "require_loopback",
    "svg_chart",
    "text_table",
]
