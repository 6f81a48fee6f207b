"""What the gateway accepts as a login, how often anyone may try, and the sessions a login makes.

- `Login`: the password and the Open button's token, kept as keyed hashes (HMAC-SHA256): a check
  is one HMAC, so guesses cost no CPU worth speaking of. Not bcrypt: whoever can read the login
  file is root and can read PID 1's environment (PASSWORD) as well.
- `Limiter`: every refused guess (password, Bearer token, `?token=`, session cookie) is counted
  per client address. The first FREE_FAILURES refusals of an address cost it nothing; each
  further one doubles the time before that address is checked again (1 s, 2 s, 4 s ...
  MAX_WAIT). Across all addresses, beyond GLOBAL_FREE refusals every address without a session
  waits too (1 s doubling up to GLOBAL_MAX_WAIT): a guesser with many addresses gets no more
  guesses than that. A good login clears its address; FORGET_AFTER seconds without a refusal
  forget it. The same wrong value sent again (a stale cookie on every request of a page, a
  script with an old password) is one refusal, not one per request: it teaches nothing new.
- Device cookies: a browser that logged in once in this boot carries a signed mark; its later
  logins are limited on their own, not by its address's count nor the count across addresses,
  so a guesser sharing the address (a tunnel, an office) cannot keep a returning user out.
- `Sessions`: a login (the form or the Open button) makes a random session id, bound to the
  client address it was made for (an IPv6 address: its /64; a co-tenant who captures the
  cookie cannot use it from his own address), valid on every port of this container, ended by
  logout, by MAX_AGE, or by a new boot (init wipes the file). A session is checked before
  any limit: a guesser on the same address (every user of a tunnel shares one) never locks out
  someone already logged in. The file keeps only sha256 of each id, so reading it gives no
  usable cookie.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

FREE_FAILURES = 5
MAX_WAIT = 300.0
GLOBAL_FREE = 50
GLOBAL_MAX_WAIT = 60.0
FORGET_AFTER = 900.0
MAX_CLIENTS = 10_000  # addresses remembered at once; the stalest go first
REMEMBERED_VALUES = 16  # wrong values remembered per address (a repeat is not a new guess)
MAX_AGE = 3 * 24 * 3600  # a session's life, as the cookie's Max-Age
MAX_SESSIONS = 1000
EVERYONE = "*"  # the limiter's key for the count across all addresses


def fingerprint(value: str) -> str:
    """A short digest of a wrong value, to notice repeats without keeping the value."""
    return hashlib.sha256(value.encode(errors="replace")).hexdigest()[:16]


@dataclass
class Login:
    key: bytes
    user: str
    password_digest: str
    token_digest: str | None  # the Open button's OPEN_BUTTON_TOKEN, when set

    def _mac(self, text: str) -> str:
        return hmac.new(self.key, text.encode(errors="replace"), hashlib.sha256).hexdigest()

    def password_ok(self, user: str, password: str) -> bool:
        return hmac.compare_digest(self._mac(f"{user}:{password}"), self.password_digest)

    def token_ok(self, token: str) -> bool:
        return self.token_digest is not None and hmac.compare_digest(self._mac(token), self.token_digest)

    def device_mark(self, device_id: str) -> str:
        """The signature on a device cookie: only this boot's guard can make one."""
        return self._mac(f"device:{device_id}")[:32]

    def basic_ok(self, encoded: str) -> bool:
        try:
            user, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return False
        return self.password_ok(user, password)

    @classmethod
    def load(cls, path: Path) -> Login:
        data = json.loads(path.read_text())
        return cls(bytes.fromhex(data["key"]), data["user"], data["digest"], data.get("token_digest"))


def login_record(user: str, password: str, token: str = "") -> dict[str, str]:
    """What init stores (root-only) for the guard: a fresh key and the keyed hashes."""
    key = secrets.token_bytes(32)
    record = {
        "key": key.hex(),
        "user": user,
        "digest": hmac.new(key, f"{user}:{password}".encode(), hashlib.sha256).hexdigest(),
    }
    if token:
        record["token_digest"] = hmac.new(key, token.encode(), hashlib.sha256).hexdigest()
    return record


@dataclass
class Client:
    failures: int = 0
    last_failure: float = 0.0
    told_to_wait: bool = False  # one log line per wait, not one per blocked request
    recent: list[str] = field(default_factory=list)

    def wait(self, now: float, free: int, cap: float) -> float:
        """Seconds before this key is checked again (0: now)."""
        if self.failures < free:
            return 0.0
        delay = min(cap, 2.0 ** (self.failures - free))
        return max(0.0, self.last_failure + delay - now)


