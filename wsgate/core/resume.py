"""Resume decisions: whether a log can serve a resume, and its frames re-addressed, in order.

Owns what a resume means, without I/O: `judge` turns what the store found into the reason a
resume cannot be served (or none); `Tail` takes the log's pages for one resumed stream and
yields the frames to send, re-addressed to the new `stream_id`, each `seq` exactly once and
in order, refusing a gap (`resume_trimmed`), and knowing when the `finish` went out;
`fingerprint` is what makes two `start`s "the same request" for an idempotency key.

Rules:
1. A resumed stream receives every frame with `seq` > `last_seq`, each once, in `seq`
   order, up to and including the generation's `finish`: nothing skipped, nothing twice.
2. Replayed frames are the logged bytes with only the `stream_id` value replaced: the
   frame's own `stream_id` is its first `"stream_id":"` (every frame puts it before any
   nested value, and a JSON string cannot hold an unescaped quote).
3. With `snapshot`, each run of consecutive logged `delta.text` frames up to the `seq` that
   was the log's top when the resume was asked leaves as one `delta.text` covering
   `first_seq`..`seq` (as a coalesced frame does, up to `FOLD_CHARS` characters).
4. At a gap the frames before it still go out; then the stream ends with `resume_trimmed`.
"""

from __future__ import annotations

import hashlib

import msgspec

from wsgate.core.errors import (
    ResumeEpochChanged,
    ResumeExpired,
    ResumeTrimmed,
    UnknownMessage,
    WsgateError,
)
from wsgate.core.frames import ChatRequest, DeltaText, StartOptions, encode_frame
from wsgate.core.store import Page

STREAM_ID_FIELD = b'"stream_id":"'
FINISH_PREFIX = b'{"type":"finish"'
TEXT_PREFIX = b'{"type":"delta.text"'

FOLD_CHARS = 16 * 1024
"""The most text one folded frame holds, as a coalesced frame (core/outbox.py)."""

_text_decoder = msgspec.json.Decoder(DeltaText)
_encoder = msgspec.json.Encoder()


def fingerprint(request: ChatRequest, options: StartOptions) -> str:
    """A digest of what a `start` asks for, its idempotency key left out."""
    bare = msgspec.structs.replace(options, idempotency_key=None)
    digest = hashlib.sha256(_encoder.encode(request))
    digest.update(b"\x00")
    digest.update(_encoder.encode(bare))
    return digest.hexdigest()


def judge(
    page: Page | None, last_seq: int, epoch: str | None, principal: str | None = None
) -> WsgateError | None:
    """Why a resume after `last_seq` cannot be served from `page`, or None if it can.

    Another principal's generation reads as unknown, whatever its state: a client learns
    nothing of messages that are not its own.
    """
    if page is None or (principal is not None and page.meta.principal != principal):
        return UnknownMessage("no generation with this message_id is known")
    meta = page.meta
    if meta.expired:
        return ResumeExpired("the generation's log expired")
    if epoch is not None and epoch != meta.epoch:
        return ResumeEpochChanged("the generation's epoch is not the one given")
    if meta.first > last_seq + 1:
        return ResumeTrimmed(f"the log starts at seq {meta.first}, after last_seq + 1")
    return None


def retarget(data: bytes, stream_id: bytes) -> bytes:
    """A logged frame with its own `stream_id` value replaced (rule 2)."""
    start = data.index(STREAM_ID_FIELD) + len(STREAM_ID_FIELD)
    end = data.index(b'"', start)
    return data[:start] + stream_id + data[end:]


class Tail:
    """The frames of one generation for one resumed stream: gapless, once each, in order."""

    __slots__ = ("_fold_until", "_run", "_run_chars", "done", "gap", "next_seq", "stream_id")

    def __init__(self, stream_id: str, last_seq: int, *, fold_until: int = 0) -> None:
        self.stream_id = stream_id.encode()
        self.next_seq = last_seq + 1
        self.done = False  # the `finish` went out
        self.gap: ResumeTrimmed | None = None  # the log lacks `next_seq`: nothing more comes
        self._fold_until = fold_until  # with `snapshot`: the top `seq` when it was asked
        self._run: list[tuple[int, bytes, DeltaText]] = []
        self._run_chars = 0

    def take(self, entries: list[tuple[int, bytes]]) -> list[bytes]:
        """The frames of a page to send now, in order.

        Entries before `next_seq` were sent already and are skipped; at an entry after it
        (a gap) taking stops, and `gap` says why nothing more can come.
        """
        out: list[bytes] = []
        for seq, data in entries:
            if self.done or self.gap is not None or seq < self.next_seq:
                continue
            if seq > self.next_seq:
                self.gap = ResumeTrimmed(f"the log has no frame {self.next_seq}")
                break
            self.next_seq = seq + 1
            if seq <= self._fold_until and data.startswith(TEXT_PREFIX):
                self._fold(seq, data, out)
                continue
            self._flush(out)
            out.append(retarget(data, self.stream_id))
            self.done = data.startswith(FINISH_PREFIX)
        if self.next_seq > self._fold_until or self.gap is not None:
            self._flush(out)  # a run may go on into the next page while still folding
        return out

    def _fold(self, seq: int, data: bytes, out: list[bytes]) -> None:
        frame = _text_decoder.decode(data)
        if self._run and self._run_chars + len(frame.text) > FOLD_CHARS:
            self._flush(out)
        self._run.append((seq, data, frame))
        self._run_chars += len(frame.text)

    def _flush(self, out: list[bytes]) -> None:
        run = self._run
        if not run:
            return
        self._run, self._run_chars = [], 0
        if len(run) == 1:
            out.append(retarget(run[0][1], self.stream_id))  # the logged bytes, as they were
            return
        sid = self.stream_id.decode()
        text = "".join(frame.text for _, _, frame in run)
        out.append(encode_frame(DeltaText(sid, run[-1][0], text, run[0][0])))
