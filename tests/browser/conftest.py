"""Browser fixtures: one real gateway on the built-in mock and one headless Chromium per test
module (on the module's event loop), a fresh browser context per test, and a recorder in
every page.

Debian's `chromium` is driven by playwright's async API with `executable_path` (never a
browser that playwright downloads). The gateway listens on 127.0.0.1 port 0 and serves the
demo page at `/`; the bare page, which uses only `/v1/wsgate.js`, is answered by
`page.route` at the gateway's own origin, so the gateway's Origin check lets it in.

The recorder (`RECORDER_JS`, installed with `add_init_script` before any page script runs)
observes the whole document from the start: every mutation batch with its animation frame
(`document.timeline.currentTime`, the frame's timestamp) and the stream it touched (the
closest `[data-stream-id]`), every text that holds a lone surrogate or U+FFFD, every node
added to an `aria-live` region, and the time of every click. A test that ends with a console
error or an uncaught page error (a CSP violation is one) fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from store_helpers import require

from wsgate.app import App
from wsgate.config import load_settings

REPO = Path(__file__).resolve().parents[2]
VIEWPORT = {"width": 1440, "height": 960}
BARE_PATH = "/bare-test.html"

RECORDER_JS = r"""
(() => {
  const LONE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
  const rec = {
    batches: [],       // {t: frame time, frame, now, streams: [ids]}
    bad: [],           // texts with a lone surrogate or U+FFFD, as code point lists
    announcements: [], // {t, text} for nodes added to an aria-live region
    clicks: [],        // {now, label}
    toolCalls: [],     // the stream of each .tool-call element added
    focus: [],         // {now, what} for each focusin
    checked: 0,
  };
  window.__rec = rec;
  const scan = (text, where) => {
    rec.checked += 1;
    if (LONE.test(text) || text.includes("\uFFFD")) {
      rec.bad.push({ where, codes: Array.from(text.slice(0, 200), (c) => c.codePointAt(0)) });
    }
  };
  const elementOf = (node) => (node.nodeType === 1 ? node : node.parentElement);
  const streamOf = (node) => elementOf(node)?.closest?.("[data-stream-id]")?.dataset.streamId;
  const liveOf = (node) => elementOf(node)?.closest?.("[aria-live]:not([aria-live='off'])");
  const observer = new MutationObserver((records) => {
    const streams = new Set();
    for (const r of records) {
      const id = streamOf(r.target);
      if (id) streams.add(id);
      if (r.type === "characterData") scan(r.target.data, "characterData");
      for (const node of r.addedNodes) {
        scan(node.textContent ?? "", "added");
        const inner = streamOf(node);
        if (inner) streams.add(inner);
        if (node.nodeType === 1 && node.matches(".tool-call")) {
          rec.toolCalls.push(streamOf(node) ?? streamOf(r.target) ?? "");
        }
        if (r.type === "childList" && liveOf(r.target) && node.nodeType === 1) {
          rec.announcements.push({ t: performance.now(), text: node.textContent });
        }
      }
    }
    rec.batches.push({
      t: document.timeline.currentTime,
      frame: window.__frameAt ?? null, // set by a test's own requestAnimationFrame, if any
      now: performance.now(),
      streams: [...streams],
    });
  });
  observer.observe(document, {
    subtree: true, childList: true, characterData: true, attributes: true,
  });
  document.addEventListener("focusin", (event) => {
    const el = event.target;
    rec.focus.push({ now: performance.now(), what: `${el.tagName}.${el.className}#${el.id}` });
  }, true);
  document.addEventListener("click", (event) => {
    const el = event.target.closest?.("button") ?? event.target;
    rec.clicks.push({ now: performance.now(), label: el.textContent?.trim() ?? "" });
  }, true);
})();
"""

# The 60 Hz cap the demo page uses (demo.js `frameCap`), for the bare page's `?cap=60`.
BARE_HTML = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>wsgate bare test page</title></head>
<body>
<main id="streams"></main>
<div id="live" aria-live="polite"></div>
<script type="module">
import { connect } from "/v1/wsgate.js";

function frameCap(perSecond) {
  const allowed = [];
  return (callback) => {
    const tick = (t) => {
      if (allowed.at(-1) !== t) {
        if (allowed.length === perSecond && t - allowed[0] < 1000) {
          requestAnimationFrame(tick);
          return;
        }
        allowed.push(t);
        if (allowed.length > perSecond) allowed.shift();
      }
      callback(t);
    };
    requestAnimationFrame(tick);
  };
}

const params = new URLSearchParams(location.search);
const options = {};
if (params.get("cap")) options.scheduleFrame = frameCap(Number(params.get("cap")));
const gw = connect(`ws://${location.host}/v1/ws`, options);
window.gwEvents = [];
for (const name of ["ready", "reconnecting", "reconnected", "goaway", "close", "error"]) {
  gw.on(name, () => window.gwEvents.push(name));
}
const streams = new Map();
window.startStream = (script, wireOptions = {}, announce = false) => {
  const box = document.createElement("section");
  const out = document.createElement("div");
  out.className = "text";
  const text = document.createTextNode("");
  out.append(text);
  const stop = document.createElement("button");
  stop.textContent = "Stop";
  box.append(out, stop);
  const content = JSON.stringify({ mock: script });
  const s = gw.stream({ model: "mock", messages: [{ role: "user", content }] }, {
    options: wireOptions,
    onText(full, delta) {
      text.data = full;
      if (announce && delta) {
        const p = document.createElement("p");
        p.textContent = delta;
        document.getElementById("live").append(p);
      }
    },
    onToolCall(frame) {
      const call = document.createElement("div");
      call.className = "tool-call";
      call.textContent = `${frame.name} ${JSON.stringify(frame.arguments)}`;
      box.append(call);
    },
  });
  box.dataset.streamId = s.id;
  stop.addEventListener("click", () => s.cancel());
  streams.set(s.id, s);
  document.getElementById("streams").append(box);
  s.done.then(
    (r) => { box.dataset.done = r.reason ?? "unknown"; },
    (e) => { box.dataset.done = "rejected"; box.dataset.error = String(e); },
  );
  return s.id;
};
await gw.ready;
window.bareReady = true;
</script>
</body></html>
"""


