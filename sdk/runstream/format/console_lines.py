"""Console bytes to stored lines: the one line assembler of both capture paths.

The sidecar feeds it what it reads from the training process's stdout/stderr pipes ("redirect"),
the training process what ``sys.stdout.write`` is given ("wrap").  The rules (docs/console.md):

* ``\\n`` ends a line; ``\\r\\n`` too (the ``\\r`` is dropped).
* ``\\r`` not followed by ``\\n`` returns to the start of the line: what comes after it replaces
  the line, so a progress bar redrawn a thousand times is stored once, in its final state.  The
  replacement happens when the next byte arrives, so a trailing ``\\r`` keeps the line.
* ANSI escape sequences (colours, cursor moves) are removed from stored lines; the terminal gets
  the bytes unchanged.  Lines are decoded as UTF-8, invalid bytes replaced.
* A line longer than ``MAX_LINE`` bytes is cut into ``MAX_LINE``-byte lines.
* A partial line (no newline yet) is kept until ``close``: emitting it early would store one line
  per redraw of a slow progress bar.

The result does not depend on how the byte stream is split into ``feed`` calls (a property test
checks it).

Concurrency contract: a ``LineAssembler`` belongs to one thread at a time; no locking.
"""

from __future__ import annotations

import re

MAX_LINE = 64 << 10  # bytes; a longer line is split

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and two-byte ESC sequences.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")


def clean(line: bytes) -> str:
    """A completed line as stored: decoded, escape sequences removed."""
    text = line.decode("utf-8", errors="replace")
    return _ANSI.sub("", text) if "\x1b" in text else text


class LineAssembler:
    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._cur = bytearray()
        self._cr = False  # a '\r' was seen after the line's content; it replaces the line unless '\n' follows

    @property
    def pending(self) -> bool:
        """A partial line is held."""
        return bool(self._cur)

    def feed(self, data: bytes) -> list[str]:
        """Take the next bytes of the stream; returns the lines they complete."""
        out: list[str] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            self._put(data[start:] if nl < 0 else data[start:nl], out)
            if nl < 0:
                return out
            out.append(clean(bytes(self._cur)))
            self._cur.clear()
            self._cr = False
            start = nl + 1

    def _put(self, seg: bytes, out: list[str]) -> None:
        if not seg:
            return
        if b"\r" not in seg:  # the common case, without the split
            if self._cr:
                self._cur.clear()
                self._cr = False
            self._cur += seg
            self._cap(out)
            return
        for i, part in enumerate(seg.split(b"\r")):
            if i:
                self._cr = True
            if not part:
                continue
            if self._cr:
                self._cur.clear()
                self._cr = False
            self._cur += part
            self._cap(out)

    def _cap(self, out: list[str]) -> None:
        while len(self._cur) >= self.max_line:
            out.append(clean(bytes(self._cur[: self.max_line])))
            del self._cur[: self.max_line]

    def close(self) -> list[str]:
        """The end of the stream: the partial line, if any, as a last line."""
        if not self._cur:
            self._cr = False
            return []
        line = clean(bytes(self._cur))
        self._cur.clear()
        self._cr = False
        return [line]
