// The demo page: several conversations streaming at once over ONE wsgate socket.
//
// Owns the page's behaviour: the panes (a transcript, a prompt box, Send and Stop each), the
// settings (buffering mode, accessible mode, Markdown or plain text, structured sections), the
// connection's status, and the page's single polite live region. It talks to the gateway only
// through /v1/wsgate.js and renders answers only through markdown.js (sanitised) or as plain
// text nodes. Streaming never moves focus, never writes HTML from the wire without DOMPurify,
// and changes the DOM at most once per animation frame per stream: wsgate.js calls `onText`
// at most once a frame, and everything else a stream shows waits for that call or for one
// frame of its own. Each answer keeps its exact text in its `.raw` nodes (one per stretch
// of text between two boxes; shown in plain-text mode, hidden behind the Markdown render
// otherwise), updated in the same frame as the render: joined, they are the stream's text.

import { connect } from "/v1/wsgate.js";
import { MarkdownView } from "./markdown.js";

const PRESETS = [
  {
    id: "markdown",
    label: "Markdown answer",
    script: {
      text:
        "# Streaming Markdown\n\n" +
        "wsgate sends **token streams** to browsers over *one* WebSocket, and this page renders " +
        "them as they arrive.\n\n" +
        "## What happens each frame\n\n" +
        "1. The whole message is lexed again.\n" +
        "2. Only blocks whose source changed are rendered.\n" +
        "3. Each rendered block is sanitised.\n\n" +
        "| Mode | Cuts at |\n| --- | --- |\n| `word` | words |\n| `sentence` | sentences |\n\n" +
        "```python\nasync for frame in stream:\n    print(frame.text, end=\"\")\n```\n\n" +
        "> Settled blocks are never rendered twice. WebSockets are " +
        "[RFC 6455](https://www.rfc-editor.org/rfc/rfc6455).\n",
      tokens_per_s: 30,
      ttft_ms: 300,
    },
  },
  {
    id: "tool",
    label: "Tool call",
    script: {
      text: "Let me check the weather in Paris for you.",
      tool_calls: [{ name: "get_weather", arguments: '{"city": "Paris", "unit": "celsius"}' }],
      args_chunk: 4,
      tokens_per_s: 20,
      ttft_ms: 200,
    },
  },
  {
    id: "emoji",
    label: "Emoji, flags, split surrogates",
    script: {
      text:
        "Family 👩‍👩‍👧‍👦, flags 🇺🇦 🇯🇵 🏳️‍🌈, a thumbs-up 👍🏽, keycap 1️⃣, " +
        "日本語, हिन्दी किताब, e\u0301 and café. Every one arrives whole.",
      chunk: 1,
      split_surrogates: true,
      tokens_per_s: 40,
      ttft_ms: 200,
    },
  },
  {
    id: "long",
    label: "Long answer at ~40 tok/s",
    script: { words: 600, tokens_per_s: 40, ttft_ms: 150 },
  },
  {
    id: "structured",
    label: "Structured section",
    script: {
      text:
        "Here is the forecast as data. <<<JSON>>>" +
        '{"city": "Paris", "days": [{"day": "Mon", "high": 21}, {"day": "Tue", "high": 19}]}' +
        "<<<END>>> Tuesday is the cooler day.",
      tokens_per_s: 30,
      ttft_ms: 200,
    },
  },
  { id: "free", label: "Your own prompt", script: null },
];
const DEFAULT_PRESETS = ["markdown", "tool", "emoji", "long", "structured", "markdown"];
const MAX_PANES = 6;
const FINISHED = {
  stop: "Done",
  tool_calls: "Done: tool calls",
  length: "Cut at the token limit",
  content_filter: "Stopped by the content filter",
  cancelled: "Stopped",
  timeout: "Timed out",
  error: "Failed",
};
const ANNOUNCEMENTS_KEPT = 4;
const SENTENCE_END = /(?:[.!?…。！？](?:["'”’)\]»*_]*)(?:\s+|$)|\n)/g;

const MAX_UPDATES_PER_S = 60;
// The share of the main thread that rendering answers may take, so input stays responsive
// however long the answers grow (Markdown lexing costs O(answer) per update).
const RENDER_BUDGET = 0.25;
const HIDDEN_TAB_MS = 250;
// Retrying the first connect: a page opened before the gateway listens comes up by itself.
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 10000;

const $ = (selector, root = document) => root.querySelector(selector);

function presetText(preset) {
  return preset.script === null ? "" : JSON.stringify({ mock: preset.script }, null, 1);
}

/** The mock script inside a message (what the mock itself would read), or null. */
function mockScriptOf(content) {
  try {
    const value = JSON.parse(content);
    return value && typeof value === "object" && "mock" in value ? value.mock : null;
  } catch {
    return null;
  }
}

/**
 * A `scheduleFrame` for wsgate.js: animation frames, but at most `perSecond` of them in any
 * second, whatever the display's refresh rate (120 Hz screens, headless Chromium's 60.6 Hz),
 * and fewer when rendering is slow: after a frame whose callbacks took `c` ms, the next one
 * waits at least c·(1 − budget)/budget ms, so rendering takes at most `budget` of the main
 * thread. Every callback asked for before a frame runs in that frame, in order; one asked for
 * in a skipped frame runs in the next allowed one. `stats` counts frames run and their cost.
 */
function frameCap(perSecond, budget) {
  const allowed = []; // timestamps of the newest allowed frames, oldest first
  let queue = [];
  let requested = false;
  let fallback = null;
  let notBefore = 0;
  const stats = { frames: 0, ms: 0 };
  const runAll = (t) => {
    requested = false;
    clearTimeout(fallback);
    const callbacks = queue;
    queue = [];
    const started = performance.now();
    for (const callback of callbacks) {
      try {
        callback(t);
      } catch (error) {
        reportError(error);
      }
    }
    const cost = performance.now() - started;
    stats.frames += 1;
    stats.ms += cost;
    notBefore = started + cost + (cost * (1 - budget)) / budget;
  };
  const tick = (t) => {
    const full = allowed.length === perSecond && t - allowed[0] < 1000;
    if (full || performance.now() < notBefore) {
      requestAnimationFrame(tick);
      return;
    }
    allowed.push(t);
    if (allowed.length > perSecond) allowed.shift();
    runAll(t);
  };
  // A hidden tab runs no animation frames: keep the text moving there, slowly.
  const hidden = () => {
    if (document.visibilityState === "hidden") runAll(performance.now());
    else fallback = setTimeout(hidden, HIDDEN_TAB_MS);
  };
  function scheduleFrame(callback) {
    queue.push(callback);
    if (requested) return;
    requested = true;
    requestAnimationFrame(tick);
    fallback = setTimeout(hidden, HIDDEN_TAB_MS);
  }
  scheduleFrame.stats = stats;
  return scheduleFrame;
}

/** Text a screen reader should say for a piece of Markdown: no markup characters. */
function speakable(markdown) {
  return markdown
    .replace(/```[^\n]*\n?/g, " ")
    .replace(/^\s{0,3}(?:#{1,6}\s+|>\s?|[-*+]\s+|\d+[.)]\s+)/gm, "")
    .replace(/[*_`~|]+/g, "")
    .replace(/\[([^\]]*)\]\([^)]*\)/g, "$1")
    .replace(/\s+/g, " ")
    .trim();
}