def artifacts_dir() -> Path:
    """Where screenshots go: `$WSGATE_ARTIFACTS`, else `<repo>/.artifacts/browser/`."""
    folder = Path(os.environ.get("WSGATE_ARTIFACTS") or REPO / ".artifacts" / "browser")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def mock_content(script: dict[str, Any]) -> str:
    """A user message's content that makes the mock play `script` (MOCK.md)."""
    return json.dumps({"mock": script}, ensure_ascii=False)


class Recorder:
    """The recorder of one page (`RECORDER_JS`)."""

    def __init__(self, page: Any) -> None:
        self.page = page

    async def log(self) -> dict[str, Any]:
        return await self.page.evaluate("() => window.__rec")

    async def assert_no_broken_text(self) -> None:
        """No lone surrogate or U+FFFD was ever in the DOM, and none is now."""
        log = await self.log()
        assert log["checked"] > 0
        assert log["bad"] == []
        body = await self.page.evaluate("() => document.body.textContent")
        assert "\ufffd" not in body
        body.encode("utf-8")  # a lone surrogate does not encode

    @staticmethod
    def frames_of(log: dict[str, Any], stream_id: str) -> list[float]:
        """The distinct animation frames (ms) in which a stream's part of the DOM changed.

        A batch's frame is `document.timeline.currentTime`, which holds still between two
        frames: changes made outside animation frames (in a socket's message task, say)
        count with the frame before them. `batches_of` counts every batch.
        """
        return sorted({b["t"] for b in log["batches"] if stream_id in b["streams"]})

    @staticmethod
    def batches_of(log: dict[str, Any], stream_id: str) -> int:
        """How many mutation batches (one per task or frame callback) touched the stream."""
        return sum(1 for b in log["batches"] if stream_id in b["streams"])

    @staticmethod
    def changes_after(log: dict[str, Any], stream_id: str, now_ms: float) -> list[float]:
        """When (performance.now(), ms) the stream's DOM changed after `now_ms`."""
        return [b["now"] for b in log["batches"] if stream_id in b["streams"] and b["now"] > now_ms]

    @staticmethod
    def most_in_one_second(times: list[float]) -> int:
        """The largest number of `times` (ms) in any half-open window of 1000 ms."""
        best, first = 0, 0
        for last, t in enumerate(times):
            while t - times[first] >= 1000:
                first += 1
            best = max(best, last - first + 1)
        return best


