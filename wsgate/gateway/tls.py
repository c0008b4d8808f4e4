"""The listener's TLS: one server `SSLContext` from `server.tls_cert` / `tls_key`, reloadable.

Owns the context the gateway's listener speaks wss:// with: Python's modern server defaults
(`ssl.create_default_context`: no SSLv3, no compression, forward-secret ciphers first), TLS
1.2 at least, ALPN `http/1.1` (a WebSocket upgrade is an HTTP/1.1 request, RFC 6455 §4.1).
`reload()` loads a new certificate and key into the same context, so handshakes from then
on use them while open connections keep theirs; a file that cannot be read or does not
match its key leaves the old pair in place and logs one line. Must not: start or stop the
listener, or know where the reload signal comes from (the composition root installs it).
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from wsgate.log import get_logger

log = get_logger("wsgate.gateway")


class TlsError(Exception):
    """The certificate or key cannot be loaded; the message is one line naming the files."""


@dataclass(frozen=True, slots=True)
class Certificate:
    """What the logs say about a loaded certificate."""

    subject: str
    serial: int
    not_after: str


class ServerTls:
    """A server `SSLContext` and the files it was loaded from."""

    __slots__ = ("cert_file", "certificate", "context", "key_file")

    def __init__(self, cert_file: str, key_file: str) -> None:
        """Load the pair; raises `TlsError` (one line) if it cannot."""
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = _new_context()
        self.certificate = _load(self.context, cert_file, key_file)
        log.info("tls_loaded", cert_file=cert_file, **_fields(self.certificate))

    def reload(self) -> bool:
        """Load the files again into the same context; whether the new pair is in use."""
        try:
            self.certificate = _load(self.context, self.cert_file, self.key_file)
        except TlsError as exc:
            kept = f"{self.certificate.serial:x}"
            log.error("tls_reload_failed", error=str(exc), kept_serial=kept)  # noqa: TRY400 - one line
            return False
        log.info("tls_reloaded", cert_file=self.cert_file, **_fields(self.certificate))
        return True


def _new_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION  # CRIME; already in the defaults, kept explicit
    context.set_alpn_protocols(["http/1.1"])
    return context


def _load(context: ssl.SSLContext, cert_file: str, key_file: str) -> Certificate:
    """Check the pair in a scratch context, then load the very same bytes into `context`.

    OpenSSL replaces the certificate before it checks the key: loading a bad pair straight
    into the live context could leave a new certificate beside the old key, failing every
    handshake. The bytes are read once, so files replaced meanwhile cannot differ between
    the check and the load.
    """
    try:
        cert_pem = Path(cert_file).read_bytes()
        key_pem = Path(key_file).read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {exc.filename}: {exc.strerror}") from None
    try:
        certificate = _describe(cert_pem)
    except ValueError:
        raise TlsError(f"{cert_file} holds no PEM certificate") from None
    with tempfile.TemporaryDirectory(prefix="wsgate-tls-") as scratch:  # mode 0700
        cert_path = os.path.join(scratch, "cert.pem")  # noqa: PTH118 - paths for ssl
        key_path = os.path.join(scratch, "key.pem")  # noqa: PTH118
        _write_private(cert_path, cert_pem)
        _write_private(key_path, key_pem)
        try:
            _new_context().load_cert_chain(cert_path, key_path, password=_no_password)
        except (ssl.SSLError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            raise TlsError(f"{cert_file} / {key_file}: not a matching pair ({reason})") from None
        context.load_cert_chain(cert_path, key_path, password=_no_password)
    return certificate


def _no_password() -> bytes:
    """An encrypted key fails to load instead of prompting on the terminal."""
    return b""


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with contextlib.closing(os.fdopen(fd, "wb")) as out:
        out.write(data)


def _describe(cert_pem: bytes) -> Certificate:
    """The first certificate of a PEM chain (the server's own)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return Certificate(
        subject=cert.subject.rfc4514_string(),
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc.isoformat(),
    )


def _fields(certificate: Certificate) -> dict[str, str]:
    return {
        "subject": certificate.subject,
        "serial": f"{certificate.serial:x}",  # up to 20 bytes (RFC 5280 §4.1.2.2): hex
        "not_after": certificate.not_after,
    }