/** The page's ONE polite live region: whole sentences and status news, never tokens. */
class Announcer {
  constructor(el) {
    this.el = el;
    this.lastSource = null;
  }

  say(text, source = null) {
    const words = speakable(text);
    if (!words) return;
    const p = document.createElement("p");
    // Name the conversation when the speaker changes, so interleaved answers stay apart.
    p.textContent = source && source !== this.lastSource ? `${source}: ${words}` : words;
    this.lastSource = source;
    this.el.append(p);
    while (this.el.childElementCount > ANNOUNCEMENTS_KEPT) this.el.firstElementChild.remove();
  }
}

/** Feeds whole sentences of one answer to the announcer (accessible mode). */
class SentenceFeed {
  constructor(announcer, source) {
    this.announcer = announcer;
    this.source = source;
    this.pending = "";
  }

  push(delta) {
    // The gateway already cuts at sentences in the accessible modes; this only keeps a
    // piece cut by its latency cap until the rest of its sentence arrives.
    this.pending += delta;
    let cut = 0;
    for (const match of this.pending.matchAll(SENTENCE_END)) cut = match.index + match[0].length;
    if (cut === 0) return;
    this.announcer.say(this.pending.slice(0, cut), this.source);
    this.pending = this.pending.slice(cut);
  }

