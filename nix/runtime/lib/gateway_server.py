"""The login guard: Caddy asks it about every request (forward_auth `GET /check`), and it serves
the gateway's own pages under /.gateway/ on every port (login, logout, portal, status.json, the
page of a service that is not answering).

Caddy sets, for each request, whatever the client sent: `X-Login-Address` (the client's address;
behind TRUSTED_PROXIES the forwarded one), `X-Gateway-Service` (which service's port),
`X-Forwarded-Method` and `X-Forwarded-Uri` (the request being judged); the request's own headers
come along (Host, Origin, Sec-Fetch-*, Cookie, Authorization).

`/check` answers 200 to let a request through, with `X-Gateway-Cookie` holding the request's
cookies without the session's (Caddy puts that in place of `Cookie`, and drops `Cookie` when it
is absent); any other answer goes to the client as it is: 302 (the Open button's `?token=`
becomes a session), 401 (the login page for a browser, `WWW-Authenticate: Basic` for other
clients), 403 (a request from another site), 429 (too many refused guesses; Retry-After).

Usage: `gateway_server.py PORT LOGIN_FILE` serves; `gateway_server.py hash` reads user, password
and token (one per line; never argv) and prints the login file's JSON, which init writes
root-only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # python -I leaves it out

import gateway_pages as pages
from gateway_origin import judge
from gateway_status import Service, services_from_env, status
from login_guard import MAX_AGE, Limiter, Login, Sessions, login_record

MAX_FORM = 8192
PORTAL = "/.gateway/"
DEVICE_AGE = 30 * 24 * 3600  # a device cookie outlives sessions; a new boot's key voids it anyway
REFUSAL_LINE_EVERY = 60.0
MAX_TLS_NAMES = 20  # names the self-made certificate is made for (Caddy asks /tls-ask first)


def say(line: str) -> None:
    print(f"login-guard: {line}", flush=True)


def cookie_name(env: dict[str, str]) -> str:
    """The session cookie's name carries this container's own part: two containers on one host
    (whose cookies every port of the host receives) keep their own sessions."""
    identity = env.get("CONTAINER_ID") or ""
    if not identity:
        try:
            identity = Path("/proc/sys/kernel/hostname").read_text().strip()
        except OSError:
            identity = "container"
    return "gateway_" + hashlib.sha256(identity.encode()).hexdigest()[:12]


def split_uri(uri: str) -> tuple[str, str]:
    """A request target's path and query, as sent (urlsplit would read //host/x as a host)."""
    path, _, query = uri.partition("#")[0].partition("?")
    return path, query


URL_SAFE = "/%:@!$&'()*+,;=-._~?"  # what stays as it is in a Location; the rest is %-encoded


def safe_path(target: str) -> str:
    """A local path to send the browser to, never another host: leading slashes and backslashes
    collapse to one (//host/x -> /host/x), so nothing can read as a host or a scheme; control
    characters and non-ASCII are %-encoded (a decoded form field must not split the header)."""
    path, query = split_uri(target or "/")
    path = quote("/" + path.lstrip("/\\"), safe=URL_SAFE)
    return f"{path}?{quote(query, safe=URL_SAFE)}" if query else path


