"""Helpers for tests that run wsgate as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

WSGATE = [sys.executable, "-m", "wsgate"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
    env.update(extra)
    return env


def run_wsgate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run one `wsgate` command to its end, in a clean environment plus `env`."""
    return subprocess.run(
        [*WSGATE, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(**env),
        check=False,
    )


def wait_for_log(proc: subprocess.Popen[str], event: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            return record
    proc.kill()
    raise AssertionError(
        f"no {event!r} log line; stderr: {proc.stderr.read() if proc.stderr else ''}"
    )


def drain(proc: subprocess.Popen[str]) -> None:
    """Read and drop the rest of `proc`'s stdout in a thread, so its log never fills the pipe.

    A gateway blocked writing a log line into a full pipe (64 KiB) stops serving; a test
    that makes many log lines and reads none of them after the port must drain them.
    """
    stdout = proc.stdout
    assert stdout is not None
    threading.Thread(target=stdout.read, daemon=True).start()


@contextmanager
def running(*args: str, **env: str) -> Iterator[subprocess.Popen[str]]:
    """A wsgate process; SIGTERM (then kill) and all pipes closed on exit."""
    with subprocess.Popen(
        [*WSGATE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(**env),
    ) as proc:
        try:
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM a process we started (it drains), then kill it after 10 s; wait for it."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def serving(**env_overrides: str) -> Iterator[subprocess.Popen[str]]:
    """`wsgate serve` on a free port with these settings and a mock answering at once."""
    args = ("serve", "--port", "0", "--log-format", "json")
    with running(*args, WSGATE_MOCK__TTFT_MS="0", **env_overrides) as proc:
        yield proc


async def read_port(proc: subprocess.Popen[str]) -> int:
    """The port a `serving()` gateway listens on, from its log (without blocking the loop)."""
    loop = asyncio.get_running_loop()
    record = await loop.run_in_executor(None, wait_for_log, proc, "gateway_listening")
    return int(record["port"])
