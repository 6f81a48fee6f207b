"""A file server like a CDN: Range (206 + Content-Range), strong ETags and If-Range, and
faults injected per request: a reset or a clean close at a byte offset, 5xx bursts, 429 with
Retry-After, ignored Range, a range from another offset or shorter than asked, wrong bytes, a
stall. Counts the body bytes it sends."""

from __future__ import annotations

import hashlib
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from .server import FakeServer, Handler

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class Fault:
    status: int | None = None  # answer this status instead (5xx, 429, 401, ...)
    retry_after: str | None = None
    reset_at: int | None = None  # send this many body bytes, then reset the connection (RST)
    close_at: int | None = None  # send this many body bytes, then close cleanly (truncated body)
    stall_at: int | None = None  # send this many body bytes, then stop sending for `stall` seconds
    stall: float = 0.0
    hold: threading.Event | None = None  # with stall_at: stop there until this is set (not `stall`)
    ignore_range: bool = False
    shift: int = 0  # answer a range with the bytes this far further on (Content-Range says so)
    shorten: int = 0  # answer a range with this many bytes fewer (allowed: Content-Range says so)
    cut_headers: bool = False  # close the connection in the middle of the response headers
    rate: float | None = None  # send this answer at this many bytes per second (a slow CDN edge)


@dataclass
class Served:
    data: bytes
    etag: str | None = None
    ranges: bool = True
    ignore_range: bool = False  # always, not per request
    chunked: bool = False  # a whole-file answer is chunked, without Content-Length (as olah's)
    wrong_bytes: bool = False  # flips one byte in the middle of every answer
    headers: dict = field(default_factory=dict)
    content_disposition: str | None = None
    # False: no Content-Length and no ranges, the body ends when the connection closes (a
    # server or mirror that streams what it does not know the size of)
    length: bool = True


