"""`--direct` mode's reader (`wsgate.loadgen.direct`): the per-stream protocol fed recorded
mock answers whole, byte by byte, in random splits and cut short, and `DirectReader` against
a real mock. Which end is which: a connection that closes before the answer's framing says it
ended (inside the head, a chunk or a sized body) is `upstream_unavailable`; a body that ended
(its last chunk, its length, or the close of a read-to-close body) without `[DONE]` and a
finish reason is `upstream_protocol`."""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest

from wsgate.loadgen.config import LoadConfig
from wsgate.loadgen.direct import DirectReader, _Exchange, status_code
from wsgate.loadgen.plan import Expected, Plan
from wsgate.loadgen.runner import Runner
from wsgate.loadgen.stream import Slot, Stream

WORDS = 24
HEAD_200 = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
    b"Connection: close\r\n\r\n"
)


class FakeTransport:
    def __init__(self):
        self.written = b""
        self.closed = False

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True


class Fed:
    """What one exchange made of the bytes it was fed."""

    def __init__(self, runner, plan):
        self.runner = runner
        self.stream = Stream("s1", "t1", plan, Slot(0, 0.0), 0.0)
        self.done = asyncio.get_running_loop().create_future()
        self.transport = FakeTransport()
        self.exchange = _Exchange(runner, self.stream, b"POST", self.done)
        self.exchange.connection_made(self.transport)

    def feed(self, pieces, *, lost=None):
        # A closed transport delivers nothing more; connection_lost always comes once.
        for piece in pieces:
            if self.transport.closed:
                break
            self.exchange.data_received(piece)
        self.exchange.connection_lost(lost)
        return self

    @property
    def outcome(self):
        return self.done.result()

    @property
    def text(self):
        return "".join(self.stream.pieces)


def new_runner(base_url="http://127.0.0.1:9/v1", **knobs):
    config = {"words": WORDS, "tokens_per_s": 2000.0, "ttft_ms": 0.0, "progress": False}
    return Runner(LoadConfig(direct=base_url, **{**config, **knobs}))


def normal_plan(runner, cancel_after=None):
    plan = runner.planner.plan("t1")
    return Plan("normal", plan.script, plan.expected, plan.outcomes, cancel_after)


def scripted_plan(script):
    return Plan("scripted", script, Expected.of([]), frozenset())


async def record(reader, plan):
    """The bytes the mock answers to `plan`'s request, up to its close."""
    read, write = await asyncio.open_connection(reader.host, reader.port)
    write.write(reader.request(Stream("s0", "t0", plan, Slot(0, 0.0), 0.0)))
    answer = await read.read()
    write.close()
    await write.wait_closed()
    return answer


def chunked(*events):
    body = b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in events)
    return HEAD_200 + body + b"0\r\n\r\n"


def sse(delta=None, reason=None, **extra):
    choice = {"index": 0, "delta": {"content": delta} if delta else {}, "finish_reason": reason}
    return b"data: " + orjson.dumps({"choices": [choice], **extra}) + b"\n\n"


def chunk_by_chunk(answer):
    """The head, then each HTTP chunk in its own piece: how the mock's paced tokens arrive."""
    pos = answer.index(b"\r\n\r\n") + 4
    pieces = [answer[:pos]]
    while pos < len(answer):
        eol = answer.index(b"\r\n", pos)
        end = eol + 2 + int(answer[pos:eol], 16) + 2
        pieces.append(answer[pos:end])
        pos = end
    return pieces


