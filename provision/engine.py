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
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from .download import Checksum, Download
from .http import UnsafeRedirect, new_session
from .records import VerifiedRecords
from .retry import GaveUp, Retryable, RetryPolicy, check_status, retrying
from .secrets import redact

log = logging.getLogger("provision")

MiB = 1024 * 1024
CHUNK = 1 * MiB
MIN_PIECE, MAX_PIECE = 4 * MiB, 64 * MiB
STATE_SAVE_INTERVAL = 0.5
DISK_MARGIN = 64 * MiB
NO_RETRY = {401: "unauthorised", 403: "forbidden", 404: "not found", 410: "gone"}


class FetchError(Exception):
    """The file cannot be fetched; the message says why and what to do."""


class _RangeIgnored(Exception):
    """A server that answered 206 before now answers 200 (or 416): start over with one stream."""


@dataclass
class FetchResult:
    status: str  # "ok" or "skipped"
    bytes: int  # transferred in this run
    size: int
    reason: str | None = None


class Progress:
    """What the engine reports while it works (see progress.py for the real ones)."""

    def file_started(self, download: Download, total: int | None, have: int) -> None: ...
    def advance(self, download: Download, n: int) -> None: ...
    def file_finished(self, download: Download) -> None: ...


class ConnectionSlots:
    """The global cap on connections, granted earliest-started file first.

    A plain semaphore hands slots to whichever thread asks first, so five files share sixteen
    connections evenly and the biggest one finishes last, alone. Granting by file order (and
    starting the biggest files first) keeps the big files at full speed from the start, which
    is what makes the whole set finish early.
    """

    def __init__(self, count: int):
        self.free = count
        self.condition = threading.Condition()
        self.waiting: list[tuple[int, int]] = []  # (priority, ticket), a heap
        self.tickets = itertools.count()

    def acquire(self, priority: int) -> None:
        with self.condition:
            entry = (priority, next(self.tickets))
            heapq.heappush(self.waiting, entry)
            while not (self.free > 0 and self.waiting[0] == entry):
                self.condition.wait()
            heapq.heappop(self.waiting)
            self.free -= 1
            self.condition.notify_all()

    def release(self) -> None:
        with self.condition:
            self.free += 1
            self.condition.notify_all()

    @contextlib.contextmanager
    def hold(self, priority: int):
        self.acquire(priority)
        try:
            yield
        finally:
            self.release()


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
        session_factory: Callable[[], requests.Session] = new_session,
    ):
        self.records = records
        self.slots = ConnectionSlots(connections)
        self.per_file = max(1, min(per_file, connections))
        self._priorities = itertools.count()
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.verify = verify
        self.session_factory = session_factory
        self._local = threading.local()
        self._space_lock = threading.Lock()
        self._reserved: dict[int, int] = {}  # st_dev -> bytes promised to running downloads
        self._active_lock = threading.Lock()
        self._active: set[_Transfer] = set()
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
        if self._already_in_place(download):
            size = dest.stat().st_size
            return FetchResult("skipped", 0, size, reason="already verified")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._reserved_space(download):
            transferred = self._transfer(download, progress)
        return FetchResult("ok", transferred, dest.stat().st_size)

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
        need = download.expected_size
        if need is None:
            yield
            return
        part = _part_path(download.dest)
        # The .part is sparse (preallocated to full length): count the blocks really on disk.
        have = part.stat().st_blocks * 512 if part.exists() else 0
        need = max(0, need - have)
        device = os.stat(download.dest.parent).st_dev
        with self._space_lock:
            free = shutil.disk_usage(download.dest.parent).free - self._reserved.get(device, 0)
            if need + DISK_MARGIN > free:
                raise FetchError(
                    f"not enough disk space: needs {_mib(need)} more, {_mib(max(free, 0))} free on the disk"
                    f" of {download.dest.parent}; free some space or rent a bigger disk"
                )
            self._reserved[device] = self._reserved.get(device, 0) + need
        try:
            yield
        finally:
            with self._space_lock:
                self._reserved[device] -= need

    def _transfer(self, download: Download, progress: Progress) -> int:
        try:
            return self._run(_Transfer(self, download, progress, segmented=True))
        except _RangeIgnored:
            log.warning(f"{download.dest.name}: the server stopped honouring Range; starting over")
            return self._run(_Transfer(self, download, progress, segmented=False))

    def _run(self, transfer: _Transfer) -> int:
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
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self.session_factory()
        return session

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
        status = response.status_code
        if status < 300:
            return response
        response.close()
        if status == 416:
            raise _RangeIgnored()  # an empty file, or one shorter than our .part: start over
        check_status(response)
        message = download.explain(status) if download.explain else None
        if message is None:
            what = NO_RETRY.get(status, response.reason or "error")
            message = f"the server answered {status} ({what}) for {redact(download.url)}"
        raise FetchError(message)

    def with_retries(self, what: str, attempt_fn: Callable[[], None], stop=None) -> None:
        try:
            retrying(self.retry, what, attempt_fn, stop)
        except GaveUp as err:
            raise FetchError(str(err)) from None


