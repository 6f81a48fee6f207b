"""Benchmark server: files from a folder with Range support and a per-connection rate cap (as a
CDN has), plus the Hugging Face resolve protocol in front of them for hf_hub_download.

    python bench/server.py DIR PORT RATE_BYTES_PER_SECOND [SLOW_EVERY [NO_RANGE [LATENCY_MS]]]

Serves on 127.0.0.1 only. GET /files/<name> (Range, ETag), HEAD/GET
/bench/models/resolve/main/<name> (302 to /files/<name> with X-Repo-Commit, X-Linked-Etag =
sha256, X-Linked-Size; the sha256 comes from <name>.sha256 beside the file).
GET /stats answers the body bytes sent and the requests served so far. RATE 0: no cap.
SLOW_EVERY N: every Nth connection accepted runs at a tenth of the cap (a slow CDN edge).
NO_RANGE 1: Range is ignored, every answer is the whole file (as olah's, offline).
LATENCY_MS: every answer waits this long before its first byte (a server that far away).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(sys.argv[1])
RATE = float(sys.argv[3])
SLOW_EVERY = int(sys.argv[4]) if len(sys.argv) > 4 else 0
NO_RANGE = len(sys.argv) > 5 and sys.argv[5] == "1"
LATENCY = float(sys.argv[6]) / 1000 if len(sys.argv) > 6 else 0.0
COMMIT = "b" * 40
STEP = 256 * 1024
sent_lock = threading.Lock()
sent_total = [0]
requests_total = [0]  # file and resolve requests (what a CDN that limits requests counts)
connections_total = [0]  # connections accepted (SLOW_EVERY counts them)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with sent_lock:
            connections_total[0] += 1
            slow = SLOW_EVERY and connections_total[0] % SLOW_EVERY == 0
        self.rate = RATE / 10 if slow else RATE  # one instance serves one connection

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        if self.path == "/stats":
            body = f"{sent_total[0]} {requests_total[0]}".encode()
            self._headers(200, {"Content-Length": str(len(body))})
            self.wfile.write(body)
            return
        with sent_lock:
            requests_total[0] += 1
        time.sleep(LATENCY)
        match = re.match(r"^/bench/models/resolve/[^/]+/(.+)$", self.path)
        if match:
            self._resolve(match[1])
            return
        if self.path.startswith("/files/"):
            self._file(self.path[len("/files/") :])
            return
        self._headers(404, {"Content-Length": "0"})

    def _headers(self, status, headers):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _resolve(self, name):
        path = ROOT / name
        if not path.exists():
            self._headers(404, {"Content-Length": "0", "X-Error-Code": "EntryNotFound"})
            return
        sha = (ROOT / f"{name}.sha256").read_text().strip()
        self._headers(
            302,
            {
                # Another origin, as the Hub's CDN is (hf_hub_download follows same-origin redirects).
                "Content-Length": "0",
                "Location": f"http://localhost:{self.server.server_address[1]}/files/{name}",
                "X-Repo-Commit": COMMIT,
                "X-Linked-Etag": f'"{sha}"',
                "X-Linked-Size": str(path.stat().st_size),
                "ETag": f'"{sha}"',
            },
        )

    def _file(self, name):
        path = ROOT / name
        if "/" in name or not path.is_file():
            self._headers(404, {"Content-Length": "0"})
            return
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        wanted = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
        if wanted and not NO_RANGE:
            start = int(wanted[1])
            end = min(int(wanted[2]) if wanted[2] else size - 1, size - 1)
            status = 206
        headers = {
            "Content-Length": str(end - start + 1),
            "Accept-Ranges": "bytes",
            "ETag": f'"{int(path.stat().st_mtime)}-{size}"',
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{name}"',
        }
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._headers(status, headers)
        if self.command == "HEAD":
            return
        began = time.monotonic()
        offset, sent = start, 0
        with open(path, "rb") as file:
            while offset <= end:
                count = min(STEP, end + 1 - offset)
                try:
                    n = os.sendfile(self.connection.fileno(), file.fileno(), offset, count)
                except (BrokenPipeError, ConnectionResetError):
                    return
                if n == 0:
                    return
                offset += n
                sent += n
                with sent_lock:
                    sent_total[0] += n
                ahead = sent / self.rate - (time.monotonic() - began) if self.rate > 0 else 0
                if ahead > 0:
                    time.sleep(ahead)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[2])), Handler).serve_forever()
