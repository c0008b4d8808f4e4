// Safe incremental Markdown for streamed answers (the approach of streamdown, without React).
//
// Owns one container element and keeps it equal to the rendering of a growing Markdown text.
// Each update lexes the WHOLE text with marked's Lexer (lexing only the tail is wrong: a later
// line can turn an earlier list loose or a paragraph into a setext heading), compares each
// block's source with the one rendered last time, and re-renders only the blocks that differ.
// The last block of an unfinished text is still being written: `remend` closes its open
// Markdown (`**bold`, `` `code ``, a link without its `)`) so it renders as it will end.
// Every rendered block goes through DOMPurify before it touches the document, so nothing the
// model writes (raw HTML, `javascript:` links, event handlers) can run. A settled block whose
// source did not change is never rendered again: its nodes stay, and so does a selection in it.
// A block that changed is patched in place (`morph`), not replaced: a node whose tag (and
// attribute names) stay keeps its identity, so a focused link or a selection in the growing
// last block survives its updates, and focus is never moved by streaming.
// It must not read the network, the clock or any state but the text it is given.

import { Lexer, Parser } from "./vendor/marked.esm.js";
import remend from "./vendor/remend.js";
import DOMPurify from "./vendor/purify.es.mjs";

const MARKED = { gfm: true, breaks: false, async: false };
const REMEND = { linkMode: "text-only", images: false };
const PURIFY = {
  RETURN_DOM_FRAGMENT: true,
  // The page's CSP forbids inline style; forms and media have no place in an answer.
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe", "video", "audio"],
  FORBID_ATTR: ["style", "id", "name"],
  ADD_ATTR: ["target"],
};

let hooked = false;

function installHooks() {
  if (hooked) return;
  hooked = true;
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A" && node.hasAttribute("href")) {
      // A link opens elsewhere: following it must not end the streams on this page.
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer nofollow");
    } else if (node.hasAttribute && node.hasAttribute("target")) {
      node.removeAttribute("target");
    }
  });
}

/** Sanitised DOM of some Markdown tokens (one block, or the re-lexed tail). */
function renderTokens(tokens) {
  const html = Parser.parse(tokens, MARKED);
  return DOMPurify.sanitize(html, PURIFY);
}

/** The tokens of one block's source, resolving references against `links`. */
function lexAlone(source, links) {
  const lexer = new Lexer(MARKED);
  Object.assign(lexer.tokens.links, links);
  return lexer.lex(source);
}

/** Same kind of node, so `to` can be patched into `from` (attribute names in the same order). */
function sameKind(from, to) {
  if (from.nodeType !== to.nodeType || from.nodeName !== to.nodeName) return false;
  if (from.nodeType !== Node.ELEMENT_NODE) return true;
  const a = from.getAttributeNames();
  const b = to.getAttributeNames();
  return a.length === b.length && a.every((name, i) => name === b[i]);
}

/**
 * Make `target`'s children equal to `source`'s (which it takes), keeping every node of the
 * same kind in the same place. A text that only grew is appended to, so a selection in it
 * keeps its offsets.
 */
function morph(target, source) {
  const olds = [...target.childNodes];
  const news = [...source.childNodes];
  news.forEach((node, i) => {
    const old = olds[i];
    if (old === undefined) target.append(node);
    else if (!sameKind(old, node)) old.replaceWith(node);
    else if (old.nodeType === Node.TEXT_NODE || old.nodeType === Node.COMMENT_NODE) {
      if (old.data === node.data) return;
      if (node.data.startsWith(old.data)) old.appendData(node.data.slice(old.data.length));
      else old.data = node.data;
    } else {
      for (const name of node.getAttributeNames()) {
        const value = node.getAttribute(name);
        if (old.getAttribute(name) !== value) old.setAttribute(name, value);
      }
      morph(old, node);
    }
  });
  for (const old of olds.slice(news.length)) old.remove();
}

export class MarkdownView {
  /** @param {HTMLElement} container emptied and owned from now on */
  constructor(container) {
    installHooks();
    this.container = container;
    this.container.replaceChildren();
    /** @type {{source: string, el: HTMLElement}[]} */
    this.blocks = [];
    this.linksKey = "{}";
    this.renders = 0; // blocks rendered so far, for tests and the curious
  }

  /**
   * Show `text`. `final`: the text is complete (no remend on the last block).
   * Returns how many blocks were (re-)rendered by this call.
   */
  update(text, final = false) {
    const all = Lexer.lex(text, MARKED);
    const links = all.links;
    // A reference definition (`[id]: url`) changes how EARLIER blocks render `[text][id]`:
    // when the definitions change, every block that has a bracket is rendered again.
    const linksKey = JSON.stringify(links);
    const linksChanged = linksKey !== this.linksKey;
    this.linksKey = linksKey;
    const tokens = all.filter((t) => t.type !== "space");
    let rendered = 0;
    tokens.forEach((token, i) => {
      const tail = !final && i === tokens.length - 1;
      const source = tail ? remend(token.raw, REMEND) : token.raw;
      const known = this.blocks[i];
      if (known && known.source === source && !(linksChanged && source.includes("["))) return;
      // The tail, once remend changed it, is lexed alone (with the whole text's reference
      // definitions); any other block renders the token of the whole-text lex.
      const fragment = renderTokens(source === token.raw ? [token] : lexAlone(source, links));
      if (known) {
        morph(known.el, fragment);
        known.source = source;
      } else {
        const el = document.createElement("div");
        el.className = "md-block";
        el.append(fragment);
        this.container.append(el);
        this.blocks.push({ source, el });
      }
      rendered += 1;
    });
    while (this.blocks.length > tokens.length) this.blocks.pop().el.remove();
    this.renders += rendered;
    return rendered;
  }
}