def random_splits(data, rng):
    cuts = sorted(rng.sample(range(1, len(data)), rng.randrange(1, 40)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@pytest.mark.parametrize("paced", [True, False], ids=["one-chunk-per-token", "burst"])
async def test_exchange_decodes_a_recorded_mock_answer_the_same_however_its_bytes_are_split(
    mock, paced
):
    runner = new_runner(mock.base_url, tokens_per_s=2000.0 if paced else 0.0)
    plan = normal_plan(runner)
    answer = await record(DirectReader(runner, mock.base_url), plan)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    rng = random.Random(7)
    splits = {
        "whole": [answer],
        "chunk by chunk": chunk_by_chunk(answer),
        "byte by byte": [answer[i : i + 1] for i in range(len(answer))],
        "with a suffix": [answer + b"HTTP/1.1 400 trailing garbage\r\n\r\n"],
    }
    splits.update({f"random {n}": random_splits(answer, rng) for n in range(60)})
    body_bytes = set()
    for name, pieces in splits.items():
        fed = Fed(new_runner(), plan).feed(pieces)
        assert fed.outcome == "stop", name
        assert fed.text == plan.expected.text, name
        assert len(fed.stream.recv) == len(plan.expected.ends) == WORDS, name
        assert fed.runner.frames == WORDS, name
        assert fed.runner.tokens == WORDS, name
        assert fed.transport.closed, name
        body_bytes.add(fed.runner.bytes)
    assert len(body_bytes) == 1


@pytest.mark.parametrize(
    ("status", "code"),
    [(500, "upstream_error"), (503, "upstream_error"), (429, "upstream_rate_limited"),
     (400, "upstream_rejected"), (413, "upstream_rejected")],
)  # fmt: skip
@pytest.mark.parametrize("framing", ["content-length", "chunked", "read-to-close"])
async def test_exchange_maps_a_non_200_status_to_its_error_code_whatever_the_framing(
    status, code, framing
):
    body = b'{"error":{"message":"no","type":"server_error"}}'
    head = f"HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\n"
    if framing == "content-length":
        answer = f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    elif framing == "chunked":
        answer = f"{head}Transfer-Encoding: chunked\r\n\r\n".encode()
        answer += b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
    else:
        answer = f"{head}\r\n".encode() + body
    assert status_code(status) == code
    for pieces in ([answer], [answer[i : i + 1] for i in range(len(answer))]):
        runner = new_runner()
        fed = Fed(runner, normal_plan(runner)).feed(pieces)
        assert fed.outcome == f"error:{code}"
        assert fed.text == ""
        assert runner.bytes == runner.frames == 0
        assert fed.transport.closed or framing == "read-to-close"


async def test_exchange_ends_a_sized_non_200_answer_at_its_length_without_waiting_for_close():
    answer = b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\n{}"
    runner = new_runner()
    fed = Fed(runner, normal_plan(runner))
    fed.exchange.data_received(answer)
    assert fed.done.result() == "error:upstream_error"
    assert fed.transport.closed


async def test_exchange_skips_an_interim_1xx_head():
    runner = new_runner()
    answer = b"HTTP/1.1 100 Continue\r\n\r\n" + chunked(sse("Hi", "stop"), b"data: [DONE]\n\n")
    assert Fed(runner, normal_plan(runner)).feed([answer]).outcome == "stop"


async def test_exchange_reports_upstream_unavailable_when_the_connection_closes_mid_answer(mock):
    runner = new_runner(mock.base_url)
    plan = normal_plan(runner)
    answer = await record(DirectReader(runner, mock.base_url), plan)
    body_at = answer.index(b"\r\n\r\n") + 4
    cuts = {
        "before any byte": 0,
        "inside the head": body_at // 2,
        "after the head": body_at,
        "inside a chunk": body_at + 40,
        "after [DONE], before the last chunk": answer.rindex(b"0\r\n\r\n"),
        "inside the last chunk's size line": len(answer) - 4,
    }
    for name, cut in cuts.items():
        for lost in (None, ConnectionResetError("reset")):
            fed = Fed(new_runner(), plan).feed([answer[:cut]], lost=lost)
            assert fed.outcome == "error:upstream_unavailable", name


async def test_exchange_reports_upstream_unavailable_when_a_sized_200_body_is_cut_short():
    body = sse("Hi", "stop") + b"data: [DONE]\n\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    runner = new_runner()
    fed = Fed(runner, normal_plan(runner)).feed([head + body[:-1]])
    assert fed.outcome == "error:upstream_unavailable"
    assert fed.text == "Hi"
    whole = Fed(new_runner(), normal_plan(runner)).feed([head + body])
    assert whole.outcome == "stop"


async def test_exchange_reads_a_read_to_close_200_body_up_to_the_close():
    events = sse("Hi", "stop") + b"data: [DONE]\n\n"
    runner = new_runner()
    fed = Fed(runner, normal_plan(runner)).feed([b"HTTP/1.1 200 OK\r\n\r\n", events])
    assert fed.outcome == "stop"
    assert fed.text == "Hi"


async def test_exchange_reports_upstream_protocol_when_a_read_to_close_body_ends_without_done():
    runner = new_runner()
    fed = Fed(runner, normal_plan(runner)).feed([b"HTTP/1.1 200 OK\r\n\r\n", sse("Hi", "stop")])
    assert fed.outcome == "error:upstream_protocol"
    assert fed.text == "Hi"


async def test_exchange_reports_upstream_protocol_when_a_complete_chunked_body_lacks_done():
    runner = new_runner()
    fed = Fed(runner, normal_plan(runner)).feed([chunked(sse("Cut"), sse(" short", "stop"))])
    assert fed.outcome == "error:upstream_protocol"
    assert fed.text == "Cut short"
    assert fed.transport.closed


async def test_exchange_reports_upstream_protocol_for_done_without_a_finish_reason():
    runner = new_runner()
    answer = chunked(sse("Cut"), sse(" short"), b"data: [DONE]\n\n")
    assert Fed(runner, normal_plan(runner)).feed([answer]).outcome == "error:upstream_protocol"


async def test_exchange_reports_upstream_error_for_an_error_chunk_even_with_done_and_a_reason():
    runner = new_runner()
    error = b'data: {"error":{"message":"overloaded","type":"server_error"}}\n\n'
    answer = chunked(sse("Partial"), error, sse(None, "stop"), b"data: [DONE]\n\n")
    fed = Fed(runner, normal_plan(runner)).feed([answer])
    assert fed.outcome == "error:upstream_error"
    assert fed.text == "Partial"


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 abc Nope\r\n\r\n",
        HEAD_200 + b"zz\r\n",
        HEAD_200 + b"-5\r\nhello\r\n",
        chunked(b"data: {not json\n\n"),
        chunked(b'data: ["a list"]\n\n'),
    ],
    ids=["not-http", "bad-status", "bad-chunk-size", "negative-chunk-size", "bad-json", "list"],
)
async def test_exchange_reports_upstream_protocol_for_bytes_that_are_not_http_and_sse(answer):
    runner = new_runner()
    fed = Fed(runner, normal_plan(runner)).feed([answer])
    assert fed.outcome == "error:upstream_protocol"
    assert fed.transport.closed


