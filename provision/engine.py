"""The download engine: resumable, segmented, verified, and never half-written under a final name.

One file at a time goes through `Engine.fetch`:

1. Skip it when the destination is already verified (a record from an earlier run with the same
   size and mtime, or, without a record, one hash of the existing file).
2. Reserve its size on the disk, or refuse it when it cannot fit.
3. Ask for the first missing piece with `Range` (and `If-Range`, so a changed file is never
   stitched onto an old one). A 206 answer means the server can do ranges: the rest is cut into
   pieces fetched over several connections at once, each written in place with `pwrite` into a
   preallocated `<name>.part`. A 200 answer means it cannot: the `.part` starts over from byte 0
   with that single stream; nothing is ever appended to bytes of unknown origin.
4. Which byte ranges are on disk is saved beside the `.part` (`<name>.part.state`) at most every
   half second, so a killed run resumes with little more than the missing bytes.
5. A hashing thread follows the contiguous prefix on disk while the pieces arrive, so the
   checksum is ready moments after the last byte. Size and checksum mismatches fail the item
   with both values; then the `.part` goes, fsync, atomic rename, and the verified record.

Every request retries connection errors, stalls (the read timeout), truncated bodies, 5xx and
429 with exponential backoff and jitter, honouring Retry-After. 401, 403, 404 and 410 fail at
once, explained by the source.

This module keeps steps 1 and 2, the sessions and the cancel of a whole run; one file's
transfer is transfer.py, its `.part` and state partfile.py, the checksum hashing.py, byte
ranges ranges.py, the connection cap slots.py.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import mmap
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from . import transfer as transfer_module
from .download import Download, FetchError
from .hashing import hash_file
from .http import UnsafeRedirect, new_session
from .partfile import part_path, unheld
from .records import VerifiedRecords
from .retry import GaveUp, RetryPolicy, check_status, retrying
from .secrets import redact
from .slots import ConnectionSlots
from .transfer import RangeIgnored, Transfer, host

log = logging.getLogger("provision")

MiB = 1024 * 1024
DISK_MARGIN = 64 * MiB
READ_SIZE = 1024 * 1024  # bytes read from a socket at a time, at most ...
MIN_READ_SIZE = 256 * 1024  # ... and at least
BUFFERS = 16 * MiB  # the read buffers of the connections the run may open now (Engine.buffer)
NO_RETRY = {401: "unauthorised", 403: "forbidden", 404: "not found", 410: "gone"}


@dataclass
class FetchResult:
    status: str  # "ok" or "skipped"
    bytes: int  # transferred in this run
    size: int
    reason: str | None = None
    verified: str = ""  # how: "sha256", "git blob id", "size only" or "none" (see verification)


def verification(download: Download) -> str:
    """What the file was checked against: a published checksum, else its size, else nothing."""
    if download.checksum is not None:
        return "git blob id" if download.checksum.algorithm == "git-sha1" else download.checksum.algorithm
    return "size only" if download.size is not None else "none"


class Progress:
    """What the engine reports while it works (see progress.py for the real ones)."""

    def file_started(self, download: Download, total: int | None, have: int) -> None: ...
    def advance(self, download: Download, n: int) -> None: ...
    def file_waiting(self, download: Download, waiting: bool) -> None: ...
    def file_verifying(self, download: Download) -> None: ...
    def file_finished(self, download: Download) -> None: ...


class Engine:
    def __init__(
        self,
        records: VerifiedRecords,
        *,
        connections: int = 16,
        per_file: int = 16,
        retry: RetryPolicy | None = None,
        timeout: tuple[float, float] = (10, 30),
        verify: bool = False,
        force: bool = False,
        session_factory: Callable[[], requests.Session] = new_session,
    ):
        self.records = records
        self.slots = ConnectionSlots(connections)
        self.per_file = max(1, min(per_file, connections))
        self._priorities = itertools.count()  # slot order: files in the order they started ...
        self._small_first = itertools.count(-(2**62))  # ... after every file smaller than a piece
        self._turns: dict[Path, int] = {}  # the run's order of its bigger files (take_turns)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.verify = verify
        self.force = force  # never skip: fetch every file again, from byte 0
        self.session_factory = session_factory
        self._local = threading.local()
        self._space_lock = threading.Lock()
        self._reserved: dict[Path, tuple[int, int]] = {}  # .part -> (st_dev, size), under way
        self._active_lock = threading.Lock()
        self._active: set[Transfer] = set()
        self._sessions: list[requests.Session] = []
        self._idle_sessions: list[requests.Session] = []  # of threads that ended
        self._idle_buffers: list[mmap.mmap] = []  # all of the size read_size() gave last
        self._buffer_bytes = 0  # of every buffer, idle or in use
        self._no_range: set[str] = set()  # hosts that answered a Range request with the whole file
        self.cancelled = threading.Event()

    def cancel(self) -> list[Path]:
        """Stop every transfer (Ctrl-C): each saves which bytes it has; returns the files left
        partial, which the next run resumes. Workers notice at their next chunk or retry."""
        self.cancelled.set()
        with self._active_lock:
            active = list(self._active)
        partial = []
        for transfer in active:
            transfer.stop.set()
            with contextlib.suppress(OSError):
                transfer._save_state(force=True)
            if transfer.part.exists():
                partial.append(transfer.download.dest)
        return sorted(partial)

    # --- one file ---------------------------------------------------------------------------

    def fetch(self, download: Download, progress: Progress | None = None) -> FetchResult:
        progress = progress or Progress()
        dest = download.dest
        if dest.is_dir():
            raise FetchError(f"{dest} is a folder; remove it or give the item another filename")
        if not self.force and self._already_in_place(download):
            size = dest.stat().st_size
            return FetchResult("skipped", 0, size, reason="already verified", verified=verification(download))
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._reserved_space(download):
            transferred = self._transfer(download, progress)
        return FetchResult("ok", transferred, dest.stat().st_size, verified=verification(download))

    def _already_in_place(self, download: Download) -> bool:
        dest = download.dest
        try:
            stat = dest.stat()
        except FileNotFoundError:
            return False
        if download.size is not None and stat.st_size != download.size:
            log.info(
                f"{dest.name}: existing file has {stat.st_size} bytes, expected {download.size}: replacing"
            )
            return False
        record = self.records.lookup(dest)
        recorded = record.checksum if record and record.identity == download.identity else None
        if record and not self.verify and record.matches(stat, download):
            return True
        expected = download.checksum or (recorded if self.verify else None)
        if expected is None and download.size is None:
            log.info(f"{dest.name}: nothing to check the existing file against: downloading again")
            return False
        # Hash once, then remember it: the next run only compares size and mtime.
        actual = hash_file(dest, expected.algorithm if expected else "sha256")
        if expected and actual != expected:
            log.warning(
                f"{dest.name}: existing file does not match ({expected} expected, {actual} found): replacing"
            )
            return False
        self.records.store(dest, download.identity, expected or actual)
        return True

    @contextlib.contextmanager
    def _reserved_space(self, download: Download):
        """Refuse a file the disk cannot hold beside the downloads under way, or promise it
        the room until it ends. The free space the disk reports already counts the blocks each
        `.part` holds (all of them once preallocated), so of those only the rest is promised:
        counted twice, a second 40 MiB file was refused on a disk with room for both."""
        size = download.expected_size
        if size is None:
            yield
            return
        part = part_path(download.dest)
        device = os.stat(download.dest.parent).st_dev
        with self._space_lock:
            promised = sum(unheld(p, n) for p, (dev, n) in self._reserved.items() if dev == device)
            free = shutil.disk_usage(download.dest.parent).free - promised
            need = unheld(part, size)
            if need + DISK_MARGIN > free:
                raise FetchError(
                    f"not enough disk space: needs {_mib(need)} more and {_mib(DISK_MARGIN)} to spare,"
                    f" {_mib(max(free, 0))} free on the disk of {download.dest.parent}; free some space"
                    " or rent a bigger disk"
                )
            self._reserved[part] = (device, size)
        try:
            yield
        finally:
            with self._space_lock:
                self._reserved.pop(part, None)

    def take_turns(self, downloads: list[Download]) -> None:
        """The order the run starts its files in (biggest first) is their order in the queue
        for connections, fixed now: the threads that start them raced each other (the 1 GiB
        file of the bench took the connections before the 2 GiB one, which then came in last
        with 1.7 GiB still to hash: a second of one core idle at the end)."""
        for download in downloads:
            if not self.small(download):
                self._turns[download.dest] = next(self._priorities)

    def priority(self, download: Download) -> int:
        """A new transfer's place in the queue for connections (lower goes first): its turn
        (take_turns), else after the files started so far. A file smaller than one piece needs
        one connection for moments: it goes before every bigger one, whose workers hand their
        connection over between pieces (Transfer._piece_worker), so it never waits for a big
        file to end (two 1.7 MiB files took 12 s each behind a 2 GiB and a 1 GiB one)."""
        if self.small(download):
            return next(self._small_first)
        turn = self._turns.get(download.dest)
        return turn if turn is not None else next(self._priorities)

    def small(self, download: Download) -> bool:
        """A file smaller than one piece: one request, one connection (run.py gives these a
        lane of their own)."""
        size = download.expected_size
        return size is not None and size < transfer_module.PIECE

    # --- servers without Range --------------------------------------------------------------

    def ignores_range(self, url: str) -> bool:
        """Whether this URL's host answered a Range request with the whole file before: its
        files then go as one plain request each (a Range header would only be ignored)."""
        with self._active_lock:
            return host(url) in self._no_range

    def range_ignored(self, url: str) -> None:
        """A Range request to this URL's host came back whole (200): said once per host."""
        name = host(url)
        with self._active_lock:
            known = name in self._no_range
            self._no_range.add(name)
        if not known:
            log.warning(f"{name} ignores Range: one connection per file, no resume")

    def _transfer(self, download: Download, progress: Progress) -> int:
        try:
            segmented = not self.ignores_range(download.url)
            return self._run(Transfer(self, download, progress, segmented=segmented))
        except RangeIgnored as why:  # the .part's bytes are discarded with a line saying why
            why_not = str(why) or "the server stopped honouring Range"
            return self._run(Transfer(self, download, progress, segmented=False, why_not=why_not))

    def _run(self, transfer: Transfer) -> int:
        with self._active_lock:
            if self.cancelled.is_set():
                raise FetchError("cancelled")
            self._active.add(transfer)
        try:
            return transfer.run()
        finally:
            with self._active_lock:
                self._active.discard(transfer)

    # --- requests ---------------------------------------------------------------------------

    def session(self) -> requests.Session:
        """This thread's session: never shared by two threads at once, but handed on when the
        thread gives up its connection slot (`hand_back`), so its kept-alive connection serves
        the next request of whichever thread takes a slot next: as many sessions as slots in
        use, not one per worker thread (a worker waiting for a slot holds none)."""
        session = getattr(self._local, "session", None)
        if session is None:
            with self._active_lock:
                session = self._idle_sessions.pop() if self._idle_sessions else None
            if session is None:
                session = self.session_factory()
                with self._active_lock:
                    self._sessions.append(session)
            self._local.session = session
        return session

    def read_size(self, allowed: int | None = None) -> int:
        """Bytes a connection reads at a time: a megabyte while the hosts in use may open 16
        connections in all, half that up to 32, a quarter above (the buffers then take BUFFERS
        in all). On a fast link every read costs CPU (the bench's 4 GiB set uncapped: 9.4 s of
        CPU in reads of 256 KiB, 8.7 in reads of a megabyte), and such a link stays at 16;
        a link that rewards more connections gives each less to read at a time."""
        size, allowed = READ_SIZE, allowed or self.slots.allowed()
        while size > MIN_READ_SIZE and size * allowed > BUFFERS:
            size //= 2
        return size

    def buffer(self) -> mmap.mmap:
        """This thread's read buffer, reused for every body it reads while it holds a
        connection: no fresh bytes per read, and memory that stays flat. When the connections
        change in number, each thread gets one of the new size at its next body; until the old
        ones are given back (at their next read: Transfer._write_body) the new ones are smaller
        if need be, down to MIN_READ_SIZE. Buffers are maps of their own: one no longer wanted
        goes back to the system at once (freed into the heap, buffers of changing sizes
        fragmented it: peak RSS 72 MiB against 59)."""
        size = self.read_size()
        buffer = getattr(self._local, "buffer", None)
        if buffer is not None and len(buffer) == size:
            return buffer
        with self._active_lock:
            retired = [b for b in (buffer, *self._idle_buffers) if b is not None and len(b) != size]
            self._idle_buffers = [b for b in self._idle_buffers if len(b) == size]
            self._buffer_bytes -= sum(len(b) for b in retired)
            if self._idle_buffers:
                buffer = self._idle_buffers.pop()
            else:
                while size > MIN_READ_SIZE and self._buffer_bytes + size > BUFFERS:
                    size //= 2
                buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
                self._buffer_bytes += size
        for old in retired:
            with contextlib.suppress(BufferError):  # a view of it still alive: freed with it
                old.close()
        self._local.buffer = buffer
        return buffer

    def hand_back(self) -> None:
        """This thread gave up its connection slot, or ends: its buffer and session go to the
        next thread that takes one."""
        session = getattr(self._local, "session", None)
        buffer = getattr(self._local, "buffer", None)
        self._local.session = self._local.buffer = None
        with self._active_lock:
            if session is not None:
                self._idle_sessions.append(session)
            if buffer is not None:
                self._idle_buffers.append(buffer)

    def close(self) -> None:
        """Close every thread's session (their pooled connections)."""
        with self._active_lock:
            sessions, self._sessions = self._sessions, []
            self._idle_sessions, self._idle_buffers, self._buffer_bytes = [], [], 0
        for session in sessions:
            session.close()

    def open(self, download: Download, headers: dict[str, str]) -> requests.Response:
        """GET with the download's headers; 2xx or an exception (retryable or final)."""
        try:
            response = self.session().get(
                download.url,
                headers={**download.headers, **headers, "Accept-Encoding": "identity"},
                stream=True,
                timeout=self.timeout,
            )
        except UnsafeRedirect as err:
            raise FetchError(f"{redact(download.url)}: {err}") from None
        except requests.exceptions.ConnectionError as err:
            if isinstance(err, requests.exceptions.ConnectTimeout) or "refused" in str(err).lower():
                self.slots.pushed_back(host(download.url))  # too many connections for it, maybe
            raise
        status = response.status_code
        if status < 300:
            return response
        response.close()
        if status in (429, 503):  # the server wants fewer requests at once
            self.slots.pushed_back(host(download.url))
        if status == 416:
            raise RangeIgnored("the server refused the range (416)")  # an empty or shorter file
        check_status(response)
        message = download.explain(status) if download.explain else None
        if message is None:
            what = NO_RETRY.get(status, response.reason or "error")
            message = f"the server answered {status} ({what}) for {redact(download.url)}"
        raise FetchError(message)

    def with_retries(
        self, what: str, attempt_fn: Callable[[], None], stop=None, url: str | None = None
    ) -> None:
        try:
            retrying(self.retry, what, attempt_fn, stop, url=url)
        except GaveUp as err:
            raise FetchError(str(err), gave_up=True) from None


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n < 10 * MiB else f"{n / MiB:.0f} MiB"
