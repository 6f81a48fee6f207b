"""What went wrong with a request, said one way for every source and for the config URL:
`cannot reach HOST (REASON): WHAT TO CHECK`, never an exception's own text.

`classify` looks through the wrappers of requests, urllib3 and huggingface_hub's HTTP client
(their causes and contexts) for the cause, and says how many retries it deserves: a name that
does not resolve, a refused connection and a TLS failure are not transient (one retry at most,
none for TLS), a stall, a reset or a 5xx are (the retry policy's count). `HostBreaker` remembers
hosts found dead in this run, so the remaining items of a dead host fail at once with the same
reason instead of each spending its own retries.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

NO_SUCH_HOST = "no such host"
REFUSED = "connection refused"

_CHECK = {
    NO_SUCH_HOST: "check the host name in the URL and the network (DNS)",
    REFUSED: "check the host and port in the URL, and that the server runs",
    "TLS": "check the URL, the clock, and REQUESTS_CA_BUNDLE or SSL_CERT_FILE behind a proxy",
    "no route": "check the network",
}


class Retryable(Exception):
    """A failure worth another try (a 5xx or 429 answer); may carry the server's Retry-After."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Failure:
    """One failed attempt, classified."""

    host: str | None  # host:port it concerns, when known
    reason: str  # a short phrase: "no such host", "connection refused", "HTTP 503", "stalled"...
    retries: int | None  # at most this many retries (None: as the policy says)
    retry_after: float | None = None  # the server's Retry-After, in seconds

    @property
    def host_down(self) -> bool:
        """The host cannot be reached at all (not one file's or one answer's trouble)."""
        return self.retries is not None and self.host is not None

    def message(self, attempts: int) -> str:
        where = self.host or "the server"
        if self.host_down:
            check = _CHECK.get(self.reason.split(":")[0], "check the network and the URL")
            return f"cannot reach {where} ({self.reason}): {check}"
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if self.reason.startswith("HTTP "):
            return f"{where}: gave up after {tries} ({self.reason}): the server is failing; run again later"
        return f"{where}: gave up after {tries} ({self.reason}): check the network, or run again later"


def host_of(url: str | None) -> str | None:
    """host:port of a URL (the default port of its scheme when none is given)."""
    if not url:
        return None
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return parts.hostname
    return f"{parts.hostname}:{port}"


def classify(err: BaseException, url: str | None = None) -> Failure | None:
    """The failure `err` stands for, or None when it is not a network failure (a bug, a refusal
    the source explains, a mismatch): those are never retried."""
    chain = list(_causes(err))
    host = _host(chain) or host_of(url)
    if isinstance(err, Retryable):
        return Failure(host, str(err) or "the server failed", None, err.retry_after)
    tls = [c for c in chain if isinstance(c, ssl.SSLError | requests.exceptions.SSLError)]
    broken = [
        c for c in chain if isinstance(c, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError)
    ]
    if tls and broken:  # a TLS stream cut off mid-way: the network's doing, worth a retry
        return Failure(host, "the secure connection broke off", None)
    if tls:  # a certificate not trusted, a handshake refused, http spoken to an https port
        why = [getattr(c, "verify_message", None) or getattr(c, "reason", None) for c in tls]
        detail = next((w for w in why if isinstance(w, str) and w), "the secure connection failed")
        return Failure(host, f"TLS: {detail.lower().replace('_', ' ')}", 0)
    for cause in chain:
        text = str(cause)
        if isinstance(cause, socket.gaierror) or type(cause).__name__ == "NameResolutionError":
            return Failure(host, NO_SUCH_HOST, 1)
        if "Name or service not known" in text or "name resolution" in text or "nodename nor" in text:
            return Failure(host, NO_SUCH_HOST, 1)
        if isinstance(cause, ConnectionRefusedError) or "Connection refused" in text:
            return Failure(host, REFUSED, 1)
        if isinstance(cause, OSError) and cause.errno in (101, 113):  # ENETUNREACH, EHOSTUNREACH
            return Failure(host, "no route", 1)
    reason = _transient_reason(chain)
    return Failure(host, reason, None) if reason else None


def _transient_reason(chain: list[BaseException]) -> str | None:
    """The most telling transient cause in the chain (a reset or a stall before the generic
    "connection failed" of the wrapper around it)."""
    checks = (
        (lambda c: isinstance(c, ConnectionResetError), "the connection was reset"),
        (
            lambda c: (
                isinstance(c, requests.Timeout | urllib3.exceptions.ReadTimeoutError | TimeoutError)
                or "Timeout" in type(c).__name__
            ),
            "stalled or timed out",
        ),
        (
            lambda c: isinstance(
                c, requests.exceptions.ChunkedEncodingError | urllib3.exceptions.ProtocolError
            ),
            "the connection broke off",
        ),
        (lambda c: "timed out" in str(c), "stalled or timed out"),
        (lambda c: isinstance(c, requests.ConnectionError) or _client_error(c), "the connection failed"),
    )
    for test, reason in checks:
        if any(test(cause) for cause in chain):
            return reason
    return None


def _client_error(cause: BaseException) -> bool:
    """A transport error of huggingface_hub's HTTP client (httpx or its fork, by version)."""
    module = type(cause).__module__.split(".")[0]
    bases = {base.__name__ for base in type(cause).__mro__}
    return module.startswith(("httpx", "httpcore")) and bool(bases & {"TransportError", "NetworkError"})


def _causes(err: BaseException) -> Iterator[BaseException]:
    """err, what it wraps (requests keeps urllib3's error in args[0], urllib3 its reason), and
    their causes and contexts; each once."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        inner += [arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException)]
        todo += [e for e in inner if isinstance(e, BaseException)]


def _host(chain: list[BaseException]) -> str | None:
    for cause in chain:
        for holder in (getattr(cause, "pool", None), getattr(cause, "conn", None)):
            host, port = getattr(holder, "host", None), getattr(holder, "port", None)
            if isinstance(host, str) and host:
                return f"{host}:{port}" if port else host
        try:  # httpx raises instead of answering None when the error has no request
            request = getattr(cause, "_request", None) or getattr(cause, "request", None)
        except RuntimeError:
            request = None
        url = getattr(request, "url", None)
        if url is not None:
            found = host_of(str(url))
            if found:
                return found
    return None


class HostBreaker:
    """Hosts this run found unreachable, with the reason: the first item to find one dead pays
    for the retry, every later request to it fails at once with the same message."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down: dict[str, str] = {}
        self._suspected: set[str] = set()

    def suspect(self, host: str) -> bool:
        """A request found `host` unreachable and will try once more: whether this is the first
        to say so (the requests under way at that moment would each say it again)."""
        with self._lock:
            first = host not in self._suspected
            self._suspected.add(host)
            return first

    def trip(self, host: str, message: str) -> None:
        with self._lock:
            self._down.setdefault(host, message)

    def down(self, host: str | None) -> str | None:
        """Why `host` is known to be unreachable, or None."""
        if host is None:
            return None
        with self._lock:
            return self._down.get(host)
