"""Helpers for tests that run `wsgate serve` as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

WSGATE = [sys.executable, "-m", "wsgate"]


async def read_port(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = await loop.run_in_executor(None, proc.stdout.readline)
        if '"gateway_listening"' in line:
            return int(json.loads(line)["port"])
    raise AssertionError("the gateway did not start")


@contextmanager
def serving(**env_overrides: str) -> Iterator[subprocess.Popen[str]]:
    """`wsgate serve` on a free port with these settings; killed if it outlives the test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
    env.update(WSGATE_MOCK__TTFT_MS="0", **env_overrides)
    with subprocess.Popen(
        [*WSGATE, "serve", "--port", "0", "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