class _Transfer:
    """One attempt to bring one file's `.part` up to its full, verified size."""

    def __init__(self, engine: Engine, download: Download, progress: Progress, segmented: bool):
        self.engine = engine
        self.download = download
        self.progress = progress
        self.segmented = segmented
        self.part = _part_path(download.dest)
        self.state_path = self.part.with_name(self.part.name + ".state")
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.transferred = 0
        self.errors: list[BaseException] = []
        self.last_save = 0.0
        self.announced = False
        self.hasher = _Hasher(self)
        self.priority = next(engine._priorities)
        # The first 206 answer, handed to the piece workers with its connection slot held.
        self.prefetched: tuple[int, int, requests.Response] | None = None

    # -- state of the .part ----------------------------------------------------------------

    def _load_state(self) -> None:
        self.total: int | None = None
        self.validator: str | None = None
        self.done = Ranges()
        if not self.segmented or not self.part.exists():
            self._discard()
            return
        try:
            saved = json.loads(self.state_path.read_text())
            if saved.get("identity") != self.download.identity:
                raise ValueError("another file")
            self.total = saved["total"]
            self.validator = saved.get("validator")
            self.done = Ranges(saved["done"])
            if self.download.size is not None and self.total != self.download.size:
                raise ValueError("size changed")
            if self.total is None or self.part.stat().st_size != self.total:
                raise ValueError("part has the wrong length")
        except (OSError, ValueError, KeyError, TypeError):
            self._discard()

    def _discard(self) -> None:
        with self.lock:
            self.total, self.validator, self.done = None, None, Ranges()
        self.hasher.reset()
        for path in (self.part, self.state_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _save_state(self, force: bool = False) -> None:
        now = time.monotonic()
        with self.lock:
            if not force and now - self.last_save < STATE_SAVE_INTERVAL:
                return
            self.last_save = now
            data = {
                "identity": self.download.identity,
                "total": self.total,
                "validator": self.validator,
                "done": [list(span) for span in self.done.spans],
            }
        tmp = self.state_path.with_name(f"{self.state_path.name}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.state_path)

    # -- the transfer -------------------------------------------------------------------------

    def run(self) -> int:
        self._load_state()
        resumed = self.done.covered()
        if resumed:
            log.info(f"{self.download.dest.name}: resuming, {_mib(resumed)} already on disk")
        self.hasher.start()
        try:
            self.engine.with_retries(self.download.dest.name, self._first_request)
            if self.total is not None and self.segmented:
                self._fetch_pieces()
            self._finish()
        finally:
            self.stop.set()
            self._drop_prefetched()
            if self.announced:
                self.progress.file_finished(self.download)
        return self.transferred

    def _take_prefetched(self, start: int) -> requests.Response | None:
        with self.lock:
            if self.prefetched is None or self.prefetched[0] != start:
                return None
            response = self.prefetched[2]
            self.prefetched = None
            return response

    def _drop_prefetched(self) -> None:
        with self.lock:
            prefetched, self.prefetched = self.prefetched, None
        if prefetched is not None:
            prefetched[2].close()
            self.engine.slots.release()

    def _announce(self) -> None:
        if not self.announced:
            self.announced = True
            self.progress.file_started(self.download, self.total, self.done.covered())

    def _first_request(self) -> None:
        """Ask for the first missing bytes to learn whether ranges work and the total size.
        A 206 answer becomes the first piece (its body is read by a piece worker, while the
        others start at once); a 200 answer is the whole file, written here. Retried as a
        whole; each try starts at the first missing byte."""
        gaps = self.done.gaps(self.total) if self.total is not None else [(0, None)]
        if not gaps:
            self._announce()
            return  # everything is on disk already: only verification is left
        start, gap_end = gaps[0]
        headers = {}
        end = None
        if self.segmented:
            end = start + self._piece_size(self.total or self.download.expected_size)
            end = min(end, gap_end) if gap_end is not None else end
            headers["Range"] = f"bytes={start}-{end - 1}"
            if self.validator and start > 0:
                headers["If-Range"] = self.validator
        self.engine.slots.acquire(self.priority)
        try:
            response = self.engine.open(self.download, headers)
            if response.status_code == 206:
                total = _content_range_total(response)
                if total is None:  # seen when the connection closes inside the headers
                    response.close()
                    raise Retryable("a partial answer without its total size (Content-Range)")
                if self.total is not None and total != self.total:
                    self._discard()
                if self.total is None:
                    self._start_part(total, _validator(response))
                last = _answered_range(response, start, end)
                self._announce()
                self.prefetched = (start, last + 1, response)
                return  # the slot stays held until a piece worker has read the body
        except BaseException:
            self.engine.slots.release()
            raise
        try:
            # 200: the whole file from byte 0 (no ranges, or If-Range said it changed).
            if "If-Range" in headers:
                log.warning(
                    f"{self.download.dest.name}: the file changed on the server since the partial "
                    "download (If-Range); starting over from byte 0"
                )
            elif "Range" in headers and self.done.covered():
                log.warning(f"{self.download.dest.name}: the server ignored Range; starting over from byte 0")
            self._discard()
            self.segmented = False
            length = response.headers.get("Content-Length")
            self._start_part(int(length) if length and length.isdigit() else None, None)
            self._announce()
            written = self._write_body(response, 0, self.total)
            if self.total is None:
                self.total = written
        finally:
            self.engine.slots.release()

    def _start_part(self, total: int | None, validator: str | None) -> None:
        expected = self.download.size
        if expected is not None and total is not None and total != expected:
            raise FetchError(f"the server offers {total} bytes, but the source says {expected}")
        with open(self.part, "wb") as file:
            if total:
                file.truncate(total)  # sparse: pieces land at their offsets
        with self.lock:
            self.total, self.validator, self.done = total, validator, Ranges()
        self._save_state(force=True)

    def _piece_size(self, total: int | None) -> int:
        if not total:
            return MIN_PIECE  # learn the size from a small first answer
        return max(MIN_PIECE, min(MAX_PIECE, total // (self.engine.per_file * 4)))

    def _write_body(self, response: requests.Response, start: int, end: int | None) -> int:
        """Write the body at `start` up to `end`; returns bytes written. Raises on a short body."""
        offset = start
        with response, open(self.part, "r+b") as file:
            fd = file.fileno()
            for data in response.iter_content(CHUNK):
                if self.stop.is_set():
                    break
                chunk = data[: end - offset] if end is not None else data
                if not chunk:
                    break
                os.pwrite(fd, chunk, offset)
                offset += len(chunk)
                with self.lock:
                    self.done.add(offset - len(chunk), offset)
                    self.transferred += len(chunk)
                self.progress.advance(self.download, len(chunk))
                self.hasher.poke()
                self._save_state()
                if end is not None and offset >= end:
                    break
        if end is not None and offset < end and not self.stop.is_set():
            raise requests.exceptions.ChunkedEncodingError(f"body ended at byte {offset}, expected {end}")
        return offset - start

    # -- pieces --------------------------------------------------------------------------------

    def _fetch_pieces(self) -> None:
        assert self.total is not None
        size = self._piece_size(self.total)
        with self.lock:
            gaps = self.done.gaps(self.total)
            first = self.prefetched
        pieces = []
        if first is not None:  # its range is on its way: the first piece, and no other's
            pieces.append((first[0], first[1]))
            gaps = [(max(a, first[1]) if a == first[0] else a, b) for a, b in gaps]
        pieces += [piece for gap in gaps for piece in _split(gap[0], gap[1], size)]
        if not pieces:
            return
        queue = list(reversed(pieces))
        workers = [
            threading.Thread(target=self._piece_worker, args=(queue,), daemon=True)
            for _ in range(min(self.engine.per_file, len(pieces)))
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if self.errors:
            raise self.errors[0]

    def _piece_worker(self, queue: list[tuple[int, int]]) -> None:
        try:
            while not self.stop.is_set():
                with self.lock:
                    if not queue:
                        return
                    start, end = queue.pop()
                self.engine.with_retries(
                    f"{self.download.dest.name} bytes {start}-{end - 1}",
                    lambda start=start, end=end: self._fetch_piece(start, end),
                    self.stop,
                )
        except BaseException as err:  # handed to the thread that waits for the workers
            with self.lock:
                self.errors.append(err)
            self.stop.set()

    def _fetch_piece(self, start: int, end: int) -> None:
        response = self._take_prefetched(start)
        if response is not None:
            try:
                self._write_body(response, start, end)
            finally:
                self.engine.slots.release()
            return
        while not self.stop.is_set():  # a server may answer with less than asked: ask for the rest
            with self.lock:
                gaps = [g for g in self.done.gaps(end) if g[1] > start and g[0] < end]
            if not gaps:
                return
            begin = max(start, gaps[0][0])
            headers = {"Range": f"bytes={begin}-{end - 1}"}
            if self.validator:
                headers["If-Range"] = self.validator
            with self.engine.slots.hold(self.priority):
                response = self.engine.open(self.download, headers)
                if response.status_code != 206:
                    response.close()
                    raise _RangeIgnored()
                if _content_range_total(response) != self.total:
                    response.close()
                    raise FetchError("the file changed on the server during the download; run again")
                last = _answered_range(response, begin, end)
                self._write_body(response, begin, last + 1)

    # -- the end ------------------------------------------------------------------------------

    def _finish(self) -> None:
        self._save_state(force=True)
        total = self.total if self.total is not None else self.done.covered()
        have = self.done.covered()
        if have != total:
            raise FetchError(f"incomplete: {have} of {total} bytes on disk; run again to resume")
        expected_size = self.download.size
        if expected_size is not None and total != expected_size:
            self._discard()
            raise FetchError(f"size mismatch: expected {expected_size} bytes, got {total}")
        actual = self.hasher.result(total)
        expected = self.download.checksum
        if expected is not None and actual != expected:
            self._discard()
            raise FetchError(
                f"checksum mismatch: expected {expected}, got {actual}; the bad download was deleted"
            )
        with open(self.part, "r+b") as file:
            os.fsync(file.fileno())
        os.replace(self.part, self.download.dest)
        _fsync_dir(self.download.dest.parent)
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        self.engine.records.store(self.download.dest, self.download.identity, actual)


class _Hasher:
    """Hashes the `.part` front to back while pieces arrive, from the contiguous prefix."""

    def __init__(self, transfer: _Transfer):
        self.transfer = transfer
        expected = transfer.download.checksum
        self.algorithm = expected.algorithm if expected else "sha256"
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.upto = 0
            self.digest = _new_digest(self.algorithm)
            self.header_done = False

    def start(self) -> None:
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def poke(self) -> None:
        self.wake.set()

    def _follow(self) -> None:
        with contextlib.suppress(OSError):
            while not self.transfer.stop.is_set():
                self.wake.wait(0.5)
                self.wake.clear()
                self._catch_up(self.transfer.total)

    def _catch_up(self, total: int | None) -> None:
        with self.lock:
            if self.algorithm == "git-sha1" and not self.header_done:
                if total is None:
                    return  # the blob header needs the size first
                self.digest.update(_blob_header(total))
                self.header_done = True
            with self.transfer.lock:
                ready = self.transfer.done.prefix_end()
            if ready <= self.upto:
                return
            with open(self.transfer.part, "rb") as file:
                file.seek(self.upto)
                while self.upto < ready:
                    block = file.read(min(2 * MiB, ready - self.upto))
                    if not block:
                        break
                    self.digest.update(block)
                    self.upto += len(block)

    def result(self, total: int) -> Checksum:
        self.transfer.stop.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join()
        self._catch_up(total)
        return Checksum(self.algorithm, self.digest.hexdigest())


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


def _new_digest(algorithm: str):
    return hashlib.sha1() if algorithm == "git-sha1" else hashlib.sha256()


def _blob_header(size: int) -> bytes:
    """git hashes a blob as sha1(b"blob <size>\\0" + content): the Hub's id for small files."""
    return f"blob {size}\0".encode()


def hash_file(path: Path, algorithm: str = "sha256") -> Checksum:
    digest = _new_digest(algorithm)
    if algorithm == "git-sha1":
        digest.update(_blob_header(path.stat().st_size))
    with open(path, "rb") as file:
        while block := file.read(8 * MiB):
            digest.update(block)
    return Checksum(algorithm, digest.hexdigest())


def _split(start: int, end: int, size: int):
    while start < end:
        yield start, min(end, start + size)
        start += size


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _content_range_total(response: requests.Response) -> int | None:
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    return int(match[3]) if match and match[3] != "*" else None


def _answered_range(response: requests.Response, start: int, end: int | None) -> int:
    """The last byte a 206 answer to `bytes=start-(end-1)` carries. Bytes from another offset
    than asked, or past the asked end, are never written: a retryable fault. Fewer bytes than
    asked are fine (the rest is asked for again)."""
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if not match:
        response.close()
        raise Retryable("a partial answer without Content-Range")
    first, last = int(match[1]), int(match[2])
    if first != start or last < first or (end is not None and last > end - 1):
        response.close()
        asked = f"{start}-{end - 1}" if end is not None else f"{start}-"
        raise Retryable(f"the server answered bytes {first}-{last} to a request for bytes {asked}")
    return last


def _validator(response: requests.Response) -> str | None:
    """A strong ETag or Last-Modified, usable in If-Range (weak ETags are not allowed there)."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _mib(n: int) -> str:
    return f"{n / MiB:.0f} MiB"
