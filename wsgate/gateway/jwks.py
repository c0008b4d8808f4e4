"""The JWKS cache: the identity provider's signing keys, loaded and kept fresh.

Owns reading a JWKS document from a file or an http(s) URL (aiohttp, `timeout_s` per fetch,
the body capped at `max_bytes`, 1 MiB by default, so a hostile or broken server cannot make
the gateway buffer more), the refresh every `refresh_s`, and the refetch for a `kid` it does
not know: at most one fetch per `min_refetch_s` (5 s), shared by every caller waiting for it,
so a client sending random kids costs one fetch per 5 s, not one per token. A fetch that
fails keeps the keys already loaded and logs a warning; only the first load, in `start`,
fails loudly. Memory: one parsed document, one fetch in flight. It must not decide whether a
token is valid: `core/auth.py` does, with the `KeySet` `keys()` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import aiohttp

from wsgate.core.auth import JwksError, KeySet, parse_jwks
from wsgate.log import get_logger

log = get_logger("wsgate.gateway")

MAX_JWKS_BYTES: Final = 1 << 20
MIN_REFETCH_S: Final = 5.0
FETCH_TIMEOUT_S: Final = 5.0
_CHUNK: Final = 64 * 1024


class JwksCache:
    """The keys of one JWKS source; `start` before `keys`, `close` at the end."""

    def __init__(  # noqa: PLR0913 - the bounds are parameters so tests can shrink them
        self,
        source: str,
        *,
        refresh_s: float = 300.0,
        min_refetch_s: float = MIN_REFETCH_S,
        timeout_s: float = FETCH_TIMEOUT_S,
        max_bytes: int = MAX_JWKS_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self._is_url = source.startswith(("http://", "https://"))
        self._refresh_s = refresh_s
        self._min_refetch_s = min_refetch_s
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._clock = clock
        self._keys: KeySet | None = None
        self._session: aiohttp.ClientSession | None = None
        self._fetching: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._last_fetch = float("-inf")
        self.fetches = 0  # attempts, for tests and stats

    async def start(self) -> None:
        """Load the keys once; JwksError (naming the source) if that fails."""
        if self._is_url:
            self._session = aiohttp.ClientSession()
        try:
            self._last_fetch = self._clock()
            self._install(await self._read())
        except BaseException:
            await self._close_session()
            raise
        self._refresher = asyncio.create_task(self._refresh_loop(), name="jwks-refresh")

    def keys(self) -> KeySet:
        """The keys loaded last; RuntimeError before `start`."""
        if self._keys is None:
            raise RuntimeError("JwksCache.keys() before start()")
        return self._keys

    async def refresh_for(self, kid: str) -> None:
        """Fetch again because a token names `kid`, unless fetched within `min_refetch_s`.

        Returns once a fetch in flight (this caller's or another's) is done; the fetch goes
        on if the caller is cancelled. A failed fetch keeps the keys and is only logged.
        """
        jwks = self._keys.jwks if self._keys is not None else None
        if jwks is not None and kid in jwks:
            return  # another caller's fetch brought it in
        if self._fetching is None and self._clock() - self._last_fetch < self._min_refetch_s:
            return
        await self._fetch()

    async def close(self) -> None:
        """Stop the background refresh and any fetch in flight; close the HTTP session."""
        tasks = [t for t in (self._refresher, self._fetching) if t is not None]
        self._refresher = self._fetching = None
        try:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
        finally:
            await self._close_session()

    # --- internals ---------------------------------------------------------------------

    async def _fetch(self) -> None:
        """One shared fetch: start it unless one is in flight, wait for it (not cancel it)."""
        task = self._fetching
        if task is None:
            self._last_fetch = self._clock()
            task = self._fetching = asyncio.create_task(self._refetch(), name="jwks-fetch")
            task.add_done_callback(self._fetched)
        # asyncio.wait, not shield: a cancelled caller leaves the fetch running for the
        # others, and a fetch cancelled by close() raises nothing here.
        await asyncio.wait([task])

    def _fetched(self, task: asyncio.Task[None]) -> None:
        if self._fetching is task:
            self._fetching = None

    async def _refetch(self) -> None:
        try:
            self._install(await self._read())
        except JwksError as exc:
            log.warning("jwks_fetch_failed", error=str(exc), kept=self._kid_count())
        except Exception as exc:  # a bug or a library surprise: keep the keys, say so
            log.warning("jwks_fetch_failed", error=type(exc).__name__, kept=self._kid_count())

    async def _refresh_loop(self) -> None:
        while True:
            due = self._last_fetch + self._refresh_s - self._clock()
            if due > 0:
                await asyncio.sleep(due)
                continue  # a refetch for a kid may have moved the due time
            await self._fetch()

    def _install(self, data: bytes) -> None:
        try:
            keys = parse_jwks(data)
        except JwksError as exc:
            raise JwksError(f"the JWKS at {self.source}: {exc}") from None
        old = self._keys.jwks if self._keys is not None else None
        self._keys = KeySet.from_jwks(keys)
        if old is None or old.keys() != keys.keys():
            log.info("jwks_loaded", source=self.source, kids=sorted(keys))

    def _kid_count(self) -> int:
        jwks = self._keys.jwks if self._keys is not None else None
        return 0 if jwks is None else len(jwks)

    async def _read(self) -> bytes:
        """The document's bytes; JwksError naming the source for every failure."""
        self.fetches += 1
        try:
            if self._is_url:
                return await self._get()
            return await asyncio.to_thread(_read_file, self.source, self._max_bytes)
        except JwksError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            if isinstance(exc, OSError) and exc.strerror:
                reason = exc.strerror
            raise JwksError(f"the JWKS at {self.source}: cannot read it: {reason}") from None

    async def _get(self) -> bytes:
        assert self._session is not None  # noqa: S101 - start() made it
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        async with self._session.get(self.source, timeout=timeout) as response:
            if response.status != 200:
                raise JwksError(f"the JWKS at {self.source}: HTTP {response.status}")
            if (response.content_length or 0) > self._max_bytes:
                raise self._too_large()
            body = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK):
                body += chunk
                if len(body) > self._max_bytes:
                    raise self._too_large()
            return bytes(body)

    def _too_large(self) -> JwksError:
        return JwksError(f"the JWKS at {self.source}: larger than {self._max_bytes} bytes")

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(Exception):
                await session.close()


def _read_file(path: str, max_bytes: int) -> bytes:
    with Path(path).open("rb") as file:
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise JwksError(f"the JWKS at {path}: larger than {max_bytes} bytes")
    return data
