"""Checksums: sha256, or the git blob id the Hub publishes for small files; of a whole file, or
of a `.part` front to back while its pieces arrive."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .download import Checksum

if TYPE_CHECKING:
    from .transfer import Transfer

MiB = 1024 * 1024
# Read back a quarter of a megabyte at a time (the page cache gives it as fast as bigger blocks).
# A megabyte was 4% faster uncapped (fewer waits for the GIL behind 16 receivers) but took peak
# RSS at the ceiling from 56-57 to 60-64 MiB (the target is under 64); half a megabyte gained
# nothing measurable (bench, uncapped, five rounds: 4.8 s either way).
HASH_BLOCK = MiB // 4


class PrefixHasher:
    """Hashes the `.part` front to back while pieces arrive, from the contiguous prefix: from
    memory when bytes arrive in order, read back from the file when they arrived ahead. The
    thread that reads back starts only when bytes first arrive ahead of the prefix: a file that
    comes in order (one request, one stream) is hashed from memory alone, without a thread (200
    small files each started one: a tenth of the run's CPU went to waking them)."""

    def __init__(self, transfer: Transfer):
        self.transfer = transfer
        expected = transfer.download.checksum
        self.algorithm = expected.algorithm if expected else "sha256"
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self._starting = threading.Lock()
        self.buffer: memoryview | None = None  # one block, reused: the file is read in place
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.upto = 0
            self.digest = new_digest(self.algorithm)
            self.header_done = False

    def wrote(self, start: int, data: memoryview) -> None:
        """`data` was just written at `start`. When it is the next byte to hash (the piece at
        the front of the file, or a single stream) it is hashed from memory here, and is not
        read back; else the hashing thread (started now if need be) reads it back in turn. A
        running thread is woken either way, for what this write made contiguous."""
        hashed = False
        if self.lock.acquire(blocking=False):  # busy reading back: it will read these too
            try:
                if self.upto == start and self._header(self.transfer.total):
                    self.digest.update(data)
                    self.upto += len(data)
                    hashed = True
            finally:
                self.lock.release()
        if self.thread is None and not hashed:
            self.start()
        if self.thread is not None:
            self.wake.set()

    def start(self) -> None:
        """Start the thread that reads back and hashes. A thread is as nice as the thread that
        starts it (Linux): a file fetched by several receivers has it started by the transfer's
        own thread before they begin (Transfer._run_workers), or it would be as nice as they
        are and get a seventeenth of a busy machine's CPU (the 2 GiB file of the bench was 1.8
        GiB behind at its last byte)."""
        with self._starting:
            if self.thread is None:
                self.thread = threading.Thread(target=self._follow, daemon=True)
                self.thread.start()

    def _header(self, total: int | None) -> bool:
        """Whether the digest is ready for the content (under self.lock): a git blob id starts
        with a header that needs the size."""
        if self.algorithm == "git-sha1" and not self.header_done:
            if total is None:
                return False
            self.digest.update(blob_header(total))
            self.header_done = True
        return True

    def _follow(self) -> None:
        with contextlib.suppress(OSError):
            while not self.transfer.stop.is_set():
                self.wake.wait(0.5)
                self.wake.clear()
                self._catch_up(self.transfer.total)

    def _catch_up(self, total: int | None) -> None:
        with self.lock:
            if not self._header(total):
                return
            with self.transfer.lock:
                ready = self.transfer.done.prefix_end()
            if ready <= self.upto:
                return
            if self.buffer is None:
                self.buffer = memoryview(bytearray(HASH_BLOCK))
            with open(self.transfer.part, "rb", buffering=0) as file:
                file.seek(self.upto)
                while self.upto < ready:
                    n = file.readinto(self.buffer[: min(HASH_BLOCK, ready - self.upto)])
                    if not n:
                        break
                    self.digest.update(self.buffer[:n])
                    self.upto += n

    def result(self, total: int) -> Checksum:
        self.transfer.stop.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join()
        self._catch_up(total)
        return Checksum(self.algorithm, self.digest.hexdigest())


def new_digest(algorithm: str):
    return hashlib.sha1() if algorithm == "git-sha1" else hashlib.sha256()


def blob_header(size: int) -> bytes:
    """git hashes a blob as sha1(b"blob <size>\\0" + content): the Hub's id for small files."""
    return f"blob {size}\0".encode()


def hash_file(path: Path, algorithm: str = "sha256") -> Checksum:
    digest = new_digest(algorithm)
    if algorithm == "git-sha1":
        digest.update(blob_header(path.stat().st_size))
    with open(path, "rb") as file:
        while block := file.read(8 * MiB):
            digest.update(block)
    return Checksum(algorithm, digest.hexdigest())