  end() {
    if (this.pending.trim()) this.announcer.say(this.pending, this.source);
    this.pending = "";
  }
}

function formatMs(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

/**
 * One stretch of an answer's text between two boxes (tool calls, structured sections): its
 * Markdown render and its exact plain text, side by side (CSS shows one of them).
 */
class Segment {
  constructor(flow, start) {
    this.start = start;
    this.el = document.createElement("div");
    this.el.className = "segment";
    this.md = document.createElement("div");
    this.md.className = "md";
    const raw = document.createElement("div");
    raw.className = "raw";
    this.raw = document.createTextNode("");
    raw.append(this.raw);
    this.el.append(this.md, raw);
    flow.append(this.el);
    this.view = new MarkdownView(this.md);
    this.text = "";
    this.final = false;
  }

  show(text, final, markdown) {
    if (text !== this.text) {
      if (text.startsWith(this.text)) this.raw.appendData(text.slice(this.text.length));
      else this.raw.data = text;
      this.text = text;
      if (markdown) this.view.update(text, final);
    } else if (final && !this.final && markdown) {
      this.view.update(text, true);
    }
    this.final = final;
  }

  rerender() {
    this.view.update(this.text, this.final);
  }
}

/**
 * One answer in a transcript: its text (in segments), tool calls and structured sections
 * where they came in the answer, and its metrics. A box's place is the length of the
 * stream's text when its frame arrived (wsgate.js has the text before it, even if no
 * animation frame has shown it yet); it goes in once the text before it is shown.
 */
class AssistantMessage {
  constructor(pane, page) {
    this.pane = pane;
    this.page = page;
    this.el = $("#assistant-template").content.firstElementChild.cloneNode(true);
    this.el.wsgateMessage = this; // so a settings change can re-render it
    this.flow = $(".flow", this.el);
    this.metaEls = {
      state: $(".state", this.el),
      ttft: $(".ttft", this.el),
      rate: $(".rate", this.el),
      tokens: $(".tokens", this.el),
    };
    this.stream = null;
    this.text = "";
    this.segments = [];
    this.cuts = []; // boxes waiting for the text before them: {at, el}
    this.sentAt = performance.now();
    this.firstAt = null;
    this.telemetry = null;
    this.usage = null;
    this.calls = new Map(); // call_id -> {el, name, args, pending, end, error}
    this.dirtyCalls = new Set();
    this.frameRequested = false;
    this.feed = page.settings.accessible ? new SentenceFeed(page.announcer, pane.title) : null;
    this.ended = false;
  }

  // -- from the stream (wsgate.js) --

  onFrame(frame) {
    if (this.ended) return;
    const type = frame.type;
    if (this.firstAt === null && (type === "delta.text" || type.startsWith("tool_call."))) {
      this.firstAt = performance.now();
    }
    if (type === "telemetry") {
      this.telemetry = frame;
    } else if (type === "usage") {
      this.usage = frame;
    } else if (type === "structured.error") {
      this.onStructured(frame); // wsgate.js hands only `structured` to onStructured
    } else if (type === "tool_call.start") {
      this.toolCall(frame.call_id, frame.name);
    } else if (type === "tool_call.arguments_chunk") {
      const call = this.toolCall(frame.call_id, null);
      call.pending += frame.chunk;
      this.changed(call);
    } else if (type === "tool_call.error") {
      const call = this.toolCall(frame.call_id, frame.name ?? "(no name)");
      call.error = frame;
      this.changed(call);
    }
  }

  onText(text, delta) {
    if (this.ended) return;
    this.text = text;
    if (this.feed && delta) this.feed.push(delta);
    this.flush();
  }

  onToolCall(frame) {
    if (this.ended) return;
    const call = this.toolCall(frame.call_id, frame.name);
    call.end = frame;
    this.changed(call);
  }

  onStructured(frame) {
    if (this.ended) return;
    const box = document.createElement("section");
    box.className = frame.type === "structured" ? "structured" : "structured invalid";
    const title = document.createElement("h3");
    const body = document.createElement("pre");
    if (frame.type === "structured") {
      title.textContent = "Structured section";
      body.textContent = JSON.stringify(frame.value, null, 2);
    } else {
      title.textContent = `Structured section not valid (${frame.code})`;
      body.textContent = frame.raw ?? "";
    }
    box.append(title, body);
    this.place(box);
  }

  end(outcome) {
    if (this.ended) return;
    if (typeof outcome.text === "string") this.text = outcome.text;
    this.flush(true);
    this.ended = true;
    const reason = outcome.reason ?? (outcome.error ? "error" : "stop");
    this.el.dataset.finish = reason;
    const error = outcome.error;
    if (error) {
      const p = document.createElement("p");
      p.className = "error";
      p.textContent = `Error ${error.code ?? ""}: ${error.message ?? String(error)}`.trim();
      this.flow.append(p);
    }
    this.writeMeta(true, reason);
    const done =
      reason === "cancelled" ? "Stopped." : error ? "Response failed." : "Response complete.";
    if (this.feed) this.feed.end();
    this.page.announcer.say(done, this.pane.title);
  }

  // -- rendering, at most once per frame --

  changed(call) {
    this.dirtyCalls.add(call);
    if (this.frameRequested) return;
    this.frameRequested = true;
    this.page.scheduleFrame(() => {
      this.frameRequested = false;
      if (!this.ended) this.flush();
    });
  }

  /** Put a box after the text the stream had when its frame arrived. */
  place(el) {
    const at = this.stream ? this.stream.text.length : this.text.length;
    this.cuts.push({ at, el });
    this.changed(null);
  }

  flush(final = false) {
    const stick = this.pane.isScrolledDown();
    while (this.cuts.length && this.cuts[0].at <= this.text.length) {
      const { at, el } = this.cuts.shift();
      this.showText(at, true); // the text before the box, closed
      this.flow.append(el);
    }
    this.showText(this.text.length, final);
    for (const call of this.dirtyCalls) if (call) this.drawCall(call);
    this.dirtyCalls.clear();
    if (!final) this.writeMeta(false);
    if (stick) this.pane.scrollDown();
  }

  /** Show the text up to `end` in the open segment (opened here if there is none). */
  showText(end, final) {
    const last = this.segments.at(-1);
    let segment = last && !last.final ? last : null;
    if (segment === null) {
      const start = last ? last.start + last.text.length : 0;
      if (end <= start) return;
      segment = new Segment(this.flow, start);
      this.segments.push(segment);
    }
    segment.show(this.text.slice(segment.start, end), final, this.page.settings.markdown);
  }

  rerender() {
    for (const segment of this.segments) segment.rerender();
  }

  toolCall(callId, name) {
    let call = this.calls.get(callId);
    if (call) {
      if (name && !call.name) {
        call.name = name;
        this.changed(call);
      }
      return call;
    }
    const el = document.createElement("section");
    el.className = "tool-call";
    el.dataset.callId = callId;
    const title = document.createElement("h3");
    const status = document.createElement("span");
    status.className = "tool-status";
    status.textContent = "calling…";
    title.append(document.createTextNode(""), status);
    const args = document.createElement("pre");
    args.append(document.createTextNode(""));
    el.append(title, args);
    call = { el, name, title, status, args, pending: "", end: null, error: null };
    this.calls.set(callId, call);
    this.place(el);
    this.changed(call);
    return call;
  }

  drawCall(call) {
    call.title.firstChild.data = `Tool call: ${call.name ?? "…"} `;
    const text = call.args.firstChild;
    if (call.end) {
      text.data = JSON.stringify(call.end.arguments, null, 2);
      call.status.textContent = "ready";
      call.el.classList.add("done");
    } else if (call.error) {
      text.data = call.error.raw ?? "";
      call.status.textContent = `invalid arguments (${call.error.code})`;
      call.el.classList.add("invalid");
    } else if (call.pending) {
      text.appendData(call.pending);
    }
    call.pending = "";
  }

  writeMeta(final, reason = "") {
    const m = this.metaEls;
    const set = (el, value) => {
      if (el.textContent !== value) el.textContent = value;
    };
    set(m.state, final ? (FINISHED[reason] ?? `Ended: ${reason}`) : "Streaming…");
    if (this.firstAt !== null) set(m.ttft, `TTFT ${formatMs(this.firstAt - this.sentAt)}`);
    let tokens = null;
    let rate = null;
    if (final && this.usage && this.firstAt !== null) {
      tokens = this.usage.output_tokens;
      const seconds = (performance.now() - this.firstAt) / 1000;
      rate = seconds > 0 ? tokens / seconds : null;
    } else if (this.telemetry) {
      tokens = this.telemetry.tokens;
      rate = this.telemetry.tokens_per_s;
    }
    if (rate !== null) set(m.rate, `${rate.toFixed(1)} tok/s`);
    if (tokens !== null) set(m.tokens, `${tokens} tokens`);
  }
}

/** One conversation: its transcript, prompt box, Send and Stop. */
class Pane {
  constructor(page, index, presetId) {
    this.page = page;
    this.index = index;
    this.title = `Conversation ${index + 1}`;
    this.history = [];
    this.stream = null;
    this.message = null;
    this.el = $("#pane-template").content.firstElementChild.cloneNode(true);
    const id = (name) => `pane-${index + 1}-${name}`;
    this.el.dataset.pane = String(index + 1);
    this.el.setAttribute("aria-labelledby", id("title"));
    const title = $(".pane-title", this.el);
    title.id = id("title");
    title.textContent = this.title;
    this.transcript = $(".transcript", this.el);
    this.transcript.setAttribute("aria-label", `${this.title} transcript`);
    this.form = $(".composer", this.el);
    this.form.setAttribute("aria-label", `${this.title} message`);
    this.preset = $(".preset", this.el);
    this.preset.id = id("preset");
    $(".preset-label", this.el).htmlFor = this.preset.id;
    this.prompt = $(".prompt", this.el);
    this.prompt.id = id("prompt");
    $(".prompt-label", this.el).htmlFor = this.prompt.id;
    this.sendButton = $(".send", this.el);
    this.stopButton = $(".stop", this.el);
    this.notice = $(".notice", this.el);
    // Every pane has a Send and a Stop: their accessible names say which conversation.
    this.sendButton.setAttribute("aria-label", `Send, ${this.title}`);
    this.stopButton.setAttribute("aria-label", `Stop, ${this.title}`);
    $(".clear", this.el).setAttribute("aria-label", `Clear ${this.title}`);
    for (const preset of PRESETS) this.preset.append(new Option(preset.label, preset.id));
    this.preset.value = presetId;
    this.choosePreset();
    this.preset.addEventListener("change", () => this.choosePreset());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    this.prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.send();
      } else if (event.key === "Escape" && this.stream) {
        event.preventDefault();
        this.stop();
      }
    });
    this.stopButton.addEventListener("click", () => this.stop());
    $(".clear", this.el).addEventListener("click", () => this.clear());
    this.prompt.placeholder = "Type a prompt: the mock answers with generated words.";
  }

  choosePreset() {
    const preset = PRESETS.find((p) => p.id === this.preset.value) ?? PRESETS.at(-1);
    this.prompt.value = presetText(preset);
  }

  get busy() {
    return this.stream !== null;
  }

  setBusy(busy) {
    // aria-disabled, not disabled: a focused button that becomes disabled drops the focus.
    this.sendButton.setAttribute("aria-disabled", String(busy));
    this.stopButton.setAttribute("aria-disabled", String(!busy));
  }

  isScrolledDown() {
    const t = this.transcript;
    return t.scrollHeight - t.scrollTop - t.clientHeight < 24;
  }

  scrollDown() {
    this.transcript.scrollTop = this.transcript.scrollHeight;
  }

  appendUser(content) {
    const el = $("#user-template").content.firstElementChild.cloneNode(true);
    const body = $(".body", el);
    const script = mockScriptOf(content);
    if (script) {
      const preset = PRESETS.find((p) => p.script && presetText(p) === content);
      const details = document.createElement("details");
      const summary = document.createElement("summary");
      summary.textContent = `Mock script${preset ? `: ${preset.label}` : ""}`;
      const pre = document.createElement("pre");
      pre.textContent = JSON.stringify(script, null, 2);
      details.append(summary, pre);
      body.append(details);
    } else {
      const p = document.createElement("p");
      p.textContent = content;
      body.append(p);
    }
    this.transcript.append(el);
  }

  send() {
    if (this.busy) return;
    const page = this.page;
    // A closed Gateway refuses every stream: say so here, and leave the transcript alone.
    if (page.gw.state === "closed") {
      this.notify("Not sent: not connected to the gateway. Reconnect, then send again.");
      return;
    }
    const content = this.prompt.value.trim() || "Tell me about WebSockets.";
    const history = this.history;
    const request = {
      model: page.settings.model || "mock",
      messages: [...history, { role: "user", content }],
    };
    const message = new AssistantMessage(this, page);
    let stream;
    try {
      stream = page.gw.stream(request, {
        options: page.streamOptions(),
        onFrame: (frame) => message.onFrame(frame),
        onText: (text, delta) => message.onText(text, delta),
        onToolCall: (frame) => message.onToolCall(frame),
        onStructured: (frame) => message.onStructured(frame),
      });
    } catch (error) {
      this.notify(`Not sent: ${error?.message ?? error}`);
      return;
    }
    this.notify("");
    this.appendUser(content);
    history.push({ role: "user", content });
    this.message = message;
    this.transcript.append(message.el);
    this.scrollDown();
    this.setBusy(true);
    this.stream = stream;
    message.stream = stream;
    message.el.dataset.streamId = stream.id;
    const settle = (outcome) => {
      message.end(outcome);
      // Not after a Clear: the answer belongs to the conversation that was cleared.
      if (message.text && this.history === history) {
        history.push({ role: "assistant", content: message.text });
      }
      if (this.stream === stream) {
        this.stream = null;
        this.message = null;
        this.setBusy(false);
      }
    };
    stream.done.then(settle, (error) => settle({ reason: "error", error, text: stream.text }));
  }

  /** Show (or with "", hide) a note under the prompt box, and say it once. */
  notify(text) {
    this.notice.textContent = text;
    this.notice.hidden = text === "";
    if (text) this.page.announcer.say(text, this.title);
  }

  stop() {
    if (!this.stream) return;
    this.stream.cancel();
  }

  clear() {
    this.stop();
    this.history = []; // a new array: the cleared stream's settle sees it is not its own
    this.transcript.replaceChildren();
    this.notify("");
  }
}

