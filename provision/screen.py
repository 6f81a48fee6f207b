"""The bottom of the terminal: a block of live lines (the progress) under the log's lines.

One object owns the console's stream while bars are shown, so a log line and a redraw never
interleave: a log line clears the block, is written whole, and the block is drawn again below
it. Every line of the block is cut to the terminal's width (a line that wraps would make the
next redraw miss its first row and leave a fragment). Clearing the block leaves the cursor at
the start of an empty line: after the run, or after Ctrl-C, the shell's prompt starts clean.
"""

from __future__ import annotations

import shutil
import threading
from typing import TextIO

CLEAR_BELOW = "\x1b[J"  # erase from the cursor to the end of the screen
_active: Block | None = None
_active_lock = threading.Lock()


def width() -> int:
    """Columns a live line may use: the terminal's, minus one (the last column makes some
    terminals wrap at once)."""
    return max(20, shutil.get_terminal_size((80, 24)).columns - 1)


class Block:
    def __init__(self, stream: TextIO):
        self.stream = stream
        self.lock = threading.RLock()
        self.shown = 0  # rows of the block on screen now (the cursor is on its last row)
        self.lines: list[str] = []
        self.closed = False

    def __enter__(self) -> Block:
        global _active
        with _active_lock:
            _active = self
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def show(self, lines: list[str]) -> None:
        """Draw these lines in place of the block's old ones."""
        with self.lock:
            if self.closed:
                return
            self.lines = [line[: width()] for line in lines]
            self._erase()
            self._draw()
            self.stream.flush()

    def write_above(self, text: str) -> None:
        """A log line (or several) above the block; the block follows below it."""
        with self.lock:
            self._erase()
            self.stream.write(text + "\n")
            if not self.closed:
                self._draw()
            self.stream.flush()

    def close(self) -> None:
        """Erase the block for good: the cursor ends at the start of an empty row."""
        global _active
        with self.lock:
            if not self.closed:
                self._erase()
                self.stream.flush()
                self.closed = True
        with _active_lock:
            if _active is self:
                _active = None

    def _erase(self) -> None:
        if self.shown:
            up = f"\x1b[{self.shown - 1}F" if self.shown > 1 else ""  # to the block's first row
            self.stream.write(f"{up}\r{CLEAR_BELOW}")
            self.shown = 0

    def _draw(self) -> None:
        if self.lines:
            self.stream.write("\n".join(self.lines))
            self.shown = len(self.lines)


def active() -> Block | None:
    """The block on screen now, if any (the console's log handler writes above it)."""
    return _active
