"""The command line as a user runs it: real processes, real sockets on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
from proc_helpers import WSGATE, clean_env, run_wsgate, running, wait_for_log

from wsgate import __version__
from wsgate.cli import main
from wsgate.config import load_settings

ROOT = Path(__file__).parents[1]


@pytest.fixture(autouse=True)
def no_wsgate_environment(monkeypatch):
    """In-process commands read the environment: none of the runner's WSGATE_ settings."""
    for key in list(os.environ):
        if key.startswith("WSGATE_"):
            monkeypatch.delenv(key)


@pytest.fixture
def served():
    env = {"WSGATE_MOCK__TTFT_MS": "0", "WSGATE_MOCK__TOKENS_PER_S": "200"}
    with running("serve", "--port", "0", "--log-format", "json", **env) as proc:
        record = wait_for_log(proc, "gateway_listening")
        yield proc, f"ws://127.0.0.1:{record['port']}/v1/ws"


def test_serve_with_no_configuration_streams_from_the_mock_to_wsgate_chat(served):
    proc, url = served
    prompt = json.dumps({"mock": {"text": "Hello from the mock, token by token."}})
    chat = run_wsgate("chat", "--url", url, prompt)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout == "Hello from the mock, token by token.\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_serve_logs_json_lines_without_prompt_text(served):
    proc, url = served
    secret_prompt = "my very private prompt"
    run_wsgate("chat", "--url", url, secret_prompt).check_returncode()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert any(line.get("event") == "connection_closed" and "conn_id" in line for line in lines)
    assert secret_prompt not in out


def test_a_bad_setting_exits_2_with_one_clear_line():
    result = run_wsgate("serve", WSGATE_SERVER__PORT="not-a-port")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "WSGATE_SERVER__PORT" in lines[0]
    assert lines[0].startswith("wsgate: config error:")


def test_a_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["check-config", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in capsys.readouterr().err


def test_check_config_prints_settings_with_secrets_masked(tmp_path, capsys):
    config = tmp_path / "wsgate.toml"
    config.write_text(
        "[providers.openai]\n"
        'base_url = "https://api.example.invalid/v1"\n'
        'api_key = "sk-supersecret"\n'
        "[models.gpt]\n"
        'provider = "openai"\n'
    )
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "sk-supersecret" not in out
    assert "api.example.invalid" in out


def test_the_committed_schema_is_what_the_code_generates():
    assert main(["schema", "--check", "--out", str(ROOT / "protocol" / "schema")]) == 0


def test_schema_check_fails_on_a_stale_file(tmp_path, capsys):
    ts = str(tmp_path / "protocol.d.ts")  # never the package's own file
    assert main(["schema", "--out", str(tmp_path), "--ts", ts]) == 0
    (tmp_path / "server.schema.json").write_text("{}\n")
    assert main(["schema", "--check", "--out", str(tmp_path), "--ts", ts]) == 1
    assert "out of date" in capsys.readouterr().err


def test_version_prints_the_package_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("wsgate 0.")


def test_mock_upstream_runs_standalone_and_serves_openai_sse():
    with running("mock-upstream", "--port", "0", "--log-format", "json") as proc:
        record = wait_for_log(proc, "mock_listening")
        body = json.dumps(
            {
                "model": "mock",
                "stream": True,
                "messages": [{"role": "user", "content": json.dumps({"mock": {"text": "ok"}})}],
            }
        ).encode()
        request = urllib.request.Request(
            record["base_url"] + "/chat/completions",
            data=body,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
        assert text.endswith("data: [DONE]\n\n")
        assert '"content":"ok"' in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


REAL_PROVIDER_TOML = (
    "[providers.openai]\n"
    'base_url = "https://api.example.invalid/v1"\n'
    'api_key = "sk-supersecret"\n'
    "[models.gpt]\n"
    'provider = "openai"\n'
)


def test_serve_listens_on_loopback_by_default():
    assert load_settings(environ={}).server.host == "127.0.0.1"
    with running("serve", "--port", "0", "--log-format", "json") as proc:
        assert wait_for_log(proc, "gateway_listening")["host"] == "127.0.0.1"


def test_serve_refuses_a_non_local_address_with_a_real_provider_and_no_auth(tmp_path):
    config = tmp_path / "wsgate.toml"
    config.write_text(REAL_PROVIDER_TOML)
    result = run_wsgate("serve", "--config", str(config), "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--allow-anonymous" in lines[0]
    assert "0.0.0.0" in lines[0]
    assert "sk-supersecret" not in result.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "gateway.example"])
def test_check_config_refuses_every_non_loopback_host_with_a_real_provider(tmp_path, capsys, host):
    config = tmp_path / "wsgate.toml"
    config.write_text(REAL_PROVIDER_TOML)
    assert main(["check-config", "--config", str(config), "--host", host]) == 2
    assert "--allow-anonymous" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "toml"),
    [
        (["--host", "127.0.0.2"], REAL_PROVIDER_TOML),
        (["--host", "localhost"], REAL_PROVIDER_TOML),
        (["--host", "::1"], REAL_PROVIDER_TOML),
        (["--host", "0.0.0.0", "--allow-anonymous"], REAL_PROVIDER_TOML),
        (["--host", "0.0.0.0"], ""),
    ],
)
def test_loopback_an_explicit_allow_anonymous_or_the_mock_alone_may_listen(
    tmp_path, capsys, args, toml
):
    config = tmp_path / "wsgate.toml"
    config.write_text(toml)
    assert main(["check-config", "--config", str(config), *args]) == 0, capsys.readouterr().err


