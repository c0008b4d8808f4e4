"""The demo page at `/` as a person uses it: presets that stream from the built-in mock out of
the box, Markdown rendered safely, tool calls and structured sections, metrics, keyboard use
and the screen-reader structure. Screenshots go to `$WSGATE_ARTIFACTS` (default
`.artifacts/browser/`); they are for people to look at, nothing compares them.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def preset_script(page, pane: int) -> dict:
    """The mock script in a pane's prompt box (a preset's, until someone edits it)."""
    value = await page.locator(f"#pane-{pane}-prompt").input_value()
    return json.loads(value)["mock"]


GIF = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


def mock_content(script: dict) -> str:
    return json.dumps({"mock": script})


async def test_the_presets_stream_from_the_mock_out_of_the_box(demo, shoot):
    await demo.open()
    scripts = [await preset_script(demo.page, pane) for pane in (1, 2, 3)]
    await demo.page.click("#send-all")
    articles = demo.page.locator("article.assistant")
    await articles.nth(2).wait_for()
    ids = [await articles.nth(i).get_attribute("data-stream-id") for i in range(3)]
    await demo.wait_text(ids[0], 120)
    await shoot(demo.page, "demo-streaming")
    await demo.wait_done(ids, timeout_s=30)
    await shoot(demo.page, "demo-finished")

    markdown, tool, emoji = ids
    assert await demo.text(markdown) == scripts[0]["text"]
    md = demo.stream(markdown).locator(".md")
    for selector in ("h1", "h2", "ol li", "table td code", "pre code", "blockquote", "strong"):
        assert await md.locator(selector).count() >= 1, selector
    link = md.locator("a")
    assert await link.get_attribute("rel") == "noopener noreferrer nofollow"
    assert await link.get_attribute("target") == "_blank"

    assert await demo.finish(tool) == "tool_calls"
    [call] = await demo.tool_calls(tool)
    assert "get_weather" in call
    assert '"city": "Paris"' in call

    assert await demo.text(emoji) == scripts[2]["text"]
    for sid in ids:
        meta = await demo.stream(sid).locator(".meta").inner_text()
        assert re.search(r"TTFT \d+ ms", meta), meta
        assert re.search(r"\d+\.\d tok/s", meta), meta
    assert await demo.page.get_attribute("#connection", "data-state") == "open"
    await demo.recorder.assert_no_broken_text()


async def test_markdown_from_the_model_cannot_run_script_or_restyle_the_page(demo, console):
    # DOMPurify parses the dirty markup with DOMParser, which (in Chromium) loads its data:
    # image and applies its inline styles before the sanitiser removes them; the page's CSP
    # refuses both and says so. Those refusals are the only console errors allowed: the
    # second wall, behind the sanitiser.
    console.allow(r"^Executing inline event handler violates the following Content Security")
    console.allow(r"^Applying inline style violates the following Content Security")
    text = (
        f'Hello <img src="{GIF}" onload="window.pwned = 1">'
        ' and <b onclick="window.pwned = 2">bold</b>.\n\n'
        "<script>window.pwned = 3</script>\n\n"
        "[a link](javascript:window.pwned=4) <style>body { display: none }</style>\n\n"
        '<p style="position: fixed; inset: 0">cover</p>\n'
    )
    [sid] = await demo.start([{"text": text, "chunk": 5, "tokens_per_s": 200}])
    await demo.wait_done([sid])
    assert await demo.text(sid) == text  # the plain text is the text, tags and all
    report = await demo.page.evaluate(
        """(sel) => {
            const md = document.querySelector(sel + " .md");
            const all = [...md.querySelectorAll("*")];
            return {
                pwned: window.pwned ?? null,
                attributes: all.flatMap((el) => [...el.attributes].map((a) => a.name)),
                tags: all.map((el) => el.tagName.toLowerCase()),
                hrefs: [...md.querySelectorAll("a")].map((a) => a.getAttribute("href")),
                bodyShown: getComputedStyle(document.body).display !== "none",
            };
        }""",
        demo.stream_selector.format(sid),
    )
    assert report["pwned"] is None
    assert not [a for a in report["attributes"] if a.startswith("on") or a == "style"]
    assert "script" not in report["tags"]
    assert "style" not in report["tags"]
    assert all(h is None or not h.startswith("javascript:") for h in report["hrefs"])
    assert report["bodyShown"]


async def test_structured_sections_and_plain_text_mode_show_what_the_gateway_sent(demo, shoot):
    await demo.open()
    await demo.page.select_option("#pane-1-preset", "structured")
    script = await preset_script(demo.page, 1)
    await demo.page.locator("section.pane").nth(0).locator("button.send").click()
    article = demo.page.locator("article.assistant").first
    sid = await article.get_attribute("data-stream-id")
    await demo.wait_done([sid])
    section = demo.stream(sid).locator(".structured pre")
    assert json.loads(await section.inner_text()) == {
        "city": "Paris",
        "days": [{"day": "Mon", "high": 21}, {"day": "Tue", "high": 19}],
    }
    expected = re.sub(r"<<<JSON>>>.*<<<END>>>", "", script["text"])
    assert await demo.text(sid) == expected
    await demo.page.locator("#markdown").uncheck()
    # The section sits where it was in the answer, between the text before and after it.
    order = await demo.stream(sid).evaluate(
        "el => [...el.querySelector('.flow').children].map((c) => c.className)"
    )
    assert order == ["segment", "structured", "segment"]
    await demo.page.locator("#markdown").uncheck()
    raw = demo.stream(sid).locator(".raw")
    assert await raw.first.is_visible()
    assert not await demo.stream(sid).locator(".md").first.is_visible()
    assert "".join(await raw.all_inner_texts()) == expected
    await shoot(demo.page, "demo-plain-text")
    await demo.page.locator("#markdown").check()
    assert await demo.stream(sid).locator(".md").first.is_visible()


async def test_boxes_sit_where_they_came_in_the_answer_even_within_one_frame(demo):
    # In sentence mode the text before a box arrives just before it, in the same frame.
    script = {
        "text": 'First the text. <<<JSON>>>{"a": 1}<<<END>>> Then more text.',
        "tool_calls": [{"name": "lookup", "arguments": "{}"}],
        "tokens_per_s": 200,
    }
    [sid] = await demo.start([script], buffering="sentence")
    await demo.wait_done([sid])
    order = await demo.stream(sid).evaluate(
        "el => [...el.querySelector('.flow').children].map((c) => c.className.split(' ')[0])"
    )
    assert order == ["segment", "structured", "segment", "tool-call"]
    assert await demo.text(sid) == "First the text.  Then more text."


async def test_the_transcripts_are_logs_with_one_polite_live_region_and_readable_answers(demo):
    await demo.open()
    page = demo.page
    assert await page.locator('[aria-live="polite"]').count() == 1
    assert await page.locator("#announcer.visually-hidden").count() == 1
    transcripts = page.locator(".transcript")
    assert await transcripts.count() == 3
    for i in range(3):
        assert await transcripts.nth(i).get_attribute("role") == "log"
        assert await transcripts.nth(i).get_attribute("aria-live") == "off"
    for control in ("#buffering", "#accessible", "#markdown", "#pane-1-prompt", "#pane-1-preset"):
        label = await page.evaluate(
            "(sel) => document.querySelector(sel).labels[0]?.textContent.trim()", control
        )
        assert label, control
    [sid] = await demo.start([{"words": 60, "tokens_per_s": 100}])
    await demo.wait_text(sid, 20)
    # Not aria-busy: some screen readers withhold a busy element's content, and the partial
    # answer must stay readable while it streams (the live region does the announcing).
    assert await page.locator("[aria-busy]").count() == 0
    assert await demo.stream(sid).get_attribute("data-finish") is None
    await demo.wait_done([sid])
    assert await demo.stream(sid).get_attribute("data-finish") == "stop"
    assert await page.locator("[aria-busy]").count() == 0


async def test_streaming_never_moves_the_focus_and_everything_works_from_the_keyboard(demo):
    await demo.open()
    page = demo.page
    await page.locator("#pane-2-prompt").fill(mock_content({"words": 400, "tokens_per_s": 100}))
    await page.locator("#pane-1-prompt").fill(mock_content({"words": 400, "tokens_per_s": 100}))
    await page.focus("#pane-1-prompt")
    await page.keyboard.press("Control+Enter")  # sends pane 1
    await page.focus("#pane-2-prompt")
    await page.keyboard.press("Control+Enter")  # sends pane 2
    await page.keyboard.press("Tab")  # to pane 2's Send
    await page.keyboard.press("Tab")  # to pane 2's Stop
    focused = await page.evaluate("() => document.activeElement.className")
    assert focused == "stop"
    log = await demo.recorder.log()
    before = len(log["focus"])
    await asyncio.sleep(0.8)  # both panes stream meanwhile
    outline = await page.evaluate(
        "() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, s.outlineWidth]; }"
    )
    assert outline == ["solid", "3px"]  # the focus is visible
    await page.keyboard.press("Enter")  # Stop pane 2
    second = page.locator("section.pane").nth(1).locator("article.assistant")
    await second.locator("xpath=self::*[@data-finish]").wait_for()
    assert await second.get_attribute("data-finish") == "cancelled"
    # The Stop button stays focused (aria-disabled, not disabled) while pane 1 goes on.
    assert await page.evaluate("() => document.activeElement.className") == "stop"
    await page.focus("#pane-1-prompt")
    await page.keyboard.press("Escape")  # Escape in a prompt box stops its stream
    first = page.locator("section.pane").nth(0).locator("article.assistant")
    await first.locator("xpath=self::*[@data-finish]").wait_for()
    assert await first.get_attribute("data-finish") == "cancelled"
    log = await demo.recorder.log()
    # Focus moved only by the test's own keys: no focus event while the streams ran.
    assert len(log["focus"]) == before + 1  # the one page.focus() above


async def test_the_demo_page_in_dark_and_accessible_mode_reads_well(demo, shoot):
    page = demo.page
    await page.emulate_media(color_scheme="dark")
    await demo.open()
    await page.locator("#accessible").check()
    await page.click("#send-all")
    await page.locator("article.assistant").nth(2).wait_for()
    await asyncio.sleep(1.5)
    await shoot(page, "demo-dark-accessible")
    heard = await demo.announcements()
    assert heard, "nothing was announced"
    assert all(len(h) > 3 for h in heard)  # sentences, not tokens
    await page.click("#stop-all")
    width = await page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 1440  # no sideways scrolling
    await page.set_viewport_size({"width": 420, "height": 900})
    await shoot(page, "demo-narrow")
    width = await page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 420


async def test_a_focused_link_and_a_selection_in_the_growing_answer_survive_its_updates(demo):
    words = " ".join(f"word{i}" for i in range(300))
    text = f"See [the spec](https://example.invalid/spec) and then {words}."
    [sid] = await demo.start([{"text": text, "tokens_per_s": 100}])
    link = demo.stream(sid).locator(".md a")
    await link.wait_for()
    await link.focus()
    # Select "See" in the same (last, still growing) block.
    await demo.stream(sid).evaluate(
        """(el) => {
            const p = el.querySelector(".md p");
            const range = document.createRange();
            range.setStart(p.firstChild, 0);
            range.setEnd(p.firstChild, 3);
            getSelection().removeAllRanges();
            getSelection().addRange(range);
            window.focusedLink = document.activeElement;
        }"""
    )
    before = len(await demo.text(sid))
    await asyncio.sleep(0.6)  # dozens of updates of that block meanwhile
    state = """() => ({
        same: document.activeElement === window.focusedLink,
        connected: window.focusedLink.isConnected,
        tag: document.activeElement.tagName,
        selected: getSelection().toString(),
    })"""
    expected = {"same": True, "connected": True, "tag": "A", "selected": "See"}
    assert await demo.page.evaluate(state) == expected
    assert len(await demo.text(sid)) > before + 50  # the block really grew
    await demo.wait_done([sid])
    assert await demo.page.evaluate(state) == expected  # the final render too


async def test_clear_during_a_stream_leaves_the_history_empty(demo):
    [sid] = await demo.start([{"words": 3000, "tokens_per_s": 60}])
    await demo.wait_text(sid, 30)
    await demo.page.locator("#pane-1-title + .clear").click()
    await demo.page.wait_for_function("() => window.wsgateDemo.panes[0].stream === null")
    await asyncio.sleep(0.1)
    assert await demo.page.evaluate("() => window.wsgateDemo.panes[0].history") == []
    assert await demo.page.locator("section.pane").nth(0).locator(".msg").count() == 0


async def test_enter_in_the_model_field_does_not_submit_the_settings(demo, console):
    [sid] = await demo.start([{"words": 80, "tokens_per_s": 100}])
    url = demo.page.url
    await demo.page.locator("#model").fill("mock")
    await demo.page.locator("#model").press("Enter")
    await asyncio.sleep(0.3)
    # A submission would navigate (and end every stream); the CSP's form-action refuses it
    # and logs the refusal as an error.
    assert console.unexpected() == []
    assert demo.page.url == url
    await demo.wait_done([sid])
    assert await demo.finish(sid) == "stop"


async def test_leaving_the_page_cancels_its_open_streams(demo, app):
    tag = f"browser-pagehide-{id(demo)}"
    [sid] = await demo.start([{"words": 3000, "tokens_per_s": 60, "tag": tag}])
    await demo.wait_text(sid, 30)
    await demo.page.goto("about:blank")
    record = await app.mock.wait_disconnected(tag, timeout=5)
    assert record.completed_at is None


async def test_rendering_takes_at_most_a_quarter_of_the_main_thread_however_slow(demo):
    await demo.open()
    # A render that costs 20 ms a frame (a 100 KB answer's Markdown costs about that).
    share = await demo.page.evaluate(
        """() => new Promise((resolve) => {
            const started = performance.now();
            let busy = 0;
            const render = () => {
                const t0 = performance.now();
                while (performance.now() - t0 < 20);
                busy += performance.now() - t0;
                if (performance.now() - started < 2000) window.wsgateDemo.scheduleFrame(render);
                else resolve(busy / (performance.now() - started));
            };
            window.wsgateDemo.scheduleFrame(render);
        })"""
    )
    assert 0.1 < share <= 0.3


async def test_a_page_opened_before_the_gateway_listens_connects_by_itself(demo, shoot):
    page = demo.page
    attempts: list[bool] = []
    up = False

    async def socket(ws):
        attempts.append(up)
        if up:
            ws.connect_to_server()
        else:
            await ws.close(code=1011, reason="not listening yet")

    await page.route_web_socket(re.compile(r"/v1/ws$"), socket)
    await page.goto(f"{demo.origin}/?panes=3")
    await page.locator('#connection[data-state="closed"]').wait_for()
    assert await page.locator("#reconnect").is_visible()
    # Send on a closed Gateway: a note, no dead "Waiting…" answer, no page error.
    await page.locator("section.pane").nth(0).locator("button.send").click()
    notice = page.locator("section.pane").nth(0).locator(".notice")
    assert "not connected" in (await notice.inner_text()).lower()
    assert await page.locator("article.assistant").count() == 0
    assert await page.evaluate("() => window.wsgateDemo.panes[0].history") == []
    await shoot(page, "demo-not-connected")
    assert await page.get_attribute("section.pane:first-child button.send", "aria-disabled") in (
        None,
        "false",
    )
    tried = len(attempts)
    await page.locator("#reconnect").click()  # Reconnect tries at once
    await page.wait_for_function(
        "() => document.querySelector('#connection-text').textContent.startsWith('Not connected')"
    )
    assert len(attempts) == tried + 1
    up = True  # the gateway listens now: the page's own retry finds it
    await page.locator('#connection[data-state="open"]').wait_for(timeout=5000)
    assert not await page.locator("#reconnect").is_visible()
    [sid] = await demo.start([{"text": "back in business", "tokens_per_s": 100}])
    await demo.wait_done([sid])
    assert await demo.text(sid) == "back in business"
    assert await notice.is_hidden()
