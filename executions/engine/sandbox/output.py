"""Output capture: decoding for storage (output_text) and the per-stream buffer that cuts
chunks on UTF-8 boundaries, caps them and flushes them on time."""

from __future__ import annotations

import codecs

from executions.engine.sandbox.config import KIB, SURROGATES_RE, OutputCallback, SandboxConfig, StreamName


def output_text(data: bytes | str, decoder: codecs.IncrementalDecoder | None = None) -> str:
    """Text that any database stores, from anything a script produced (the one place).

    Used for every chunk, the final output, the error detail and anything else that comes from
    the script or from the tools around it. Invalid UTF-8 becomes U+FFFD (the replacement
    character), and so does NUL (U+0000), which PostgreSQL's text type refuses; a lone
    surrogate in a ``str`` (from ``surrogateescape`` somewhere) becomes U+FFFD too, since it
    cannot be encoded. ``decoder``: an incremental UTF-8 decoder with ``errors="replace"``, so a
    character split between two chunks is decoded once it is whole.
    """
    if isinstance(data, str):
        text = data
        if not text.isascii():
            text = SURROGATES_RE.sub("\ufffd", text)
    elif decoder is not None:
        text = decoder.decode(data)
    else:
        text = data.decode("utf-8", "replace")
    return text.replace("\0", "\ufffd") if "\0" in text else text


def utf8_safe_cut(data: bytes | bytearray, limit: int) -> int:
    """Largest ``n <= limit`` such that ``data[:n]`` does not end inside a UTF-8 character.

    Only an *incomplete* sequence at the cut is held back; invalid bytes are passed through (the
    reader replaces them), so arbitrary binary output still makes progress.
    """
    limit = min(limit, len(data))
    for back in range(1, min(4, limit) + 1):
        index = limit - back
        byte = data[index]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        if byte >= 0xF0:
            needed = 4
        elif byte >= 0xE0:
            needed = 3
        elif byte >= 0xC0:
            needed = 2
        else:
            needed = 1
        if index + needed > limit and index > 0:
            return index
        return limit
    return limit


class _OutputStream:
    """One captured stream: caps, chunks and time-based flushing, with O(chunk) memory."""

    def __init__(self, name: StreamName, config: SandboxConfig, on_output: OutputCallback) -> None:
        self.name: StreamName = name
        self._cap = config.output_cap_bytes
        self._chunk = config.chunk_bytes
        self._flush_interval = config.flush_interval_seconds
        self._on_output = on_output
        self._pending = bytearray()
        self._pending_since: float | None = None
        self.captured = 0  # bytes accepted (delivered or pending), never above the cap
        self.truncated = False
        self.eof = False
        self.head = bytearray()  # first bytes, for error details (bwrap's own messages)

    def feed(self, data: bytes, now: float) -> None:
        if len(self.head) < 2 * KIB:
            self.head += data[: 2 * KIB - len(self.head)]
        if self.truncated:
            return  # keep draining the pipe, but drop the bytes
        room = self._cap - self.captured
        if len(data) > room:
            data = data[:room]
            self.truncated = True
        if data:
            if self._pending_since is None:
                self._pending_since = now
            self._pending += data
            self.captured += len(data)
        if self.truncated:
            # Nothing will ever complete a character cut by the cap: drop its first bytes.
            keep = utf8_safe_cut(self._pending, len(self._pending))
            self.captured -= len(self._pending) - keep
            del self._pending[keep:]
        self.flush(now, final=self.truncated)

    def flush(self, now: float, *, final: bool = False) -> None:
        while len(self._pending) >= self._chunk:
            self._emit(utf8_safe_cut(self._pending, self._chunk), now)
        if not self._pending:
            return
        if final:
            self._emit(len(self._pending), now)
        elif self._pending_since is not None and now - self._pending_since >= self._flush_interval:
            self._emit(utf8_safe_cut(self._pending, len(self._pending)), now)

    def next_flush_at(self) -> float | None:
        if self._pending_since is None:
            return None
        return self._pending_since + self._flush_interval

    def _emit(self, size: int, now: float) -> None:
        if size <= 0:
            # Only an incomplete character is pending: wait for its remaining bytes.
            return
        data = bytes(self._pending[:size])
        del self._pending[:size]
        self._pending_since = now if self._pending else None
        self._on_output(self.name, data)
