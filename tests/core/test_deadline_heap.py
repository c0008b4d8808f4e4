"""The lazily re-armed deadlines behind the loop's one read timer (`core/deadlines.py`)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wsgate.core.deadlines import STALE_SLACK, Deadlines


def test_a_deadline_moved_later_costs_no_heap_entry_and_is_reported_at_its_new_time():
    deadlines: Deadlines[str] = Deadlines()
    assert deadlines.set("a", 10.0)  # the first entry: arm the timer
    for t in range(11, 100):
        assert not deadlines.set("a", float(t))  # a read: no re-arm
    assert len(deadlines._heap) == 1
    assert deadlines.next_due() == 10.0
    assert deadlines.expired(10.0) == []  # moved on: pushed again at 99
    assert deadlines.next_due() == 99.0
    assert deadlines.expired(99.0) == ["a"]
    assert len(deadlines) == 0


def test_an_earlier_deadline_than_the_armed_one_asks_for_a_re_arm():
    deadlines: Deadlines[str] = Deadlines()
    deadlines.set("a", 60.0)
    assert deadlines.set("a", 5.0)
    assert deadlines.next_due() == 5.0
    assert deadlines.expired(5.0) == ["a"]
    assert deadlines.expired(60.0) == []  # the older entry is stale: not reported twice


def test_an_unset_key_is_not_reported_and_may_be_set_again():
    deadlines: Deadlines[str] = Deadlines()
    deadlines.set("a", 1.0)
    deadlines.unset("a")
    assert deadlines.expired(2.0) == []
    deadlines.set("a", 3.0)
    assert deadlines.expired(3.0) == ["a"]


def test_removed_keys_leave_the_heap_bounded_by_twice_the_live_keys_and_the_slack():
    deadlines: Deadlines[int] = Deadlines()
    deadlines.set(-1, 1e9)
    for key in range(10_000):
        deadlines.set(key, 100.0 + key)
        deadlines.remove(key)
    assert len(deadlines) == 1
    assert len(deadlines._heap) <= 2 * 1 + STALE_SLACK + 1
    assert deadlines.expired(1e9) == [-1]


def test_ties_are_reported_in_the_order_they_were_set_and_keys_are_never_compared():
    deadlines: Deadlines[object] = Deadlines()
    first, second = object(), object()
    deadlines.set(first, 1.0)
    deadlines.set(second, 1.0)
    assert deadlines.expired(1.0) == [first, second]


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.sampled_from("abcd"), st.floats(0, 50)),
        st.tuples(st.just("unset"), st.sampled_from("abcd"), st.just(0.0)),
        st.tuples(st.just("remove"), st.sampled_from("abcd"), st.just(0.0)),
        st.tuples(st.just("tick"), st.just(""), st.floats(0, 5)),
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(OPS)
def test_every_key_is_reported_once_exactly_when_its_last_deadline_passes(ops):
    deadlines: Deadlines[str] = Deadlines()
    model: dict[str, float] = {}
    now = 0.0
    for op, key, value in ops:
        if op == "set":
            due = now + value
            deadlines.set(key, due)
            model[key] = due
        elif op in ("unset", "remove"):
            getattr(deadlines, op)(key)
            model.pop(key, None)
        else:
            now += value
            expected = sorted(k for k, due in model.items() if due <= now)
            assert sorted(deadlines.expired(now)) == expected
            for k in expected:
                del model[k]
        assert len(deadlines) == len(model)
        if model:  # never late: the timer's next time is at or before every live deadline
            next_due = deadlines.next_due()
            assert next_due is not None
            assert next_due <= min(model.values())
        assert len(deadlines._heap) <= 2 * len(deadlines._armed) + STALE_SLACK