class Gateway:
    """Everything the handler needs: the login, the limiter, the sessions, the services."""

    def __init__(self, env: dict[str, str], login: Login | None):
        self.login = login  # None: ENABLE_AUTH=false, every port open
        self.limiter = Limiter()
        runtime = Path(env.get("RUNTIME_DIR", "/run"))
        self.sessions = Sessions(runtime / "gateway" / "sessions.json")
        self.cookie = cookie_name(env)
        self.services = {s.name: s for s in services_from_env(env)}
        self.sibling_ports = {p for s in self.services.values() for p in (s.port, s.public_port)}
        self.workspace = Path(env.get("WORKSPACE", "/workspace"))
        self.service_root = runtime / "service"
        self.proc_nvidia = Path(env.get("NVIDIA_PROC_DIR", "/proc/driver/nvidia"))
        # TLS_SELF_SIGNED: Caddy's own CA on the workspace; its root is served as /.gateway/ca.crt.
        self.ca_root = self.workspace / ".gateway/tls/pki/authorities/local/root.crt"
        self.tls_names: set[str] = set()
        self.lock = threading.Lock()  # for the two small tables here
        self.refusal_lines: dict[str, tuple[float, int]] = {}

    def worth_a_line(self, key: str) -> int | None:
        """A refused cross-site request is logged once a minute per address and reason, with
        how many were left unsaid (None: not now): any page anywhere can make a visitor's
        browser send thousands."""
        now = time.monotonic()
        with self.lock:
            last, unsaid = self.refusal_lines.get(key, (-REFUSAL_LINE_EVERY, 0))
            if now - last < REFUSAL_LINE_EVERY:
                self.refusal_lines[key] = (last, unsaid + 1)
                return None
            if len(self.refusal_lines) > 10_000:
                self.refusal_lines.clear()
            self.refusal_lines[key] = (now, 0)
            return unsaid

    def may_make_certificate(self, name: str) -> bool:
        """The first MAX_TLS_NAMES names asked for get a certificate, no more: a client sending
        made-up names cannot fill the workspace volume with certificates."""
        with self.lock:
            if name in self.tls_names or len(self.tls_names) < MAX_TLS_NAMES:
                self.tls_names.add(name)
                return True
            return False

    def status(self) -> dict:
        provision = (self.service_root / "provision").exists()
        return status(
            list(self.services.values()), self.workspace, self.service_root, self.proc_nvidia, provision
        )


@dataclass(frozen=True)
class Decision:
    """The outcome of looking at a request's credentials."""

    kind: str  # "ok", "none" (nothing offered), "refused", "wait"
    wait: float = 0.0  # seconds, for "wait"
    session: str | None = None  # the session that let it in
    stale: bool = False  # it carried a session cookie that is no good: the browser should drop it


