from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from wsgate.app import build_routes, gateway_options
from wsgate.config import (
    ConfigError,
    ModelRoute,
    ProviderSettings,
    Secret,
    ServerSettings,
    Settings,
    load_settings,
    settings_summary,
)
from wsgate.core.retry import RetryPolicy
from wsgate.upstream.client import Timeouts

EXAMPLE = Path(__file__).resolve().parent.parent / "wsgate.example.toml"
PROVIDER_TOML = """
[providers.openai]
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"

[models.gpt]
provider = "openai"
upstream_model = "gpt-4o-mini"
"""


@pytest.fixture
def write_toml(tmp_path):
    def write(text: str, name: str = "wsgate.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def test_defaults_apply_when_nothing_is_configured():
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.server.path == "/v1/ws"
    assert settings.server.allowed_origins == []
    assert settings.limits.max_streams_per_connection == 256
    assert settings.limits.stream_queue_bytes == 262144
    assert settings.upstream.max_line_bytes == 4194304
    assert settings.upstream.pool_limit == 0
    assert settings.log.level == "info"
    assert settings.log.format == "json"
    assert settings.providers == {}
    assert settings.models == {}
    assert settings.mock_enabled


def test_toml_file_overrides_defaults(write_toml):
    path = write_toml('[server]\nport = 9001\nallowed_origins = ["https://a.example"]\n')
    settings = load_settings(path, environ={})
    assert settings.server.port == 9001
    assert settings.server.allowed_origins == ["https://a.example"]
    assert settings.server.host == "127.0.0.1"


def test_environment_overrides_toml_file(write_toml):
    path = write_toml("[server]\nport = 9001\n[log]\nlevel = 'warning'\n")
    settings = load_settings(path, environ={"WSGATE_SERVER__PORT": "9000"})
    assert settings.server.port == 9000
    assert settings.log.level == "warning"


def test_overrides_beat_environment_and_file(write_toml):
    path = write_toml("[server]\nport = 9001\n")
    settings = load_settings(
        path,
        environ={"WSGATE_SERVER__PORT": "9000", "WSGATE_LOG__LEVEL": "error"},
        overrides={"server.port": 9002, "log.level": "debug", "server.host": None},
    )
    assert settings.server.port == 9002
    assert settings.log.level == "debug"
    assert settings.server.host == "127.0.0.1"


def test_overrides_given_as_text_are_converted():
    settings = load_settings(environ={}, overrides={"limits.send_timeout_s": "2.5"})
    assert settings.limits.send_timeout_s == 2.5


def test_environment_names_and_literal_values_are_case_insensitive():
    settings = load_settings(
        environ={"wsgate_log__Level": "DEBUG", "WSGATE_SERVER__COMPRESSION": "true"}
    )
    assert settings.log.level == "debug"
    assert settings.server.compression is True


def test_environment_lists_accept_commas_and_json_arrays():
    by_commas = load_settings(environ={"WSGATE_SERVER__ALLOWED_ORIGINS": "https://a, https://b"})
    by_json = load_settings(environ={"WSGATE_SERVER__ALLOWED_ORIGINS": '["https://a","https://b"]'})
    assert by_commas.server.allowed_origins == ["https://a", "https://b"]
    assert by_json.server.allowed_origins == ["https://a", "https://b"]


def test_provider_from_toml_takes_api_key_from_environment(write_toml):
    path = write_toml(
        '[providers.OpenAI]\nbase_url = "https://api.openai.com/v1"\n'
        '[models.gpt]\nprovider = "OpenAI"\n'
    )
    settings = load_settings(path, environ={"WSGATE_PROVIDERS__OPENAI__API_KEY": "sk-from-env"})
    provider = settings.providers["OpenAI"]
    assert provider.base_url == "https://api.openai.com/v1"
    assert provider.api_key == Secret("sk-from-env")
    assert provider.resolve_api_key({}) == "sk-from-env"
    assert settings.models["gpt"] == ModelRoute(provider="OpenAI")
    assert not settings.mock_enabled


def test_providers_and_routes_can_come_from_environment_alone():
    settings = load_settings(
        environ={
            "WSGATE_PROVIDERS__LOCAL__BASE_URL": "http://127.0.0.1:8090/v1",
            "WSGATE_MODELS__TINY__PROVIDER": "local",
        }
    )
    assert settings.providers["local"].api_key is None
    assert settings.models["tiny"].provider == "local"
    assert settings.providers["local"].resolve_api_key({}) is None


def test_api_key_from_higher_source_replaces_api_key_env_from_file(write_toml):
    path = write_toml(PROVIDER_TOML)
    settings = load_settings(path, environ={"WSGATE_PROVIDERS__OPENAI__API_KEY": "sk-env"})
    assert settings.providers["openai"].api_key_env is None
    assert settings.providers["openai"].resolve_api_key({}) == "sk-env"


def test_empty_environment_value_clears_an_optional_setting(write_toml):
    path = write_toml(PROVIDER_TOML)
    settings = load_settings(path, environ={"WSGATE_PROVIDERS__OPENAI__API_KEY_ENV": ""})
    assert settings.providers["openai"].api_key_env is None


def test_unknown_toml_key_is_an_error_naming_key_and_file(write_toml):
    path = write_toml("[server]\nprot = 9000\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(info.value) == f"server.prot ({path}): unknown setting; did you mean server.port?"


def test_unknown_toml_section_is_an_error(write_toml):
    path = write_toml("[sever]\nport = 9000\n")
    with pytest.raises(ConfigError, match=r"^sever \(.*\): unknown setting; did you mean server"):
        load_settings(path, environ={})


def test_wrong_type_in_toml_is_not_coerced(write_toml):
    path = write_toml('[server]\nport = "9000"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(info.value) == (
        f"server.port ({path}): expected an integer between 0 and 65535, got '9000'"
    )


def test_bad_type_from_environment_names_the_variable():
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"WSGATE_SERVER__PORT": "abc"})
    assert str(info.value) == (
        "server.port (WSGATE_SERVER__PORT): expected an integer between 0 and 65535, got 'abc'"
    )


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("WSGATE_LIMITS__MAX_STREAMS_PER_CONNECTION", "0", "an integer >= 1"),
        ("WSGATE_LIMITS__MAX_FRAME_BYTES", "1023", "an integer >= 1024"),
        ("WSGATE_LIMITS__SEND_TIMEOUT_S", "0", "a number > 0"),
        ("WSGATE_MOCK__TTFT_MS", "-1", "a number >= 0"),
        ("WSGATE_MOCK__ENABLED", "maybe", "one of 'auto', 'off', 'on'"),
        ("WSGATE_SERVER__COMPRESSION", "yes", "true or false"),
        ("WSGATE_UPSTREAM__POOL_LIMIT", "-1", "an integer >= 0"),
    ],
)
def test_out_of_range_values_are_errors_that_say_what_is_expected(name, value, expected):
    with pytest.raises(ConfigError) as info:
        load_settings(environ={name: value})
    assert f"({name}): expected {expected}, got '{value}'" in str(info.value)


