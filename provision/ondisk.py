"""What a dry-run says about the disk: for each file, whether it is in place (verified), partial
(and how far: its `.part.state`), missing, or there but about to be replaced. Reads only what
earlier runs recorded and what is on disk; never hashes, never writes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .download import Download
from .partfile import PartFile
from .records import ItemRecords, VerifiedRecords

IN_PLACE, PARTIAL, MISSING, REPLACE, TO_CHECK = "in place", "partial", "missing", "will replace", "to check"


@dataclass(frozen=True)
class OnDisk:
    state: str  # one of the labels above
    have: int = 0  # bytes of the file already on disk (in place: all of them)

    def label(self, size: int | None) -> str:
        if self.state == PARTIAL and size:
            return f"{PARTIAL} {100 * self.have // size}%"
        return self.state


def file_state(download: Download, verified: VerifiedRecords) -> OnDisk:
    dest = download.dest
    try:
        stat = os.stat(dest)
    except OSError:
        stat = None
    if stat is not None:
        record = verified.lookup(dest)
        if record is not None and record.matches(stat, download):
            return OnDisk(IN_PLACE, stat.st_size)
        if record is not None or (download.size is not None and stat.st_size != download.size):
            return OnDisk(REPLACE)
        return OnDisk(TO_CHECK)  # a file no run verified: the next one hashes it, keeps it if right
    state = PartFile(dest, download.identity).peek()
    if state is not None and state.done.covered():
        return OnDisk(PARTIAL, state.done.covered())
    return OnDisk(MISSING)


def item_state(files: list[OnDisk], size: int | None) -> OnDisk:
    """One state for an item from its files' (a repository has many)."""
    states = [f.state for f in files]
    have = sum(f.have for f in files)
    if not files:
        return OnDisk(MISSING)
    if all(s == IN_PLACE for s in states):
        return OnDisk(IN_PLACE, have)
    if REPLACE in states:
        return OnDisk(REPLACE, have)
    if have:
        return OnDisk(PARTIAL, have)
    return OnDisk(TO_CHECK) if all(s == TO_CHECK for s in states) else OnDisk(MISSING)


def offline_state(identity: str, dest: Path, done_before: ItemRecords) -> OnDisk:
    """Offline: from the records alone (names a server would give are not known yet)."""
    files = done_before.in_place(identity)
    if files is not None:
        return OnDisk(IN_PLACE, sum(f.stat().st_size for f in files))
    if dest.is_file():
        return OnDisk(TO_CHECK)
    state = PartFile(dest).peek(any_file=True) if dest.suffix else None
    return OnDisk(PARTIAL, state.done.covered()) if state and state.done.covered() else OnDisk(MISSING)
