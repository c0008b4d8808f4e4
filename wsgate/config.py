"""wsgate's one typed settings object and the loader that layers its sources.

Owns every setting's name, type, default and bounds, and the precedence: defaults < TOML
file < `WSGATE_*` environment < command-line overrides. Every value is checked where it
enters, so a `ConfigError` names the setting and the source it came from (the file, the
variable, the command line) in one line, and never shows a secret. API keys stay lazy:
`ProviderSettings.resolve_api_key` reads the named variable or file only when asked (the
gateway asks for every route as it starts), so a config naming an unset key variable still
loads and `check-config` works without the keys. This module reads files and the
environment it is given, nothing else; it opens no sockets and starts nothing.

Environment variables: `WSGATE_<SECTION>__<FIELD>` (double underscore between levels, names
case-insensitive), e.g. `WSGATE_SERVER__PORT=9000` or
`WSGATE_PROVIDERS__OPENAI__BASE_URL=https://api.openai.com/v1`. Provider names and model
aliases from the environment match an existing one case-insensitively, else are lowercased.
Lists are comma-separated or JSON arrays; an empty value clears an optional setting. A
`WSGATE_` variable that maps to no setting is an error, except those in
`NON_SETTING_ENV_VARS`: `WSGATE_CONFIG` names the config file when none is given, and
`WSGATE_REQUIRE_ALL` is read by the test suite. A higher source that sets one of a
provider's `api_key`, `api_key_env`, `api_key_file` replaces the others set lower down.
"""

from __future__ import annotations

import difflib
import hmac
import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, get_args, get_origin
from urllib.parse import urlsplit

import msgspec
import orjson

from wsgate.core.providers import KIND_NAMES
from wsgate.core.providers import kind as provider_kind

if TYPE_CHECKING:
    from collections.abc import Mapping

REDACTED: Final = "**********"
ENV_PREFIX: Final = "WSGATE_"
NON_SETTING_ENV_VARS: Final = frozenset({"WSGATE_CONFIG", "WSGATE_REQUIRE_ALL"})
API_KEY_FIELDS: Final = ("api_key", "api_key_env", "api_key_file")

_URL_PATTERN: Final = r"^https?://"
_ENV_NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]*$"
_PATTERN_TEXT: Final = {
    _URL_PATTERN: "a URL starting with http:// or https://",
    _ENV_NAME_PATTERN: "an environment variable name (letters, digits, underscores)",
}


class ConfigError(Exception):
    """A setting is missing, unknown or invalid; the message names it and its source."""


class Secret:
    """A string that must never be printed or logged: repr and str show a mask."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("a Secret wraps a string")
        self._value = value

    def get(self) -> str:
        """Return the secret value itself, for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{REDACTED}')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


_Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
_Count = Annotated[int, msgspec.Meta(ge=1)]
_Bytes = Annotated[int, msgspec.Meta(ge=1024)]
_Seconds = Annotated[float, msgspec.Meta(gt=0)]
_Rate = Annotated[float, msgspec.Meta(ge=0)]
_HttpUrl = Annotated[str, msgspec.Meta(pattern=_URL_PATTERN)]
_EnvName = Annotated[str, msgspec.Meta(pattern=_ENV_NAME_PATTERN)]


def check_host(host: str, setting: str) -> None:
    """A listen address as the socket layer takes it: an IPv6 one without brackets."""
    if host.startswith("[") or host.endswith("]"):
        bare = host.strip("[]")
        raise ConfigError(f"{setting}: write an IPv6 address without brackets ({bare!r})")


class ServerSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The WebSocket listener."""

    host: str = "127.0.0.1"
    port: _Port = 8080  # 0 asks the OS for a free port (tests)
    path: str = "/v1/ws"
    # Browser pages that may connect (`["*"]`: any). Empty: with only the mock on loopback,
    # the gateway's own origin; with a real provider or a non-loopback bind, none.
    allowed_origins: list[str] = []
    compression: bool = False
    # The demo page at `/`, where it can work: not with [auth] (it has no sign-in), and with a
    # real provider or a non-loopback bind only if allowed_origins lets pages in. The browser
    # client (/v1/wsgate.js) is always served.
    demo: bool = True
    drain_timeout_s: _Seconds = 20.0  # on SIGTERM: how long running streams may finish
    reconnect_after_ms: Annotated[int, msgspec.Meta(ge=0)] = 1000  # advice in `goaway`
    # UNSAFE: lets a gateway holding a real provider's key listen beyond loopback without
    # authentication (anyone who can reach it spends your key). See `check_exposure`.
    # With [auth] configured: connections without credentials are let in as anonymous.
    allow_anonymous: bool = False
    tls_cert: str | None = None  # PEM certificate chain: the listener speaks wss:// (TLS 1.2+)
    tls_key: str | None = None  # PEM private key of tls_cert; both reloaded on SIGHUP

    def __post_init__(self) -> None:
        check_host(self.host, "server.host")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("server.tls_cert, server.tls_key: set both or neither")


class LimitSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Per-connection and per-stream bounds."""

    max_streams_per_connection: _Count = 256
    max_frame_bytes: _Bytes = 1_048_576
    max_bad_frames: _Count = 100  # refused frames on one connection before it is closed (4500)
    max_detached_streams: _Count = 1024  # gateway-wide detached streams; past it: cancelled
    max_tool_result_bytes: _Bytes = 4_194_304  # per stream: all its tool results (agent loop)
    stream_queue_events: _Count = 256
    stream_queue_bytes: _Bytes = 262_144
    send_timeout_s: _Seconds = 10.0
    telemetry_interval_s: _Seconds = 0.5
    connection_buffer_bytes: _Bytes = 1_048_576  # streams pause at half; slow_consumer past it
    max_stream_duration_s: _Seconds = 900.0
    heartbeat_interval_s: _Seconds = 15.0  # a `heartbeat` frame after this much silence
    ping_interval_s: _Seconds = 20.0  # WebSocket ping; no pong within as long closes
    max_connections: _Count = 10_000  # open WebSocket connections on this node
    max_connections_per_ip: Annotated[int, msgspec.Meta(ge=0)] = 256  # 0: no cap
    max_pending_handshakes: _Count = 256  # TCP connections not yet upgraded (or refused)
    handshake_timeout_s: _Seconds = 10.0  # TCP accept (TLS included) to the upgrade's end


REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")


class StoreSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The resume store: event logs per message, idempotency keys, cross-node cancels."""

    kind: Literal["memory", "redis"] = "memory"  # redis: shared by every node of a cluster
    url: str = "redis://127.0.0.1:6379/0"  # kind = "redis"
    cluster: bool = False  # the url names a Redis Cluster node
    prefix: str = "wsg"  # of every Redis key
    node_id: str = ""  # this node's name in the store; empty: a random one per process
    resume_window_s: _Seconds = 120.0  # logs live this long after their stream ends
    max_log_frames: _Count = 10_000  # per message; past it the oldest frames are dropped
    max_log_bytes: _Bytes = 1_048_576  # per message; past it the oldest frames are dropped
    memory_max_bytes: _Bytes = 268_435_456  # kind = "memory": all logs; oldest ended dropped
    lease_s: _Seconds = 5.0  # a node silent this long is lost: its streams resume as owner_lost
    on_unavailable: Literal["refuse", "run_without_log"] = "refuse"  # new starts, store down

    def __post_init__(self) -> None:
        if not self.url.startswith(REDIS_SCHEMES):
            raise ConfigError("store.url: expected a redis://, rediss:// or unix:// URL")
        if not self.prefix or any(c in self.prefix for c in "{} "):
            raise ConfigError("store.prefix: must be non-empty, without braces or spaces")


class QuotaSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Rate limits and quotas of one principal (anonymous clients: of one client IP); 0: none.

    Enforced per node with the memory store, across every node with the Redis store.
    """

    starts_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 0
    concurrent_streams: Annotated[int, msgspec.Meta(ge=0)] = 0
    tokens_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 0  # prompt and output tokens
    connections: Annotated[int, msgspec.Meta(ge=0)] = 0


class ApiKeySettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One API key, stored as its SHA-256 (`wsgate hash-key` prints it), never in clear."""

    principal: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
    models: list[str] = []  # model aliases this key may use; empty: every model
    quota: QuotaSettings | None = None  # None: [auth.quota]
    revoked: bool = False


JWT_ALGORITHMS: Final = ("HS256", "RS256", "ES256", "EdDSA")


class JwtSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Tokens signed by the operator's identity provider; one key source may be set.

    `algorithms` is an allowlist: a token naming another (`none` included) is refused,
    and an HMAC algorithm is never tried against a public key (HS/RS confusion).
    """

    # None: ["HS256"] with a secret, ["RS256", "ES256", "EdDSA"] with public keys.
    algorithms: list[Literal["HS256", "RS256", "ES256", "EdDSA"]] | None = None
    secret: Secret | None = None  # HS256
    secret_env: _EnvName | None = None  # HS256, from the environment
    public_key_file: str | None = None  # one PEM public key (RS256, ES256, EdDSA)
    jwks_file: str | None = None  # a JWKS document; keys chosen by `kid`
    jwks_url: _HttpUrl | None = None  # fetched at start, cached, fetched again for a new kid
    jwks_refresh_s: _Seconds = 300.0  # fetched again this often; an unknown kid: at most every 5 s
    audience: str | None = None  # `aud` must contain it when set
    issuer: str | None = None  # `iss` must equal it when set
    leeway_s: Annotated[float, msgspec.Meta(ge=0, le=300)] = 30.0  # for exp, nbf, iat
    principal_claim: str = "sub"

    def __post_init__(self) -> None:
        sources = ("secret", "secret_env", "public_key_file", "jwks_file", "jwks_url")
        if sum(getattr(self, name) is not None for name in sources) != 1:
            raise ConfigError(f"auth.jwt: set exactly one of {', '.join(sources)}")
        hmac_key = self.secret is not None or self.secret_env is not None
        if self.algorithms is not None and (hmac_key != (self.algorithms == ["HS256"])):
            raise ConfigError(
                'auth.jwt.algorithms: an HMAC secret goes with ["HS256"] alone, and '
                "public keys with asymmetric algorithms only (HS/RS confusion)"
            )
        if self.algorithms == []:
            raise ConfigError("auth.jwt.algorithms: must not be empty")
        url = self.jwks_url
        if url is not None and url.startswith("http://"):
            host = urlsplit(url).hostname or ""
            if not is_loopback(host):
                raise ConfigError(
                    "auth.jwt.jwks_url: must be https:// (a JWKS read in clear text can be "
                    "replaced on the way, and then any token signed), unless on loopback"
                )

    @property
    def allowed_algorithms(self) -> tuple[str, ...]:
        """The algorithms a token may name."""
        if self.algorithms is not None:
            return tuple(self.algorithms)
        if self.secret is not None or self.secret_env is not None:
            return ("HS256",)
        return ("RS256", "ES256", "EdDSA")


class AuthSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Who may connect: API keys, JWTs, one-time tickets; on when keys or `jwt` are set."""

    api_keys: list[ApiKeySettings] = []
    api_keys_file: str | None = None  # a TOML file of [[api_keys]], read again on SIGHUP
    jwt: JwtSettings | None = None
    timeout_s: _Seconds = 10.0  # for the first `auth` frame of a connection without credentials
    ticket_ttl_s: Annotated[float, msgspec.Meta(gt=0, le=30)] = 30.0
    quota: QuotaSettings = msgspec.field(default_factory=QuotaSettings)  # per principal
    anonymous_quota: QuotaSettings = msgspec.field(default_factory=QuotaSettings)  # per IP

    @property
    def enabled(self) -> bool:
        """Whether connections must authenticate (unless `server.allow_anonymous`)."""
        return bool(self.api_keys) or self.api_keys_file is not None or self.jwt is not None


class ApiSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The HTTP API listener (`POST /v1/tickets`); on when API keys are configured.

    A listener of its own: the WebSocket listener's HTTP parser answers GET only.
    """

    enabled: Literal["auto", "on", "off"] = "auto"
    host: str = "127.0.0.1"
    port: _Port = 8081

    def __post_init__(self) -> None:
        check_host(self.host, "api.host")


class UpstreamSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The provider HTTP client."""

    connect_timeout_s: _Seconds = 10.0
    first_byte_timeout_s: _Seconds = 60.0
    idle_timeout_s: _Seconds = 60.0
    first_token_timeout_s: _Seconds = 120.0  # from the request to the first content delta
    max_line_bytes: _Bytes = 4_194_304
    pool_limit: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: unlimited
    # Before the first token only: connect errors, 429, 5xx/529 and overloaded errors.
    retry_attempts: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2  # 0: no retries
    retry_base_ms: Annotated[float, msgspec.Meta(ge=0)] = 250.0  # full-jitter backoff base
    retry_max_ms: Annotated[float, msgspec.Meta(ge=0)] = 4000.0  # cap of one backoff
    retry_budget_s: _Rate = 15.0  # no retry whose wait ends later than this after the request
    # How provider bodies are read: in the socket's callback (push) or by a task (pull).
    reader: Literal["push", "pull"] = "push"
    # The provider's error message in the client's `error.message` too (cut to 300
    # characters, credentials scrubbed). None: on for the built-in mock only (its script
    # errors reach the client), off for real providers (their text may name accounts).
    expose_provider_errors: bool | None = None


if TYPE_CHECKING:
    KindName = str
else:  # the allowed kinds are the registry's (msgspec checks the Literal at load)
    KindName = Literal[KIND_NAMES]


_HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_HEADER_BAD_VALUE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def read_secret_file(where: str, setting: str) -> str:
    """A secret kept in a file (`~` expanded), stripped; a `ConfigError` naming `setting`."""
    path = Path(where).expanduser()
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{setting}: cannot read {path}: {reason}") from None
    except UnicodeDecodeError:
        # from None: the decode error holds the file's bytes, i.e. the secret.
        raise ConfigError(f"{setting}: {path} is not UTF-8 text") from None


def check_headers(headers: Mapping[str, str], source: str) -> None:
    """Refuse a header name that is not a token, or a value with a control character."""
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ConfigError(f"{source}: {name!r} is not an HTTP header name")
        if _HEADER_BAD_VALUE.search(value):
            raise ConfigError(f"{source}.{name}: a control character in the value")


class ProviderSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One upstream provider; at most one of the three API key sources may be set."""

    kind: KindName = "openai_chat"
    base_url: _HttpUrl
    api_key: Secret | None = None
    api_key_env: _EnvName | None = None
    api_key_file: str | None = None
    max_concurrency: Annotated[int, msgspec.Meta(ge=0)] = 0  # calls in flight; 0: no cap
    # Sent with every call (masked in output): Azure's `api-key`, `anthropic-beta`, ...
    extra_headers: dict[str, Secret] = {}
    query_params: dict[str, Secret] = {}  # e.g. Azure's api-version
    # None: the [upstream] setting of the same name.
    connect_timeout_s: _Seconds | None = None
    first_byte_timeout_s: _Seconds | None = None
    idle_timeout_s: _Seconds | None = None
    reader: Literal["push", "pull"] | None = None

    def __post_init__(self) -> None:
        if sum(getattr(self, name) is not None for name in API_KEY_FIELDS) > 1:
            raise ConfigError("providers: set at most one of api_key, api_key_env, api_key_file")
        extra = {k: v.get() for k, v in self.extra_headers.items()}
        check_headers(extra, "providers: extra_headers")
        # A URL's user:password@ is sent as Authorization: Basic, which cannot go with an
        # Authorization header (a bearer key, or one of extra_headers): every call would fail.
        keyed = any(getattr(self, name) is not None for name in API_KEY_FIELDS)
        bearer = keyed and provider_kind(self.kind).http.key_header == "authorization"
        header = any(name.lower() == "authorization" for name in self.extra_headers)
        if (bearer or header) and "@" in urlsplit(self.base_url).netloc:
            raise ConfigError(
                "providers: base_url carries user:password@ and an Authorization header is "
                "sent too (an api key, or extra_headers); keep one of the two"
            )

    def resolve_api_key(self, environ: Mapping[str, str]) -> str | None:
        """Return the API key from whichever source is set, or None when none is."""
        if self.api_key is not None:
            return self.api_key.get()
        if self.api_key_env is not None:
            value = environ.get(self.api_key_env, "")
            if not value:
                raise ConfigError(f"api_key_env: environment variable {self.api_key_env} is unset")
            return value
        if self.api_key_file is None:
            return None
        value = read_secret_file(self.api_key_file, "api_key_file")
        if not value:
            raise ConfigError(f"api_key_file: {Path(self.api_key_file).expanduser()} is empty")
        return value


