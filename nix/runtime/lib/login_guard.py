"""The gateway's password check, asked by Caddy's forward_auth: limits refused logins per client.

Caddy sends `GET /check` with the request's headers, `X-Login-Address` set to the client's
address and `X-Login-Client` to address and port (Caddy overwrites whatever a client sent).
Answers: 200 let it in; 401 no or wrong credentials (the browser asks again); 429 this address
was refused too often and must wait (Retry-After). Caddy copies a 401 or 429 to the client and logs it.

Why not Caddy's basic_auth: it cannot tell one client from another, and its bcrypt check spends
CPU on every refused guess that anyone reaching a port can send. Here a check is one HMAC:
the first FREE_FAILURES refusals of an address cost it nothing; each further one doubles the
time before that address is checked again (1 s, 2 s, 4 s ... MAX_WAIT). A good login clears
its address; FORGET_AFTER seconds without a refusal forget it. A good login never waits.

Usage: `login_guard.py PORT LOGIN_FILE` serves; `login_guard.py hash < user-and-password`
prints LOGIN_FILE's JSON (key, digest = HMAC-SHA256(key, "user:password")), which init writes
root-only. A keyed hash, not bcrypt: whoever can read that file is root and can read PID 1's
environment (PASSWORD) as well, and a cheap check is what keeps guesses from costing CPU.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FREE_FAILURES = 5
MAX_WAIT = 300.0
FORGET_AFTER = 900.0
MAX_CLIENTS = 10_000  # addresses remembered at once; the stalest go first


@dataclass
class Client:
    failures: int = 0
    last_failure: float = 0.0
    told_to_wait: bool = False  # one log line per wait, not one per blocked request

    def wait(self, now: float) -> float:
        """Seconds before this address is checked again (0: now)."""
        if self.failures < FREE_FAILURES:
            return 0.0
        delay = min(MAX_WAIT, 2.0 ** (self.failures - FREE_FAILURES))
        return max(0.0, self.last_failure + delay - now)


class Guard:
    def __init__(self, key: bytes, digest: str, clock=time.monotonic):
        self.key, self.digest = key, digest
        self.clock = clock
        self.lock = threading.Lock()
        self.clients: dict[str, Client] = {}

    def check(self, authorization: str | None, address: str) -> tuple[int, float]:
        """(status, seconds to wait): 200, 401 or 429 for this request from this address."""
        now = self.clock()
        with self.lock:
            self._forget(now)
            client = self.clients.get(address)
            wait = client.wait(now) if client else 0.0
            if wait > 0:
                return 429, wait
        if authorization is None or not authorization.startswith("Basic "):
            return 401, 0.0  # a first visit: the browser has not asked for the password yet
        if self._matches(authorization[6:]):
            with self.lock:
                self.clients.pop(address, None)
            return 200, 0.0
        with self.lock:
            client = self.clients.setdefault(address, Client())
            client.failures += 1
            client.last_failure = now
            client.told_to_wait = False
        return 401, 0.0

    def _matches(self, encoded: str) -> bool:
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except ValueError:
            return False
        mac = hmac.new(self.key, given, hashlib.sha256).hexdigest()
        return hmac.compare_digest(mac, self.digest)

    def _forget(self, now: float) -> None:
        stale = [a for a, c in self.clients.items() if now - c.last_failure > FORGET_AFTER]
        for address in stale:
            del self.clients[address]
        while len(self.clients) > MAX_CLIENTS:
            oldest = min(self.clients, key=lambda a: self.clients[a].last_failure)
            del self.clients[oldest]

    def failures(self, address: str) -> int:
        with self.lock:
            client = self.clients.get(address)
            return client.failures if client else 0

    def first_wait_notice(self, address: str) -> bool:
        with self.lock:
            client = self.clients.get(address)
            if client is None or client.told_to_wait:
                return False
            client.told_to_wait = True
            return True


def handler_for(guard: Guard) -> type[BaseHTTPRequestHandler]:
    class Check(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            length = self.headers.get("Content-Length", "")
            if length.isdigit():  # never left for the next request on this connection to read
                self.rfile.read(int(length))
            address = self.headers.get("X-Login-Address") or self.client_address[0]
            client = self.headers.get("X-Login-Client") or address
            status, wait = guard.check(self.headers.get("Authorization"), address)
            if status == 200:
                self._reply(200, b"")
            elif status == 401:
                self._refuse(address, client)
            else:
                self._make_wait(address, max(1, round(wait + 0.5)))

        def _refuse(self, address: str, client: str) -> None:
            failures = guard.failures(address)
            if failures:  # not a first visit without credentials: a wrong password
                say(f"refused login from {client} ({failures} in a row)")
            body = b"401 Unauthorized: log in with the user name and password\n"
            self._reply(401, body, {"WWW-Authenticate": 'Basic realm="restricted", charset="UTF-8"'})

        def _make_wait(self, address: str, seconds: int) -> None:
            if guard.first_wait_notice(address):
                failures = guard.failures(address)
                say(f"{address}: {failures} refused logins in a row: next check in {seconds} s")
            body = f"429 Too Many Requests: too many refused logins from {address}; retry in {seconds} s\n"
            self._reply(429, body.encode(), {"Retry-After": str(seconds)})

        def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # Caddy logs the requests
            pass

    return Check


def say(line: str) -> None:
    print(f"login-guard: {line}", flush=True)


def login_record(user: str, password: str) -> dict[str, str]:
    key = secrets.token_bytes(32)
    digest = hmac.new(key, f"{user}:{password}".encode(), hashlib.sha256).hexdigest()
    return {"key": key.hex(), "digest": digest}


def main(argv: list[str]) -> int:
    if argv[:1] == ["hash"]:  # user and password on stdin, one per line: never in argv
        user, password = sys.stdin.read().split("\n")[:2]
        print(json.dumps(login_record(user, password)))
        return 0
    port, login_file = int(argv[0]), argv[1]
    with open(login_file, encoding="utf-8") as file:
        login = json.load(file)
    guard = Guard(bytes.fromhex(login["key"]), login["digest"])
    server = ThreadingHTTPServer(("127.0.0.1", port), handler_for(guard))
    server.daemon_threads = True
    say(f"listening on 127.0.0.1:{port}")
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
