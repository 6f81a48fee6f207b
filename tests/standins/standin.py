"""Stand-in for the binaries the image has and this machine lacks (sdnext-launch, filebrowser,
ttyd, logdy): records the command line and environment it was started with, then serves HTTP
on the address and port its flags name, like the real tool would. ttyd's also answers a
WebSocket upgrade on /ws; sdnext-launch's answers /sdapi/v1/status and records rescans.

    python standin.py NAME ARGS...      (tests/conftest.py writes one wrapper per NAME)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import tomllib

NAME, ARGS = sys.argv[1], sys.argv[2:]
RECORDS = os.environ["STANDIN_RECORDS"]
# The rescan routes SD.Next has at the pinned tag, from the pin itself (refresh-unets came later).
_PIN = Path(__file__).resolve().parent.parent.parent / "provision" / "sdnext_pin.toml"
SDNEXT_RESCANS = tuple(f"/sdapi/v1/{name}" for name in tomllib.loads(_PIN.read_text())["rescans"])
WS_MAGIC = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def flag(*names: str, default: str | None = None) -> str | None:
    for i, arg in enumerate(ARGS):
        for name in names:
            if arg == name and i + 1 < len(ARGS):
                return ARGS[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return default


def record(kind: str, data: dict) -> None:
    path = os.path.join(RECORDS, f"{NAME}.{kind}.{os.getpid()}.{time.monotonic_ns()}.json")
    with open(path + ".tmp", "w") as file:
        json.dump(data, file)
    os.replace(path + ".tmp", path)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as real servers: no 40 ms wait for a delayed ACK per answer

    def log_message(self, *args):
        print(f"{NAME}: {self.command} {self.path}", flush=True)

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if NAME == "ttyd" and self.headers.get("Upgrade", "").lower() == "websocket":
            origin = self.headers.get("Origin")
            if "--check-origin" in ARGS and origin and origin.split("://", 1)[-1] != self.headers.get("Host"):
                # As ttyd's own check: the Origin's host and port must be the Host it was sent to.
                self._reply(403, b"origin refused")
                return
            key = self.headers.get("Sec-WebSocket-Key", "")
            accept = base64.b64encode(hashlib.sha1((key + WS_MAGIC).encode()).digest()).decode()
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept)
            self.end_headers()
            self.wfile.write(b"\x81\x05ttyd!")  # one text frame, so the client sees our side
            self.wfile.flush()
            self.close_connection = True
            return
        if NAME == "sdnext-launch" and self.path == "/sdapi/v1/status":
            self._reply(200, b'{"status": "idle"}', "application/json")
            return
        if NAME == "sdnext-launch" and self.path == "/openapi.json":
            paths = {path: {"post": {}} for path in SDNEXT_RESCANS} | {"/sdapi/v1/status": {"get": {}}}
            self._reply(200, json.dumps({"openapi": "3.1.0", "paths": paths}).encode(), "application/json")
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        self._reply(
            200,
            json.dumps({"service": NAME, "path": self.path, "headers": headers}).encode(),
            "application/json",
        )

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if NAME == "sdnext-launch" and self.path.startswith("/sdapi/v1/refresh-"):
            if self.path not in SDNEXT_RESCANS:  # as the pinned tag: no such route
                self._reply(404, b'{"detail": "Not Found"}', "application/json")
                return
            record("refresh", {"path": self.path})
            if not self.path.endswith("/refresh-loras"):  # as the pinned tag: 204, no body
                self._reply(204, b"", "application/json")
                return
        self._reply(
            200, json.dumps({"sha256": hashlib.sha256(body).hexdigest()}).encode(), "application/json"
        )


def main() -> None:
    record("start", {"argv": ARGS, "env": dict(os.environ), "cwd": os.getcwd()})
    if NAME in os.environ.get("STANDIN_IGNORE_SIGTERM", "").split(","):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a program that will not stop when asked
    if NAME == "filebrowser" and ARGS[:2] == ["config", "set"]:
        return  # `filebrowser config set ...` before the server starts
    if NAME == "sdnext-launch":
        address, port = flag("--host"), flag("--port")
    elif NAME == "filebrowser":
        address, port = flag("--address", "-a", default="127.0.0.1"), flag("--port", "-p", default="8080")
    elif NAME == "ttyd":
        address, port = flag("--interface", "-i", default="0.0.0.0"), flag("--port", "-p", default="7681")
    elif NAME == "logdy":
        address, port = flag("--ui-ip", default="127.0.0.1"), flag("--port", "-p", default="8080")
    else:
        sys.exit(f"standin: unknown tool {NAME}")
    if address in ("lo", None):
        address = "127.0.0.1"
    server = ThreadingHTTPServer((address, int(port)), Handler)
    server.daemon_threads = True
    print(f"{NAME}: serving on {address}:{port}", flush=True)
    server.serve_forever(0.1)


if __name__ == "__main__":
    main()
