"""A tiny threaded HTTP/1.1 server on 127.0.0.1 that records every request it gets; over
HTTPS with `start(tls=True)` (a certificate for 127.0.0.1 from fakes/tls, see TLS_TRUST)."""

from __future__ import annotations

import contextlib
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

TLS_TRUST = Path(__file__).parent / "tls" / "localhost-cert.pem"  # also what a client must trust
TLS_KEY = Path(__file__).parent / "tls" / "localhost-key.pem"


@dataclass
class Seen:
    method: str
    path: str
    query: dict
    headers: dict  # lower-case names
    peer: tuple[str, int] = ("", 0)  # the client's address and port: one per connection


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeServer.HTTPServer  # type: ignore[name-defined]

    def log_message(self, *args):  # quiet test output
        pass

    def _dispatch(self):
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        owner = self.server.owner
        with owner.lock:
            owner.requests.append(
                Seen(
                    self.command,
                    parts.path,
                    query,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.client_address[:2],
                )
            )
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            owner.handle(self, parts.path, query)

    do_GET = do_HEAD = do_POST = _dispatch

    # helpers for fakes
    def reply(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="text/plain"):
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", content_type)
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)


@dataclass
class FakeServer:
    """Subclass and implement `handle(handler, path, query)`."""

    requests: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    class HTTPServer(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        owner: FakeServer

    def start(self, tls: bool = False, port: int = 0) -> FakeServer:
        """Serve on 127.0.0.1:port (0: a free one), e.g. a port a test kept closed until now."""
        self.httpd = self.HTTPServer(("127.0.0.1", port), Handler)
        self.httpd.owner = self
        self.scheme = "https" if tls else "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(TLS_TRUST, TLS_KEY)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"{self.scheme}://{host}:{port}"

    def handle(self, h: Handler, path: str, query: dict) -> None:  # pragma: no cover
        h.reply(404, b"not found")

    def seen(self, path_prefix: str = "") -> list[Seen]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith(path_prefix)]
