"""The GCRA arithmetic of `core/ratelimit.py`: exact bursts, spacing, retry times, debts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgate.core.ratelimit import Verdict, debit, gcra, interval

NOW = 1000.0


def burst(per_minute: int, calls: int, now: float = NOW, cost: float = 1.0):
    """`calls` calls at one instant from a fresh key: the TAT and every verdict."""
    tat: float | None = None
    verdicts: list[Verdict] = []
    for _ in range(calls):
        tat, verdict = gcra(tat, now, per_minute, cost)
        verdicts.append(verdict)
    return tat, verdicts


@pytest.mark.parametrize("per_minute", [1, 7, 13, 50, 60, 1000, 100_000])
def test_a_fresh_key_may_spend_exactly_its_per_minute_at_once(per_minute: int) -> None:
    _, verdicts = burst(per_minute, per_minute + 3)
    assert [v.allowed for v in verdicts] == [True] * per_minute + [False] * 3


def test_the_remaining_count_goes_down_by_one_per_call() -> None:
    _, verdicts = burst(5, 6)
    assert [v.remaining for v in verdicts] == [4, 3, 2, 1, 0, 0]


@pytest.mark.parametrize("now", [0.0, 1000.0, 3.5e8])
def test_after_the_burst_one_call_passes_every_interval(now: float) -> None:
    per_minute = 7
    tat, _ = burst(per_minute, per_minute, now)
    step = interval(per_minute)
    for n in range(1, 20):
        early = now + n * step - 0.001
        assert not gcra(tat, early, per_minute)[1].allowed
        tat, verdict = gcra(tat, now + n * step, per_minute)
        assert verdict.allowed
        assert verdict.remaining == 0


def test_a_refusal_says_exactly_when_to_retry() -> None:
    tat, verdicts = burst(60, 61)  # one per second after the burst
    assert verdicts[-1] == Verdict(allowed=False, retry_after_ms=1000, remaining=0)
    assert gcra(tat, NOW + 0.25, 60)[1].retry_after_ms == 750
    assert gcra(tat, NOW + 0.9999, 60)[1].retry_after_ms == 1  # never 0 while refused
    tat, verdicts = burst(50, 51)
    assert verdicts[-1].retry_after_ms == 1200


def test_a_refusal_spends_nothing() -> None:
    tat, _ = burst(10, 10)
    again, verdict = gcra(tat, NOW, 10)
    assert not verdict.allowed
    assert again == tat


def test_a_retry_after_retry_after_ms_is_admitted() -> None:
    for per_minute in (3, 7, 50, 999):
        tat, verdicts = burst(per_minute, per_minute + 1)
        wait = verdicts[-1].retry_after_ms / 1000
        assert gcra(tat, NOW + wait, per_minute)[1].allowed
        assert not gcra(tat, NOW + wait - 0.002, per_minute)[1].allowed


def test_fractional_costs_fit_the_burst_exactly() -> None:
    _, verdicts = burst(10, 41, cost=0.25)
    assert [v.allowed for v in verdicts] == [True] * 40 + [False]
    _, verdicts = burst(7, 15, cost=0.5)
    assert sum(v.allowed for v in verdicts) == 14


def test_a_cost_above_one_spends_that_many_calls() -> None:
    tat, verdict = gcra(None, NOW, 100, 60)
    assert (verdict.allowed, verdict.remaining) == (True, 40)
    tat, verdict = gcra(tat, NOW, 100, 40)
    assert (verdict.allowed, verdict.remaining) == (True, 0)
    _, verdict = gcra(tat, NOW, 100, 1)
    assert (verdict.allowed, verdict.retry_after_ms) == (False, 600)


def test_a_cost_too_big_for_its_budget_is_refused_when_it_does_not_fit() -> None:
    tat, verdict = gcra(None, NOW, 100, 30)
    _, verdict = gcra(tat, NOW, 100, 80)
    assert (verdict.allowed, verdict.retry_after_ms) == (False, 6000)  # 10 calls of 0.6 s


def test_a_cost_above_the_whole_burst_runs_only_into_a_full_bucket() -> None:
    tat, verdict = gcra(None, NOW, 10, 25)  # more than a minute's worth
    assert verdict.allowed
    assert tat == pytest.approx(NOW + 25 * 6)
    _, verdict = gcra(tat, NOW + 60, 10, 25)
    assert (verdict.allowed, verdict.retry_after_ms) == (False, 90_000)  # until it is full


def test_a_debit_may_push_the_balance_negative_and_takes_wait_until_it_is_repaid() -> None:
    per_minute = 60  # one a second
    tat, _ = burst(per_minute, 10)
    tat = debit(tat, NOW, per_minute, 100)  # 110 spent of 60: 50 owed
    _, verdict = gcra(tat, NOW, per_minute)
    assert (verdict.allowed, verdict.retry_after_ms, verdict.remaining) == (False, 51_000, 0)
    assert not gcra(tat, NOW + 50.9, per_minute)[1].allowed
    assert gcra(tat, NOW + 51, per_minute)[1].allowed


def test_a_negative_debit_refunds_but_never_past_a_full_bucket() -> None:
    tat, _ = burst(10, 10)
    tat = debit(tat, NOW, 10, -3)
    _, verdicts = burst_from(tat, 10, 4)
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    full = debit(None, NOW, 10, -50)
    assert full == NOW  # no credit beyond the burst
    _, verdicts = burst_from(full, 10, 11)
    assert sum(v.allowed for v in verdicts) == 10


def burst_from(tat: float | None, per_minute: int, calls: int):
    verdicts = []
    for _ in range(calls):
        tat, verdict = gcra(tat, NOW, per_minute)
        verdicts.append(verdict)
    return tat, verdicts


def test_a_tat_in_the_past_is_a_fresh_key() -> None:
    tat, _ = burst(5, 5)
    later = NOW + 3600
    assert gcra(tat, later, 5) == gcra(None, later, 5)


def test_a_limit_below_one_per_minute_is_refused_as_a_value_error() -> None:
    with pytest.raises(ValueError):
        gcra(None, NOW, 0)


@given(
    per_minute=st.integers(1, 10_000),
    costs=st.lists(st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0]), min_size=1, max_size=60),
)
def test_what_one_instant_admits_never_exceeds_the_budget(
    per_minute: int, costs: list[float]
) -> None:
    tat: float | None = None
    spent = 0.0
    for cost in costs:
        tat, verdict = gcra(tat, NOW, per_minute, cost)
        if verdict.allowed:
            spent += cost
        else:
            assert spent + min(cost, per_minute) > per_minute - 1e-6
    assert spent <= max(per_minute, costs[0])
