"""The demo page's Markdown renderer (`wsgate/web/demo/markdown.js`) in real Chromium.

It lexes the whole text on every update, re-renders only the blocks whose source changed,
closes the unfinished tail with remend, and sanitises every block with DOMPurify. The page
here loads the module from the gateway (`/demo/markdown.js`) and feeds it text directly.
"""

from __future__ import annotations

import pytest
import pytest_asyncio

pytestmark = pytest.mark.asyncio(loop_scope="module")

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>md</title></head>
<body><div id="out"></div><div id="fresh"></div>
<script type="module">
import { MarkdownView } from "/demo/markdown.js";
window.MarkdownView = MarkdownView;
window.mdReady = true;
</script></body></html>"""

DOCUMENT = (
    "# Streaming Markdown\n\n"
    "wsgate sends **token streams** to browsers over *one* WebSocket.\n\n"
    "## Steps\n\n"
    "1. Lex the whole message.\n"
    "2. Render changed blocks.\n\n"
    "| Mode | Cuts at |\n| --- | --- |\n| `word` | words |\n\n"
    "```python\nasync for frame in stream:\n    print(frame)\n```\n\n"
    "> Settled blocks are never rendered twice, see [the spec](https://example.invalid/).\n\n"
    "Last paragraph with `code` and ~~strike~~.\n"
)

# Blocks that a later line changes: a list that turns loose, a paragraph that becomes a
# setext heading, a reference link defined after its use, a fence that closes late.
TRICKY = (
    "- one\n- two\n\n- three, now the list is loose\n\n"
    "A paragraph that will be a heading\n===\n\n"
    "See [the docs][docs] for more.\n\n"
    "```\nunclosed for a while\n\nstill code\n```\n\n"
    "[docs]: https://example.invalid/docs\n"
)


@pytest_asyncio.fixture(loop_scope="module")
async def md(page, origin):
    async def serve(route):
        await route.fulfill(status=200, content_type="text/html; charset=utf-8", body=PAGE)

    await page.route(origin + "/md-test.html", serve)
    await page.goto(origin + "/md-test.html")
    await page.wait_for_function("() => window.mdReady === true")
    return page


async def test_settled_blocks_are_never_rendered_again_while_the_text_grows(md):
    result = await md.evaluate(
        """(text) => {
            const view = new MarkdownView(document.getElementById("out"));
            const late = []; // renders of a block after the update in which it settled
            const settled = new Set();
            const observer = new MutationObserver(() => {});
            observer.observe(view.container, { subtree: true, childList: true,
                                               characterData: true, attributes: true });
            for (let i = 1; i <= text.length; i += 1) {
                view.update(text.slice(0, i));
                for (const r of observer.takeRecords()) {
                    const block = (r.target.nodeType === 1 ? r.target : r.target.parentElement)
                        .closest(".md-block");
                    if (block && settled.has(block)) late.push([i, block.textContent]);
                }
                view.blocks.slice(0, -1).forEach((b) => settled.add(b.el));
            }
            view.update(text, true);
            for (const r of observer.takeRecords()) {
                const block = (r.target.nodeType === 1 ? r.target : r.target.parentElement)
                    .closest(".md-block");
                if (block && settled.has(block)) late.push(["final", block.textContent]);
            }
            return { late, blocks: view.blocks.length, renders: view.renders };
        }""",
        DOCUMENT,
    )
    assert result["late"] == []
    assert result["blocks"] == 8
    # Each update re-rendered about one block (the tail), not all of them.
    assert result["renders"] < len(DOCUMENT) * 1.2


async def test_every_prefix_renders_as_a_fresh_render_of_the_whole_text_would(md):
    mismatches = await md.evaluate(
        """(text) => {
            const view = new MarkdownView(document.getElementById("out"));
            const bad = [];
            for (let i = 1; i <= text.length; i += 1) {
                view.update(text.slice(0, i));
                const fresh = new MarkdownView(document.getElementById("fresh"));
                fresh.update(text.slice(0, i));
                if (view.container.innerHTML !== fresh.container.innerHTML) bad.push(i);
            }
            view.update(text, true);
            const fresh = new MarkdownView(document.getElementById("fresh"));
            fresh.update(text, true);
            if (view.container.innerHTML !== fresh.container.innerHTML) bad.push("final");
            return bad;
        }""",
        TRICKY,
    )
    assert mismatches == []
    html = await md.inner_html("#out")
    assert html.count("<li>") == 3
    assert "<p>one</p>" in html  # the list turned loose: its first items were rendered again
    assert "<h1>A paragraph that will be a heading</h1>" in html
    assert 'href="https://example.invalid/docs"' in html


async def test_unterminated_markdown_is_closed_while_it_streams_and_not_after(md):
    shown = await md.evaluate(
        """() => {
            const view = new MarkdownView(document.getElementById("out"));
            const html = (text, final = false) => {
                view.update(text, final);
                return view.container.innerHTML;
            };
            return [
                html("Some **bold"),
                html("and `code"),
                html("a [link](https://example.inv"),
                (view.update("a [link](https://example.inv", true), view.container.textContent),
            ];
        }"""
    )
    assert "<strong>bold</strong>" in shown[0]
    assert "<code>code</code>" in shown[1]
    assert "<a" not in shown[2]  # an unfinished link shows its text only
    assert "link" in shown[2]
    assert "a [link](https://example.inv" in shown[3]  # once finished, the text is as written


async def test_sanitising_removes_scripts_handlers_styles_and_javascript_links(md):
    hostile = (
        '<img src="data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"'
        ' onload="window.pwned = 1">\n\n'
        "<script>window.pwned = 2</script>\n\n"
        "[click me](javascript:window.pwned=3)\n\n"
        '<a href="https://example.invalid/" onclick="window.pwned = 4">ok link</a>\n\n'
        '<p style="color: red">styled</p><style>body { display: none }</style>\n\n'
        '<iframe src="https://example.invalid/"></iframe><form><input name="q"></form>\n'
    )
    report = await md.evaluate(
        """async (text) => {
            const view = new MarkdownView(document.getElementById("out"));
            for (let i = 1; i <= text.length; i += 7) view.update(text.slice(0, i));
            view.update(text, true);
            await new Promise((r) => setTimeout(r, 100));
            const out = view.container;
            const all = [...out.querySelectorAll("*")];
            return {
                pwned: window.pwned ?? null,
                handlers: all.flatMap((el) => [...el.attributes].map((a) => a.name))
                    .filter((n) => n.startsWith("on") || n === "style"),
                tags: all.map((el) => el.tagName.toLowerCase()),
                hrefs: [...out.querySelectorAll("a")].map((a) => [a.getAttribute("href"), a.rel]),
                text: out.textContent,
            };
        }""",
        hostile,
    )
    assert report["pwned"] is None
    assert report["handlers"] == []
    for tag in ("script", "style", "iframe", "form", "input"):
        assert tag not in report["tags"]
    assert "img" in report["tags"]  # harmless markup stays
    for href, rel in report["hrefs"]:
        assert href is None or href.startswith("https://")
        if href:
            assert "noopener" in rel
    assert "click me" in report["text"]
    assert "styled" in report["text"]
