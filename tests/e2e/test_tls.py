"""wss:// end to end: certificates made in the test (trustme), streams over TLS, the reload.

The gateway speaks TLS when `server.tls_cert` / `tls_key` are set (gateway/tls.py); SIGHUP
(`App.reload`) loads a replaced pair into the same context, so new handshakes see the new
certificate while a bad pair leaves the old one serving.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
import trustme
from cryptography import x509
from e2e_helpers import mock_request, raw_connect, stream_text
from proc_helpers import clean_env, stop
from websockets.asyncio.client import connect

from wsgate.app import App
from wsgate.config import load_settings
from wsgate.gateway.tls import ServerTls, TlsError


class Pair:
    """A CA, and the certificate files a gateway is configured with."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.cert_file = directory / "cert.pem"
        self.key_file = directory / "key.pem"

    def issue(self, common_name: str = "wsgate-test") -> int:
        """Write a new certificate for 127.0.0.1 (and its key); its serial."""
        cert = self.ca.issue_cert("127.0.0.1", common_name=common_name)
        self.cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        self.key_file.write_bytes(cert.private_key_pem.bytes())
        return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).serial_number

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def settings(self) -> dict[str, str]:
        return {"server.tls_cert": str(self.cert_file), "server.tls_key": str(self.key_file)}


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return Pair(tmp_path)


async def peer_serial(url: str, context: ssl.SSLContext) -> int:
    """The serial of the certificate a new wss connection to `url` is shown."""
    async with raw_connect(url, ssl=context) as conn:
        ssl_object = conn.ws.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


async def test_a_wss_client_gets_ready_and_streams_from_the_mock(start_app, pair):
    pair.issue()
    app = await start_app(**pair.settings())
    assert app.url.startswith("wss://")
    async with raw_connect(app.url, ssl=pair.client_context()) as conn:
        ssl_object = conn.ws.transport.get_extra_info("ssl_object")
        assert ssl_object.version() in {"TLSv1.2", "TLSv1.3"}
        assert ssl_object.compression() is None
        await conn.start("s1", mock_request({"text": "over TLS, word for word"}))
        frames = await conn.finishes({"s1"})
    assert stream_text(frames["s1"]) == "over TLS, word for word"
    assert frames["s1"][-1]["reason"] == "stop"


async def test_plain_ws_to_a_tls_port_fails(start_app, pair):
    pair.issue()
    app = await start_app(**pair.settings())
    plain = app.url.replace("wss://", "ws://")
    with pytest.raises(Exception) as refused:  # websockets' or the OS's error
        async with asyncio.timeout(5), connect(plain, subprotocols=["wsgate.v1"]):  # type: ignore[list-item]
            pass
    assert not isinstance(refused.value, TimeoutError)


async def test_after_a_reload_new_connections_see_the_new_certificate(start_app, pair):
    old = pair.issue("first")
    app = await start_app(**pair.settings())
    context = pair.client_context()
    assert await peer_serial(app.url, context) == old
    async with raw_connect(app.url, ssl=context) as kept:
        new = pair.issue("second")
        app.reload()
        assert await peer_serial(app.url, context) == new
        await kept.start("s1", mock_request({"text": "still here"}))  # opened before: unharmed
        frames = await kept.finishes({"s1"})
    assert stream_text(frames["s1"]) == "still here"


async def test_a_bad_new_pair_leaves_the_old_certificate_in_place(start_app, pair):
    old = pair.issue()
    app = await start_app(**pair.settings())
    assert app.tls is not None
    context = pair.client_context()
    key_of_old = pair.key_file.read_bytes()
    pair.issue()
    pair.key_file.write_bytes(key_of_old)  # a new certificate beside the old key
    assert app.tls.reload() is False
    assert await peer_serial(app.url, context) == old
    pair.cert_file.write_text("not a certificate\n")
    assert app.tls.reload() is False
    pair.cert_file.unlink()
    assert app.tls.reload() is False
    assert await peer_serial(app.url, context) == old


def test_the_context_asks_for_tls_1_2_at_least_without_compression(pair):
    pair.issue()
    tls = ServerTls(str(pair.cert_file), str(pair.key_file))
    assert tls.context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert tls.context.options & ssl.OP_NO_COMPRESSION


async def test_a_missing_certificate_stops_the_start_with_one_line_naming_it(tmp_path):
    missing = tmp_path / "nowhere.pem"
    settings = load_settings(
        None,
        environ={},
        overrides={"server.port": 0, "server.tls_cert": str(missing), "server.tls_key": "k"},
    )
    app = App(settings, environ={})
    with pytest.raises(TlsError) as failed:
        await app.start()
    message = str(failed.value)
    assert str(missing) in message
    assert "\n" not in message
    assert app.gateway is None  # nothing was started


@contextmanager
def serve_process(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`wsgate serve`, its JSON log written to a file (so it never fills a pipe)."""
    log = tmp_path / "gateway.log"
    with (
        log.open("wb") as out,
        subprocess.Popen(
            [sys.executable, "-m", "wsgate", "serve", "--port", "0", "--log-format", "json", *args],
            stdout=out,
            stderr=subprocess.PIPE,
            env=clean_env(WSGATE_MOCK__TTFT_MS="0"),
        ) as proc,
    ):
        try:
            yield proc, log
        finally:
            stop(proc)


def records(log: Path) -> list[dict]:
    return [orjson.loads(line) for line in log.read_bytes().splitlines() if line.startswith(b"{")]


async def log_record(log: Path, event: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in records(log):
            if record.get("event") == event:
                return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {event!r} in {records(log)}")


async def test_sighup_makes_a_running_gateway_serve_the_replaced_certificate(tmp_path, pair):
    old = pair.issue("first")
    config = tmp_path / "wsgate.toml"
    config.write_text(f'[server]\ntls_cert = "{pair.cert_file}"\ntls_key = "{pair.key_file}"\n')
    with serve_process(tmp_path, "--config", str(config)) as (proc, log):
        port = (await log_record(log, "gateway_listening"))["port"]
        url = f"wss://127.0.0.1:{port}/v1/ws"
        context = pair.client_context()
        assert await peer_serial(url, context) == old
        new = pair.issue("second")
        proc.send_signal(signal.SIGHUP)
        reloaded = await log_record(log, "tls_reloaded")
        assert reloaded["serial"] == f"{new:x}"
        assert await peer_serial(url, context) == new
        assert proc.poll() is None  # SIGHUP did not end it


def test_serve_with_a_missing_certificate_exits_1_naming_it(tmp_path):
    missing = tmp_path / "nowhere.pem"
    result = subprocess.run(
        [sys.executable, "-m", "wsgate", "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(WSGATE_SERVER__TLS_CERT=str(missing), WSGATE_SERVER__TLS_KEY="k.pem"),
        check=False,
    )
    assert result.returncode == 1
    assert str(missing) in result.stderr.strip().splitlines()[-1]
