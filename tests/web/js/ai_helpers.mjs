// What the Node tests of the real `ai` package share (ai_sdk.test.mjs,
// ai_sdk_agent_loop.test.mjs): the pinned `ai` itself, loaded from the npm prefix named in
// WSGATE_AI_SDK (tests/web/web_helpers.py `install_npm_packages`), its chunk schema, and a
// chat over a plain array state.

import { createRequire } from "node:module";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

export const ai = await import(
  pathToFileURL(createRequire(join(process.env.WSGATE_AI_SDK, "package.json")).resolve("ai")).href
);

/** ai's own schema of a UIMessageChunk (`await chunkSchema.validate(chunk)`). */
export const chunkSchema = ai.uiMessageChunkSchema();

/** The state @ai-sdk/react keeps in React, as plain arrays (snapshots, as React's does). */
export class ArrayState {
  constructor(messages = []) {
    this.status = "ready";
    this.error = undefined;
    this.messages = messages;
  }

  pushMessage(message) {
    this.messages = [...this.messages, structuredClone(message)];
  }

  popMessage() {
    this.messages = this.messages.slice(0, -1);
  }

  replaceMessage(index, message) {
    const messages = [...this.messages];
    messages[index] = structuredClone(message);
    this.messages = messages;
  }

  snapshot(value) {
    return structuredClone(value);
  }
}

/** A chat of ai's AbstractChat over an ArrayState (what @ai-sdk/react's Chat does); its
 * `messages`, if given, are the state's first. */
export class TestChat extends ai.AbstractChat {
  constructor({ messages, ...init }) {
    super({ ...init, state: new ArrayState(messages) });
  }
}

/** The chat's last assistant message. */
export const assistant = (chat) => chat.messages.findLast((m) => m.role === "assistant");