async def test_exchange_cancels_once_its_plan_says_and_closes_the_socket(mock):
    runner = new_runner(mock.base_url)
    answer = await record(DirectReader(runner, mock.base_url), normal_plan(runner))
    for after in (0, 1, 5):
        plan = normal_plan(runner, cancel_after=after)
        fed = Fed(new_runner(), plan).feed([answer[i : i + 1] for i in range(len(answer))])
        assert fed.outcome == "cancelled"
        assert fed.stream.cancel_at > 0
        assert len(fed.stream.recv) == after
        assert fed.transport.closed


async def test_exchange_sends_its_request_when_connected():
    runner = new_runner()
    fed = Fed(runner, normal_plan(runner))
    assert fed.transport.written == b"POST"


async def test_direct_reader_posts_to_the_base_path_and_reads_a_mock_answer_to_stop(mock):
    runner = new_runner(mock.base_url)
    reader = DirectReader(runner, mock.base_url)
    request = reader.request(Stream("s0", "t0", normal_plan(runner), Slot(0, 0.0), 0.0))
    assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{mock.port}\r\n".encode() in request
    plan = normal_plan(runner)
    stream = Stream("s1", plan.script["tag"], plan, Slot(0, 0.0), 0.0)
    runner.live[stream.sid] = stream
    await reader.stream(stream)
    assert stream.outcome == "stop"
    assert runner.tally.checks["verified"] == 1  # the text, byte for byte (pieces are freed)
    assert len(stream.recv) == WORDS
    assert not runner.errors
    assert mock.find(plan.script["tag"]) is not None
    await reader.close()


@pytest.mark.parametrize(
    ("script", "code"),
    [({"words": 6, "truncate_after": 2}, "upstream_unavailable"),
     ({"words": 6, "status": 429, "retry_after": 1}, "upstream_rate_limited"),
     ({"words": 6, "error_after": 2}, "upstream_error")],
)  # fmt: skip
async def test_direct_reader_ends_a_failing_mock_answer_with_its_error_code(mock, script, code):
    runner = new_runner(mock.base_url)
    plan = scripted_plan({**script, "tag": "t1"})
    stream = Stream("s1", "t1", plan, Slot(0, 0.0), 0.0)
    await DirectReader(runner, mock.base_url).stream(stream)
    assert stream.outcome == f"error:{code}"
    assert runner.errors == {code: 1}


async def test_direct_reader_reports_a_refused_connection_as_upstream_unavailable(mock):
    base_url = mock.base_url
    await mock.stop()
    runner = new_runner(base_url)
    stream = Stream("s1", "t1", normal_plan(runner), Slot(0, 0.0), 0.0)
    await DirectReader(runner, base_url).stream(stream)
    assert stream.outcome == "error:upstream_unavailable"
    assert runner.errors == {"upstream_unavailable": 1}


async def test_direct_reader_closes_the_socket_when_its_task_is_cancelled(mock):
    runner = new_runner(mock.base_url, tokens_per_s=5.0)
    plan = normal_plan(runner)
    stream = Stream("s1", "t1", plan, Slot(0, 0.0), 0.0)
    first_token = asyncio.Event()
    runner.delivered = lambda _tokens: first_token.set()
    task = asyncio.create_task(DirectReader(runner, mock.base_url).stream(stream))
    await asyncio.wait_for(first_token.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    record_ = await mock.wait_disconnected(plan.script["tag"], timeout=5)
    assert record_.completed_at is None
    assert stream.outcome == ""
