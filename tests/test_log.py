from __future__ import annotations

import asyncio
import io
import logging
import sys
from datetime import datetime

import orjson
import pytest

from wsgate import log


@pytest.fixture
def out():
    log.reset()
    stream = io.StringIO()
    yield stream
    log.reset()


def lines(stream: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_each_event_is_one_json_line_with_timestamp_level_and_event(out):
    log.configure(stream=out)
    log.get_logger("wsgate.test").info("gateway started", port=8080)
    (line,) = lines(out)
    assert list(line)[:3] == ["timestamp", "level", "event"]
    assert line["event"] == "gateway started"
    assert line["level"] == "info"
    assert line["port"] == 8080
    assert line["logger"] == "wsgate.test"
    assert line["timestamp"].endswith("Z")
    datetime.fromisoformat(line["timestamp"])


def test_lines_below_the_configured_level_are_dropped(out):
    log.configure(level="warning", stream=out)
    logger = log.get_logger()
    logger.info("quiet")
    logger.warning("loud")
    assert [line["event"] for line in lines(out)] == ["loud"]


def test_loggers_made_before_configure_follow_it(out):
    logger = log.get_logger("early")
    log.configure(stream=out)
    logger.info("after")
    assert lines(out)[0]["logger"] == "early"


def test_configure_is_idempotent(out):
    log.configure(stream=out)
    log.configure(stream=out)
    logging.getLogger("aiohttp.client").warning("once")
    assert len(lines(out)) == 1
    handlers = [h for h in logging.getLogger().handlers if h.get_name() == "wsgate.log"]
    assert len(handlers) == 1


def test_bound_context_appears_on_every_line_inside_the_block(out):
    log.configure(stream=out)
    logger = log.get_logger()
    with log.bound(conn_id="c1"):
        logger.info("connected")
        with log.bound(stream_id="s1", message_id="m1"):
            logger.info("delta")
        logger.info("between")
    logger.info("outside")
    first, second, third, fourth = lines(out)
    assert first["conn_id"] == "c1"
    assert "stream_id" not in first
    assert (second["conn_id"], second["stream_id"], second["message_id"]) == ("c1", "s1", "m1")
    assert "stream_id" not in third
    assert "conn_id" not in fourth


def test_bind_and_unbind_add_and_remove_keys(out):
    log.configure(stream=out)
    logger = log.get_logger()
    log.bind(conn_id="c2")
    logger.info("bound")
    log.unbind("conn_id")
    logger.info("unbound")
    first, second = lines(out)
    assert first["conn_id"] == "c2"
    assert "conn_id" not in second


async def test_each_task_logs_its_own_context(out):
    log.configure(stream=out)
    logger = log.get_logger()

    async def connection(conn_id: str) -> None:
        log.bind(conn_id=conn_id)
        await asyncio.sleep(0)
        logger.info("frame", seen=conn_id)

    await asyncio.gather(connection("a"), connection("b"))
    assert all(line["conn_id"] == line["seen"] for line in lines(out))


def test_secret_keys_are_redacted_at_any_depth(out):
    log.configure(stream=out)
    credentials = dict.fromkeys(["api_key", "client_secret", "password", "refresh_token"], "v")
    log.get_logger().info(
        "upstream request",
        headers={"Authorization": "Basic abc", "Cookie": "s=1", "Accept": "text/event-stream"},
        usage={"prompt_tokens": 10, "completion_tokens": 3},
        max_tokens=256,
        **credentials,
    )
    (line,) = lines(out)
    assert line["headers"] == {
        "Authorization": "[redacted]",
        "Cookie": "[redacted]",
        "Accept": "text/event-stream",
    }
    assert all(line[key] == "[redacted]" for key in credentials)
    assert line["usage"] == {"prompt_tokens": 10, "completion_tokens": 3}
    assert line["max_tokens"] == 256


def test_token_shaped_strings_are_scrubbed_anywhere(out):
    log.configure(stream=out)
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
    log.get_logger().info(
        "retrying with Bearer abc.DEF-123 after sk-proj-0123456789abcdef",
        detail=["header was", f"Bearer {jwt}"],
        ticket=jwt,
    )
    raw = out.getvalue()
    assert "abc.DEF-123" not in raw
    assert "0123456789abcdef" not in raw
    assert "c2lnbmF0dXJl" not in raw
    (line,) = lines(out)
    assert line["event"] == "retrying with [redacted] after [redacted]"
    assert line["detail"] == ["header was", "[redacted]"]


def fail_with_key_in_message() -> None:
    raise ValueError("provider said: invalid key sk-live0123456789")


def test_exception_tracebacks_are_rendered_and_scrubbed(out):
    log.configure(stream=out)
    try:
        fail_with_key_in_message()
    except ValueError:
        log.get_logger().exception("upstream failed")
    (line,) = lines(out)
    assert "ValueError" in line["exception"]
    assert "sk-live0123456789" not in line["exception"]


def test_prompts_are_omitted_by_default(out):
    log.configure(stream=out)
    log.get_logger().info(
        "start",
        messages=[{"role": "user", "content": "my diary"}],
        request={"prompt": "p", "model": "gpt"},
        text="partial answer",
    )
    (line,) = lines(out)
    assert line["messages"] == line["text"] == "[omitted]"
    assert line["request"] == {"prompt": "[omitted]", "model": "gpt"}
    assert "my diary" not in out.getvalue()


def test_include_prompts_keeps_prompts_but_not_secrets(out):
    log.configure(stream=out, include_prompts=True)
    log.get_logger().info(
        "start", messages=[{"role": "user", "content": "hello"}], text="hi", api_key="sk-x"
    )
    (line,) = lines(out)
    assert line["messages"] == [{"role": "user", "content": "hello"}]
    assert line["text"] == "hi"
    assert line["api_key"] == "[redacted]"


def test_stdlib_warnings_go_to_the_same_stream_and_info_does_not(out):
    log.configure(level="debug", stream=out)
    with log.bound(conn_id="c9"):
        logging.getLogger("websockets.server").info("handshake details")
        logging.getLogger("aiohttp.client").warning("retry %d with Bearer %s", 2, "tok123")
    (line,) = lines(out)
    assert line["event"] == "retry 2 with [redacted]"
    assert line["level"] == "warning"
    assert line["logger"] == "aiohttp.client"
    assert line["conn_id"] == "c9"
    assert "timestamp" in line


def test_reset_removes_the_stdlib_handler(out):
    log.configure(stream=out)
    log.reset()
    logging.getLogger("aiohttp.client").warning("after reset")
    assert out.getvalue() == ""


def test_console_format_writes_readable_redacted_text(out):
    log.configure(fmt="console", stream=out)
    log.get_logger("wsgate.test").info("console line", api_key="sk-abc", text="hi")
    text = out.getvalue()
    assert "console line" in text
    assert "api_key=[redacted]" in text
    assert "text=[omitted]" in text
    assert "\x1b[" not in text


def test_configure_rejects_unknown_level_and_format(out):
    with pytest.raises(ValueError, match="log level"):
        log.configure(level="verbose", stream=out)
    with pytest.raises(ValueError, match="log format"):
        log.configure(fmt="xml", stream=out)


def test_settings_that_only_mention_tokens_stay_readable(out):
    log.configure(stream=out)
    log.get_logger().info(
        "settings",
        first_token_timeout_s=120.0,
        access_token="v",
        api_token="v",
    )
    (line,) = lines(out)
    assert line["first_token_timeout_s"] == 120.0
    assert line["access_token"] == "[redacted]"
    assert line["api_token"] == "[redacted]"


def test_the_default_stream_is_stdout_as_it_is_when_a_line_is_written(capsys, monkeypatch):
    first = io.StringIO()
    monkeypatch.setattr(sys, "stdout", first)
    log.configure()  # to stdout, whichever it is later
    first.close()  # a test runner's capture, say, closed after its test
    later = io.StringIO()
    monkeypatch.setattr(sys, "stdout", later)
    log.get_logger("wsgate.test").warning("after_the_swap")
    assert "after_the_swap" in later.getvalue()
