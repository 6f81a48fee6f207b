"""Byte ranges: which parts of a file are on disk, and how a gap is cut into pieces."""

from __future__ import annotations


class Ranges:
    """A set of byte ranges [start, end), kept merged and sorted."""

    def __init__(self, spans: list[list[int]] | None = None):
        self.spans: list[list[int]] = []
        for start, end in spans or []:
            self.add(int(start), int(end))

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        merged, placed = [], False
        for a, b in self.spans:
            if b < start or a > end:
                if a > end and not placed:
                    merged.append([start, end])
                    placed = True
                merged.append([a, b])
            else:
                start, end = min(a, start), max(b, end)
        if not placed:
            merged.append([start, end])
        self.spans = sorted(merged)

    def covered(self) -> int:
        return sum(b - a for a, b in self.spans)

    def prefix_end(self) -> int:
        return self.spans[0][1] if self.spans and self.spans[0][0] == 0 else 0

    def gaps(self, total: int | None) -> list[tuple[int, int]]:
        """The missing ranges of [0, total) (with no total, those between the spans)."""
        return self.missing(0, total)

    def missing(self, start: int, end: int | None) -> list[tuple[int, int]]:
        """The missing ranges inside [start, end), never one byte outside it, never an empty
        one: each becomes a request, and a gap reaching past a piece's end once made a piece
        cut down to nothing ask for `bytes=N-(N-1)`."""
        result, position = [], start
        for a, b in self.spans:
            if end is not None and a >= end:
                break
            if a > position:
                result.append((position, a))
            position = max(position, b)
        if end is not None and position < end:
            result.append((position, end))
        return result


def split(start: int, end: int, size: int):
    """[start, end) as pieces of `size` bytes (the last one shorter)."""
    while start < end:
        yield start, min(end, start + size)
        start += size