def test_bad_value_from_command_line_names_the_command_line():
    with pytest.raises(ConfigError, match=r"^server\.port \(command line\): expected"):
        load_settings(environ={}, overrides={"server.port": 70000})


def test_unknown_wsgate_variable_is_an_error():
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"WSGATE_SERVER__PROT": "9000"})
    assert str(info.value).startswith("server.prot (WSGATE_SERVER__PROT): unknown setting")


def test_single_underscore_typo_is_an_error():
    with pytest.raises(ConfigError, match="WSGATE_SERVER_PORT"):
        load_settings(environ={"WSGATE_SERVER_PORT": "9000"})


def test_variable_naming_a_whole_section_is_an_error():
    with pytest.raises(ConfigError, match=r"^server \(WSGATE_SERVER\): is a table"):
        load_settings(environ={"WSGATE_SERVER": "x"})


def test_unknown_command_line_key_is_an_error():
    with pytest.raises(ConfigError, match=r"^log\.colour \(command line\): unknown setting"):
        load_settings(environ={}, overrides={"log.colour": "x"})


def test_allowlisted_variables_and_foreign_variables_are_ignored():
    settings = load_settings(
        environ={"WSGATE_REQUIRE_ALL": "1", "WSGATE_CONFIG": "", "OPENAI_API_KEY": "sk-x"}
    )
    assert settings == Settings()


def test_model_route_to_missing_provider_is_an_error(write_toml):
    path = write_toml("[models.gpt]\nprovider = 'openai'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(info.value) == (
        f"models.gpt.provider ({path}): no provider named 'openai' (configured: none)"
    )


def test_provider_without_base_url_is_an_error_naming_its_source():
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"WSGATE_PROVIDERS__OPENAI__API_KEY": "sk-secret-value"})
    message = str(info.value)
    assert message == (
        "providers.openai.base_url (WSGATE_PROVIDERS__OPENAI__API_KEY): required setting is missing"
    )