/** The page: settings, the connection, the panes. */
class Page {
  constructor() {
    const params = new URLSearchParams(location.search);
    const count = Math.min(MAX_PANES, Math.max(1, Number(params.get("panes")) || 3));
    this.announcer = new Announcer($("#announcer"));
    this.settings = {};
    this.readSettings();
    for (const id of ["buffering", "accessible", "markdown", "structured", "model"]) {
      $(`#${id}`).addEventListener("change", () => this.readSettings());
    }
    // Enter in the Model field submits the form implicitly: read the settings instead of
    // navigating away (which would end every stream).
    $("#settings").addEventListener("submit", (event) => {
      event.preventDefault();
      this.readSettings();
    });
    this.frames = frameCap(MAX_UPDATES_PER_S, RENDER_BUDGET);
    this.retries = 0;
    this.retryTimer = null;
    $("#reconnect").addEventListener("click", () => this.connect());
    this.connect();
    this.panes = [];
    const root = $("#panes");
    for (let i = 0; i < count; i += 1) {
      const pane = new Pane(this, i, DEFAULT_PRESETS[i]);
      this.panes.push(pane);
      root.append(pane.el);
    }
    $("#send-all").addEventListener("click", () => this.panes.forEach((p) => p.send()));
    $("#stop-all").addEventListener("click", () => this.panes.forEach((p) => p.stop()));
    // Every stream is `on_disconnect: "continue"` (to survive a dropped socket), so a page
    // that goes away must cancel its own: nobody could resume them.
    window.addEventListener("pagehide", () => this.panes.forEach((p) => p.stop()));
  }

