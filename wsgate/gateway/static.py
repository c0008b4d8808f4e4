"""The web assets served on the gateway's port: the browser client and the demo page.

Owns the mapping from URL paths to the files of `wsgate/web/` (shipped in the wheel): the
client library's modules and declarations at `/v1/<name>` (`/v1/wsgate.js`,
`/v1/wsgate-ai-sdk.js`, `/v1/wsgate.d.ts`, ...), and, unless `server.demo` is off, the demo
page at `/` with its files at `/demo/<path>`. The map is made once, at start, from the
files that exist: a request names an entry or gets 404, so no path can leave the folder.
Each answer carries its content type, `Cache-Control: no-cache` with a strong `ETag` (a
browser revalidates and gets 304 while the file is unchanged), `nosniff`, and on HTML a
Content-Security-Policy allowing only the gateway's own scripts, styles and sockets.

Memory: every asset's bytes, read once (the folder holds a few hundred KiB).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

WEB_ROOT: Final = Path(__file__).resolve().parent.parent / "web"
LIBRARY_PREFIX: Final = "/v1/"
DEMO_PREFIX: Final = "/demo/"
LIBRARY_SUFFIXES: Final = (".js", ".d.ts")
CONTENT_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".ts": "application/typescript; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
PAGE_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The demo page's CSP: no inline script or style, sockets to any gateway (the page may be
pointed at another one), nothing else from elsewhere."""


@dataclass(frozen=True, slots=True)
class Asset:
    """One file, ready to answer."""

    body: bytes
    content_type: str
    etag: str

    def headers(self) -> dict[str, str]:
        """The response headers of a 200 (or, without the body's, of a 304)."""
        headers = {
            "Content-Type": self.content_type,
            "Cache-Control": "no-cache",
            "ETag": self.etag,
            "X-Content-Type-Options": "nosniff",
        }
        if self.content_type.startswith(("text/html", "image/svg+xml")):  # both run scripts
            headers["Content-Security-Policy"] = PAGE_POLICY
            headers["Referrer-Policy"] = "no-referrer"
        return headers

    def fresh(self, if_none_match: str | None) -> bool:
        """Whether a client holding `If-None-Match` has this version (RFC 9110 §13.1.2).

        `*` matches; otherwise any listed entity tag, compared weakly (`W/` ignored), as a
        GET's If-None-Match is.
        """
        if if_none_match is None:
            return False
        if if_none_match.strip() == "*":
            return True
        tags = (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
        return self.etag in tags


class WebAssets:
    """URL path -> asset, for the files under `root` that exist at start."""

    def __init__(self, root: Path | None = None, *, demo: bool = True) -> None:
        root = WEB_ROOT if root is None else root
        self.assets: dict[str, Asset] = {}
        if not root.is_dir():
            return
        for path in sorted(root.iterdir()):
            if path.is_file() and path.name.endswith(LIBRARY_SUFFIXES):
                self.assets[LIBRARY_PREFIX + path.name] = _load(path)
        demo_root = root / "demo"
        if demo and demo_root.is_dir():
            for path in sorted(demo_root.rglob("*")):
                if path.is_file() and path.suffix in CONTENT_TYPES:
                    relative = path.relative_to(demo_root).as_posix()
                    self.assets[DEMO_PREFIX + relative] = _load(path)
            index = self.assets.get(DEMO_PREFIX + "index.html")
            if index is not None:
                self.assets["/"] = index

    def find(self, path: str) -> Asset | None:
        """The asset a request path names (query excluded), or None."""
        return self.assets.get(path)


def _load(path: Path) -> Asset:
    body = path.read_bytes()
    suffix = ".ts" if path.name.endswith(".d.ts") else path.suffix
    digest = hashlib.sha256(body).hexdigest()[:32]
    return Asset(body, CONTENT_TYPES.get(suffix, "application/octet-stream"), f'"{digest}"')
