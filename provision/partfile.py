"""A download's `.part` file and its state: which byte ranges are on disk, and of which file.

`<name>.part` gets its full size at once, so pieces land at their offsets: its blocks are
reserved on the disk where the filesystem can (`preallocate`), else it is sparse;
`<name>.part.state` (identity, total, validator, done ranges) is rewritten atomically at most
every half second, so a killed run resumes with little more than the missing bytes. A state
that does not fit (another identity, another size, a part of another length) is not trusted:
both files go and the download starts over. `commit` is the only way to the final name.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .paths import write_atomically
from .ranges import Ranges

SAVE_INTERVAL = 0.5
_UNREADABLE = (OSError, ValueError, KeyError, TypeError)


def part_path(dest: Path) -> Path:
    """Where a download of `dest` is written until it is verified."""
    return dest.with_name(dest.name + ".part")


@dataclass
class PartState:
    total: int | None = None
    validator: str | None = None  # a strong ETag or Last-Modified, for If-Range
    done: Ranges = field(default_factory=Ranges)


class PartFile:
    def __init__(self, dest: Path, identity: str = ""):
        self.dest = dest
        self.identity = identity
        self.path = part_path(dest)
        self.state_path = self.path.with_name(self.path.name + ".state")
        self._last_save = 0.0
        self.saved = False  # a state file of this download is on disk (saved or loaded)
        self.discarded_because: str | None = None  # why load() threw a partial file away
        self._save_lock = threading.Lock()

    def _saved(self) -> tuple[str | None, PartState]:
        """The state file as written (raises on anything unreadable)."""
        saved = json.loads(self.state_path.read_text())
        return saved.get("identity"), PartState(saved["total"], saved.get("validator"), Ranges(saved["done"]))

    def load(self, expected_size: int | None) -> PartState:
        """What an earlier run left, or a fresh state (and no files) when it cannot be trusted."""
        try:
            identity, state = self._saved()
            if identity != self.identity:
                raise ValueError("another file")
            if expected_size is not None and state.total != expected_size:
                raise ValueError("the source's size changed")
            if state.total is None:
                raise ValueError("the server sent no size, so the bytes cannot be placed")
            if self.path.stat().st_size != state.total:
                raise ValueError("the partial file has the wrong length")
            if any(a < 0 or b > state.total for a, b in state.done.spans):
                raise ValueError("its ranges reach outside the file")  # each would become a wrong request
            self.saved = True
            return state
        except FileNotFoundError:  # killed before its first save (SAVE_INTERVAL)
            self.discarded_because = "no state was saved beside it"
            self.discard()
            return PartState()
        except _UNREADABLE as err:
            self.discarded_because = str(err) if type(err) is ValueError else "its state is unreadable"
            self.discard()
            return PartState()

    def peek(self, any_file: bool = False) -> PartState | None:
        """The saved state, read only (a dry-run or `status` must change nothing): when it is
        this file's, or with `any_file` whichever file it is of (the name alone is known)."""
        try:
            identity, state = self._saved()
        except _UNREADABLE:
            return None
        if not any_file and (identity != self.identity or not self.path.exists()):
            return None
        return state

    def discard(self) -> None:
        for path in (self.path, self.state_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.saved = False

    def create(self, total: int | None) -> None:
        """A new, empty `.part`; the caller saves its first state now or SAVE_INTERVAL later.
        A disk without room for `total` bytes fails here (ENOSPC), before a byte is fetched,
        and leaves no `.part` behind."""
        try:
            with opened(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) as fd:
                if total and not preallocate(fd, total):
                    os.ftruncate(fd, total)  # sparse: pieces land at their offsets
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            raise
        self._last_save = time.monotonic()

    def due(self) -> bool:
        """Whether a periodic save is due (callers then snapshot their state and `save` it)."""
        return time.monotonic() - self._last_save >= SAVE_INTERVAL

    def save(self, state: PartState) -> None:
        """Write a snapshot of the state (taken under the caller's lock) atomically."""
        data = {
            "identity": self.identity,
            "total": state.total,
            "validator": state.validator,
            "done": [list(span) for span in state.done.spans],
        }
        with self._save_lock:
            self._last_save = time.monotonic()
            write_atomically(self.state_path, json.dumps(data))  # a full disk keeps the last one
            self.saved = True

    def commit(self) -> None:
        """The verified part becomes the file: fsync, atomic rename, fsync of the folder."""
        with opened(self.path, os.O_RDWR) as fd:
            os.fsync(fd)
        os.replace(self.path, self.dest)
        fsync_dir(self.dest.parent)
        if self.saved:
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
            self.saved = False


@contextlib.contextmanager
def opened(path: Path, flags: int) -> Iterator[int]:
    """A bare file descriptor: open() adds a stat, a terminal check and two seeks, system calls
    at which the GIL changes hands (a run of 200 small files opens 600 times)."""
    fd = os.open(path, flags | os.O_CLOEXEC, 0o666)
    try:
        yield fd
    finally:
        os.close(fd)


def unheld(part: Path, size: int) -> int:
    """Bytes of a `size`-byte file that its `.part` does not hold on the disk yet: none once
    preallocated (a full disk cannot fail its writes then), all but what was written when
    sparse (an older run's, or a filesystem without fallocate), all when there is none."""
    try:
        held = part.stat().st_blocks * 512
    except FileNotFoundError:
        held = 0
    return max(0, size - held)


def preallocate(fd: int, size: int) -> bool:
    """Reserve `size` bytes of disk for the file at once (fallocate(2), as aria2c does), or
    False where the filesystem cannot (the file is left as it was). Reserved blocks cannot be
    taken by another program filling the disk while the pieces arrive, so a download that has
    started has its room (it cost no time: the bench's 4 GiB uncapped, runs in turn, 6.5 s on
    ext4 and 5.0 s on tmpfs either way). Not os.posix_fallocate: where the filesystem has no
    fallocate (NFS before 4.2, some FUSE mounts) glibc emulates it by writing to every block
    (posix_fallocate(3))."""
    fallocate = _fallocate()
    if fallocate is None:
        return False
    if fallocate(fd, 0, 0, size) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(error, os.strerror(error))


@functools.cache
def _fallocate():
    """The C library's fallocate (Linux), or None."""
    libc = ctypes.CDLL(None, use_errno=True)  # the C library this interpreter runs on
    fallocate = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate", None)
    if fallocate is not None:
        fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
        fallocate.restype = ctypes.c_int
    return fallocate


def write_at(fd: int, data: memoryview, offset: int) -> None:
    """Write all of `data` at `offset`. A write can take fewer bytes than it was given: a disk
    that fills up takes what fits and only the next write fails (ENOSPC), and FUSE or network
    filesystems may stop short. Bytes counted as on disk that are not would poison the resume
    state, and the next run would end in a checksum mismatch and download it all again."""
    while data:
        written = os.pwrite(fd, data, offset)
        if written <= 0:
            raise OSError(errno.EIO, f"the disk took none of {len(data)} bytes at offset {offset}")
        data, offset = data[written:], offset + written


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError), opened(path, os.O_RDONLY) as fd:
        os.fsync(fd)
