"""A private `redis-server` for tests and benchmarks: started on a free port, stopped after.

Owns one child process of Debian's `redis-server` (found on PATH), bound to 127.0.0.1 on a
port the kernel picked, keeping nothing on disk, in a directory of its own. It never
touches another Redis (one may run at 127.0.0.1:6379 on the machine: tests must not use
it). `stop` and `kill` (SIGKILL, for "Redis died" tests) end it; `start` again brings it
back on the same port, as a restarted Redis would. Blocking calls only: test fixtures and
scripts use it outside the event loop, or through `asyncio.to_thread`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

READY_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One `redis-server` child process on 127.0.0.1."""

    def __init__(self, binary: str | None = None, port: int | None = None) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError(
                "redis-server is not on PATH (Debian: apt-get install redis-server)"
            )
        self.binary = found
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="wsgate-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:<port>/0`."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """The process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        if self.running:
            return
        log = Path(self._dir.name) / "redis.log"
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--logfile", str(log),
            "--daemonize", "no",
        ]  # fmt: skip
        self._process = subprocess.Popen(  # noqa: S603 - our own arguments, no shell
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode() if self._process.stderr else ""
                raise RuntimeError(f"redis-server exited at start: {err or log.read_text()}")
            if self.command("PING") == b"+PONG":
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not answer PING in time")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr is not None:
            process.stderr.close()

    def kill(self) -> None:
        """End the server at once (SIGKILL), as a crash would."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        self.stop()

    def command(self, *args: str) -> bytes | None:
        """Send one command; its first reply line, or None when nothing answers."""
        payload = b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(arg.encode()), arg.encode()) for arg in args
        )
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(payload)
                reply = sock.recv(65536)
        except OSError:
            return None
        return reply.split(b"\r\n", 1)[0]

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self._dir.cleanup()
