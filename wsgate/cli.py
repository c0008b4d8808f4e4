"""The `wsgate` command line: serve, mock-upstream, chat, loadtest, schema, check-config, version.

Owns argument parsing, exit codes (0 ok, 1 failure, 2 usage or configuration error) and
running coroutines on uvloop. Thin: every command is a call into `app`, `mock`, `client`
or the core. `hash-key` prints the SHA-256 an `[[auth.api_keys]]` entry stores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import orjson
import uvloop

from wsgate import __version__
from wsgate.asyncapi import asyncapi_document
from wsgate.config import ConfigError, Settings, load_settings, settings_summary, unresolved
from wsgate.core.frames import json_schemas
from wsgate.core.store import StoreUnavailable
from wsgate.log import configure, get_logger
from wsgate.tsgen import typescript_declarations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
TS_DECLARATIONS = Path(__file__).resolve().parent / "web" / "protocol.d.ts"
"""Where `wsgate schema` writes the frames' TypeScript declarations, served at /v1/."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsgate", description="WebSocket gateway for LLM token streams."
    )
    parser.add_argument("--version", action="version", version=f"wsgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_config_flags(p: argparse.ArgumentParser, section: str = "server") -> None:
        p.add_argument("--config", metavar="FILE", help="TOML settings file")
        p.add_argument("--host", help=f"listen address ({section}.host)")
        p.add_argument("--port", type=int, help=f"listen port ({section}.port)")
        p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
        p.add_argument("--log-format", choices=["json", "console"])

    def command(
        name: str, summary: str, description: str, **kwargs: Any
    ) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}. {description}",
            formatter_class=_HelpFormatter,
            **kwargs,
        )

    serve = command(
        "serve",
        "run the gateway",
        "Serves the WebSocket endpoint, the client library and the demo page; with no"
        " provider configured, on the built-in mock. SIGTERM drains, SIGHUP reloads.",
    )
    check = command(
        "check-config",
        "validate the settings and print them",
        "Prints the layered settings with secrets masked, and lists what `serve` would"
        " stop on (unset key variables, unreadable files). Exit 2 on a bad setting.",
    )
    check.add_argument(
        "--strict",
        action="store_true",
        help="exit 2 when something the settings name is missing (a key variable, a file)",
    )
    for p in (serve, check):
        add_config_flags(p)
        p.add_argument(
            "--allow-anonymous",
            action="store_true",
            help="UNSAFE: listen beyond 127.0.0.1 with a real provider and no authentication",
        )

    mock = command(
        "mock-upstream",
        "run the mock provider on its own",
        "Speaks OpenAI chat and Responses, Anthropic and Ollama, scripted per request"
        " (protocol/MOCK.md), with its tool backend at /tools/NAME.",
    )
    add_config_flags(mock, "mock")

    chat = command(
        "chat",
        "stream one answer from a gateway to the terminal",
        "The answer text goes to stdout as it arrives; tool calls and a `length` finish"
        ' to stderr. Against the mock, the prompt may be a script: \'{"mock": {"text":'
        ' "hi", "tokens_per_s": 20}}\'. Exit 0 on stop, length or tool_calls.',
    )
    chat.add_argument("prompt", help="the user message (or, for the mock, a mock script)")
    chat.add_argument("--url", default="ws://127.0.0.1:8080/v1/ws", help="the gateway")
    chat.add_argument("--model", default="mock", help="a model alias the gateway routes")
    chat.add_argument("--system", help="a system prompt")
    chat.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a stream option (PROTOCOL.md §4.1), VALUE as JSON or a plain string;"
        " repeatable: --option buffering=sentence --option telemetry=true",
    )

    # Everything after `loadtest` goes verbatim to the load generator's own parser, where its
    # flags and --help live: with no usable prefix character, nothing here reads as a flag.
    loadtest = sub.add_parser(
        "loadtest",
        help="load-test a gateway with scripted mock streams",
        description="Load-test a gateway with scripted mock streams (`wsgate loadtest --help`).",
        add_help=False,
        prefix_chars="\0",
    )
    loadtest.add_argument("argv", nargs=argparse.REMAINDER)

    schema = command(
        "schema",
        "write the protocol's JSON Schemas and their TypeScript declarations",
        "Generated from the frame types in wsgate/core/frames.py; --check fails on drift.",
    )
    schema.add_argument("--out", default="protocol/schema", help="output directory")
    schema.add_argument(
        "--ts",
        default=str(TS_DECLARATIONS),
        metavar="FILE",
        help="the generated TypeScript declarations (the served wsgate/web/protocol.d.ts)",
    )
    schema.add_argument("--check", action="store_true", help="fail if the files differ")

    hash_key = command(
        "hash-key",
        "print the sha256 of an API key, for [[auth.api_keys]].sha256",
        "The key itself is never stored in the settings, only this digest.",
    )
    hash_key.add_argument(
        "key", nargs="?", help="the key (default: read from stdin, which keeps it out of ps)"
    )

    command("version", "print the version", "The same as `wsgate --version`.")
    return parser


def _overrides(args: argparse.Namespace, *, mock: bool = False) -> dict[str, Any]:
    section = "mock" if mock else "server"
    pairs = {
        f"{section}.host": args.host,
        f"{section}.port": args.port,
        "log.level": args.log_level,
        "log.format": args.log_format,
        "server.allow_anonymous": "true" if getattr(args, "allow_anonymous", False) else None,
    }
    return {key: value for key, value in pairs.items() if value is not None}