class ModelRoute(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A model alias clients may ask for, and the provider that serves it."""

    provider: str
    upstream_model: str | None = None  # None: the alias itself


class MockSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The built-in mock provider; `auto` turns it on when no provider is configured."""

    enabled: Literal["auto", "on", "off"] = "auto"
    host: str = "127.0.0.1"
    port: _Port = 8090
    ttft_ms: _Rate = 150.0
    tokens_per_s: _Rate = 40.0

    def __post_init__(self) -> None:
        check_host(self.host, "mock.host")


_ToolName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class ToolSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A server-side tool of the agent loop (`[tools.NAME]`), run by the gateway.

    `description` and `parameters` (a JSON Schema object) are what the model sees. Kind
    `http`: the call's arguments are POSTed as JSON to `url`, with `headers` (literal,
    masked in output) and headers read from the environment (`headers_env`: header ->
    variable) or from files (`headers_file`: header -> path), at start. Kind `model`: a
    configured model alias is called with `prompt`, in which `{name}` is replaced by the
    argument `name` (`{{` and `}}` are braces), and its answer text is the result.
    """

    kind: Literal["http", "model"] = "http"
    description: Annotated[str, msgspec.Meta(max_length=4096)] = ""
    parameters: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    url: _HttpUrl | None = None
    headers: dict[str, Secret] = {}
    headers_env: dict[str, _EnvName] = {}
    headers_file: dict[str, str] = {}
    model: str | None = None
    prompt: str | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    timeout_s: _Seconds = 30.0
    max_concurrency: _Count = 8  # calls of this tool in flight, gateway-wide; more wait
    max_response_bytes: _Bytes = 1_048_576

    def __post_init__(self) -> None:
        if self.parameters.get("type") != "object":
            raise ConfigError('tools: parameters must be a JSON Schema with "type": "object"')
        for source in ("headers", "headers_env", "headers_file"):
            check_headers(dict.fromkeys(getattr(self, source), ""), f"tools: {source}")
        check_headers({k: v.get() for k, v in self.headers.items()}, "tools: headers")
        if self.kind == "http":
            if self.url is None:
                raise ConfigError("tools: a tool of kind http needs url")
            if self.model is not None or self.prompt is not None:
                raise ConfigError("tools: model and prompt are for kind model")
        else:
            if self.model is None or self.prompt is None:
                raise ConfigError("tools: a tool of kind model needs model and prompt")
            if self.url is not None or self.headers or self.headers_env or self.headers_file:
                raise ConfigError("tools: url and headers are for kind http")

    def definition(self, name: str) -> dict[str, Any]:
        """The tool as the model sees it (OpenAI chat `tools` shape)."""
        function: dict[str, Any] = {"name": name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}

    def resolve_headers(self, environ: Mapping[str, str]) -> dict[str, str]:
        """Every header with its value: literal, from the environment, from a file."""
        out = {name: value.get() for name, value in self.headers.items()}
        for header, variable in self.headers_env.items():
            value = environ.get(variable, "")
            if not value:
                raise ConfigError(f"tools: headers_env.{header}: {variable} is unset")
            out[header] = value
        for header, where in self.headers_file.items():
            out[header] = read_secret_file(where, f"tools: headers_file.{header}")
        check_headers(out, "tools: headers")
        return out


class LogSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Structured logging; prompts stay out of the logs unless `include_prompts`."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    include_prompts: bool = False


class Settings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Everything wsgate can be told; every field has a default except providers' URLs."""

    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    upstream: UpstreamSettings = msgspec.field(default_factory=UpstreamSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    api: ApiSettings = msgspec.field(default_factory=ApiSettings)
    mock: MockSettings = msgspec.field(default_factory=MockSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    providers: dict[str, ProviderSettings] = {}
    models: dict[str, ModelRoute] = {}
    tools: dict[_ToolName, ToolSettings] = {}

    def __post_init__(self) -> None:
        # load_settings checks the same with sources; this guards hand-built Settings.
        if "" in self.providers or "" in self.models:
            raise ConfigError("providers/models: names must not be empty")
        for alias, route in self.models.items():
            if route.provider not in self.providers:
                raise ConfigError(f"models.{alias}.provider: no provider {route.provider!r}")

    @property
    def real_providers(self) -> bool:
        """Whether any provider other than the built-in mock is configured."""
        return bool(self.providers)

    def check_exposure(self) -> None:
        """No open relay: a gateway holding a real provider's key is not open to the network.

        Without authentication anyone who can reach the listener spends the provider's
        key. Listening beyond loopback with a real provider configured needs [auth], or
        `server.allow_anonymous` (`--allow-anonymous`) saying it is meant.
        """
        server = self.server
        if (
            self.real_providers
            and not is_loopback(server.host)
            and not self.auth.enabled
            and not server.allow_anonymous
        ):
            raise ConfigError(
                f"server.host: refusing to listen on {server.host!r} with a real provider "
                "configured and no authentication (anyone who can connect would spend its "
                "API key); configure [auth], listen on 127.0.0.1, or pass --allow-anonymous "
                "(server.allow_anonymous = true) if that is really intended"
            )

    def exposure_warning(self) -> str | None:
        """What an operator must hear at start: who may spend a real provider's key freely."""
        if not self.real_providers or not self.open_to_anonymous:
            return None
        if is_loopback(self.server.host):
            if self.auth.enabled:  # allow_anonymous with auth configured
                return "clients without credentials may use the real providers (loopback only)"
            return None
        return (
            f"listening on {self.server.host!r} with a real provider and anonymous clients "
            "allowed (server.allow_anonymous): anyone who can connect spends its API key"
        )

    @property
    def open_to_anonymous(self) -> bool:
        """Whether clients without credentials may run streams (warned about at start)."""
        return self.server.allow_anonymous or not self.auth.enabled

    @property
    def api_enabled(self) -> bool:
        """Whether the HTTP API listener (tickets) runs."""
        if self.api.enabled == "auto":
            return self.auth.enabled
        return self.api.enabled == "on"

    @property
    def mock_enabled(self) -> bool:
        """Whether wsgate serves from the built-in mock provider."""
        if self.mock.enabled == "auto":
            return not self.providers
        return self.mock.enabled == "on"


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname other than localhost may resolve anywhere


def unresolved(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """What the settings name but the environment or the files do not hold (one line each).

    Provider keys, tool headers, TLS, key and JWKS files are read when the gateway starts,
    so `serve` would stop on the first of these; `check-config` lists them all.
    """
    problems: list[str] = []
    for name, provider in settings.providers.items():
        try:
            provider.resolve_api_key(environ)
        except ConfigError as exc:
            problems.append(f"providers.{name}.{exc}")
    for name, tool in settings.tools.items():
        try:
            tool.resolve_headers(environ)
        except ConfigError as exc:
            problems.append(f"tools.{name}: {str(exc).removeprefix('tools: ')}")
    jwt = settings.auth.jwt
    files = {
        "server.tls_cert": settings.server.tls_cert,
        "server.tls_key": settings.server.tls_key,
        "auth.api_keys_file": settings.auth.api_keys_file,
        "auth.jwt.public_key_file": None if jwt is None else jwt.public_key_file,
        "auth.jwt.jwks_file": None if jwt is None else jwt.jwks_file,
    }
    for setting, where in files.items():
        if where is not None and not os.access(Path(where).expanduser(), os.R_OK):
            problems.append(f"{setting}: cannot read {where}")
    server, api = settings.server, settings.api
    if settings.api_enabled and api.port and (api.host, api.port) == (server.host, server.port):
        problems.append(f"api.port: {api.port} is server.port too (one listener per port)")
    return problems


def settings_summary(settings: Settings) -> dict[str, Any]:
    """Return the settings as a JSON-able dict for the startup log, secrets masked."""
    summary: dict[str, Any] = msgspec.to_builtins(settings, enc_hook=lambda _: REDACTED)
    for provider in summary["providers"].values():
        provider["base_url"] = _mask_userinfo(provider["base_url"])
    summary["store"]["url"] = _mask_userinfo(summary["store"]["url"])  # a Redis password
    for tool in summary["tools"].values():
        if tool["url"] is not None:
            tool["url"] = _mask_userinfo(tool["url"])
    summary["exposure"] = {
        "authentication": settings.auth.enabled,
        "anonymous_clients": settings.open_to_anonymous,
        "warning": settings.exposure_warning(),
    }
    return summary


def _mask_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=f"{REDACTED}@{parts.netloc.rpartition('@')[2]}").geturl()


# --- loading ---------------------------------------------------------------------------

_Key = tuple[str, ...]
_TOML, _ENV, _FLAGS = 0, 1, 2  # layers, lowest precedence first


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Layer defaults, the TOML file, `WSGATE_*` variables and dotted overrides; validate.

    `environ` defaults to `os.environ`; `WSGATE_CONFIG` in it names the file when
    `config_file` is None. `overrides` maps dotted keys (`"server.port"`) to values, as
    command-line flags give them (strings are converted); None values are skipped.
    """
    env = os.environ if environ is None else environ
    named_by = ""
    if config_file is None:
        config_file = next((v for k, v in env.items() if k.upper() == "WSGATE_CONFIG" and v), None)
        named_by = " (named by WSGATE_CONFIG)"
    merger = _Merger()
    if config_file is not None:
        path = os.fspath(config_file)
        merger.walk_table(Settings, _read_toml(path, named_by), (), path)
    for name, raw in sorted(env.items()):
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in NON_SETTING_ENV_VARS:
            merger.set_text(_ENV, upper[len(ENV_PREFIX) :].split("__"), raw, name)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            merger.set_text(_FLAGS, dotted.split("."), value, "command line")
    return merger.build()


def _read_toml(path: str, named_by: str) -> dict[str, Any]:
    where = f"config file {path}{named_by}"
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{where}: not found") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{where}: cannot read it: {reason}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line N, column M)"; it never quotes the text.
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None


class _Merger:
    """The layered values as one nested dict, with the layer and source of each key."""

    def __init__(self) -> None:
        self.tree: dict[str, Any] = {}
        self.origins: dict[_Key, tuple[int, str]] = {}

    def walk_table(self, tp: Any, table: dict[str, Any], key: _Key, source: str) -> None:
        """Add a TOML table; its values are typed already, so they convert strictly."""
        self._node(key, _TOML, source)
        for name, value in table.items():
            child = _child(tp, name, key, source)
            if isinstance(value, dict) and _is_table(child):
                self.walk_table(child, value, (*key, name), source)
            else:
                typed = _convert(value, child, (*key, name), source, strict=True)
                self._set(_TOML, (*key, name), typed, source)

    def set_text(self, layer: int, parts: list[str], value: Any, source: str) -> None:
        """Add one value addressed by name parts, as text from the environment or a flag."""
        tp: Any = Settings
        key: _Key = ()
        for part in parts:
            name = part.lower()
            if _dict_value(tp) is not None:
                # Env names are upper case: match a name the file gave in another case.
                name = next((k for k in self._node(key, layer, source) if k.lower() == name), name)
            tp = _child(tp, name, key, source)
            key = (*key, name)
        if _is_table(tp):
            raise ConfigError(f"{_dotted(key)} ({source}): is a table; set one of its fields")
        typed = _from_text(value, tp) if isinstance(value, str) else value
        self._set(layer, key, _convert(typed, tp, key, source, strict=False), source)

    def _node(self, key: _Key, layer: int, source: str) -> dict[str, Any]:
        node = self.tree
        for depth, step in enumerate(key, 1):
            if step not in node:
                node[step] = {}
                self.origins.setdefault(key[:depth], (layer, source))
            node = node[step]
        return node

    def _set(self, layer: int, key: _Key, value: Any, source: str) -> None:
        parent = self._node(key[:-1], layer, source)
        if key[0] == "providers" and key[-1] in API_KEY_FIELDS and value is not None:
            for other in API_KEY_FIELDS:
                if other == key[-1] or parent.get(other) is None:
                    continue
                other_layer, other_source = self.origins[(*key[:-1], other)]
                if other_layer == layer:
                    both = source if other_source == source else f"{other_source}, {source}"
                    raise ConfigError(
                        f"{_dotted(key[:-1])} ({both}): set at most one of "
                        "api_key, api_key_env, api_key_file"
                    )
                del parent[other]  # a higher source's key replaces a lower one's
        parent[key[-1]] = value
        self.origins[key] = (layer, source)

    def build(self) -> Settings:
        """Check required fields and routes with their sources, then make the Settings."""
        self._check_required(Settings, self.tree, ())
        providers = self.tree.get("providers", {})
        for alias, route in self.tree.get("models", {}).items():
            if route["provider"] not in providers:
                key = ("models", alias, "provider")
                configured = ", ".join(sorted(providers)) or "none"
                raise ConfigError(
                    f"{_dotted(key)} ({self.origins[key][1]}): no provider named "
                    f"{route['provider']!r} (configured: {configured})"
                )
        try:
            return msgspec.convert(self.tree, Settings, dec_hook=_dec_hook)
        except msgspec.ValidationError as exc:  # every value was checked on entry
            raise ConfigError(f"settings: {exc}") from None

    def _check_required(self, tp: Any, node: dict[str, Any], key: _Key) -> None:
        if (value_type := _dict_value(tp)) is not None:
            for name, child in node.items():
                self._check_required(value_type, child, (*key, name))
            return
        if not _is_struct(tp):
            return  # free-form JSON (a tool's `parameters`): nothing is required in it
        for field in msgspec.structs.fields(tp):
            if field.name in node:
                if _is_table(field.type):
                    self._check_required(field.type, node[field.name], (*key, field.name))
            elif field.required:
                source = self.origins[key][1]
                missing = _dotted((*key, field.name))
                raise ConfigError(f"{missing} ({source}): required setting is missing")


def _dotted(key: _Key) -> str:
    return ".".join(key) or "settings"


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _dict_value(tp: Any) -> Any:
    """Return the value type of a `dict[str, X]` table, or None for anything else."""
    return get_args(tp)[1] if get_origin(tp) is dict else None


def _is_table(tp: Any) -> bool:
    return _is_struct(tp) or _dict_value(tp) is not None


def _child(tp: Any, name: str, key: _Key, source: str) -> Any:
    """Return the type of `name` inside the table `tp` at `key`; unknown names are errors."""
    if (value_type := _dict_value(tp)) is not None:
        if not name:
            raise ConfigError(f"{_dotted(key)} ({source}): a name must not be empty")
        return value_type
    fields = {f.name: f.type for f in msgspec.structs.fields(tp)} if _is_struct(tp) else {}
    if name in fields:
        return fields[name]
    close = difflib.get_close_matches(name, fields, n=1)
    hint = f"; did you mean {_dotted((*key, close[0]))}?" if close else ""
    raise ConfigError(f"{_dotted((*key, name))} ({source}): unknown setting{hint}")


def _from_text(text: str, tp: Any) -> Any:
    """Turn environment/flag text into the JSON-like value the field's type expects."""
    info = msgspec.inspect.type_info(tp)
    options = info.types if isinstance(info, msgspec.inspect.UnionType) else (info,)
    if not text.strip() and any(isinstance(t, msgspec.inspect.NoneType) for t in options):
        return None
    if any(isinstance(t, msgspec.inspect.ListType) for t in options):
        if text.lstrip().startswith("["):
            try:
                return orjson.loads(text)
            except orjson.JSONDecodeError:
                return text  # _convert reports it with the expected type
        return [item.strip() for item in text.split(",") if item.strip()]
    if any(isinstance(t, msgspec.inspect.LiteralType) for t in options):
        return text.strip().lower()
    return text


def _dec_hook(tp: type, obj: Any) -> Any:
    if tp is Secret:
        if isinstance(obj, Secret):
            return obj
        if isinstance(obj, str):
            return Secret(obj)
        raise TypeError("expected a string")
    raise NotImplementedError


def _convert(value: Any, tp: Any, key: _Key, source: str, *, strict: bool) -> Any:
    try:
        return msgspec.convert(value, tp, strict=strict, dec_hook=_dec_hook)
    except msgspec.ValidationError:
        pass
    expected = _describe(msgspec.inspect.type_info(tp))
    got = "" if key[-1] in API_KEY_FIELDS else f", got {_show(value)}"
    raise ConfigError(f"{_dotted(key)} ({source}): expected {expected}{got}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


_NOUNS: Final[dict[type, str]] = {
    msgspec.inspect.BoolType: "true or false",
    msgspec.inspect.StrType: "a string",
    msgspec.inspect.CustomType: "a string",
    msgspec.inspect.ListType: "a list of strings",
    msgspec.inspect.StructType: "a table",
    msgspec.inspect.DictType: "a table",
}


def _describe(info: Any) -> str:
    inspect = msgspec.inspect
    if isinstance(info, inspect.UnionType):
        kinds = [_describe(t) for t in info.types if not isinstance(t, inspect.NoneType)]
        return " or ".join(kinds)
    if isinstance(info, inspect.LiteralType):
        return "one of " + ", ".join(repr(v) for v in info.values)
    if isinstance(info, inspect.StrType) and info.pattern in _PATTERN_TEXT:
        return _PATTERN_TEXT[info.pattern]
    if isinstance(info, inspect.IntType | inspect.FloatType):
        noun = "an integer" if isinstance(info, inspect.IntType) else "a number"
        if info.ge is not None and info.le is not None:
            return f"{noun} between {info.ge} and {info.le}"
        bounds = [(">", info.gt), (">=", info.ge), ("<", info.lt), ("<=", info.le)]
        limits = " and ".join(f"{op} {limit}" for op, limit in bounds if limit is not None)
        return f"{noun} {limits}" if limits else noun
    return _NOUNS.get(type(info), "a valid value")
