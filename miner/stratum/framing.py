"""Newline framing for stratum v1: bytes in, complete lines out, memory bounded.

A peer that never sends a newline (a broken ASIC, a port scanner speaking HTTP/2)
must not grow our buffer without bound, so a line longer than the cap is dropped,
reported as an Oversized event, and framing resynchronises after the next newline.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NewlineFramer", "Oversized", "DEFAULT_MAX_LINE_BYTES"]

# Longest accepted line in bytes, newline excluded. A mining.notify with a 12-deep
# branch and a fat coinbase is ~2 KiB; 16 KiB leaves room without inviting abuse.
DEFAULT_MAX_LINE_BYTES = 16384


@dataclass(frozen=True)
class Oversized:
    """A line went over the cap and is being dropped up to its newline.

    Emitted once per such line, as soon as the cap is crossed; `seen` is how many of
    its bytes had arrived then (more may follow and are discarded silently).
    """

    seen: int


class NewlineFramer:
    """Splits a byte stream into lines; `feed` returns `bytes` lines and `Oversized` events."""

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be >= 1, got {max_line_bytes}")
        self.max_line_bytes = max_line_bytes
        self.oversized = 0  # lines dropped for length, since creation
        self._buf = bytearray()
        self._skipping = False  # inside an oversized line: drop until the next newline

    @property
    def buffered(self) -> int:
        """Bytes held waiting for a newline (never more than the cap)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | Oversized]:
        """Consume data; return the lines it completes, in order, with Oversized markers."""
        out: list[bytes | Oversized] = []
        raw = bytes(data)
        view = memoryview(raw)
        start = 0
        end = len(raw)
        while start < end:
            nl = raw.find(b"\n", start)
            if nl < 0:
                self._absorb(view[start:end], out)
                break
            self._absorb(view[start:nl], out)
            start = nl + 1
            self._finish_line(out)
        return out

    def _absorb(self, chunk: memoryview, out: list[bytes | Oversized]) -> None:
        if self._skipping:
            return
        if len(self._buf) + len(chunk) > self.max_line_bytes + 1:
            # +1 allows a trailing \r that \r\n framing will strip. Reported now, not
            # at the newline, so a session can act on a peer that never sends one.
            self._skipping = True
            self.oversized += 1
            out.append(Oversized(len(self._buf) + len(chunk)))
            self._buf.clear()
            return
        self._buf += chunk

    def _finish_line(self, out: list[bytes | Oversized]) -> None:
        if self._skipping:
            self._skipping = False
            return
        line = bytes(self._buf)
        self._buf.clear()
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_line_bytes:
            self.oversized += 1
            out.append(Oversized(len(line)))  # only a lone trailing \r fits here
        elif line.strip():
            out.append(line)
