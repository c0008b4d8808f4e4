"""What the web tests share: Node, a run of a Node test file against a gateway served in the
test's own event loop, a control channel the Node side can call back through, and the frames
the Node side saw, read back for schema validation.

A Node test file (`tests/web/js/*.test.mjs`, `node:test` and `node:assert`, no npm package)
runs as `node --test` in a subprocess of its own process group while the gateway serves in
the pytest event loop, so a test can act on the gateway while Node waits (drop its
connections, drain it, start another). The Node side finds everything in its environment:
`WSGATE_URL` (the WebSocket URL), `WSGATE_CONTROL` (the control channel's root: `POST
{WSGATE_CONTROL}/<action>` awaits the Python action of that name and answers its JSON
result), `WSGATE_FRAMES` (a file to append one JSON line per WebSocket message,
`{"socket": n, "dir": "in" | "out", "data": "<the text>"}`), plus whatever the test adds.
A run that fails raises with Node's whole output; one that runs no test fails too.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from aiohttp import web
from e2e_helpers import validate_server_frame
from store_helpers import require

ROOT = Path(__file__).parents[2]
JS_DIR = Path(__file__).parent / "js"
WEB_DIR = ROOT / "wsgate" / "web"
CLIENT_SCHEMA = json.loads((ROOT / "protocol" / "schema" / "client.schema.json").read_text())
CLIENT_VALIDATOR = jsonschema.Draft202012Validator(CLIENT_SCHEMA)
NODE_MAJOR = 20  # the oldest Node the client library supports (global WebSocket behind a flag)

Action = Callable[[], Awaitable[Any]]


def node_binary() -> str:
    """The `node` to run (Node 20 or later), or a skip (a failure under WSGATE_REQUIRE_ALL=1)."""
    found = shutil.which("node")
    major = _node_major(found) if found is not None else 0
    require(
        "node",
        major >= NODE_MAJOR,
        f"Node {NODE_MAJOR} or later runs the client library's tests (found {major or 'none'}); "
        "install Debian's nodejs (.ci/run does)",
    )
    assert found is not None
    return found


@functools.cache
def _node_major(node: str) -> int:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    match = re.match(r"v(\d+)\.", out.stdout)
    return int(match.group(1)) if match else 0


@functools.cache
def websocket_flags(node: str) -> tuple[str, ...]:
    """`--experimental-websocket` where Node needs it for a global WebSocket (Node 20, 21)."""
    probe = [node, "-p", "typeof WebSocket"]
    out = subprocess.run(probe, capture_output=True, text=True, check=False)
    return () if out.stdout.strip() == "function" else ("--experimental-websocket",)


@dataclass
class NodeRun:
    """What a `node --test` run did."""

    returncode: int
    output: str
    passed: int
    failed: int
    messages: list[dict[str, Any]] = field(default_factory=list)

    def received(self) -> list[dict[str, Any]]:
        """Every frame the client received, parsed, in order (all sockets)."""
        return [json.loads(m["data"]) for m in self.messages if m["dir"] == "in"]

    def sent(self) -> list[dict[str, Any]]:
        """Every frame the client sent, parsed, in order (all sockets)."""
        return [json.loads(m["data"]) for m in self.messages if m["dir"] == "out"]

    def sockets(self) -> int:
        return len({m["socket"] for m in self.messages})


class Control:
    """The Node side's way back: `POST /<name>` awaits `actions[name]()` and answers its JSON."""

    def __init__(self) -> None:
        self.actions: dict[str, Action] = {}
        self.calls: list[str] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    def action(self, name: str) -> Callable[[Action], Action]:
        def register(fn: Action) -> Action:
            self.actions[name] = fn
            return fn

        return register

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.calls.append(name)
        if name not in self.actions:
            return web.json_response({"error": f"no action {name!r}"}, status=404)
        return web.json_response({"result": await self.actions[name]()})


