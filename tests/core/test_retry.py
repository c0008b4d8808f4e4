"""The retry decision: which errors, how many times, how long, within which budget."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgate.core.errors import (
    BadRequest,
    UpstreamError,
    UpstreamLineTooLong,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from wsgate.core.retry import RetryPolicy

POLICY = RetryPolicy(max_attempts=3, base_delay=0.25, max_delay=1.0, budget=10.0)


@pytest.mark.parametrize(
    "error",
    [UpstreamError("5xx"), UpstreamUnavailable("refused"), UpstreamRateLimited("429")],
)
def test_connect_errors_rate_limits_and_provider_failures_are_retried(error):
    assert POLICY.delay(1, error, 0.0, 0.5) == 0.125


@pytest.mark.parametrize(
    "error",
    [
        UpstreamRejected("400"),
        UpstreamProtocolError("truncated"),
        UpstreamLineTooLong("line"),
        UpstreamTimeout("slow"),
        BadRequest("stop"),
    ],
)
def test_rejections_protocol_errors_timeouts_and_bad_requests_are_not_retried(error):
    assert POLICY.delay(1, error, 0.0, 0.5) is None


def test_the_backoff_doubles_up_to_the_cap_and_the_attempts_run_out():
    error = UpstreamError("5xx")
    assert [POLICY.delay(n, error, 0.0, 0.999999) for n in (1, 2, 3)] == pytest.approx(
        [0.25, 0.5, 1.0], rel=1e-5
    )
    assert POLICY.delay(4, error, 0.0, 0.5) is None


def test_zero_attempts_turns_retries_off():
    assert RetryPolicy(max_attempts=0).delay(1, UpstreamError("5xx"), 0.0, 0.5) is None


def test_retry_after_is_a_floor_even_beyond_the_backoff_cap():
    error = UpstreamRateLimited("429", retry_after_ms=2500)
    assert POLICY.delay(1, error, 0.0, 0.0) == 2.5


def test_a_retry_that_would_end_past_the_budget_is_not_made():
    assert POLICY.delay(1, UpstreamRateLimited("429", retry_after_ms=60_000), 0.0, 0.5) is None
    assert POLICY.delay(2, UpstreamError("5xx"), 9.99, 0.9) is None
    assert POLICY.delay(2, UpstreamError("5xx"), 9.0, 0.9) == pytest.approx(0.45)


@given(
    attempt=st.integers(1, 3),
    jitter=st.floats(0, 1, exclude_max=True),
    elapsed=st.floats(0, 10),
    retry_after=st.none() | st.integers(0, 20_000),
)
def test_a_delay_is_never_negative_never_before_retry_after_and_within_the_budget(
    attempt, jitter, elapsed, retry_after
):
    delay = POLICY.delay(attempt, UpstreamError("x", retry_after_ms=retry_after), elapsed, jitter)
    if delay is not None:
        assert delay >= 0
        assert elapsed + delay <= POLICY.budget
        if retry_after is not None:
            assert delay >= retry_after / 1000


def test_a_retry_that_would_not_start_before_the_streams_own_deadline_is_not_made():
    error = UpstreamRateLimited("429", retry_after_ms=3000)
    assert POLICY.delay(1, error, 0.0, 0.5, time_left=1.0) is None
    assert POLICY.delay(1, error, 0.0, 0.5, time_left=3.5) == 3.0
    assert POLICY.delay(1, error, 0.0, 0.5) == 3.0
