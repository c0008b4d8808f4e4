// What the Node tests of tests/web/js share: waiting, the control channel to the Python
// side (tests/web/web_helpers.py `Control`, named in WSGATE_CONTROL), a WebSocket class that
// records every message in WSGATE_FRAMES, and the mock's weather script of the agent loop
// tests. What only the `ai` package's tests share is in ai_helpers.mjs.

import assert from "node:assert/strict";
import { appendFileSync } from "node:fs";

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Wait until `predicate()` holds, polling every 5 ms; fail after `timeoutMs`. */
export async function until(predicate, what, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** Ask the Python side to act (drop the connections, drain, ...) and wait until it has. */
export async function control(action) {
  const answer = await fetch(`${process.env.WSGATE_CONTROL}/${action}`, { method: "POST" });
  const body = await answer.text();
  assert.equal(answer.status, 200, `control ${action}: ${body}`);
  return JSON.parse(body).result;
}

// --- recording sockets --------------------------------------------------------------------

/**
 * A WebSocket class that records every message (appended to WSGATE_FRAMES, for the Python
 * side to validate against the protocol's schemas) and lets a test act on its sockets:
 *
 * - each socket keeps `index`, `sentFrames` (what it sent, parsed) and `received` (what it
 *   received, parsed, once per "message" listener), and drops what it receives while
 *   `swallow` is set (the frames in flight that die with a dropped connection);
 * - `hooks.onSend(frame, socket)` returning false loses that frame (it never reaches the
 *   gateway, and is not recorded);
 * - `state.refuse` makes new connections fail as an unreachable gateway's do (a closed
 *   port), `state.redirect` sends them to another URL, as a load balancer does.
 *
 * `sockets` lists every socket made, `last()` the newest, and `results()` every tool_result
 * frame sent, socket by socket.
 */
export function recorder() {
  const sockets = [];
  const state = { refuse: false, redirect: null };
  const hooks = { onSend: null };
  const record = (socket, dir, data) =>
    appendFileSync(process.env.WSGATE_FRAMES, JSON.stringify({ socket: socket.index, dir, data }) + "\n");
  class RecordingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(state.refuse ? "ws://127.0.0.1:9/" : (state.redirect ?? url), protocols);
      this.index = sockets.length;
      this.swallow = false;
      this.received = [];
      this.sentFrames = [];
      sockets.push(this);
    }

    send(data) {
      const frame = JSON.parse(data);
      if (hooks.onSend?.(frame, this) === false) return;
      record(this, "out", data);
      this.sentFrames.push(frame);
      super.send(data);
    }

    addEventListener(type, listener, options) {
      if (type !== "message") return super.addEventListener(type, listener, options);
      return super.addEventListener(
        type,
        (event) => {
          record(this, "in", event.data);
          this.received.push(JSON.parse(event.data));
          if (!this.swallow) listener(event);
        },
        options,
      );
    }
  }
  const results = () => sockets.flatMap((s) => s.sentFrames.filter((f) => f.type === "tool_result"));
  return { WebSocket: RecordingWebSocket, sockets, state, hooks, last: () => sockets.at(-1), results };
}

// --- the mock's weather script (protocol/MOCK.md) -----------------------------------------

export const WEATHER = "call_mock_0_0";
export const CLOCK = "call_mock_0_1";
export const TOOLS = ["weather", "clock"].map((name) => ({
  type: "function",
  function: { name, parameters: { type: "object" } },
}));

/** Turn 0 calls weather and clock in parallel; turn 1 answers once it has `results`. */
export function weatherScript(results) {
  return {
    turns: [
      {
        text: "Let me look.",
        tool_calls: [
          { name: "weather", arguments: '{"city": "Paris"}' },
          { name: "clock", arguments: "{}" },
        ],
      },
      { text: "Sunny, 21 °C at noon.", expect_tool_results: results },
    ],
  };
}
