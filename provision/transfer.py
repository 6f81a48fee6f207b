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
import http.client
import logging
import os
import re
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import requests

from .download import Download, FetchError
from .hashing import PrefixHasher
from .partfile import PartFile, PartState, opened, unheld, write_at
from .paths import disk_full
from .ranges import Ranges, split
from .retry import Retryable

if TYPE_CHECKING:
    from .engine import Engine, Progress

log = logging.getLogger("provision")

MiB = 1024 * 1024
FIRST_PIECE = 4 * MiB  # the first request when the size is not known yet
PIECE = 32 * MiB  # files are cut into pieces of this size at most
SPLIT = 32  # ... and into this many at least (twice aria2c's -s 16), down to MIN_PIECE
MIN_PIECE = 8 * MiB
CONTENDED_PIECE = 2 * PIECE  # a claim joins queued pieces up to this while another file waits
TAIL_SHARE = 4  # near a file's end, a request asks for at most this share of what is left
RECEIVER_NICENESS = 10  # piece workers run this much nicer than the hashers (yield_to_hashing)
MIN_STEAL = 4 * MiB  # a piece's unasked rest is halved for an idle connection only above twice this
JUDGED_AFTER = 0.5  # seconds a piece runs before its speed is measured (and left alone if it ends sooner)


@dataclass
class Piece:
    """Bytes [start, end) one connection fetches, up to `asked` requested so far and
    `received` written. A worker with nothing left to do takes the back half of what a piece
    has not asked for yet, or the back of what the piece that would end last asked for
    (`_claim`): that request then ends early and its connection is closed."""

    start: int
    end: int
    asked: int = 0
    received: int = 0
    began: float = 0.0  # when a worker took it (time.monotonic)

    def __post_init__(self) -> None:
        self.asked = max(self.asked, self.start)
        self.received = max(self.received, self.start)

    def rate(self, now: float) -> float:
        """Bytes per second since it was taken."""
        return (self.received - self.start) / max(now - self.began, 1e-3)


def body_reader(response: requests.Response):
    """A `readinto` for the body: straight from the socket into our buffer (http.client's,
    under urllib3; over TLS `tls_body_reader`), or through urllib3's decoding when the server
    encoded the body anyway. Transport errors come out as requests' ConnectionError, which the
    retries know."""
    raw = response.raw
    fp = getattr(raw, "_fp", None)
    identity = response.headers.get("Content-Encoding", "identity").lower() == "identity"
    read_into = fp.readinto if identity and hasattr(fp, "readinto") else raw.readinto
    tls = getattr(getattr(raw, "connection", None), "sock", None)
    if identity and isinstance(tls, ssl.SSLSocket) and isinstance(fp, http.client.HTTPResponse):
        read_into = tls_body_reader(fp, tls) or read_into

    def read(view: memoryview) -> int:
        try:
            return read_into(view)
        except (OSError, http.client.HTTPException) as err:
            raise requests.exceptions.ConnectionError(f"{type(err).__name__}: {err}") from None

    return read


def tls_body_reader(fp: http.client.HTTPResponse, sock: ssl.SSLSocket):
    """A `readinto` that fills the whole buffer from a TLS socket, or None for a body without a
    Content-Length. A TLS socket read returns one record, 16 KiB at most: http.client's buffered
    reader fills a megabyte through three Python calls per record, this through one (measured
    on the bench's set over HTTPS, 2 cores, 5 alternating rounds: 7% less wall time and CPU, a
    quarter fewer context switches, every round). The bytes the header parse read ahead come
    first, from http.client's buffer; at the body's end http.client is told, so the connection
    is kept alive for the next request."""
    left = fp.length
    if fp.chunked or left is None:
        return None
    buffered = fp.fp
    drained = False  # http.client's read-ahead is used up: read from the socket itself

    def read(view: memoryview) -> int:
        nonlocal left, drained
        want, n = min(len(view), left), 0
        if want and not drained:
            n = buffered.readinto1(view[:want])  # what is buffered, or one read when nothing is
            drained = n < want
        elif want:
            while n < want and (got := sock.recv_into(view[n:want], want - n)):
                n += got
        left -= n
        if not left:
            fp.close()  # the whole body: http.client's end, urllib3 may reuse the connection
        return n

    return read