  readSettings() {
    const wasMarkdown = this.settings.markdown;
    this.settings = {
      buffering: $("#buffering").value,
      accessible: $("#accessible").checked,
      markdown: $("#markdown").checked,
      structured: $("#structured").checked,
      model: $("#model").value.trim(),
    };
    document.body.classList.toggle("plain", !this.settings.markdown);
    const sent = this.streamOptions().buffering;
    $("#buffering-help").textContent =
      sent === this.settings.buffering
        ? "Where the gateway cuts the text into frames."
        : `Accessible mode asks for whole sentences: buffering "${sent}".`;
    if (this.settings.markdown && wasMarkdown === false) {
      for (const el of document.querySelectorAll(".msg.assistant")) el.wsgateMessage?.rerender();
    }
  }

  /** Buffering as sent: the accessible mode asks for whole sentences unless paragraphs. */
  streamOptions() {
    const { buffering, accessible, structured } = this.settings;
    const options = {
      buffering,
      telemetry: true,
      // Keep generating while the page reconnects, so resume brings the whole answer.
      on_disconnect: "continue",
    };
    if (accessible && buffering !== "paragraph") options.buffering = "sentence";
    if (options.buffering === "paragraph") options.max_latency_ms = 8000;
    if (structured) options.structured = {};
    return options;
  }