def test_serve_with_an_unset_key_variable_stops_at_once_with_one_line(tmp_path):
    config = tmp_path / "wsgate.toml"
    config.write_text(
        "[providers.openai]\n"
        'base_url = "https://api.example.invalid/v1"\n'
        'api_key_env = "WSGATE_TEST_UNSET_KEY"\n'
        "[models.gpt]\n"
        'provider = "openai"\n'
    )
    result = run_wsgate("serve", "--config", str(config), "--port", "0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "wsgate: config error: api_key_env: environment variable WSGATE_TEST_UNSET_KEY is unset"
    ]


def test_wsgate_chat_into_a_pipe_that_closes_exits_without_a_traceback(served):
    _, url = served
    prompt = json.dumps({"mock": {"text": "word " * 400, "tokens_per_s": 400}})
    reader, writer = os.pipe()
    with subprocess.Popen(
        [*WSGATE, "chat", "--url", url, prompt],
        stdout=writer,
        stderr=subprocess.PIPE,
        env=clean_env(),
    ) as chat:
        os.close(writer)
        os.read(reader, 10)  # like `| head -c 10`
        os.close(reader)
        _, err = chat.communicate(timeout=20)
    assert chat.returncode == 1
    assert b"Traceback" not in err, err.decode()


def test_hash_key_prints_the_sha256_the_api_keys_table_expects(capsys, monkeypatch):
    import hashlib  # noqa: PLC0415
    import io  # noqa: PLC0415

    expected = hashlib.sha256(b"sk-wsgate-test").hexdigest()
    assert main(["hash-key", "sk-wsgate-test"]) == 0
    assert capsys.readouterr().out == f"{expected}\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("sk-wsgate-test\n"))
    assert main(["hash-key"]) == 0
    assert capsys.readouterr().out == f"{expected}\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["hash-key"]) == 2
    assert "no key given" in capsys.readouterr().err


def test_the_version_flag_prints_the_package_version_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"wsgate {__version__}"


@pytest.mark.parametrize(("command", "section"), [("serve", "server"), ("mock-upstream", "mock")])
def test_a_listener_on_a_port_in_use_says_so_in_one_line_naming_the_setting_and_exits_2(
    command, section
):
    import socket  # noqa: PLC0415

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_wsgate(command, "--port", str(port), "--log-format", "json")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    prefix = f"wsgate: {section}.host, {section}.port: cannot listen on 127.0.0.1:{port}"
    assert line.startswith(prefix)
    assert "address already in use" in line


def test_check_config_says_which_referenced_keys_are_unset_and_still_exits_0():
    example = str(Path(__file__).resolve().parents[1] / "wsgate.example.toml")
    result = run_wsgate("check-config", "--config", example)
    assert result.returncode == 0
    summary = json.loads(result.stdout)
    assert (
        "providers.openai.api_key_env: environment variable OPENAI_API_KEY is unset"
        in (summary["unresolved"])
    )
    assert "OPENAI_API_KEY is unset" in result.stderr
    with_key = run_wsgate("check-config", "--config", example, OPENAI_API_KEY="k")
    assert "OPENAI_API_KEY" not in with_key.stderr


def test_chat_shows_tool_calls_and_a_length_finish_on_stderr_and_passes_options(served):
    _proc, url = served
    tools = {"mock": {"text": "", "tool_calls": [{"name": "get_time", "arguments": "{}"}]}}
    called = run_wsgate("chat", "--url", url, json.dumps(tools))
    assert called.returncode == 0, called.stderr
    assert "[tool call call_mock_0: get_time({})]" in called.stderr
    cut = run_wsgate(
        "chat", "--url", url, "--option", "buffering=sentence", "--option", "telemetry=true",
        json.dumps({"mock": {"text": "one two three four five six"}}),
    )  # fmt: skip
    assert cut.returncode == 0, cut.stderr
    assert cut.stdout == "one two three four five six\n"
    bad = run_wsgate("chat", "--url", url, "--option", "buffering=shouting", "hi")
    assert bad.returncode == 1
    assert "buffering" in bad.stderr  # refused by name before anything is sent


def test_chat_help_shows_its_defaults_and_that_a_prompt_may_be_a_mock_script():
    result = run_wsgate("chat", "--help")
    assert "(default: ws://127.0.0.1:8080/v1/ws)" in result.stdout
    assert "(default: mock)" in result.stdout
    assert "mock script" in result.stdout


@pytest.mark.parametrize(
    "command", ["serve", "check-config", "mock-upstream", "chat", "schema", "hash-key", "version"]
)
def test_every_subcommands_help_has_a_description(command):
    result = run_wsgate(command, "--help")
    assert result.returncode == 0
    _usage, _, rest = result.stdout.partition("\n\n")
    assert rest.strip().split("\n")[0][:1].isupper()  # a sentence before the arguments


def test_check_config_strict_exits_2_on_a_missing_file_it_names(tmp_path):
    config = tmp_path / "tls.toml"
    config.write_text(f'[server]\ntls_cert = "{tmp_path}/nope.pem"\ntls_key = "{tmp_path}/k"\n')
    relaxed = run_wsgate("check-config", "--config", str(config))
    assert relaxed.returncode == 0
    assert "server.tls_cert: cannot read" in relaxed.stderr
    strict = run_wsgate("check-config", "--strict", "--config", str(config))
    assert strict.returncode == 2


def test_a_chat_option_that_is_text_stays_text():
    from wsgate.cli import _stream_options  # noqa: PLC0415

    options = _stream_options(["idempotency_key=20261208", "telemetry=true", "debounce_ms=80"])
    assert options == {"idempotency_key": "20261208", "telemetry": True, "debounce_ms": 80}