def test_base_url_must_be_http_or_https(write_toml):
    path = write_toml("[providers.a]\nbase_url = 'ftp://example.com'\n")
    with pytest.raises(ConfigError, match="a URL starting with http:// or https://"):
        load_settings(path, environ={})


def test_empty_provider_name_is_an_error(write_toml):
    path = write_toml('[providers.""]\nbase_url = "https://x"\n')
    with pytest.raises(ConfigError, match="a name must not be empty"):
        load_settings(path, environ={})


def test_two_api_key_sources_in_one_file_are_an_error(write_toml):
    path = write_toml(
        "[providers.a]\nbase_url = 'https://x'\napi_key = 'sk-one'\napi_key_env = 'KEY'\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert "set at most one of api_key, api_key_env, api_key_file" in str(info.value)
    assert "sk-one" not in str(info.value)


def test_hand_built_settings_are_checked_too():
    with pytest.raises(ConfigError, match=r"models\.gpt\.provider"):
        Settings(models={"gpt": ModelRoute(provider="nope")})
    with pytest.raises(ConfigError, match="at most one"):
        ProviderSettings(base_url="https://x", api_key=Secret("k"), api_key_env="K")


def test_secret_never_appears_in_repr_str_or_summary(write_toml):
    path = write_toml(
        "[providers.a]\nbase_url = 'https://x.example/v1'\napi_key = 'sk-top'\n"
        "[providers.b]\nbase_url = 'https://user:pw@x.example/v1'\n"
    )
    settings = load_settings(path, environ={})
    secret = settings.providers["a"].api_key
    assert secret is not None
    assert secret.get() == "sk-top"
    assert repr(secret) == str(secret) == "Secret('**********')"
    assert "sk-top" not in repr(settings)
    assert "sk-top" not in str(settings)
    summary = settings_summary(settings)
    dumped = orjson.dumps(summary).decode()
    assert "sk-top" not in dumped
    assert summary["providers"]["a"]["api_key"] == "**********"
    assert summary["providers"]["b"]["base_url"] == "https://**********@x.example/v1"
    assert summary["server"] == {
        "host": "127.0.0.1",
        "port": 8080,
        "path": "/v1/ws",
        "allowed_origins": [],
        "compression": False,
        "demo": True,
        "drain_timeout_s": 20.0,
        "reconnect_after_ms": 1000,
        "allow_anonymous": False,
        "tls_cert": None,
        "tls_key": None,
    }


def test_secret_value_never_appears_in_errors(write_toml):
    path = write_toml("[providers.a]\nbase_url = 'https://x'\napi_key = 12345678\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(info.value) == f"providers.a.api_key ({path}): expected a string"
    with pytest.raises(ConfigError) as info:
        load_settings(
            environ={
                "WSGATE_PROVIDERS__A__BASE_URL": "https://x",
                "WSGATE_PROVIDERS__A__API_KEY_ENV": "sk-pasted-key",
            }
        )
    assert "sk-pasted-key" not in str(info.value)


def test_api_key_env_is_resolved_lazily(write_toml):
    settings = load_settings(write_toml(PROVIDER_TOML), environ={})
    provider = settings.providers["openai"]
    assert provider.resolve_api_key({"OPENAI_API_KEY": "sk-live"}) == "sk-live"
    with pytest.raises(ConfigError) as info:
        provider.resolve_api_key({})
    assert str(info.value) == "api_key_env: environment variable OPENAI_API_KEY is unset"


def test_api_key_file_is_read_and_stripped(tmp_path):
    key_file = tmp_path / "key.txt"
    key_file.write_text("sk-in-file\n", encoding="utf-8")
    provider = ProviderSettings(base_url="https://x", api_key_file=str(key_file))
    assert provider.resolve_api_key({}) == "sk-in-file"


def test_unreadable_or_empty_api_key_file_is_an_error_naming_the_path(tmp_path):
    missing = ProviderSettings(base_url="https://x", api_key_file=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"^api_key_file: cannot read .*nope"):
        missing.resolve_api_key({})
    (tmp_path / "empty").write_text("\n", encoding="utf-8")
    empty = ProviderSettings(base_url="https://x", api_key_file=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="is empty"):
        empty.resolve_api_key({})
    (tmp_path / "binary").write_bytes(b"sk-\xff\xfe")
    binary = ProviderSettings(base_url="https://x", api_key_file=str(tmp_path / "binary"))
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        binary.resolve_api_key({})
    assert info.value.__cause__ is None


def test_wsgate_config_names_the_file_when_none_is_given(write_toml):
    path = write_toml("[server]\nport = 9100\n")
    other = write_toml("[server]\nport = 9200\n", name="other.toml")
    assert load_settings(environ={"WSGATE_CONFIG": str(path)}).server.port == 9100
    assert load_settings(other, environ={"WSGATE_CONFIG": str(path)}).server.port == 9200


def test_missing_config_file_is_an_error_naming_the_path(tmp_path):
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(missing, environ={})
    assert str(info.value) == f"config file {missing}: not found"
    with pytest.raises(ConfigError, match="named by WSGATE_CONFIG"):
        load_settings(environ={"WSGATE_CONFIG": str(missing)})


def test_invalid_toml_reports_path_and_line(write_toml):
    path = write_toml("[server]\nport = 1\nhost = \n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert message.startswith(f"config file {path}: invalid TOML")
    assert "line 3" in message


def test_non_utf8_config_file_is_an_error(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[server]\nhost = '\xe9'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(path, environ={})


def test_example_config_loads_without_its_api_key_variable():
    settings = load_settings(EXAMPLE, environ={})
    assert settings.providers["openai"].api_key_env == "OPENAI_API_KEY"
    assert settings.models["gpt"].provider == "openai"
    assert settings.server == ServerSettings()
    assert not settings.mock_enabled


def test_mock_enabled_follows_the_explicit_setting():
    assert not load_settings(environ={"WSGATE_MOCK__ENABLED": "off"}).mock_enabled
    on = load_settings(EXAMPLE, environ={"WSGATE_MOCK__ENABLED": "on"})
    assert on.mock_enabled


def test_secrets_compare_by_value():
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    with pytest.raises(TypeError):
        Secret(1)  # type: ignore[arg-type]


ROUTING_TOML = """
[upstream]
first_byte_timeout_s = 30
retry_attempts = 3
retry_base_ms = 100
retry_max_ms = 2000
retry_budget_s = 8

[providers.claude]
kind = "anthropic"
base_url = "https://api.anthropic.com/v1"
api_key_env = "ANTHROPIC_API_KEY"
max_concurrency = 16
first_byte_timeout_s = 90

[providers.local]
kind = "ollama"
base_url = "http://127.0.0.1:11434"

[models.sonnet]
provider = "claude"
upstream_model = "claude-sonnet-4-5"

[models.llama]
provider = "local"
upstream_model = "llama3.2"
"""


def test_routes_carry_each_provider_kind_cap_timeouts_and_upstream_model(write_toml):
    settings = load_settings(write_toml(ROUTING_TOML), environ={})
    routes = build_routes(settings, {"ANTHROPIC_API_KEY": "sk-ant"})
    sonnet, llama = routes["sonnet"], routes["llama"]
    assert (sonnet.kind, sonnet.upstream_model, sonnet.api_key) == (
        "anthropic",
        "claude-sonnet-4-5",
        "sk-ant",
    )
    assert sonnet.max_concurrency == 16
    assert sonnet.timeouts == Timeouts(connect=10.0, first_byte=90.0, idle=60.0)
    assert (llama.kind, llama.api_key, llama.max_concurrency) == ("ollama", None, 0)
    assert llama.timeouts == Timeouts(connect=10.0, first_byte=30.0, idle=60.0)


def test_the_retry_policy_comes_from_the_upstream_settings(write_toml):
    settings = load_settings(write_toml(ROUTING_TOML), environ={})
    assert gateway_options(settings).connection.retry == RetryPolicy(
        max_attempts=3, base_delay=0.1, max_delay=2.0, budget=8.0
    )


def test_an_unknown_provider_kind_is_a_one_line_error(write_toml):
    path = write_toml("[providers.x]\nkind = 'gemini'\nbase_url = 'https://x'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert message.startswith(f"providers.x.kind ({path}):")
    assert "anthropic" in message


def test_the_example_configuration_routes_every_provider_kind():
    settings = load_settings(EXAMPLE, environ={})
    environ = {"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"}
    kinds = {route.kind for route in build_routes(settings, environ).values()}
    assert kinds == {"openai_chat", "openai_responses", "anthropic", "ollama"}
    settings.check_exposure()  # the example listens on loopback


def test_the_readme_configuration_example_loads_and_routes(tmp_path):
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    providers, tools, cluster, security = re.findall(r"```toml\n(.*?)```", readme, flags=re.DOTALL)
    path = tmp_path / "readme.toml"
    path.write_text(providers, encoding="utf-8")
    settings = load_settings(path, environ={})
    routes = build_routes(settings, {"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"})
    assert {route.kind for route in routes.values()} == {"openai_chat", "anthropic"}
    path.write_text(providers + tools, encoding="utf-8")
    configured = load_settings(path, environ={}).tools
    assert {name: tool.kind for name, tool in configured.items()} == {
        "weather": "http",
        "summarise": "model",
    }
    path.write_text(cluster, encoding="utf-8")
    assert load_settings(path, environ={}).store.kind == "redis"
    path.write_text(security, encoding="utf-8")
    auth = load_settings(path, environ={}).auth
    assert auth.enabled
    assert auth.api_keys[0].quota is not None
    assert auth.quota.concurrent_streams == 4


def test_a_store_url_that_is_not_redis_is_refused_without_echoing_it():
    with pytest.raises(ConfigError, match=r"store\.url") as caught:
        load_settings(None, environ={}, overrides={"store.url": "http://user:secret@x/0"})
    assert "secret" not in str(caught.value)


def test_the_settings_summary_masks_a_redis_password():
    settings = load_settings(
        None, environ={}, overrides={"store.url": "redis://:hunter2@127.0.0.1:6379/0"}
    )
    assert "hunter2" not in orjson.dumps(settings_summary(settings)).decode()


# --- [auth], the open-relay rule and TLS ---------------------------------------------------

REAL = (
    '[providers.openai]\nbase_url = "https://api.example.invalid/v1"\n'
    '[models.gpt]\nprovider = "openai"\n'
)
AUTH = '[[auth.api_keys]]\nprincipal = "app"\nsha256 = "' + "ab" * 32 + '"\n'


def test_a_real_provider_beyond_loopback_is_allowed_once_auth_is_configured(write_toml):
    settings = load_settings(write_toml(REAL + AUTH), environ={}, overrides={"server.host": "::"})
    settings.check_exposure()
    assert settings.auth.enabled
    assert not settings.open_to_anonymous
    assert settings.exposure_warning() is None
    assert settings_summary(settings)["exposure"] == {
        "authentication": True,
        "anonymous_clients": False,
        "warning": None,
    }


def test_a_real_provider_beyond_loopback_without_auth_is_refused(write_toml):
    settings = load_settings(write_toml(REAL), environ={}, overrides={"server.host": "0.0.0.0"})
    with pytest.raises(ConfigError, match=r"configure \[auth\]"):
        settings.check_exposure()


def test_allow_anonymous_beyond_loopback_is_warned_about_and_shown_by_check_config(write_toml):
    overrides = {"server.host": "0.0.0.0", "server.allow_anonymous": "true"}
    settings = load_settings(write_toml(REAL + AUTH), environ={}, overrides=overrides)
    settings.check_exposure()
    assert settings.open_to_anonymous
    exposure = settings_summary(settings)["exposure"]
    assert exposure["anonymous_clients"] is True
    assert "anyone who can connect spends its API key" in exposure["warning"]


@pytest.mark.parametrize(
    ("jwt_table", "message"),
    [
        ('secret = "s"\nalgorithms = ["RS256"]', "HS/RS confusion"),
        ('public_key_file = "k.pem"\nalgorithms = ["HS256"]', "HS/RS confusion"),
        ('secret = "s"\njwks_url = "https://idp.example/jwks"', "exactly one of"),
        ("audience = 'x'", "exactly one of"),
        ('secret = "s"\nalgorithms = ["none"]', "auth.jwt"),
        ('jwks_url = "http://idp.example/jwks"', "must be https"),
    ],
)
def test_jwt_settings_that_would_weaken_verification_are_refused(write_toml, jwt_table, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(write_toml(f"[auth.jwt]\n{jwt_table}\n"), environ={})


def test_a_jwks_url_in_clear_text_is_accepted_on_loopback_only(write_toml):
    local = load_settings(write_toml('[auth.jwt]\njwks_url = "http://127.0.0.1:9/j"\n'), environ={})
    assert local.auth.jwt is not None


def test_jwt_algorithms_default_to_the_key_kind(write_toml):
    hmac = load_settings(write_toml('[auth.jwt]\nsecret = "s"\n'), environ={})
    assert hmac.auth.jwt is not None
    assert hmac.auth.jwt.allowed_algorithms == ("HS256",)
    public = load_settings(write_toml('[auth.jwt]\njwks_file = "j.json"\n', "b.toml"), environ={})
    assert public.auth.jwt is not None
    assert public.auth.jwt.allowed_algorithms == ("RS256", "ES256", "EdDSA")


def test_an_api_key_is_configured_by_its_sha256_only(write_toml):
    with pytest.raises(ConfigError, match="sha256"):
        load_settings(
            write_toml('[[auth.api_keys]]\nprincipal = "a"\nsha256 = "sk-x"\n'), environ={}
        )


def test_tls_needs_both_a_certificate_and_its_key(write_toml):
    with pytest.raises(ConfigError, match="set both or neither"):
        load_settings(write_toml('[server]\ntls_cert = "c.pem"\n'), environ={})


def test_a_ticket_lives_at_most_30_seconds(write_toml):
    with pytest.raises(ConfigError, match="ticket_ttl_s"):
        load_settings(write_toml("[auth]\nticket_ttl_s = 60\n"), environ={})


def test_a_tool_of_kind_http_needs_a_url_and_a_model_tool_its_model_and_prompt(tmp_path):
    cases = {
        "[tools.t]\n": "needs url",
        '[tools.t]\nkind = "model"\nmodel = "m"\n': "needs model and prompt",
        '[tools.t]\nurl = "http://x"\nparameters = { type = "array" }\n': "type",
        '[tools.t]\nurl = "http://x"\nprompt = "p"\n': "for kind model",
        '[tools."bad name"]\nurl = "http://x"\n': "tools",
        '[tools.t]\nurl = "http://x"\nheaders = { "Bad Header" = "v" }\n': "header name",
        '[tools.t]\nurl = "http://x"\nheaders = { A = "v\\nX: 1" }\n': "control character",
    }
    for text, message in cases.items():
        path = tmp_path / "tools.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_settings(path, environ={})


def test_a_tools_headers_come_from_the_environment_and_files_and_an_unset_one_is_named(
    tmp_path,
):
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    path = tmp_path / "tools.toml"
    path.write_text(
        '[tools.t]\nurl = "http://x"\nheaders = { A = "lit" }\n'
        'headers_env = { B = "TOOL_B" }\n'
        f'headers_file = {{ C = "{secret}" }}\n'
    )
    tool = load_settings(path, environ={}).tools["t"]
    assert tool.resolve_headers({"TOOL_B": "env"}) == {"A": "lit", "B": "env", "C": "from-file"}
    assert "lit" not in repr(tool)
    with pytest.raises(ConfigError, match="TOOL_B is unset"):
        tool.resolve_headers({})
    with pytest.raises(ConfigError, match="control character"):
        tool.resolve_headers({"TOOL_B": "two\nlines"})


def test_a_bracketed_ipv6_host_is_refused_with_the_bare_form():
    with pytest.raises(ConfigError, match=r"without brackets \('::1'\)"):
        load_settings(None, environ={}, overrides={"server.host": "[::1]"})


def test_a_providers_extra_headers_and_query_params_are_masked_and_checked(tmp_path):
    path = tmp_path / "azure.toml"
    path.write_text(
        '[providers.azure]\nbase_url = "https://x.openai.azure.com/openai/deployments/d"\n'
        'extra_headers = { api-key = "azure-secret" }\n'
        'query_params = { api-version = "2025-01-01" }\n'
        '[models.gpt]\nprovider = "azure"\n'
    )
    settings = load_settings(path, environ={})
    summary = orjson.dumps(settings_summary(settings)).decode()
    assert "azure-secret" not in summary
    routes = build_routes(settings, {})
    assert dict(routes["gpt"].extra_headers) == {"api-key": "azure-secret"}
    assert dict(routes["gpt"].query_params) == {"api-version": "2025-01-01"}
    path.write_text('[providers.p]\nbase_url = "https://x"\nextra_headers = { "a b" = "v" }\n')
    with pytest.raises(ConfigError, match="not an HTTP header name"):
        load_settings(path, environ={})


def test_a_base_url_with_userinfo_and_an_api_key_is_refused_at_load():
    with pytest.raises(ConfigError, match="user:password@ and an Authorization header"):
        load_settings(
            None,
            environ={},
            overrides={
                "providers.p.base_url": "https://u:pw@example.com/v1",
                "providers.p.api_key": "sk-x",
            },
        )