  scheduleFrame(callback) {
    this.frames(callback);
  }

  /** A new Gateway (at start, on Reconnect, or retrying a first connect that failed). */
  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const old = this.gw;
    this.gw = null; // before close(): its "close" event is not this Gateway's news
    if (old && old.state !== "closed") old.close();
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/v1/ws`;
    const gw = connect(url, { scheduleFrame: this.frames });
    this.gw = gw;
    let opened = false;
    const mine = (fn) => (info) => {
      if (this.gw === gw) fn(info);
    };
    this.setConnection("connecting", "Connecting…");
    gw.ready.then(
      mine(() => {
        opened = true;
        const again = this.retries > 0;
        this.retries = 0;
        this.setConnection("open", "Connected", again ? "Connected." : null);
      }),
      () => {}, // the "close" event says why
    );
    gw.on(
      "reconnecting",
      mine((info) => {
        const attempt = info && typeof info === "object" && info.attempt ? ` (attempt ${info.attempt})` : "";
        this.setConnection("reconnecting", `Reconnecting…${attempt}`, "Connection lost, reconnecting.");
      }),
    );
    gw.on("reconnected", mine(() => this.setConnection("open", "Connected", "Reconnected.")));
    gw.on(
      "goaway",
      mine(() => this.setConnection("reconnecting", "Gateway restarting: reconnecting…")),
    );
    gw.on(
      "close",
      mine((info) => {
        const why = info?.error?.message ?? info?.reason ?? "";
        const detail = why ? `: ${why}` : "";
        if (opened) {
          // A fatal close (bad credentials, a refused protocol): retrying alone would hammer.
          this.setConnection("closed", `Disconnected${detail}`, "Disconnected.");
          return;
        }
        // wsgate.js gives up on a first connect that fails; this page tries again, slower.
        const delayMs = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** this.retries);
        this.retries += 1;
        this.retryTimer = setTimeout(() => this.connect(), delayMs);
        const text = `Not connected${detail}. Retrying in ${Math.round(delayMs / 1000)} s.`;
        this.setConnection("closed", text, this.retries === 1 ? "Not connected." : null);
      }),
    );
  }

  setConnection(state, text, announce = null) {
    const box = $("#connection");
    if (box.dataset.state === state && $("#connection-text").textContent === text) return;
    box.dataset.state = state;
    $("#connection-text").textContent = text;
    $("#reconnect").hidden = state !== "closed";
    if (announce) this.announcer.say(announce);
  }
}

window.wsgateDemo = new Page();
