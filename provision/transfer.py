"""One file's transfer: bring its `.part` up to full size and verified, then give it its name.

The first request asks for the first missing bytes with `Range` (and `If-Range`, so a changed
file is never stitched onto an old one). A 206 answer means the server can do ranges: the rest
is cut into pieces fetched over several connections at once, each written in place with
`pwrite`; every 206's Content-Range is checked against what was asked before a byte is written.
A 200 answer means it cannot: the `.part` starts over from byte 0 with that single stream.
Which ranges are on disk is saved beside the `.part` (partfile.py); a hasher follows the
contiguous prefix (hashing.py); the connection cap is the engine's (slots.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from typing import TYPE_CHECKING

import requests

from .download import Download, FetchError
from .hashing import PrefixHasher
from .partfile import PartFile, PartState
from .ranges import Ranges, split
from .retry import Retryable

if TYPE_CHECKING:
    from .engine import Engine, Progress

log = logging.getLogger("provision")

MiB = 1024 * 1024
CHUNK = 1 * MiB
MIN_PIECE, MAX_PIECE = 4 * MiB, 64 * MiB


class RangeIgnored(Exception):
    """A server that answered 206 before now answers 200 (or 416): start over with one stream.
    The message says why (ranges stopped working, or the file changed)."""


class Transfer:
    """One attempt to bring one file's `.part` up to its full, verified size."""

    def __init__(self, engine: Engine, download: Download, progress: Progress, segmented: bool):
        self.engine = engine
        self.download = download
        self.progress = progress
        self.segmented = segmented
        self.partfile = PartFile(download.dest, download.identity)
        self.part = self.partfile.path
        self.lock = threading.Lock()
        self.connections = 0  # slots this file holds now
        self.blocked = 0  # its workers waiting for one
        self.waiting_shown = False
        self.total: int | None = None
        self.validator: str | None = None
        self.done = Ranges()
        self.stop = threading.Event()
        self.transferred = 0
        self.errors: list[BaseException] = []
        self.announced = False
        self.hasher = PrefixHasher(self)
        self.priority = next(engine._priorities)
        # The first 206 answer, handed to the piece workers with its connection slot held.
        self.prefetched: tuple[int, int, requests.Response] | None = None

    # -- state of the .part ----------------------------------------------------------------

    def _load_state(self) -> None:
        if not self.segmented or not self.partfile.path.exists() or self.engine.force:
            self._discard()
            return
        state = self.partfile.load(self.download.size)
        if not state.done.covered():  # nothing to resume; its validator may be another file's
            self._discard()
            return
        self.total, self.validator, self.done = state.total, state.validator, state.done

    def _discard(self) -> None:
        with self.lock:
            self.total, self.validator, self.done = None, None, Ranges()
        self.hasher.reset()
        self.partfile.discard()

    def _save_state(self, force: bool = False) -> None:
        if not force and not self.partfile.due():
            return
        with self.lock:
            snapshot = PartState(self.total, self.validator, Ranges([list(s) for s in self.done.spans]))
        self.partfile.save(snapshot)

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
        except BaseException:
            # A failed run keeps what it got: the next one resumes from the last byte written.
            if self.partfile.path.exists():
                with contextlib.suppress(OSError):
                    self._save_state(force=True)
            raise
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
            self._give_slot()

    # -- connection slots: the engine's cap, and whether this file is waiting for one -------------

    def _take_slot(self) -> None:
        waited = self.engine.slots.acquire(self.priority, on_wait=self._blocked)
        with self.lock:
            self.blocked -= waited
            self.connections += 1
        self._show_waiting(False)

    def _give_slot(self) -> None:
        self.engine.slots.release()
        with self.lock:
            self.connections -= 1
            idle = self.connections == 0 and self.blocked > 0
        if idle:
            self._show_waiting(True)

    def _blocked(self) -> None:
        """A worker found no free connection (called by the slots before it waits)."""
        with self.lock:
            self.blocked += 1
            idle = self.connections == 0
        if idle:
            self._show_waiting(True)

    def _show_waiting(self, waiting: bool) -> None:
        """Holding no connection while a worker waits for one means a bigger, earlier file has
        them all: the bar says "waiting" instead of looking frozen. Only changes are reported."""
        with self.lock:
            if waiting == self.waiting_shown or not self.announced or (waiting and self.stop.is_set()):
                return
            self.waiting_shown = waiting
        self.progress.file_waiting(self.download, waiting)

    @contextlib.contextmanager
    def _slot(self):
        self._take_slot()
        try:
            yield
        finally:
            self._give_slot()

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
            if self.validator and self.done.covered():  # resuming: only onto the same file
                headers["If-Range"] = self.validator
        self._take_slot()
        try:
            response = self.engine.open(self.download, headers)
            if response.status_code == 206:
                total = content_range_total(response)
                if total is None:  # seen when the connection closes inside the headers
                    response.close()
                    raise Retryable("a partial answer without its total size (Content-Range)")
                if self.total is not None and total != self.total:
                    self._discard()
                if self.total is None:
                    self._start_part(total, validator(response))
                last = answered_range(response, start, end)
                self._announce()
                self.prefetched = (start, last + 1, response)
                return  # the slot stays held until a piece worker has read the body
        except BaseException:
            self._give_slot()
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
            self._give_slot()

    def _start_part(self, total: int | None, validator: str | None) -> None:
        expected = self.download.size
        if expected is not None and total is not None and total != expected:
            raise FetchError(f"the server offers {total} bytes, but the source says {expected}")
        self.partfile.create(total)
        with self.lock:
            self.total, self.validator, self.done = total, validator, Ranges()
        self._save_state(force=True)

    def _piece_size(self, total: int | None) -> int:
        if not total:
            return MIN_PIECE  # learn the size from a small first answer
        return max(MIN_PIECE, min(MAX_PIECE, total // (self.engine.per_file * 2)))

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
        pieces += [piece for gap in gaps for piece in split(gap[0], gap[1], size)]
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
                self._give_slot()
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
            with self._slot():
                response = self.engine.open(self.download, headers)
                if response.status_code != 206:
                    response.close()
                    if "If-Range" in headers:  # a 200 to If-Range: the validator no longer matches
                        raise RangeIgnored("the file changed on the server during the download (If-Range)")
                    raise RangeIgnored("the server stopped honouring Range")
                if content_range_total(response) != self.total:
                    response.close()
                    raise FetchError("the file changed on the server during the download; run again")
                last = answered_range(response, begin, end)
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
        self.partfile.commit()
        self.engine.records.store(self.download.dest, self.download.identity, actual)


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def content_range_total(response: requests.Response) -> int | None:
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    return int(match[3]) if match and match[3] != "*" else None


def answered_range(response: requests.Response, start: int, end: int | None) -> int:
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


def validator(response: requests.Response) -> str | None:
    """A strong ETag or Last-Modified, usable in If-Range (weak ETags are not allowed there)."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _mib(n: int) -> str:
    return f"{n / MiB:.0f} MiB"