def _stream_options(pairs: list[str]) -> dict[str, Any]:
    """`--option KEY=VALUE` pairs: each value JSON when it parses, else the string."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"chat --option {pair!r}: write KEY=VALUE")
        if key in STRING_OPTIONS:
            options[key] = value
            continue
        try:
            options[key] = orjson.loads(value)
        except orjson.JSONDecodeError:
            options[key] = value
    return options


STRING_OPTIONS = frozenset({"buffering", "on_disconnect", "idempotency_key"})
"""Stream options whose value is a string, whatever it looks like (`20261208` stays text)."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one (not `None`, not an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default == [] or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _settings(args: argparse.Namespace, *, mock: bool = False) -> Settings:
    return load_settings(args.config, overrides=_overrides(args, mock=mock))


def _run(coro: Coroutine[Any, Any, int | None]) -> int:
    try:
        result = uvloop.run(coro)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `wsgate chat ... | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush is quiet
        return EXIT_FAILURE
    return EXIT_OK if result is None else int(result)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"wsgate: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _dispatch(args: argparse.Namespace) -> int:  # noqa: PLR0911 - one return per command
    command = args.command
    if command == "version":
        print(f"wsgate {__version__}")
        return EXIT_OK
    if command == "schema":
        return _schema(Path(args.out), Path(args.ts), check=args.check)
    if command == "hash-key":
        return _hash_key(args.key)
    if command == "chat":
        from wsgate.client import chat  # noqa: PLC0415 - keep server start-up lean

        options = _stream_options(args.option)
        return _run(
            chat(args.url, args.prompt, model=args.model, system=args.system, options=options)
        )
    if command == "loadtest":
        from wsgate.loadgen.command import main as loadtest  # noqa: PLC0415 - lean start-up

        return loadtest(args.argv, prog="wsgate loadtest")
    if command == "check-config":
        settings = _settings(args)
        settings.check_exposure()
        summary = settings_summary(settings)
        summary["unresolved"] = problems = unresolved(settings, os.environ)
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        for problem in problems:  # loads, but `serve` would stop on it
            print(f"wsgate: check-config: {problem}", file=sys.stderr)
        return EXIT_USAGE if problems and args.strict else EXIT_OK
    if command == "mock-upstream":
        settings = _settings(args, mock=True)
        configure(
            settings.log.level, settings.log.format, include_prompts=settings.log.include_prompts
        )
        return _run(_mock_upstream(settings))
    settings = _settings(args)
    settings.check_exposure()
    configure(settings.log.level, settings.log.format, include_prompts=settings.log.include_prompts)
    return _run(_serve(settings))


async def _serve(settings: Settings) -> int:
    from wsgate.app import App, JwksError, ListenError, TlsError  # noqa: PLC0415 - where used

    logger = get_logger("wsgate.cli")
    logger.info("settings", **settings_summary(settings))
    if (warning := settings.exposure_warning()) is not None:
        logger.warning("exposure_warning", warning=warning)
    try:
        await App(settings).run_until_signal()
    except StoreUnavailable as exc:
        where = settings_summary(settings)["store"]["url"]
        print(f"wsgate: the resume store at {where} is unreachable: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except TlsError as exc:
        print(f"wsgate: TLS: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except JwksError as exc:  # the message names the JWKS' source
        print(f"wsgate: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ListenError as exc:  # a port in use, an address not here: a setting to change
        print(f"wsgate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


async def _mock_upstream(settings: Settings) -> int:
    import signal  # noqa: PLC0415

    from wsgate.mock import MockProvider  # noqa: PLC0415

    mock = MockProvider(
        default_ttft_ms=settings.mock.ttft_ms, default_tokens_per_s=settings.mock.tokens_per_s
    )
    from wsgate.app import ListenError, listening  # noqa: PLC0415 - imported where used

    where = settings.mock
    try:
        await listening(mock.start(where.host, where.port), "mock", where.host, where.port)
    except ListenError as exc:
        print(f"wsgate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    base_url = mock.base_url
    get_logger("wsgate.mock").info("mock_listening", base_url=base_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await mock.stop()
    return EXIT_OK


def _hash_key(key: str | None) -> int:
    from wsgate.core.auth import hash_key  # noqa: PLC0415 - keep server start-up lean

    if key is None:
        key = sys.stdin.readline().rstrip("\r\n")  # one line: the key, without its newline
    if not key:
        print("wsgate: hash-key: no key given (an argument, or one line on stdin)", file=sys.stderr)
        return EXIT_USAGE
    print(hash_key(key))
    return EXIT_OK


def _schema(out: Path, ts: Path, *, check: bool) -> int:
    """Write (or with `check`, compare) the two JSON Schemas and the `.d.ts` made from them."""
    schemas = json_schemas()
    files = {
        out / f"{name}.schema.json": orjson.dumps(
            schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
        )
        + b"\n"
        for name, schema in schemas.items()
    }
    files[ts] = typescript_declarations(schemas["client"], schemas["server"]).encode()
    document = asyncapi_document(schemas["client"], schemas["server"])
    files[out / "asyncapi.json"] = (
        orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    )
    stale = []
    for path, text in files.items():
        if check:
            if not path.exists() or path.read_bytes() != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)
    if stale:
        print(
            f"wsgate: schema out of date: {', '.join(stale)} (run `make schema`)", file=sys.stderr
        )
        return EXIT_FAILURE
    return EXIT_OK