@dataclass
class FakeCDN(FakeServer):
    files: dict[str, Served] = field(default_factory=dict)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    faults_at: dict[tuple[str, int], list[Fault]] = field(default_factory=dict)  # by Range start
    body_bytes: int = 0
    rate: float | None = None  # bytes per second per connection (a CDN's cap)
    require_header: tuple[str, str] | None = None
    active_sends: int = 0  # bodies being sent right now (a killed client's may linger)
    holds: int = 0  # bodies that have stopped at a fault's `hold` so far
    peak_sends: int = 0  # the most bodies sent at once
    max_sends: int | None = None  # nginx limit_conn: a request beyond this many bodies gets 503
    refused: int = 0  # requests answered 503 for max_sends
    dropped: int = 0  # bodies the client closed before their end
    reject_authorization: bool = True  # presigned storage answers 400 to an Authorization header
    gate: threading.Event | None = None  # when set up, bodies wait until it is set (headers go first)
    head_gate: threading.Event | None = None  # when set up, HEAD answers wait until it is set
    heads_waiting: set = field(default_factory=set)  # the paths of HEADs at the head_gate now
    get_gate: threading.Event | None = None  # when set up, GET answers wait until it is set
    gets_waiting: set = field(default_factory=set)  # the paths of GETs at the get_gate now

    def add(self, path: str, data: bytes, **options) -> Served:
        served = Served(data, etag=f'"{hashlib.md5(data).hexdigest()}"', **options)
        self.files[path] = served
        return served

    def fault(self, path: str, *faults: Fault) -> None:
        self.faults.setdefault(path, []).extend(faults)

    def fault_at(self, path: str, start: int, *faults: Fault) -> None:
        """Faults for the requests whose Range starts at `start`, whatever their order."""
        self.faults_at.setdefault((path, start), []).extend(faults)

    def handle(self, h: Handler, path: str, query: dict) -> None:
        if h.command == "HEAD" and self.head_gate is not None:
            with self.lock:
                self.heads_waiting.add(path)
            self.head_gate.wait(60)
        if h.command == "GET" and self.get_gate is not None:
            with self.lock:
                self.gets_waiting.add(path)
            self.get_gate.wait(60)
        served = self.files.get(path)
        if served is None:
            h.reply(404, b"no such file")
            return
        if self.require_header and h.headers.get(self.require_header[0]) != self.require_header[1]:
            h.reply(403, b"forbidden")
            return
        if self.reject_authorization and "Authorization" in h.headers:
            h.reply(400, b"<Error><Code>InvalidArgument</Code>Authorization header not allowed</Error>")
            return
        wanted = h.headers.get("Range")
        asked = _RANGE.match(wanted or "")
        with self.lock:
            queue = self.faults.get(path) or []
            at = self.faults_at.get((path, int(asked[1]))) if asked else None
            fault = at.pop(0) if at else queue.pop(0) if queue else Fault()
        with self.lock:
            over = self.max_sends is not None and self.active_sends >= self.max_sends
            self.refused += over
        if over:
            h.reply(503, b"limit_conn")
            return
        if fault.status:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            h.reply(fault.status, b"fault", headers)
            return
        data = served.data
        if served.wrong_bytes and data:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        total = len(data)
        start, end, status = 0, total - 1, 200
        if_range = h.headers.get("If-Range")
        use_range = served.ranges and not served.ignore_range and not fault.ignore_range and served.length
        if wanted and use_range and (if_range is None or if_range == served.etag):
            match = _RANGE.match(wanted)
            if match:
                start = int(match[1])
                end = min(int(match[2]) if match[2] else total - 1, total - 1)
                if start >= total or (match[2] and int(match[2]) < start):  # an invalid range: refused
                    h.reply(416, b"", {"Content-Range": f"bytes */{total}"})
                    return
                status = 206
                start, end = min(start + fault.shift, total - 1), min(end + fault.shift, total - 1)
                end = max(start, end - fault.shorten)
        chunked = served.chunked and status == 200
        length = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(end - start + 1)}
        headers = {**length, "Content-Type": "application/octet-stream"}
        if served.ranges:
            headers["Accept-Ranges"] = "bytes"
        if served.etag:
            headers["ETag"] = served.etag
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        if served.content_disposition:
            headers["Content-Disposition"] = served.content_disposition
        if "response-content-disposition" in query:  # presigned S3/R2 URLs name the file so
            headers["Content-Disposition"] = query["response-content-disposition"]
        headers.update(served.headers)
        if not served.length:
            del headers["Content-Length"]
            headers.pop("Accept-Ranges", None)
            headers["Connection"] = "close"
            h.close_connection = True
        if fault.cut_headers:
            h.wfile.write(f"HTTP/1.1 {status} Partial\r\nContent-Length: {end - start + 1}\r\n".encode())
            h.wfile.flush()
            h.close_connection = True
            self._end(h, reset=False)
            return
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.end_headers()
        if h.command == "HEAD":
            return
        self._send(h, data[start : end + 1], fault, chunked)

    def _send(self, h: Handler, body: bytes, fault: Fault, chunked: bool = False) -> None:
        with self.lock:
            self.active_sends += 1
            self.peak_sends = max(self.peak_sends, self.active_sends)
        try:
            if self.gate is not None:
                self.gate.wait(60)
            self._send_body(h, body, fault, chunked)
        except (BrokenPipeError, ConnectionResetError):
            with self.lock:
                self.dropped += 1
            raise
        finally:
            with self.lock:
                self.active_sends -= 1

    def wait_idle(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.active_sends and time.monotonic() < deadline:
            time.sleep(0.02)

    def _send_body(self, h: Handler, body: bytes, fault: Fault, chunked: bool) -> None:
        sent, step = 0, 64 * 1024
        began = time.monotonic()
        while sent < len(body):
            for limit, action in (
                (fault.reset_at, "reset"),
                (fault.close_at, "close"),
                (fault.stall_at, "stall"),
            ):
                if limit is not None and sent >= limit:
                    if action == "stall":
                        if fault.hold:
                            with self.lock:
                                self.holds += 1
                            fault.hold.wait(60)
                        else:
                            time.sleep(fault.stall)
                        fault.stall_at = None
                        continue
                    self._end(h, reset=action == "reset")
                    return
            stop = len(body)
            for limit in (fault.reset_at, fault.close_at, fault.stall_at):
                if limit is not None and limit > sent:
                    stop = min(stop, limit)
            chunk = body[sent : min(sent + step, stop)]
            h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            sent += len(chunk)
            with self.lock:
                self.body_bytes += len(chunk)
            # Pacing holds back the next bytes; a finished answer is not held (the client has it
            # all and may already be on its next request: that is no longer a send).
            if (rate := fault.rate or self.rate) and sent < len(body):
                ahead = sent / rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
        if chunked:
            h.wfile.write(b"0\r\n\r\n")

    @staticmethod
    def _end(h: Handler, reset: bool) -> None:
        h.wfile.flush()
        if reset:
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.close_connection = True
        try:
            h.connection.shutdown(socket.SHUT_RDWR) if not reset else None
        finally:
            h.connection.close()