def handler_for(gateway: Gateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # Caddy keeps its connections to us alive
        # Headers and body go out in two writes: without TCP_NODELAY the second waits for the
        # peer's delayed ACK (about 40 ms on every page).
        disable_nagle_algorithm = True

        # -- what is being asked ----------------------------------------------------------------
        @property
        def checking(self) -> bool:
            return split_uri(self.path)[0] == "/check"

        @property
        def method(self) -> str:
            return (self.headers.get("X-Forwarded-Method") if self.checking else self.command) or "GET"

        @property
        def uri(self) -> str:
            return (self.headers.get("X-Forwarded-Uri") if self.checking else self.path) or "/"

        @property
        def address(self) -> str:
            return self.headers.get("X-Login-Address") or self.client_address[0]

        @property
        def service(self) -> Service | None:
            return gateway.services.get(self.headers.get("X-Gateway-Service", ""))

        @property
        def https(self) -> bool:
            return self.headers.get("X-Forwarded-Proto", "").lower() == "https"

        @property
        def browser(self) -> bool:
            """A browser gets pages; other clients get WWW-Authenticate and plain text."""
            accept = self.headers.get("Accept", "")
            return "Sec-Fetch-Mode" in self.headers or "text/html" in accept

        def cookies(self) -> list[tuple[str, str]]:
            """(name, value) of every cookie sent; a part without "=" is a value without name."""
            pairs = []
            for header in self.headers.get_all("Cookie") or []:
                for part in header.split(";"):
                    name, sep, value = part.strip().partition("=")
                    if part.strip():
                        pairs.append((name, value) if sep else ("", name))
            return pairs

        def session_cookie(self) -> str | None:
            return next((v for n, v in self.cookies() if n == gateway.cookie), None)

        @property
        def device(self) -> str | None:
            """This browser's id when it carries a device cookie this boot's guard signed."""
            value = next((v for n, v in self.cookies() if n == f"{gateway.cookie}_device"), "")
            device_id, _, mark = value.partition(".")
            login = gateway.login
            if device_id and login is not None and hmac.compare_digest(login.device_mark(device_id), mark):
                return device_id
            return None

        @property
        def limit_key(self) -> str:
            """What refusals count against: the device when known and not itself waiting (a
            co-tenant who captured the device cookie can spend its turns, not the address's),
            else the client's address."""
            device = self.device
            if device and gateway.limiter.wait(f"device {device}", everyone=False) == 0:
                return f"device {device}"
            return self.address

        def wait(self) -> float:
            key = self.limit_key
            return gateway.limiter.wait(key, everyone=not key.startswith("device "))

        # -- routing ----------------------------------------------------------------------------
        def do_GET(self) -> None:
            self._drain()
            self.route()

        do_HEAD = do_GET

        def do_POST(self) -> None:
            if split_uri(self.path)[0] not in ("/.gateway/login", "/.gateway/logout"):
                self._drain()
            self.route()

        def route(self) -> None:
            path = split_uri(self.uri)[0]
            if not self.checking and path == "/tls-ask":  # Caddy's own question, on loopback
                name = dict(parse_qsl(split_uri(self.uri)[1])).get("domain", "")
                self.reply(200 if name and gateway.may_make_certificate(name) else 403, b"")
                return
            if not self.checking and path == "/.gateway/ca.crt" and gateway.ca_root.exists():
                # Public: the root a browser must trust before it can even show the login.
                self.reply(200, gateway.ca_root.read_bytes(), "application/x-x509-ca-cert")
                return
            if not self.checking and path == "/.gateway/unavailable":
                self.unavailable()  # Caddy's error route: the service's own port is not answering
                return
            # Caddy sets X-Forwarded-Host to the Host it got, unless a TRUSTED_PROXIES proxy
            # sent one (a tunnel that rewrites Host on the way keeps the public name there).
            hosts = [h for h in (self.headers.get("Host"), self.headers.get("X-Forwarded-Host")) if h]
            verdict = judge(self.method, self.headers, hosts, gateway.sibling_ports)
            if not verdict.allowed:
                unsaid = gateway.worth_a_line(f"{self.address} {verdict.reason}")
                if unsaid is not None:
                    more = f" ({unsaid} more since the last line)" if unsaid else ""
                    say(f"refused {self.method} {path[:80]} from {self.address}: {verdict.reason}{more}")
                self.reply(403, *self.message("Refused", "This request came from another site.", 403))
                return
            if self.checking:
                self.check()
            elif path in ("/.gateway", PORTAL):
                self.portal()
            elif path == "/.gateway/status.json":
                self.status_json()
            elif path == "/.gateway/login":
                self.login_page()
            elif path == "/.gateway/logout":
                self.logout()
            else:
                self.reply(404, *self.message("Not found", "The gateway has no such page.", 404))

        # -- the check of every request ---------------------------------------------------------
        def check(self) -> None:
            if gateway.login is None:
                self.reply(200, b"", headers=self.app_cookies())
                return
            query = parse_qsl(split_uri(self.uri)[1], keep_blank_values=True)
            token = next((v for k, v in query if k == "token"), None)
            if token is not None and gateway.login.token_digest is not None:
                self.open_button(token, query)
                return
            decision = self.authenticate()
            if decision.kind == "ok":
                self.reply(200, b"", headers=self.app_cookies())
            else:
                self.refuse(decision, self.uri)

        def authenticate(self) -> Decision:
            """A session made for this address, Basic with the password, or Bearer with the token.
            A session is looked at before any limit; every other credential waits its turn."""
            login = gateway.login
            assert login is not None
            value = self.session_cookie()
            bad_cookie = None
            if value:
                session = gateway.sessions.lookup(value)
                if session is not None and session.used_from(self.address):
                    return Decision("ok", session=value)
                bad_cookie = value
                what = (
                    f"a session cookie made for {session.address}" if session else "an unknown session cookie"
                )
            authorization = self.headers.get("Authorization", "")
            scheme, _, credential = authorization.partition(" ")
            scheme = scheme.lower() if credential else ""
            if scheme not in ("basic", "bearer") and bad_cookie is None:
                return Decision("none")
            wait = self.wait()
            if wait > 0:
                return Decision("wait", wait=wait, stale=bad_cookie is not None)
            if bad_cookie is not None:
                self.count(what, f"cookie:{bad_cookie}")
            if scheme == "basic" and login.basic_ok(credential):
                gateway.limiter.granted(self.limit_key)
                return Decision("ok")
            if scheme == "bearer" and login.token_ok(credential.strip()):
                gateway.limiter.granted(self.limit_key)
                return Decision("ok")
            if scheme:
                self.count("a wrong password" if scheme == "basic" else "a wrong Bearer token", authorization)
            return Decision("refused", stale=bad_cookie is not None)

        def count(self, what: str, value: str) -> None:
            failures = gateway.limiter.refused(self.limit_key, value)
            if failures is not None:  # a repeat (a stale cookie on each request of a page): one line
                say(f"refused {what} from {self.address} ({failures} in a row)")

        def refuse(self, decision: Decision, next_path: str, message: str = "") -> None:
            headers = {}
            if decision.stale:  # a cookie of an ended session: the browser forgets it
                headers["Set-Cookie"] = self.set_cookie("", 0)
            if decision.kind == "wait":
                seconds = max(1, round(decision.wait + 0.5))
                if gateway.limiter.first_wait_notice(self.limit_key):
                    say(f"{self.address}: too many refused logins: next check in {seconds} s")
                headers["Retry-After"] = str(seconds)
                if self.browser:
                    title = self.service.title if self.service and self.checking else ""
                    body = pages.too_many(seconds, gateway.login.user, next_path, self.token_login, title)
                    self.reply(429, body, "text/html", headers)
                else:
                    text = (
                        f"429 Too Many Requests: too many refused logins from {self.address};"
                        f" retry in {seconds} s\n"
                    )
                    self.reply(429, text.encode(), headers=headers)
                return
            if decision.kind == "refused" and not message:
                message = "Wrong user name or password."
            if self.browser:
                title = self.service.title if self.service and self.checking else ""
                body = pages.login(gateway.login.user, next_path, message, self.token_login, title)
                self.reply(401, body, "text/html", headers)
            else:
                headers["WWW-Authenticate"] = f'Basic realm="{pages.PRODUCT}", charset="UTF-8"'
                self.reply(
                    401, b"401 Unauthorized: log in with the user name and password\n", headers=headers
                )

        @property
        def token_login(self) -> bool:
            return gateway.login is not None and gateway.login.token_digest is not None

        def open_button(self, token: str, query: list[tuple[str, str]]) -> None:
            """`?token=`: a session for this address, then the same path without the token (the
            portal for the root), on this host only."""
            wait = self.wait()
            rest = [(k, v) for k, v in query if k != "token"]
            path = split_uri(self.uri)[0]
            target = safe_path(f"{path}?{urlencode(rest)}" if rest else path)
            if wait > 0:
                self.refuse(Decision("wait", wait=wait), target)
                return
            if not gateway.login.token_ok(token):
                self.count("a wrong ?token=", f"token:{token}")
                self.refuse(Decision("refused"), target, "The link's token is not this container's.")
                return
            self.start_session("the Open button", PORTAL if target == "/" else target, 302)

        def start_session(self, how: str, target: str, status: int) -> None:
            gateway.limiter.granted(self.limit_key)
            session = gateway.sessions.create(self.address)
            say(f"logged in from {self.address} ({how})")
            device = self.device or secrets.token_urlsafe(16)
            marked = f"{device}.{gateway.login.device_mark(device)}"
            cookies = [self.set_cookie(session, MAX_AGE), self.set_cookie(marked, DEVICE_AGE, "_device")]
            self.reply(status, b"", headers={"Location": target, "Set-Cookie": cookies})

        def set_cookie(self, value: str, max_age: int, suffix: str = "") -> str:
            secure = "; Secure" if self.https else ""
            name = gateway.cookie + suffix
            return f"{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"

        def app_cookies(self) -> dict[str, str]:
            """The request's cookies without the gateway's (session, device), for the app behind."""
            ours = (gateway.cookie, f"{gateway.cookie}_device")
            kept = "; ".join(f"{n}={v}" if n else v for n, v in self.cookies() if n not in ours)
            return {"X-Gateway-Cookie": kept} if kept else {}

        # -- the gateway's own pages ------------------------------------------------------------
        def login_page(self) -> None:
            if gateway.login is None:
                self.reply(303, b"", headers={"Location": PORTAL})
                return
            if self.command != "POST":
                next_path = safe_path(dict(parse_qsl(split_uri(self.uri)[1])).get("next", PORTAL))
                body = pages.login(gateway.login.user, next_path, token_login=self.token_login)
                self.reply(200, body, "text/html")
                return
            form = self.form()
            next_path = safe_path(form.get("next", PORTAL))
            wait = self.wait()
            if wait > 0:
                self.refuse(Decision("wait", wait=wait), next_path)
                return
            user, password = form.get("username", ""), form.get("password", "")
            if gateway.login.password_ok(user, password):
                self.start_session("the login page", next_path, 303)
                return
            self.count("a wrong password", f"form:{user}:{password}")
            self.refuse(Decision("refused"), next_path)

        def logout(self) -> None:
            if self.command == "POST":
                self.form()
            value = self.session_cookie()
            if value and gateway.sessions.end(value):
                say(f"logged out from {self.address}")
            headers = {"Set-Cookie": self.set_cookie("", 0)}
            if gateway.login is None:
                self.reply(303, b"", headers={"Location": PORTAL})
                return
            body = pages.login(
                gateway.login.user, PORTAL, token_login=self.token_login, notice="You are logged out."
            )
            self.reply(200, body, "text/html", headers)

        def allowed_here(self) -> bool:
            """The portal and status.json: for a logged-in user (or with auth off)."""
            if gateway.login is None:
                return True
            decision = self.authenticate()
            if decision.kind == "ok":
                return True
            self.refuse(decision, PORTAL)
            return False

        def portal(self) -> None:
            if not self.allowed_here():
                return
            host = urlsplit(f"//{self.headers.get('Host', '')}").hostname or "localhost"
            user = gateway.login.user if gateway.login else ""
            scheme = "https" if self.https else "http"
            body = pages.portal(gateway.status(), scheme, host, user, ca=gateway.ca_root.exists())
            self.reply(200, body, "text/html")

        def status_json(self) -> None:
            if not self.allowed_here():
                return
            self.reply(200, json.dumps(gateway.status()).encode(), "application/json")

        def unavailable(self) -> None:
            service = self.service
            title, hint = (service.title, service.hint) if service else ("The service", "it is starting")
            self.reply(503, pages.unavailable(title, hint), "text/html", {"Retry-After": "5"})

        def message(self, title: str, text: str, status: int) -> tuple[bytes, str]:
            if self.browser:
                return pages.simple(title, text), "text/html"
            return f"{status} {title}: {text}\n".encode(), "text/plain"

        # -- plumbing ---------------------------------------------------------------------------
        def _drain(self) -> None:
            length = self.headers.get("Content-Length", "")
            if length.isdigit():  # never left for the next request on this connection to read
                self.rfile.read(int(length))

        def form(self) -> dict[str, str]:
            length = self.headers.get("Content-Length", "")
            if not length.isdigit() or int(length) > MAX_FORM:
                self.close_connection = True
                return {}
            body = self.rfile.read(int(length)).decode(errors="replace")
            return dict(parse_qsl(body, keep_blank_values=True))

        def reply(
            self, status: int, body: bytes, content_type: str = "text/plain", headers: dict | None = None
        ) -> None:
            self.send_response_only(status)  # no Server header: it only tells a scanner what runs here
            self.send_header("Date", self.date_time_string())
            self.send_header("Cache-Control", "no-store")
            if body or status not in (200, 302, 303):
                self.send_header("Content-Type", f"{content_type}; charset=utf-8")
            if content_type == "text/html":
                self.send_header("X-Frame-Options", "DENY")  # no other site frames the login
            for name, values in (headers or {}).items():
                for value in [values] if isinstance(values, str) else values:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # the lines that matter are said above
            pass

    return Handler


def main(argv: list[str]) -> int:
    if argv[:1] == ["hash"]:  # user, password and token on stdin, one per line: never in argv
        user, password, token = ([*sys.stdin.read().split("\n"), "", ""])[:3]
        print(json.dumps(login_record(user, password, token)))
        return 0
    port, login_file = int(argv[0]), Path(argv[1])
    env = dict(os.environ)
    login = None if env.get("ENABLE_AUTH") == "false" else Login.load(login_file)
    gateway = Gateway(env, login)
    server = ThreadingHTTPServer(("127.0.0.1", port), handler_for(gateway))
    server.daemon_threads = True
    say(f"listening on 127.0.0.1:{port}")
    server.serve_forever()
    return 0


if __name__ == "__main__":
    time.tzset()
    sys.exit(main(sys.argv[1:]))
