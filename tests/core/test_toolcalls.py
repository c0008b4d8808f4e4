"""ToolCallAccumulator: one start and exactly one end per call, whatever the fragmentation."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgate.core.errors import UpstreamProtocolError
from wsgate.core.toolcalls import (
    NO_NAME,
    NOT_JSON,
    ArgumentsChunk,
    Ended,
    Failed,
    Snapshot,
    Started,
    ToolCallAccumulator,
    ToolCallFragment,
    parse_json,
)
from wsgate.core.utf8 import has_lone_surrogate

HIGH, LOW, GRIN = "\ud83d", "\ude00", "\U0001f600"


def frag(index=None, call_id=None, name=None, arguments=""):
    return ToolCallFragment(index, call_id, name, arguments)


def run(fragments, **options):
    acc = ToolCallAccumulator(**options)
    out = [item for fragment in fragments for item in acc.feed(fragment)]
    return out + acc.finish()


def test_openai_shape_starts_streams_chunks_and_ends_with_parsed_arguments():
    out = run(
        [
            frag(0, "call_a", "get_weather", ""),
            frag(0, arguments='{"city": '),
            frag(0, arguments='"Paris"}'),
        ]
    )
    assert out == [
        Started("call_a", 0, "get_weather"),
        ArgumentsChunk("call_a", '{"city": '),
        ArgumentsChunk("call_a", '"Paris"}'),
        Ended("call_a", "get_weather", {"city": "Paris"}),
    ]


def test_arguments_seen_before_the_name_follow_the_start_as_one_chunk():
    out = run([frag(0, arguments='{"a"'), frag(0, arguments=": 1"), frag(0, "c1", "f", "}")])
    assert out == [
        Started("c1", 0, "f"),
        ArgumentsChunk("c1", '{"a": 1}'),
        Ended("c1", "f", {"a": 1}),
    ]


@pytest.mark.parametrize("arguments", ["", "   ", "\n"])
def test_empty_arguments_end_as_an_empty_object(arguments):
    assert run([frag(0, "c1", "now", arguments)])[-1] == Ended("c1", "now", {})


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ('{"a": 1', NOT_JSON),
        ('{"a": 1}}', NOT_JSON),
        ('{"a": NaN}', NOT_JSON),
        ("{'a': 1}", NOT_JSON),
        ("[" * 5000 + "]" * 5000, NOT_JSON),
    ],
)
def test_arguments_that_never_parse_fail_with_the_raw_text(arguments, reason):
    out = run([frag(0, "c1", "f"), frag(0, arguments=arguments)])
    assert out[-1] == Failed("c1", "f", arguments, reason)
    assert not any(isinstance(item, Ended) for item in out)


def test_a_call_that_never_gets_a_name_fails_without_a_start():
    out = run([frag(0, "c1", None, '{"a": 1}')])
    assert out == [Failed("c1", None, '{"a": 1}', NO_NAME)]


def test_over_the_cap_a_call_fails_at_once_and_ignores_later_fragments():
    acc = ToolCallAccumulator(max_argument_bytes=10)
    assert acc.feed(frag(0, "c1", "f", '{"a": "')) == [
        Started("c1", 0, "f"),
        ArgumentsChunk("c1", '{"a": "'),
    ]
    assert acc.feed(frag(0, arguments="éééé")) == [
        Failed("c1", "f", '{"a": "é', "arguments exceed 10 bytes")
    ]
    assert acc.feed(frag(0, arguments='"}')) == []
    assert acc.feed(frag(None, "c1", arguments="x")) == []
    assert acc.finish() == []


def test_the_cap_counts_text_held_before_the_start():
    out = run([frag(0, arguments="x" * 11), frag(0, "c1", "f")], max_argument_bytes=10)
    assert out == [Failed("call_0", None, "x" * 10, "arguments exceed 10 bytes")]


def test_a_surrogate_pair_split_across_fragments_is_joined_before_streaming_and_parsing():
    out = run([frag(0, "c1", "f", '{"e": "' + HIGH), frag(0, arguments=LOW + '"}')])
    assert out == [
        Started("c1", 0, "f"),
        ArgumentsChunk("c1", '{"e": "'),
        ArgumentsChunk("c1", GRIN + '"}'),
        Ended("c1", "f", {"e": GRIN}),
    ]


def test_a_lone_high_surrogate_at_the_end_becomes_a_replacement_character():
    out = run([frag(0, "c1", "f", '{"e": "x' + HIGH)])
    assert out[-2:] == [
        ArgumentsChunk("c1", "\ufffd"),
        Failed("c1", "f", '{"e": "x\ufffd', NOT_JSON),
    ]


def test_an_escaped_lone_surrogate_in_the_arguments_parses_as_a_replacement_character():
    out = run([frag(0, "c1", "f", r'{"e": "\ud83d", "\udc00k": 1}')])
    assert out[-1] == Ended("c1", "f", {"e": "\ufffd", "\ufffdk": 1})


def test_parallel_calls_interleaved_by_index_end_in_index_order():
    out = run(
        [
            frag(1, "b", "g", ""),
            frag(0, "a", "f", ""),
            frag(1, arguments='{"y": 2}'),
            frag(0, arguments='{"x": 1}'),
        ],
        stream_arguments=False,
    )
    assert out == [
        Started("b", 1, "g"),
        Started("a", 0, "f"),
        Ended("a", "f", {"x": 1}),
        Ended("b", "g", {"y": 2}),
    ]


def test_without_an_index_fragments_find_their_call_by_id():
    out = run(
        [
            frag(None, "a", "f", '{"x":'),
            frag(None, "b", "g", '{"y":'),
            frag(None, "a", None, "1}"),
            frag(None, "b", None, "2}"),
        ],
        stream_arguments=False,
    )
    assert out == [
        Started("a", 0, "f"),
        Started("b", 1, "g"),
        Ended("a", "f", {"x": 1}),
        Ended("b", "g", {"y": 2}),
    ]


def test_without_index_or_id_a_fragment_goes_to_the_call_of_the_previous_fragment():
    out = run(
        [
            frag(None, "a", "f"),
            frag(None, arguments='{"x": 1}'),
            frag(None, "b", "g"),
            frag(None, arguments='{"y": 2}'),
        ],
        stream_arguments=False,
    )
    assert [item for item in out if isinstance(item, Ended)] == [
        Ended("a", "f", {"x": 1}),
        Ended("b", "g", {"y": 2}),
    ]


def test_a_server_that_reuses_index_zero_with_new_ids_gets_one_call_per_id():
    out = run(
        [
            frag(0, "a", "f", '{"x": 1}'),
            frag(0, "b", "g", ""),
            frag(0, arguments='{"y": 2}'),
        ],
        stream_arguments=False,
    )
    assert out == [
        Started("a", 0, "f"),
        Started("b", 1, "g"),
        Ended("a", "f", {"x": 1}),
        Ended("b", "g", {"y": 2}),
    ]


def test_calls_without_provider_ids_get_stable_synthesized_ids_that_do_not_collide():
    out = run(
        [frag(1, "call_0", "f", "{}"), frag(0, None, "g", "{}")],
        stream_arguments=False,
    )
    assert out == [
        Started("call_0", 1, "f"),
        Started("call_0_2", 0, "g"),
        Ended("call_0_2", "g", {}),
        Ended("call_0", "f", {}),
    ]


def test_two_calls_the_provider_gave_one_id_get_distinct_ids():
    out = run(
        [frag(0, "dup", "f", "{}"), frag(1, "dup", "g", "{}")],
        stream_arguments=False,
    )
    assert out == [
        Started("dup", 0, "f"),
        Started("dup_2", 1, "g"),
        Ended("dup", "f", {}),
        Ended("dup_2", "g", {}),
    ]


def test_an_id_that_arrives_after_the_start_does_not_rename_the_call():
    out = run([frag(0, None, "f", "{"), frag(0, "late", None, "}")])
    assert out[0] == Started("call_0", 0, "f")
    assert out[-1] == Ended("call_0", "f", {})


def test_anthropic_shape_ends_each_block_when_it_stops():
    acc = ToolCallAccumulator()
    assert acc.feed(frag(1, "toolu_1", "search", "")) == [Started("toolu_1", 1, "search")]
    assert acc.feed(frag(1, None, None, '{"q": "x"}')) == [ArgumentsChunk("toolu_1", '{"q": "x"}')]
    assert acc.end_call(index=1) == [Ended("toolu_1", "search", {"q": "x"})]
    assert acc.end_call(index=1) == []
    assert acc.end_call(index=7) == []
    assert acc.feed(frag(2, "toolu_2", "fetch", "{}")) == [
        Started("toolu_2", 2, "fetch"),
        ArgumentsChunk("toolu_2", "{}"),
    ]
    assert acc.finish() == [Ended("toolu_2", "fetch", {})]
    assert acc.finish() == []


def test_a_fragment_for_an_ended_call_is_a_protocol_error():
    acc = ToolCallAccumulator()
    acc.feed(frag(0, "a", "f", "{}"))
    acc.end_call(call_id="a")
    with pytest.raises(UpstreamProtocolError):
        acc.feed(frag(0, arguments="x"))


def test_a_fragment_without_argument_text_for_an_ended_call_is_ignored():
    acc = ToolCallAccumulator()
    acc.feed(frag(0, "a", "f", "{}"))
    assert acc.finish() == [Ended("a", "f", {})]
    assert acc.feed(frag(0, "a", "f", "")) == []


def test_a_fragment_that_would_open_a_call_after_finish_is_a_protocol_error():
    acc = ToolCallAccumulator()
    acc.feed(frag(0, "a", "f", "{}"))
    acc.finish()
    with pytest.raises(UpstreamProtocolError):
        acc.feed(frag(1, "b", "g", "{}"))


def test_has_calls_tells_whether_any_fragment_arrived():
    acc = ToolCallAccumulator()
    assert acc.has_calls is False
    acc.feed(frag(0, "a"))
    assert acc.has_calls is True


def test_snapshots_show_partially_parsed_arguments_as_they_grow():
    pieces = ['{"city": "Pa', 'ris", "days": [1', ", 2", "]}"]
    out = run([frag(0, "c1", "f"), *[frag(0, arguments=p) for p in pieces]], snapshot_min_bytes=1,
              snapshots=True, stream_arguments=False)  # fmt: skip
    assert [item.partial for item in out if isinstance(item, Snapshot)] == [
        {"city": "Pa"},
        {"city": "Paris", "days": [1]},
        {"city": "Paris", "days": [1, 2]},
    ]
    assert out[-1] == Ended("c1", "f", {"city": "Paris", "days": [1, 2]})


def test_snapshots_wait_for_min_bytes_then_for_geometric_growth():
    acc = ToolCallAccumulator(snapshots=True, snapshot_min_bytes=64, stream_arguments=False)
    acc.feed(frag(0, "c1", "f", '{"text": "'))
    snapshots = []
    for _ in range(20_000):  # 100 kB in 5-byte fragments
        snapshots += acc.feed(frag(0, arguments="abcde"))
    assert 10 < len(snapshots) < 100  # every fragment would be 20 000 parses, O(n^2)
    assert snapshots[-1].partial["text"].startswith("abcde")
    assert acc.finish()[-1].reason == NOT_JSON


def test_parse_json_is_strict_and_never_returns_lone_surrogates():
    assert parse_json('{"a": [1, 2.5, null, true]}') == {"a": [1, 2.5, None, True]}
    assert parse_json(r'["\ud83d\ude00", "\ude00"]') == [GRIN, "\ufffd"]
    for bad in ["NaN", "Infinity", "{", "", "[1,]"]:
        with pytest.raises(ValueError):
            parse_json(bad)


@pytest.mark.parametrize(
    "options",
    [{"snapshot_min_bytes": 0}, {"max_argument_bytes": -1}],
)
def test_accumulator_rejects_nonsense_limits(options):
    with pytest.raises(ValueError):
        ToolCallAccumulator(**options)


# --- properties ---------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(alphabet=st.sampled_from('ab "\\é\n' + GRIN), max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(alphabet="xyz" + GRIN, max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
SHAPES = ["indexed", "indexed_no_id", "id_each", "id_runs"]


def utf16_units(text):
    """The text with each astral character written as two surrogate code points."""
    return "".join(
        chr(0xD800 + ((ord(c) - 0x10000) >> 10)) + chr(0xDC00 + ((ord(c) - 0x10000) & 0x3FF))
        if ord(c) > 0xFFFF
        else c
        for c in text
    )


@st.composite
def turns(draw):
    """1-4 calls, their argument text cut anywhere (even inside a surrogate pair), interleaved."""
    count = draw(st.integers(1, 4))
    shape = draw(st.sampled_from(SHAPES))
    calls = []
    for number in range(count):
        value = draw(st.dictionaries(st.text(max_size=3), JSON_VALUES, max_size=3))
        text = json.dumps(value, ensure_ascii=draw(st.booleans()))
        units = utf16_units(text)
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(units) - 1)), max_size=6)))
        pieces = [units[a:b] for a, b in zip([0, *cuts], [*cuts, len(units)], strict=True)]
        name_first = draw(st.booleans()) or shape != "indexed"
        calls.append((number, f"id{number}", f"fn{number}", value, text, pieces, name_first))
    queues = [[(i, piece) for piece in call[5]] for i, call in enumerate(calls)]
    fragments, previous = [], None
    first = [True] * count
    while any(queues):
        which = draw(st.sampled_from([i for i, queue in enumerate(queues) if queue]))
        _, piece = queues[which].pop(0)
        number, call_id, name, *_, name_first = calls[which]
        is_first, is_last = first[which], not queues[which]
        first[which] = False
        give_name = (is_first and name_first) or (is_last and not name_first)
        fragments.append(
            frag(
                index=number if shape.startswith("indexed") else None,
                call_id={
                    "indexed": call_id if is_first else None,
                    "indexed_no_id": None,
                    "id_each": call_id,
                    "id_runs": call_id if previous != which else None,
                }[shape],
                name=name if give_name else None,
                arguments=piece,
            )
        )
        previous = which
    return shape, calls, fragments


@settings(max_examples=150, deadline=None)
@given(turn=turns(), stream_arguments=st.booleans())
def test_every_call_starts_once_and_ends_once_with_its_arguments(turn, stream_arguments):
    shape, calls, fragments = turn
    out = run(fragments, stream_arguments=stream_arguments)
    by_call = {}
    for item in out:
        by_call.setdefault(item.call_id, []).append(item)
    # Without an index, calls are numbered in the order they first appear.
    appearance = list(dict.fromkeys(f.call_id for f in fragments if f.call_id))
    assert len(by_call) == len(calls)
    for number, call_id, name, value, text, _, _ in calls:
        emitted_id = f"call_{number}" if shape == "indexed_no_id" else call_id
        index = number if shape.startswith("indexed") else appearance.index(call_id)
        items = by_call[emitted_id]
        assert items[0] == Started(emitted_id, index, name)
        assert items[-1] == Ended(emitted_id, name, value)
        assert sum(isinstance(item, (Started, Ended, Failed)) for item in items) == 2
        chunks = [item.chunk for item in items[1:-1]]
        assert all(not has_lone_surrogate(chunk) for chunk in chunks)
        assert "".join(chunks) == (text if stream_arguments else "")


@settings(max_examples=50, deadline=None)
@given(turn=turns(), min_bytes=st.integers(1, 8))
def test_snapshots_add_events_without_changing_the_others(turn, min_bytes):
    _, _, fragments = turn
    plain = run(fragments)
    with_snapshots = run(fragments, snapshots=True, snapshot_min_bytes=min_bytes)
    assert [item for item in with_snapshots if not isinstance(item, Snapshot)] == plain
