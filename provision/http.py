"""The HTTP session every request goes through: one User-Agent, finite timeouts, safe redirects."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from . import __version__

USER_AGENT = f"sdnext-provision/{__version__} (+https://github.com/; python-requests)"
# (connect, read): a stalled server is noticed after `read` seconds without a byte.
TIMEOUT = (10, 30)
MAX_REDIRECTS = 10


class UnsafeRedirect(requests.RequestException):
    pass


class _Session(requests.Session):
    """trust_env is off (no ~/.netrc credentials ever), so the settings people expect from
    the environment are read here instead: HTTPS_PROXY / HTTP_PROXY / NO_PROXY per URL (also
    after a redirect to another host), and REQUESTS_CA_BUNDLE or SSL_CERT_FILE."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        proxies = {**requests.utils.get_environ_proxies(url), **(proxies or {})}
        if verify is True or verify is None:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or verify
        return super().merge_environment_settings(url, proxies, stream, verify, cert)

    def rebuild_proxies(self, prepared_request, proxies):
        return super().rebuild_proxies(
            prepared_request, requests.utils.get_environ_proxies(prepared_request.url)
        )

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


def read_capped(response: requests.Response, limit: int) -> bytes:
    """The whole body, or ValueError as soon as it passes `limit` bytes."""
    chunks, size = [], 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ValueError(f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
