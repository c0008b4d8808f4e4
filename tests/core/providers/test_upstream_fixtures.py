"""Every recorded upstream fixture, for every provider kind, at any split.

`protocol/fixtures/upstream/<kind>/NAME.sse` (or `.ndjson`) is the raw body of one streaming
response of a provider of that kind; `NAME.expected.json` beside it is the list of
provider-neutral events the kind's parser (`wsgate.core.providers.make_parser`) must
produce, in the encoding documented in `protocol/fixtures/upstream/README.md`.
Each body is fed whole, one byte at a time, and cut at random places (hypothesis).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgate.core import events as ev
from wsgate.core.errors import WsgateError
from wsgate.core.providers import KIND_NAMES, make_parser

UPSTREAM_DIR = Path(__file__).parents[3] / "protocol" / "fixtures" / "upstream"
FIXTURES = sorted(
    path
    for path in UPSTREAM_DIR.glob("*/*")
    if path.suffix in {".sse", ".ndjson"} and path.is_file()
)
KINDS = sorted(path.name for path in UPSTREAM_DIR.iterdir() if path.is_dir())

TAGS = {
    ev.RoleDelta: "role",
    ev.TextDelta: "text",
    ev.ReasoningDelta: "reasoning",
    ev.ToolCallStart: "tool_call.start",
    ev.ToolCallChunk: "tool_call.chunk",
    ev.ToolCallSnapshot: "tool_call.snapshot",
    ev.ToolCallEnd: "tool_call.end",
    ev.ToolCallFailed: "tool_call.failed",
    ev.Usage: "usage",
    ev.Finish: "finish",
}


def encode_item(item):
    """A parser item as a fixture object: `{"event": tag, **fields}`."""
    if isinstance(item, WsgateError):
        return {"event": "error", "code": item.code, "message": item.public_message}
    return {"event": TAGS[type(item)], **dataclasses.asdict(item)}


def replay(kind, chunks):
    """Feed raw body chunks to a fresh parser of `kind`, then the end of the body."""
    parser = make_parser(kind, 1 << 20)
    items = [item for chunk in chunks for item in parser.feed(chunk)]
    if not any(isinstance(item, WsgateError) for item in items):
        items.extend(parser.eof())
    # Nothing may follow the first error: it ends the stream.
    for position, item in enumerate(items):
        if isinstance(item, WsgateError):
            items = items[: position + 1]
            break
    return [encode_item(item) for item in items]


def expected_for(path):
    return json.loads(path.with_name(path.stem + ".expected.json").read_text())


def test_every_fixture_directory_names_a_provider_kind_and_every_file_has_its_expectation():
    assert KINDS
    assert set(KINDS) <= set(KIND_NAMES), "a fixture directory names no provider kind"
    for path in FIXTURES:
        assert path.with_name(path.stem + ".expected.json").is_file(), path


@pytest.mark.parametrize("path", FIXTURES, ids=[f"{p.parent.name}/{p.stem}" for p in FIXTURES])
def test_a_fixture_translates_the_same_whole_and_byte_by_byte(path):
    body, expected = path.read_bytes(), expected_for(path)
    assert replay(path.parent.name, [body]) == expected
    assert replay(path.parent.name, [body[i : i + 1] for i in range(len(body))]) == expected


@settings(max_examples=200, deadline=None)
@given(path=st.sampled_from(FIXTURES), data=st.data())
def test_a_fixture_translates_the_same_at_any_split(path, data):
    body = path.read_bytes()
    cuts = sorted(data.draw(st.sets(st.integers(0, len(body)), max_size=30)))
    bounds = [0, *cuts, len(body)]
    chunks = [body[a:b] for a, b in itertools.pairwise(bounds)]
    assert replay(path.parent.name, chunks) == expected_for(path)
