"""Which requests another site (or another port of the same IP) may make with the user's login.

On rented hosts several renters' containers share one public IP on different ports. Browsers
send a host's cookies to every port of it, re-send cached Basic credentials with cross-site form
POSTs, and count a page on another port of the same IP as "same-site" (SameSite=Lax does not
stop it). So the gateway decides by what the browser says about where a request came from:

- `Origin` present (every unsafe method and every WebSocket from a browser, CORS reads): it must
  be this container's own origin: the host the request was sent to, on that port or on one of
  the container's sibling ports (the four services). `Origin: null` (sandboxed frames, data:
  URLs) is never its own.
- No `Origin`, but `Sec-Fetch-Site`: `same-origin` and `none` (typed, bookmarked) pass; from
  another site or another port only a top-level navigation with a safe method passes (a link
  from the portal on a sibling port, from the host's console); an `<img>`, a script or a frame
  from there does not reach the apps.
- Neither header: not a browser (curl, scripts with Basic or Bearer): passes; the login decides.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str = ""


def _host_port(authority: str, scheme: str) -> tuple[str, int | None]:
    """'Host: 1.2.3.4:8010' -> ('1.2.3.4', 8010); no port: the scheme's default."""
    try:
        parts = urlsplit(f"//{authority}")
        port = parts.port
    except ValueError:
        return "", None
    return (parts.hostname or "").lower(), port if port is not None else DEFAULT_PORTS.get(scheme)


def is_own_origin(origin: str, host: str, sibling_ports: Collection[int]) -> bool:
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return False
    origin_port = port if port is not None else DEFAULT_PORTS[parts.scheme]
    # The Host header carries no scheme: a port-less Host means the default port of the scheme
    # the browser used (a TLS proxy or tunnel in front may have changed it on the way).
    own_host, own_port = _host_port(host, parts.scheme)
    if parts.hostname.lower() != own_host:
        return False
    return origin_port == own_port or origin_port in sibling_ports


def judge(
    method: str, headers: Mapping[str, str], hosts: Collection[str], sibling_ports: Collection[int]
) -> Verdict:
    """May this request reach an app (or the gateway's own pages) with the user's login?
    `hosts`: what the request was sent to (its Host; the X-Forwarded-Host of a trusted proxy)."""
    method = method.upper()
    websocket = headers.get("Upgrade", "").lower() == "websocket"
    origin = headers.get("Origin")
    if origin is not None:
        if origin != "null" and any(is_own_origin(origin, host, sibling_ports) for host in hosts):
            return Verdict(True)
        return Verdict(False, f"Origin {origin[:100]} is not this container")
    site = headers.get("Sec-Fetch-Site", "").lower()
    if site in ("", "same-origin", "none"):
        return Verdict(True)
    navigation = headers.get("Sec-Fetch-Mode", "").lower() == "navigate"
    if navigation and method in SAFE_METHODS and not websocket:
        return Verdict(True)
    return Verdict(False, f"a {site} {method} request that is not a navigation")
