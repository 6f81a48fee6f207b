"""What earlier runs verified, so a re-run with everything in place reads no model bytes.

One JSON file under `<workspace>/.provision/` (outside the models folder, so SD.Next never
sees it) maps each destination to its size, mtime, checksum and identity. A file whose size or
mtime changed since it was recorded is hashed again.

The files are rewritten whole, at most every SAVE_INTERVAL while a run stores records and once
more by `flush` at its end (rewriting them per file made 200 small files cost as much as 40,000
records). A run killed outright loses the records of its last moments: the next run hashes those
files once more (or asks their source again), as for a file without a record.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .download import Checksum, Download

log = logging.getLogger("provision")

SAVE_INTERVAL = 0.5  # seconds between two writes of a records file while a run stores records


@dataclass
class Record:
    size: int
    mtime_ns: int
    algorithm: str
    value: str
    identity: str

    @property
    def checksum(self) -> Checksum:
        return Checksum(self.algorithm, self.value)

    def unchanged(self, stat: os.stat_result) -> bool:
        """The file is as it was when verified (same size and mtime)."""
        return (stat.st_size, stat.st_mtime_ns) == (self.size, self.mtime_ns)

    def matches(self, stat: os.stat_result, download: Download) -> bool:
        if not self.unchanged(stat):
            return False
        if download.checksum is not None:
            return self.checksum == download.checksum
        return self.identity == download.identity


class _Saved:
    """A JSON file rewritten at most every SAVE_INTERVAL, and at `flush` (subclasses keep
    their content and self.lock)."""

    path: Path | None
    lock: threading.Lock
    _dirty = False
    _last_save = 0.0

    def _content(self) -> dict: ...

    def _changed(self) -> None:
        """Called under self.lock after a change: written now, or by a later call or flush."""
        self._dirty = True
        if time.monotonic() - self._last_save >= SAVE_INTERVAL:
            self._write()

    def _write(self) -> None:
        if self.path is not None:
            _write_json(self.path, self._content())
        self._dirty, self._last_save = False, time.monotonic()

    def flush(self) -> None:
        """Write what changed since the last write (the end of a run, or of a stage)."""
        with self.lock:
            if self._dirty:
                self._write()


class VerifiedRecords(_Saved):
    def __init__(self, path: Path | None):
        self.path = path
        self.lock = threading.Lock()
        self.records: dict[str, Record] = {}
        if path is not None and path.exists():
            try:
                raw = json.loads(path.read_text())
                self.records = {k: Record(**v) for k, v in raw.items()}
            except (ValueError, TypeError):
                self.records = {}  # unreadable: everything is hashed once more

    def lookup(self, dest: Path) -> Record | None:
        with self.lock:
            return self.records.get(str(dest))

    def moved(self, old: Path, new: Path) -> None:
        """A verified file was renamed (a staged repository put in place): its record follows."""
        with self.lock:
            record = self.records.pop(str(old), None)
            if record is None:
                return
            self.records[str(new)] = record
            self._changed()

    def store(self, dest: Path, identity: str, checksum: Checksum) -> None:
        stat = dest.stat()
        record = Record(stat.st_size, stat.st_mtime_ns, checksum.algorithm, checksum.value, identity)
        with self.lock:
            self.records[str(dest)] = record
            self._changed()

    def _content(self) -> dict:
        return {k: vars(v) for k, v in self.records.items()}  # asdict deep-copies every field


class ItemRecords(_Saved):
    """Which files each config item left in place, keyed by `Item.identity`: an item whose
    files all still match their verified record (size and mtime) is done without a request,
    so a restart with the network down finds everything in place."""

    def __init__(self, path: Path, verified: VerifiedRecords):
        self.path = path
        self.verified = verified
        self.lock = threading.Lock()
        self.items: dict[str, list[str]] = {}
        if path.exists():
            try:
                self.items = {k: list(v) for k, v in json.loads(path.read_text()).items()}
            except (ValueError, TypeError, AttributeError):
                self.items = {}

    def in_place(self, identity: str) -> list[Path] | None:
        """The item's files when every one is on disk as verified; else None."""
        files = self.items.get(identity)
        if not files:
            return None
        for name in files:
            record = self.verified.lookup(Path(name))
            try:
                stat = os.stat(name)
            except OSError:
                return None
            if record is None or not record.unchanged(stat):
                return None
        return [Path(name) for name in files]

    def store(self, identity: str, files: list[Path]) -> None:
        with self.lock:
            self.items[identity] = [str(f) for f in files]
            self._changed()

    def _content(self) -> dict:
        return self.items


def workspace_records(workspace: Path) -> tuple[VerifiedRecords, ItemRecords]:
    """The verified files and the items' files recorded under `<workspace>/.provision/`."""
    state = paths.state_dir(workspace)
    verified = VerifiedRecords(state / "verified.json")
    return verified, ItemRecords(state / "items.json", verified)


def _write_json(path: Path, data: dict) -> None:
    """Save the records. A disk that fills up (or goes read-only) must not fail an item whose
    file is verified and in place: the records stay in memory, the next save writes them all,
    and if none succeeds the next run hashes those files once more."""
    try:
        # One line: json's C encoder (an indent takes the pure-Python one, which was an eighth of
        # the interpreter's work in a run of 200 small files, rewriting the records).
        paths.write_atomically(path, json.dumps(data))
    except OSError as err:
        log.warning(f"cannot save {path} ({err.strerror}): the next run hashes these files again")
