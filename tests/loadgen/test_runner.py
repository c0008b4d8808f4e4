"""The load generator's runner: its once-a-second timeline."""

from __future__ import annotations

import asyncio

import pytest

from wsgate.loadgen import runner as runner_module
from wsgate.loadgen.config import LoadConfig
from wsgate.loadgen.runner import Runner


class _Stop(Exception):
    pass


async def test_timeline_has_one_row_per_second_even_when_the_loop_wakes_a_little_early(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    real_sleep = asyncio.sleep

    class FakeTime:
        @staticmethod
        def monotonic() -> float:
            return clock[0]

    async def early_sleep(delay: float) -> None:
        # uvloop's timers have millisecond resolution: a wake-up can come a hair early.
        clock[0] += delay * 0.999
        if clock[0] > 105.5:
            raise _Stop
        await real_sleep(0)

    monkeypatch.setattr(runner_module, "time", FakeTime)
    monkeypatch.setattr(runner_module.asyncio, "sleep", early_sleep)
    runner = Runner(LoadConfig(progress=False))
    runner.t0 = clock[0]
    with pytest.raises(_Stop):
        await runner._ticker()
    assert [row["t"] for row in runner.timeline] == [1.0, 2.0, 3.0, 4.0, 5.0]