class Limiter:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.lock = threading.Lock()
        self.clients: dict[str, Client] = {}

    def wait(self, address: str, everyone: bool = True) -> float:
        """Seconds before a guess from this address (or device) is checked (0: now);
        everyone=False leaves the limit across all addresses out (a known device's login)."""
        now = self.clock()
        with self.lock:
            self._forget(now)
            own = self.clients.get(address)
            all_of_them = self.clients.get(EVERYONE) if everyone else None
            return max(
                own.wait(now, FREE_FAILURES, MAX_WAIT) if own else 0.0,
                all_of_them.wait(now, GLOBAL_FREE, GLOBAL_MAX_WAIT) if all_of_them else 0.0,
            )

    def refused(self, address: str, value: str) -> int | None:
        """Counts a wrong value from this address; returns the address's refusals in a row, or
        None for a repeat of a recent value (not counted again)."""
        now = self.clock()
        mark = fingerprint(value)
        with self.lock:
            client = self.clients.setdefault(address, Client())
            if mark in client.recent:
                return None
            client.recent = [*client.recent[-(REMEMBERED_VALUES - 1) :], mark]
            for key in (address, EVERYONE):
                counted = self.clients.setdefault(key, Client())
                counted.failures += 1
                counted.last_failure = now
                counted.told_to_wait = False
            return client.failures

    def granted(self, address: str) -> None:
        with self.lock:
            self.clients.pop(address, None)

    def failures(self, address: str) -> int:
        with self.lock:
            client = self.clients.get(address)
            return client.failures if client else 0

    def first_wait_notice(self, address: str) -> bool:
        with self.lock:
            client = self.clients.get(address) or self.clients.get(EVERYONE)
            if client is None or client.told_to_wait:
                return False
            client.told_to_wait = True
            return True

    def _forget(self, now: float) -> None:
        stale = [a for a, c in self.clients.items() if now - c.last_failure > FORGET_AFTER]
        for address in stale:
            del self.clients[address]
        while len(self.clients) > MAX_CLIENTS:
            oldest = min(self.clients, key=lambda a: self.clients[a].last_failure)
            del self.clients[oldest]


@dataclass
class Session:
    address: str
    expires: float

    def used_from(self, address: str) -> bool:
        """The same client: the same IPv4 address, or the same IPv6 /64 (a browser's IPv6
        privacy address changes within its network's /64 every day or so; a co-tenant on the
        host is in the host's network, not the user's)."""
        return same_client(self.address, address)


def same_client(first: str, second: str) -> bool:
    try:
        one, two = ipaddress.ip_address(first), ipaddress.ip_address(second)
    except ValueError:
        return first == second
    if one.version == 6 and two.version == 6 and not (one.ipv4_mapped or two.ipv4_mapped):
        return ipaddress.ip_network(f"{one}/64", strict=False) == ipaddress.ip_network(
            f"{two}/64", strict=False
        )
    return one == two


class Sessions:
    """Session ids -> (client address, expiry), kept in a root-only file so that a restarted
    guard keeps everyone logged in."""

    def __init__(self, path: Path, clock=time.time):
        self.path, self.clock = path, clock
        self.lock = threading.Lock()
        self.table: dict[str, Session] = {}
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
            saved = json.loads(path.read_text())
            self.table = {key: Session(v["address"], float(v["expires"])) for key, v in saved.items()}

    @staticmethod
    def _key(session_id: str) -> str:
        return hashlib.sha256(session_id.encode(errors="replace")).hexdigest()

    def create(self, address: str) -> str:
        session_id = secrets.token_urlsafe(32)
        with self.lock:
            self._expire()
            while len(self.table) >= MAX_SESSIONS:
                del self.table[min(self.table, key=lambda k: self.table[k].expires)]
            self.table[self._key(session_id)] = Session(address, self.clock() + MAX_AGE)
            self._save()
        return session_id

    def lookup(self, session_id: str) -> Session | None:
        with self.lock:
            session = self.table.get(self._key(session_id))
            if session is None or session.expires <= self.clock():
                return None
            return session

    def end(self, session_id: str) -> bool:
        with self.lock:
            ended = self.table.pop(self._key(session_id), None) is not None
            if ended:
                self._save()
            return ended

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, s in self.table.items() if s.expires <= now]:
            del self.table[key]

    def _save(self) -> None:
        data = {k: {"address": s.address, "expires": s.expires} for k, s in self.table.items()}
        temporary = self.path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(data, file)
        os.replace(temporary, self.path)