class Surface:
    """A page that streams answers: what a test does to it and reads from it."""

    name = ""
    stream_selector = '[data-stream-id="{}"]'

    def __init__(self, page: Any, origin: str) -> None:
        self.page = page
        self.origin = origin
        self.recorder = Recorder(page)

    def stream(self, stream_id: str) -> Any:
        return self.page.locator(self.stream_selector.format(stream_id))

    async def start(
        self,
        scripts: list[dict[str, Any]],
        *,
        buffering: str = "immediate",
        accessible: bool = False,
    ) -> list[str]:
        """Start one stream per script, at once, on the page's one socket; their ids."""
        raise NotImplementedError

    async def wait_done(self, stream_ids: list[str], timeout_s: float = 20) -> None:
        raise NotImplementedError

    async def finish(self, stream_id: str) -> str:
        raise NotImplementedError

    async def text(self, stream_id: str) -> str:
        """The stream's exact text as the page shows it (its plain-text node)."""
        raise NotImplementedError

    async def wait_text(self, stream_id: str, length: int, timeout_s: float = 10) -> None:
        """Until the page shows at least `length` characters of the stream."""
        raise NotImplementedError

    async def stop(self, stream_id: str) -> None:
        """Press the stream's Stop button."""
        raise NotImplementedError

    async def tool_calls(self, stream_id: str) -> list[str]:
        """The text of each tool-call element of the stream."""
        return await self.stream(stream_id).locator(".tool-call").all_text_contents()

    async def announcements(self) -> list[str]:
        """Everything added to the page's live region, in order."""
        log = await self.recorder.log()
        return [a["text"] for a in log["announcements"]]


JOINED_RAW = "el => [...el.querySelectorAll('.raw')].map((r) => r.textContent).join('')"


class DemoSurface(Surface):
    """The demo page at `/`, one pane per stream, driven through its controls."""

    name = "demo"
    stream_selector = 'article[data-stream-id="{}"]'

    async def open(self, panes: int = 3) -> None:
        await self.page.goto(f"{self.origin}/?panes={panes}")
        await self.page.locator('#connection[data-state="open"]').wait_for(timeout=10_000)

    async def configure(self, *, buffering: str = "immediate", accessible: bool = False) -> None:
        await self.page.select_option("#buffering", buffering)
        await self.page.locator("#accessible").set_checked(accessible)

    async def start(
        self,
        scripts: list[dict[str, Any]],
        *,
        buffering: str = "immediate",
        accessible: bool = False,
    ) -> list[str]:
        if not self.page.url.startswith(self.origin + "/?"):
            await self.open(max(3, len(scripts)))
        await self.configure(buffering=buffering, accessible=accessible)
        panes = self.page.locator("section.pane")
        before = [await panes.nth(i).locator("article").count() for i in range(len(scripts))]
        for i, script in enumerate(scripts):
            await panes.nth(i).locator("textarea").fill(mock_content(script))
        for i in range(len(scripts)):
            await panes.nth(i).locator("button.send").click()
        ids = []
        for i in range(len(scripts)):
            article = panes.nth(i).locator("article").nth(before[i])
            ids.append(await article.get_attribute("data-stream-id"))
        return ids

    async def wait_done(self, stream_ids: list[str], timeout_s: float = 20) -> None:
        for sid in stream_ids:
            done = self.page.locator(f'article[data-stream-id="{sid}"][data-finish]')
            await done.wait_for(timeout=timeout_s * 1000)

    async def finish(self, stream_id: str) -> str:
        return await self.stream(stream_id).get_attribute("data-finish")

    async def text(self, stream_id: str) -> str:
        """The answer's plain-text segments (between its boxes), joined."""
        return await self.stream(stream_id).evaluate(JOINED_RAW)

    async def rendered(self, stream_id: str) -> str:
        """The text of the stream's Markdown render."""
        return await self.stream(stream_id).evaluate(
            "el => [...el.querySelectorAll('.md')].map((r) => r.textContent).join('')"
        )

    async def wait_text(self, stream_id: str, length: int, timeout_s: float = 10) -> None:
        await self.page.wait_for_function(
            f"([sel, n]) => {{ const el = document.querySelector(sel);"
            f" return el !== null && ({JOINED_RAW})(el).length >= n; }}",
            arg=[self.stream_selector.format(stream_id), length],
            timeout=timeout_s * 1000,
        )

    async def stop(self, stream_id: str) -> None:
        pane = self.page.locator("section.pane").filter(has=self.stream(stream_id))
        await pane.locator("button.stop").click()


