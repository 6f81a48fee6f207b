"""The HTTP session every request goes through: one User-Agent, finite timeouts, safe redirects."""

from __future__ import annotations

import os
import time
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from .version import __version__

USER_AGENT = f"sdnext-provision/{__version__} (python-requests)"  # a tool's own, not a browser's
# (connect, read): a stalled server is noticed after `read` seconds without a byte.
TIMEOUT = (10, 30)
MAX_REDIRECTS = 10


class UnsafeRedirect(requests.RequestException):
    pass


class _Session(requests.Session):
    """trust_env is off (no ~/.netrc credentials ever), so the settings people expect from
    the environment are read here instead: HTTPS_PROXY / HTTP_PROXY / NO_PROXY per URL (also
    after a redirect to another host), and REQUESTS_CA_BUNDLE or SSL_CERT_FILE. The proxies are
    read once per scheme and host for the session's life: scanning the environment took a third
    of a small file's request (a run of 200 files of 1.7 MiB: 0.1 s of CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self._environ_proxies: dict[tuple[str, str], dict[str, str]] = {}

    def environ_proxies(self, url: str) -> dict[str, str]:
        """HTTPS_PROXY / HTTP_PROXY / NO_PROXY as they apply to this URL's scheme and host."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        proxies = self._environ_proxies.get(key)
        if proxies is None:
            proxies = self._environ_proxies[key] = requests.utils.get_environ_proxies(url)
        return proxies

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        proxies = {**self.environ_proxies(url), **(proxies or {})}
        if verify is True or verify is None:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or verify
        return super().merge_environment_settings(url, proxies, stream, verify, cert)

    def rebuild_proxies(self, prepared_request, proxies):
        return super().rebuild_proxies(prepared_request, self.environ_proxies(prepared_request.url))

    def get_redirect_target(self, resp):
        target = super().get_redirect_target(resp)
        if target and urlsplit(target).scheme not in ("", "http", "https"):
            raise UnsafeRedirect(f"refused a redirect to a non-http(s) URL ({urlsplit(target).scheme}:)")
        return target

    def rebuild_auth(self, prepared_request, response):
        # requests drops Authorization on a host change; drop every credential-like header too,
        # so a token sent to its service never reaches a storage or CDN host.
        super().rebuild_auth(prepared_request, response)
        old = urlsplit(response.request.url)
        new = urlsplit(prepared_request.url)
        if (old.hostname, old.port) != (new.hostname, new.port):
            for name in list(prepared_request.headers):
                lowered = name.lower()
                if lowered in ("authorization", "cookie", "proxy-authorization") or any(
                    word in lowered for word in ("token", "key", "auth", "secret")
                ):
                    del prepared_request.headers[name]


def new_session(pool_size: int = 16) -> requests.Session:
    session = _Session()
    session.headers["User-Agent"] = USER_AGENT
    session.max_redirects = MAX_REDIRECTS
    # No ~/.netrc credentials: every credential we send is one the config or the environment's
    # token variables gave, to the host it belongs to (proxies and CA bundles: see _Session).
    session.trust_env = False
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class TooSlow(requests.RequestException):
    """A body that trickles in (a byte now and then keeps the read timeout from firing)."""


def read_capped(response: requests.Response, limit: int, deadline: float | None = None) -> bytes:
    """The whole body, or ValueError as soon as it passes `limit` bytes, or TooSlow when it is
    not complete `deadline` seconds after the first byte was asked for."""
    chunks, size = [], 0
    until = time.monotonic() + deadline if deadline is not None else None
    for chunk in _pieces_as_they_come(response):
        size += len(chunk)
        if size > limit:
            raise ValueError(f"body larger than {limit} bytes")
        if until is not None and time.monotonic() > until:
            raise TooSlow(f"not complete after {deadline:.0f} s ({size} bytes so far)")
        chunks.append(chunk)
    return b"".join(chunks)


def _pieces_as_they_come(response: requests.Response):
    """The body in the pieces the network delivers (urllib3 2's read1), so a deadline is checked
    even while a server trickles; iter_content would wait for each 64 KiB."""
    read1 = getattr(response.raw, "read1", None)
    if read1 is None:  # urllib3 1.x
        yield from response.iter_content(1024)
        return
    while data := read1(64 * 1024, decode_content=True):
        yield data