async def run_node_test(
    test_file: Path,
    *,
    name: str | None = None,
    prefix: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> NodeRun:
    """Run `node --test test_file` (only the test called `name`, or those whose names start
    with `prefix`, if given) and wait for it.

    The gateway the test talks to must be serving in this event loop meanwhile. On the
    timeout the whole process group (node's runner and its child) is killed.
    """
    node = node_binary()
    with tempfile.TemporaryDirectory(prefix="wsgate-node-") as tmp:
        frames = Path(tmp) / "frames.jsonl"
        frames.touch()
        argv = [node, *websocket_flags(node), "--test", "--test-reporter=tap"]
        if name is not None:
            argv.append(f"--test-name-pattern=^{re.escape(name)}$")
        elif prefix is not None:
            argv.append(f"--test-name-pattern=^{re.escape(prefix)}")
        argv.append(str(test_file))
        full_env = {**os.environ, "WSGATE_FRAMES": str(frames), "NO_COLOR": "1", **(env or {})}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=full_env,
            cwd=str(ROOT),
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(timeout):
                out, _ = await proc.communicate()
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = await proc.communicate()
            text = out.decode(errors="replace")
            raise AssertionError(f"node did not finish within {timeout} s:\n{text}") from None
        finally:
            if proc.returncode is None:  # cancelled (pytest's timeout): leave nothing behind
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        messages = [json.loads(line) for line in frames.read_text().splitlines() if line]
    text = out.decode(errors="replace")
    return NodeRun(proc.returncode or 0, text, _count(text, "pass"), _count(text, "fail"), messages)


def _count(tap: str, what: str) -> int:
    found = re.findall(rf"^# {what} (\d+)$", tap, re.MULTILINE)
    return int(found[-1]) if found else 0


def assert_passed(run: NodeRun, expect: int = 1) -> None:
    """Node ran exactly `expect` tests and all passed; otherwise its output is the message."""
    ok = run.returncode == 0 and run.failed == 0 and run.passed == expect
    assert ok, (
        f"node: exit {run.returncode}, {run.passed} passed, {run.failed} failed "
        f"(expected {expect} passed)\n{run.output}"
    )


def validate_frames(run: NodeRun) -> None:
    """Every frame the client received validates against server.schema.json, and every
    frame it sent against client.schema.json."""
    for frame in run.received():
        validate_server_frame(frame)
    for frame in run.sent():
        CLIENT_VALIDATOR.validate(frame)


__all__ = [
    "JS_DIR",
    "WEB_DIR",
    "Control",
    "NodeRun",
    "assert_passed",
    "node_binary",
    "run_node_test",
    "validate_frames",
    "websocket_flags",
]


# --- npm packages the tests need (the real `ai`, TypeScript) -------------------------------

AI_VERSION = "7.0.173"
TYPESCRIPT_VERSION = "5.9.3"
PACKAGES = (f"ai@{AI_VERSION}", f"typescript@{TYPESCRIPT_VERSION}")
INSTALL_TIMEOUT_S = 300


def cache_root() -> Path:
    """Where installs outlive a run: `$XDG_CACHE_HOME/wsgate-tests` (or ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wsgate-tests"


def _installed(prefix: Path, packages: tuple[str, ...]) -> bool:
    marker = prefix / "installed.json"
    return marker.is_file() and json.loads(marker.read_text()) == list(packages)


def install_npm_packages(packages: tuple[str, ...] = PACKAGES) -> Path:
    """The npm prefix holding `packages`: installed once (under a file lock), then reused."""
    node_binary()  # skips (fails under WSGATE_REQUIRE_ALL=1) without Node 20+
    npm = shutil.which("npm")
    require("npm", npm is not None, "install Debian's npm (.ci/run does)")
    assert npm is not None
    name = "-".join(p.lstrip("@").replace("/", "-").replace("@", "-") for p in packages)
    prefix = cache_root() / f"npm-{name}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with (prefix.parent / f"{prefix.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another pytest process may be installing it
        if not _installed(prefix, packages):
            shutil.rmtree(prefix, ignore_errors=True)
            prefix.mkdir()
            argv = [npm, "install", "--no-audit", "--no-fund", "--save-exact", "--prefix"]
            done = subprocess.run(
                [*argv, str(prefix), *packages],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            )
            # npm is there (checked above): a failed install is a failure, never a skip.
            why = f"`npm install {' '.join(packages)}` failed:\n{done.stdout}{done.stderr}"
            assert done.returncode == 0, why
            (prefix / "installed.json").write_text(json.dumps(list(packages)))
    return prefix


def tsc_binary(prefix: Path) -> Path:
    """The pinned TypeScript compiler of an `install_npm_packages` prefix."""
    return prefix / "node_modules" / "typescript" / "bin" / "tsc"


# --- one Node test against a gateway --------------------------------------------------------


async def run_gateway_test(
    tests: Path, name: str, app: Any = None, control: Any = None, **env: str
) -> NodeRun:
    """Run the Node test `name` of `tests` against `app` (an App, or None for a pure test).

    It must pass, and every frame it sent and received must validate against the schemas.
    `control` (a Control) is named to Node in WSGATE_CONTROL; `env` is added to its environ.
    """
    if app is not None:
        env["WSGATE_URL"] = app.url
    if control is not None:
        env["WSGATE_CONTROL"] = control.url
    run = await run_node_test(tests, name=name, env=env)
    assert_passed(run)
    validate_frames(run)
    return run


def drop_connections(app: Any) -> int:
    """Reset every client's TCP connection (no close frame, as a lost network does)."""
    assert app.gateway is not None
    connections = list(app.gateway.connections)
    for connection in connections:
        transport = connection.ws.transport
        assert transport is not None
        transport.abort()
    return len(connections)


def register_drop(control: Any, app: Any) -> None:
    """Control action `drop`: `drop_connections(app)`; answers how many were dropped."""

    @control.action("drop")
    async def drop() -> Any:
        return drop_connections(app)


async def run_after_one_drop(
    tests: Path, name: str, start_app: Any, control: Any, **env: str
) -> NodeRun:
    """Start a gateway (`start_app()`, the defaults), run the Node test `name` of `tests`
    against it (`run_gateway_test`) with the control action `drop` (`register_drop`), and
    check the test called it exactly once; `env` is added to Node's environ."""
    app = await start_app()
    register_drop(control, app)
    run = await run_gateway_test(tests, name, app, control, **env)
    assert control.calls == ["drop"], f"control calls: {control.calls}"
    return run
