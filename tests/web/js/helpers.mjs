// What the Node tests of tests/web/js share: waiting, and the control channel to the Python
// side (tests/web/web_helpers.py `Control`, named in WSGATE_CONTROL).

import assert from "node:assert/strict";

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
