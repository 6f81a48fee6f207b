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
        result, position = [], 0
        for a, b in self.spans:
            if a > position:
                result.append((position, a))
            position = max(position, b)
        if total is not None and position < total:
            result.append((position, total))
        return result


def split(start: int, end: int, size: int):
    """[start, end) as pieces of `size` bytes (the last one shorter)."""
    while start < end:
        yield start, min(end, start + size)
        start += size