class BareSurface(Surface):
    """A page with nothing but `/v1/wsgate.js`: a text node per stream, set by `onText`."""

    name = "bare"

    async def open(self, query: str = "") -> None:
        await self.page.goto(f"{self.origin}{BARE_PATH}{query}")
        await self.page.wait_for_function("() => window.bareReady === true", timeout=10_000)

    async def start(
        self,
        scripts: list[dict[str, Any]],
        *,
        buffering: str = "immediate",
        accessible: bool = False,
    ) -> list[str]:
        if BARE_PATH not in self.page.url:
            await self.open()
        options: dict[str, Any] = {"buffering": buffering, "on_disconnect": "continue"}
        if accessible and buffering not in ("sentence", "paragraph"):
            options["buffering"] = "sentence"
        return await self.page.evaluate(
            "([scripts, options, announce]) =>"
            " scripts.map((s) => window.startStream(s, options, announce))",
            [scripts, options, accessible],
        )

    async def wait_done(self, stream_ids: list[str], timeout_s: float = 20) -> None:
        for sid in stream_ids:
            done = self.page.locator(f'[data-stream-id="{sid}"][data-done]')
            await done.wait_for(state="attached", timeout=timeout_s * 1000)

    async def finish(self, stream_id: str) -> str:
        return await self.stream(stream_id).get_attribute("data-done")

    async def text(self, stream_id: str) -> str:
        return await self.stream(stream_id).locator(".text").evaluate("el => el.textContent")

    async def wait_text(self, stream_id: str, length: int, timeout_s: float = 10) -> None:
        await self.page.wait_for_function(
            "([sel, n]) => (document.querySelector(sel)?.textContent.length ?? 0) >= n",
            arg=[self.stream_selector.format(stream_id) + " .text", length],
            timeout=timeout_s * 1000,
        )

    async def stop(self, stream_id: str) -> None:
        await self.stream(stream_id).locator("button").click()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    found = shutil.which("chromium")
    require("chromium", found is not None, "install Debian's chromium (.ci/run does)")
    assert found is not None
    return found


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium_path: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright  # noqa: PLC0415 - only with chromium

    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=args
        )
        yield launched
        await launched.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app(chromium_path: str) -> AsyncIterator[App]:
    overrides = {"server.port": 0, "mock.ttft_ms": 0, "mock.tokens_per_s": 0}
    running = App(load_settings(None, environ={}, overrides=overrides), environ={})
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
def origin(app: App) -> str:
    assert app.gateway is not None
    return f"http://127.0.0.1:{app.gateway.port}"


class Console:
    """The console errors of a test's page; the test may expect some (`allow`)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allowed: list[re.Pattern[str]] = []

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]


@pytest.fixture
def console() -> Console:
    return Console()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Any, origin: str, console: Console) -> AsyncIterator[Any]:
    """A page in a fresh context with the recorder; fails the test on console errors."""
    # A page that `page.route` answers has no IP address space of its own, so Chromium's
    # Local Network Access checks would block its socket to 127.0.0.1 (the demo page, served
    # by the gateway itself, needs no such permission).
    context = await browser.new_context(viewport=VIEWPORT, permissions=["local-network-access"])
    await context.add_init_script(RECORDER_JS)

    async def bare(route: Any) -> None:
        await route.fulfill(status=200, content_type="text/html; charset=utf-8", body=BARE_HTML)

    await context.route(origin + BARE_PATH + "*", bare)
    tab = await context.new_page()
    tab.on("console", lambda m: console.errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: console.errors.append(f"page error: {e}"))
    yield tab
    await context.close()
    assert console.unexpected() == []


@pytest.fixture
def shoot() -> Callable[[Any, str], Any]:
    """Saves a full-page screenshot as `<artefacts>/<name>.png` (see `artifacts_dir`)."""

    async def save(page: Any, name: str) -> None:
        await page.screenshot(path=artifacts_dir() / f"{name}.png", full_page=True)

    return save


@pytest.fixture
def demo(page: Any, origin: str) -> DemoSurface:
    return DemoSurface(page, origin)


@pytest.fixture
def bare(page: Any, origin: str) -> BareSurface:
    return BareSurface(page, origin)


@pytest.fixture(params=["demo", "bare"])
def surface(request: pytest.FixtureRequest, page: Any, origin: str) -> Surface:
    """Each test that takes it runs on the demo page and on the bare page."""
    kind = DemoSurface if request.param == "demo" else BareSurface
    return kind(page, origin)


@pytest.fixture
def drop_connections(app: App) -> Callable[[], int]:
    """Cuts every client socket of the gateway without a close handshake (a network loss)."""

    def drop() -> int:
        assert app.gateway is not None
        connections = list(app.gateway.connections)
        for connection in connections:
            connection.ws.transport.abort()
        return len(connections)

    return drop