def yield_to_hashing() -> None:
    """Lower the calling (receiving) thread's CPU priority by RECEIVER_NICENESS. On a host with
    few cores a fast link keeps every core busy, and the scheduler shares them out per thread:
    16 receivers leave the one thread that hashes a file a seventeenth, so the hash falls a GiB
    behind and finishes alone after the last byte, one core idle (measured on 2 cores: 0.75 s
    of a 4.8 s run; 6% less wall time with this, the same CPU). With cores to spare nothing
    changes. Linux threads have a niceness of their own; elsewhere this does nothing."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError):
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, os.getpriority(os.PRIO_PROCESS, me) + RECEIVER_NICENESS)


def release_if_read(response: requests.Response) -> None:
    """A body read to its end: its connection goes back to the pool for the next request (read
    around urllib3, so it is told). A body left unread keeps its connection, which closes."""
    fp = getattr(response.raw, "_fp", None)
    if fp is not None and fp.isclosed() and hasattr(response.raw, "release_conn"):
        response.raw.release_conn()


class RangeIgnored(Exception):
    """A server that answered 206 before now answers 200 (or 416): start over with one stream.
    The message says why (ranges stopped working, or the file changed)."""


class Transfer:
    """One attempt to bring one file's `.part` up to its full, verified size."""

    def __init__(
        self, engine: Engine, download: Download, progress: Progress, segmented: bool, why_not: str = ""
    ):
        self.engine = engine
        self.download = download
        self.progress = progress
        self.segmented = segmented
        self.why_not = why_not  # why not segmented, when a segmented try gave up on ranges
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
        self.state_unsaved = False  # a save failed on a full disk (said once)
        self.hasher = PrefixHasher(self)
        self.priority = engine.priority(download)
        self.host = host(download.url)  # whose connection limit this file's requests count against
        # The first 206 answer, handed to the piece workers with its connection slot held.
        self.prefetched: tuple[int, int, requests.Response] | None = None

    # -- state of the .part ----------------------------------------------------------------

    def _load_state(self) -> None:
        if not self.segmented and self.partfile.path.exists() and not self.engine.force:
            lost = self.partfile.load(self.download.size).done.covered()
            self._starting_over(lost, self.why_not or f"{host(self.download.url)} ignores Range")
        if not self.segmented or not self.partfile.path.exists() or self.engine.force:
            self._discard()
            return
        had = self.partfile.path.stat().st_size
        state = self.partfile.load(self.download.size)
        if not state.done.covered():  # nothing to resume; its validator may be another file's
            if had and self.partfile.discarded_because:  # never a silent restart
                log.warning(
                    f"{self.download.dest.name}: the partial download cannot be resumed"
                    f" ({self.partfile.discarded_because}); starting over from byte 0"
                )
            self._discard()
            return
        self.total, self.validator, self.done = state.total, state.validator, state.done

    def _starting_over(self, lost: int, why: str) -> None:
        """Bytes on disk that cannot be resumed are thrown away with a line that says so."""
        if lost:
            name = self.download.dest.name
            log.warning(f"{name}: starting over from byte 0 ({why}); {_mib(lost)} on disk discarded")

    def _discard(self) -> None:
        with self.lock:
            self.total, self.validator, self.done = None, None, Ranges()
        self.hasher.reset()
        self.partfile.discard()

    def _save_state(self, force: bool = False) -> None:
        """Save which ranges are on disk. On a full disk the download goes on without: its
        `.part` already holds its blocks (partfile.preallocate), only a resume after a stop is
        lost, and the last state saved, if any, still tells the truth (fewer ranges)."""
        if not force and not self.partfile.due():
            return
        with self.lock:
            snapshot = PartState(self.total, self.validator, Ranges([list(s) for s in self.done.spans]))
        try:
            self.partfile.save(snapshot)
        except OSError as err:
            if disk_full(err) is None or not snapshot.total or unheld(self.part, snapshot.total):
                raise
            if not self.state_unsaved:
                self.state_unsaved = True
                log.warning(
                    f"{self.download.dest.name}: the disk is {disk_full(err)}: no resume state saved;"
                    " the download goes on"
                )

    # -- the transfer -------------------------------------------------------------------------

    def run(self) -> int:
        self._load_state()
        resumed = self.done.covered()
        if resumed:
            log.info(f"{self.download.dest.name}: resuming, {_mib(resumed)} already on disk")
        try:
            self.engine.with_retries(self.download.dest.name, self._first_request, url=self.download.url)
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
        waited = self.engine.slots.acquire(self.priority, on_wait=self._blocked, host=self.host)
        with self.lock:
            self.blocked -= waited
            self.connections += 1
        self._show_waiting(False)

    def _give_slot(self) -> None:
        self.engine.hand_back()
        self.engine.slots.release(self.host)
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
            changed = "If-Range" in headers and validator(response) != self.validator
            if "Range" in headers and not changed:
                self.engine.range_ignored(self.download.url)
            if changed:
                log.warning(
                    f"{self.download.dest.name}: the file changed on the server since the partial "
                    "download (If-Range); starting over from byte 0"
                )
            else:  # a stream broken off on a server without Range, or a .part from a run with it
                name = host(self.download.url)
                why = f"{name} ignores Range" if self.engine.ignores_range(self.download.url) else "no Range"
                self._starting_over(self.done.covered(), why)
            self._discard()
            self.segmented = False
            length = response.headers.get("Content-Length")
            self._start_part(int(length) if length and length.isdigit() else None, None)
            self._announce()
            written = self._write_body(response, 0, self.total)
            if self.total is None and not self.stop.is_set():
                self.total = written  # the server closed the body: that was all of it
        finally:
            self._give_slot()

    def _start_part(self, total: int | None, validator: str | None) -> None:
        expected = self.download.size
        if expected is not None and total is not None and total != expected:
            raise FetchError(f"the server offers {total} bytes, but the source says {expected}")
        self.partfile.create(total)
        with self.lock:
            self.total, self.validator, self.done = total, validator, Ranges()
        # A file of several pieces has its state beside it at once: a disk that fills up later
        # leaves no room for a first one. One of a single request is saved SAVE_INTERVAL later, if
        # it is still coming: most arrive sooner and never have one (a state written and removed
        # per file was a quarter of the syscalls of a run of 200 small files); a run killed before
        # then starts such a file over.
        if total is not None and total >= PIECE:
            self._save_state(force=True)

    def _piece_size(self, total: int | None) -> int:
        """Pieces are taken front to back: the contiguous prefix the hasher follows grows all
        the time (one piece per connection would leave the whole file to hash after the last
        byte); work stealing evens out the tail. PIECE, or a SPLIT-th of a smaller file (not
        below MIN_PIECE), so that it can use as many connections (a file has a worker per
        piece): at a per-connection cap a 150 MiB file in five 32 MiB pieces took 3.4 s on five
        connections at the end of a run, the others idle, and at 2 MiB/s a connection a 512 MiB
        file in sixteenths held the whole run to aria2c's pace (18.6 s; in 32nds 11.7 s)."""
        if not total:
            return FIRST_PIECE  # learn the size from a small first answer
        if total < PIECE:  # one request: such files go first, in a lane of their own (run.py)
            return PIECE
        return min(PIECE, max(MIN_PIECE, total // min(SPLIT, self.engine.per_file)))

    def _write_body(
        self, response: requests.Response, start: int, end: int | None, piece: Piece | None = None
    ) -> int:
        """Write the body at `start` up to `end` (and never past its piece's end); returns bytes
        written. Raises on a body that ends short."""
        offset = start
        read_into = body_reader(response)
        view = memoryview(self.engine.buffer())
        if piece is not None:
            with self.lock:
                piece.received = start
        with response, opened(self.part, os.O_RDWR) as fd:
            while not self.stop.is_set():
                limit = self._limit(end, piece)
                want = len(view) if limit is None else min(len(view), limit - offset)
                if want <= 0:
                    break
                n = read_into(view[:want])
                if n and piece is not None:
                    with self.lock:  # a slow piece's back may have been taken during the read
                        n = max(0, min(n, piece.end - offset))
                        piece.received = offset + n  # a cut from now on lies past these bytes
                if not n:
                    break
                write_at(fd, view[:n], offset)
                offset += n
                with self.lock:
                    self.done.add(offset - n, offset)
                    self.transferred += n
                self.progress.advance(self.download, n)
                allowed = self.engine.slots.received(self.host, n)
                self.hasher.wrote(offset - n, view[:n])
                self._save_state()
                if len(view) > self.engine.read_size(allowed):  # more connections: a smaller one
                    view.release()
                    view = memoryview(self.engine.buffer())
            limit = self._limit(end, piece)
            if limit is not None and offset < limit and not self.stop.is_set():
                raise requests.exceptions.ChunkedEncodingError(
                    f"IncompleteRead: the body ended at byte {offset}, {limit - offset} bytes short"
                )
            release_if_read(response)
        return offset - start

    def _limit(self, end: int | None, piece: Piece | None) -> int | None:
        if piece is None:
            return end
        with self.lock:
            return piece.end if end is None else min(end, piece.end)

    # -- pieces --------------------------------------------------------------------------------

    def _fetch_pieces(self) -> None:
        """The missing bytes as pieces, taken front to back by up to `per_file` workers; a worker
        that runs out of pieces takes the back half of the biggest unasked rest (work
        stealing), so the last bytes of a file come in over several connections, not one."""
        assert self.total is not None
        size = self._piece_size(self.total)
        with self.lock:
            gaps = self.done.gaps(self.total)
            first = self.prefetched
        first_piece = None
        if first is not None:  # its answer is on its way: the start of the first piece
            gap_end = next(b for a, b in gaps if a == first[0])
            end = min(gap_end, max(first[1], first[0] + size))
            first_piece = Piece(first[0], end, asked=first[1], began=time.monotonic())
            gaps = [(first_piece.end, b) if a == first[0] else (a, b) for a, b in gaps]
        queue = [Piece(a, b) for gap in gaps for a, b in split(gap[0], gap[1], size)]
        self.queue, self.running = queue, [first_piece] if first_piece else []
        count = min(self.engine.per_file, len(queue) + len(self.running))
        if count == 1:  # one piece (a file smaller than one, or one connection): no thread of its own
            self._piece_worker(first_piece)
        elif count:
            self._run_workers(count, first_piece)
        if self.errors:
            raise self.errors[0]

    def _run_workers(self, count: int, first_piece: Piece | None) -> None:
        self.hasher.start()  # from this thread: at its niceness, not the workers' (yield_to_hashing)
        workers = [
            threading.Thread(target=self._worker_thread, args=(first_piece if n == 0 else None,), daemon=True)
            for n in range(count)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    def _worker_thread(self, piece: Piece | None) -> None:
        yield_to_hashing()  # in a thread of its own only: a caller's niceness is the caller's
        self._piece_worker(piece)

    def _request_size(self, rest: int) -> int:
        """How much of a piece's `rest` one request asks for (under self.lock): all of it while
        much of the file is left, or while another file waits for a connection (none will be
        idle to take a rest: splitting would only add requests); toward the end a share of what
        is left (at least 8 MiB), so the last pieces keep a rest an idle connection can take.
        With one connection per file no other worker of this file could take it: all of it."""
        if rest < 4 * MIN_STEAL or self.engine.per_file == 1 or self.engine.slots.contended(self.priority):
            return rest
        left = (self.total or self.download.expected_size or 0) - self.done.covered()
        return max(2 * MIN_STEAL, min(PIECE, left // TAIL_SHARE))

    def _claim(self, finished: Piece | None) -> Piece | None:
        """The next piece for a worker, or None: nothing left worth a connection. `finished`:
        the piece this worker has just fetched (its speed, to judge a slow one's by)."""
        now = time.monotonic()
        with self.lock:
            piece = self._next_piece(finished, now)
            if piece is not None:
                piece.began = now
                self.running.append(piece)
            return piece

    def _next_piece(self, finished: Piece | None, now: float) -> Piece | None:
        """The next queued piece, or the back half of the biggest rest a piece under way has
        not asked for yet, or the back of the request that would end last (under self.lock)."""
        if self.queue:
            return self._join_queued(self.queue.pop(0))
        busy = [p for p in self.running if p.end - p.asked >= 2 * MIN_STEAL]
        if busy:
            victim = max(busy, key=lambda p: p.end - p.asked)
            middle = victim.asked + (victim.end - victim.asked) // 2
        elif finished is None or (cut := self._last_rest(finished.rate(now), now)) is None:
            return None
        else:
            victim, middle = cut
        piece, victim.end = Piece(middle, victim.end), middle
        return piece

    def _last_rest(self, speed: float, now: float) -> tuple[Piece, int] | None:
        """The piece under way that would finish last, and where to cut it so that it and a
        worker at `speed` (an idle one's) finish together, when its end is more than
        JUDGED_AFTER away and the back it gives up is worth a request (under self.lock). Its
        speed is measured once it has run JUDGED_AFTER, else taken to be the idle worker's.

        At a per-connection cap every connection is as fast as the next: a file's last pieces,
        each asked for whole while other files waited for connections, would run out alone
        with their peers idle (seconds, at 32 MiB a piece and 10 MiB/s a connection); halving
        them as connections free up keeps every one busy to the end, as aria2c splits its
        slowest segment. A slow CDN connection gives up most of its rest the same way. The cut
        lies past what the piece has received, and `_write_body` clips every read to the
        piece's end, so no byte is written twice; bytes already on their way past the cut are
        sent twice, and that connection is closed. A piece that has received nothing yet
        (stalled before its first byte) gives up all of it: it is left empty, and its worker
        asks for nothing more (Ranges.missing)."""
        if not self.running:
            return None

        def rate(piece: Piece) -> float:
            return piece.rate(now) if now - piece.began >= JUDGED_AFTER else speed

        victim = max(self.running, key=lambda p: (p.end - p.received) / max(rate(p), 1.0))
        slow, left = rate(victim), victim.end - victim.received
        if left < slow * JUDGED_AFTER or speed <= 0:  # it ends soon; or no speed to compare
            return None
        middle = victim.received + int(left * slow / (slow + speed))
        if victim.end - middle < MIN_STEAL:
            return None
        return victim, middle

    def _join_queued(self, piece: Piece) -> Piece:
        """`piece` grown over the queued pieces that follow it, up to CONTENDED_PIECE, while
        another file waits for a connection and this file has plenty queued behind (under
        self.lock). The waiting file's download then overlaps this file's hash lag, so fewer,
        longer requests cost no wall time (alone, 64 MiB pieces made a 2 GiB file 10% slower).
        The last per_file pieces are never joined: on a capped link a long request at the end
        of a run finishes alone, its peers idle (joining those too, the bench's set capped at
        16 MiB/s per request took 18.0 s against 15.6; as it is, 15.9 and 103 requests, not 133)."""
        keep = self.engine.per_file * PIECE
        while (
            self.queue
            and self.queue[0].start == piece.end
            and piece.end - piece.start < CONTENDED_PIECE
            and sum(p.end - p.start for p in self.queue[1:]) >= keep
            and self.engine.slots.contended(self.priority)
            and not self.engine.slots.wanted_before(self.priority)  # it gets this slot at the piece's end
        ):
            piece.end = self.queue.pop(0).end
        return piece

    def _piece_worker(self, piece: Piece | None) -> None:
        """Take pieces until none is left, holding a connection slot from one to the next (not
        through a retry's backoff, nor while a file that goes first waits for one: then it is
        handed over and taken again in turn): a piece is claimed, or stolen, only with a slot
        in hand."""
        holding = False
        finished = None
        try:
            while not self.stop.is_set():
                if piece is None:
                    if holding and self.engine.slots.wanted_before(self.priority):
                        self._give_slot()  # between pieces: a smaller or earlier file goes first
                        holding = False
                    if not holding:
                        self._take_slot()
                        holding = True
                    piece = self._claim(finished)
                    if piece is None:
                        return
                holding = self._fetch_with_retries(piece, holding)
                with self.lock:
                    self.running.remove(piece)
                piece, finished = None, piece
        except BaseException as err:  # handed to the thread that waits for the workers
            with self.lock:
                self.errors.append(err)
            self.stop.set()
        finally:
            if holding:
                self._give_slot()
            self.engine.hand_back()

    def _fetch_with_retries(self, piece: Piece, holding: bool) -> bool:
        """Fetch the piece, retrying; returns whether this worker still holds a slot."""
        state = {"holding": holding}

        def attempt() -> None:
            response = self._take_prefetched(piece.start)
            if response is not None:  # the first answer: it came with its own slot
                state["holding"] = True
            elif not state["holding"]:
                self._take_slot()
                state["holding"] = True
            try:
                self._fetch_piece(piece, response)
            except BaseException:
                self._give_slot()  # no slot is held through the backoff
                state["holding"] = False
                raise

        self.engine.with_retries(
            f"{self.download.dest.name} bytes {piece.start}-{piece.end - 1}",
            attempt,
            self.stop,
            self.download.url,
        )
        return state["holding"]

    def _fetch_piece(self, piece: Piece, response: requests.Response | None) -> None:
        if response is not None:
            self._write_body(response, piece.start, None, piece)
        while not self.stop.is_set():  # a server may answer with less than asked: ask for the rest
            with self.lock:
                gaps = self.done.missing(piece.start, piece.end)  # none in a piece cut to nothing
                if not gaps:
                    return
                begin = gaps[0][0]
                end = min(piece.end, begin + self._request_size(piece.end - begin))
                piece.asked = max(piece.asked, end)
            headers = {"Range": f"bytes={begin}-{end - 1}"}
            if self.validator:
                headers["If-Range"] = self.validator
            response = self.engine.open(self.download, headers)
            if response.status_code != 206:
                response.close()
                if "If-Range" in headers and validator(response) != self.validator:  # another file
                    raise RangeIgnored("the file changed on the server during the download (If-Range)")
                self.engine.range_ignored(self.download.url)
                raise RangeIgnored("the server stopped honouring Range")
            if content_range_total(response) != self.total:
                response.close()
                raise FetchError("the file changed on the server during the download; run again")
            last = answered_range(response, begin, end)
            self._write_body(response, begin, last + 1, piece)

    # -- the end ------------------------------------------------------------------------------

    def _finish(self) -> None:
        if self.stop.is_set():  # stopped mid-way (Ctrl-C, SIGTERM): what is on disk is not all
            raise FetchError("cancelled")
        if self.partfile.saved:  # all bytes on disk: a run killed while hashing only verifies
            self._save_state(force=True)
        total = self.total if self.total is not None else self.done.covered()
        have = self.done.covered()
        if have != total:
            raise FetchError(f"incomplete: {have} of {total} bytes on disk; run again to resume")
        expected_size = self.download.size
        if expected_size is not None and total != expected_size:
            self._discard()
            raise FetchError(f"size mismatch: expected {expected_size} bytes, got {total}")
        if self.announced:  # hashing a resumed file's first part takes a while: say so
            self.progress.file_verifying(self.download)
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


def host(url: str) -> str:
    """host[:port] of a URL, without the user and password a URL may carry."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def _mib(n: int) -> str:
    return f"{n / MiB:.0f} MiB"
