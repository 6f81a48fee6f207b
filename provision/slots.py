"""Connections: the run's ceiling, and per host a limit that follows the link.

A per-connection rate cap (as many CDNs and object stores have) makes speed a matter of how
many connections are open; a saturated link, or a server that limits connections per client,
makes more connections useless or refused. So each host starts with a modest number and gets
more while its aggregate rate keeps rising with them (`HostLink`), never above the ceiling
(`--connections`) for all hosts together.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("provision")

START = 16  # connections a host starts with: the fixed count before, enough for an uncapped link
WINDOW = 0.5  # seconds of traffic the rate of a host is measured over
RISE = 1.4  # more connections are kept only when they raise the rate by this factor: a cap
# per connection shows as nearly twice the rate for twice the connections, a full link as
# none; a loaded machine's noise stays well inside the margin
HOLD = 10.0  # seconds a host's limit stays put after a raise that did not pay
REFUSED_HOLD = 60.0  # ... and after the server refused requests (its limit will not move soon)


class HostLink:
    """One host's connection limit (under the slots' lock). While its connections are all in
    use and more are wanted, it doubles at the end of a window; the window after that lets the
    new connections open and get going (judged then, a raise looks like it did not pay on a
    loaded machine), and the one after tells whether it paid: kept if the rate rose by RISE
    (40%), else back to the limit before, held for HOLD seconds, then tried again (links
    change). A burst of refusals (429, 503, connections
    refused) while trying goes back to the limit before; otherwise each refusal of the burst
    takes one off what was in use when it began (32 connections to nginx with `limit_conn 16`
    get 16 refusals, and 16 is the limit); either holds REFUSED_HOLD seconds."""

    def __init__(self, ceiling: int, now: float):
        self.ceiling = ceiling
        self.limit = min(START, ceiling)
        self.in_use = 0
        self.wanted = False  # a worker waited on this limit in this window
        self.window_start = now
        self.window_bytes = 0
        self.windows = 0  # ended so far: the first one (connections opening) is no baseline
        self.before: tuple[int, float] | None = None  # (limit, rate) before a raise on trial
        self.settling = False  # the window right after a raise: its new connections are opening
        self.hold_until = 0.0
        self.pushed_back_at = -1e9
        self.burst = (0, 0)  # (connections when a burst of refusals began, refusals counted)

    def received(self, n: int, now: float, waiting: Callable[[], bool] = lambda: True) -> None:
        """`n` bytes came in; `waiting()`: whether a worker of this host waits for a slot now."""
        self.window_bytes += n
        if now - self.window_start >= WINDOW:
            if self.windows:
                self._judge(self.window_bytes / (now - self.window_start), now)
            self.windows += 1
            self.window_start, self.window_bytes = now, 0
            self.wanted = self.in_use >= self.limit and waiting()

    def _judge(self, rate: float, now: float) -> None:
        if self.settling:
            self.settling = False
            return
        if self.before is not None:  # a raise on trial
            limit, rate_before = self.before
            self.before = None
            if rate < rate_before * RISE:
                self.limit, self.hold_until = limit, now + HOLD
                return
        if self.wanted and now >= self.hold_until and self.limit < self.ceiling:
            self.before = (self.limit, rate)
            self.limit = min(self.ceiling, self.limit * 2)
            self.settling = True

    def pushed_back(self, now: float) -> None:
        if self.in_use <= 1:  # refused on its own: a server down or busy, not too many at once
            return
        if now - self.pushed_back_at >= WINDOW:  # a new burst of refusals
            self.pushed_back_at = now
            self.burst = (self.before[0], 0) if self.before else (min(self.limit, self.in_use), 1)
            self.before, self.settling = None, False
        elif self.burst[1]:  # one fewer for each refusal of the burst (but not below a trial's)
            self.burst = (self.burst[0], self.burst[1] + 1)
        base, refused = self.burst
        self.limit = max(1, base - refused)
        self.hold_until = now + REFUSED_HOLD
        self.window_start, self.window_bytes = now, 0


class ConnectionSlots:
    """The cap on connections, granted by priority: files smaller than a piece first, then the
    earliest-started file (Engine.priority), each within its host's limit (HostLink).

    A plain semaphore hands slots to whichever thread asks first, so five files share sixteen
    connections evenly and the biggest one finishes last, alone. Granting by file order (and
    starting the biggest files first) keeps the big files at full speed from the start, which
    is what makes the whole set finish early.
    """

    def __init__(self, count: int):
        self.ceiling = count
        self.free = count
        self.lock = threading.Lock()
        self.condition = threading.Condition(self.lock)  # `with` it: its lock guards all of this
        self.waiting: list[tuple[int, int, str]] = []  # (priority, ticket, host), a heap
        # Each waiter's own condition: only the one whose turn it is gets woken. One shared
        # condition woke every waiter at every release (a hundred workers of big files, 32
        # small files): 168,000 futex calls for 200 small files, most of the run's CPU.
        self.turns: dict[tuple[int, int, str], threading.Condition] = {}
        self.tickets = itertools.count()
        self.hosts: dict[str, HostLink] = {}

    def _host(self, host: str) -> HostLink:
        link = self.hosts.get(host)
        if link is None:
            link = self.hosts[host] = HostLink(self.ceiling, time.monotonic())
        return link

    def _room(self, host: str) -> bool:
        link = self._host(host)
        if link.in_use < link.limit:
            return True
        link.wanted = True
        return False

    def acquire(self, priority: int, on_wait: Callable[[], None] | None = None, host: str = "") -> bool:
        """Take a slot; returns whether it had to wait (`on_wait` is called once, if so). The
        first waiter in priority order whose host has room goes first."""
        waited = False
        with self.condition:
            entry = (priority, next(self.tickets), host)
            heapq.heappush(self.waiting, entry)
            turn = self.turns[entry] = threading.Condition(self.lock)
            while not (self.free > 0 and self._first_with_room() == entry):
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                turn.wait()
            self.waiting.remove(entry)
            heapq.heapify(self.waiting)
            del self.turns[entry]
            self.free -= 1
            self._host(host).in_use += 1
            self._wake_next()  # a slot may be left for the next in line
        return waited

    def _wake_next(self) -> None:
        """Wake the waiter whose turn it is now, if a slot is free for it (under the lock);
        it wakes the next when it has taken its slot."""
        if self.free > 0 and (entry := self._first_with_room()) is not None:
            self.turns[entry].notify()

    def _first_with_room(self) -> tuple[int, int, str] | None:
        for entry in sorted(self.waiting):
            if self._room(entry[2]):
                return entry
        return None

    def contended(self, besides: int) -> bool:
        """A worker of another file than `besides` (a priority) waits for a slot: no connection
        will be idle soon. Read without the lock, on purpose: the caller holds its transfer's
        lock, and `acquire` calls `on_wait` (which takes that lock) while holding this one. A
        stale answer only changes a request's size."""
        return any(entry[0] != besides for entry in list(self.waiting))

    def wanted_before(self, priority: int) -> bool:
        """Someone who goes before `priority` waits for a slot: a worker holding one hands it
        over between pieces. Read without the lock, as `contended`."""
        return any(entry[0] < priority for entry in list(self.waiting))

    def release(self, host: str = "") -> None:
        with self.condition:
            self.free += 1
            self._host(host).in_use -= 1
            self._wake_next()

    def received(self, host: str, n: int) -> int:
        """Bytes came in from `host`: its rate, and whether it should get more connections.
        Returns how many the run may have open now (`allowed`)."""
        with self.condition:
            link = self._host(host)
            before = link.limit
            link.received(n, time.monotonic(), lambda: any(entry[2] == host for entry in self.waiting))
            if link.limit != before:
                log.debug(f"{host}: {before} -> {link.limit} connections")
            if link.limit > before:
                self._wake_next()
            return self._allowed()

    def pushed_back(self, host: str) -> None:
        """The host refused a request (429, 503, a connection refused): fewer connections."""
        with self.condition:
            link = self._host(host)
            before = link.limit
            link.pushed_back(time.monotonic())
            if link.limit != before:
                log.debug(f"{host}: {before} -> {link.limit} connections (refused)")
                self._wake_next()  # another host's waiter may go first now

    def limit(self, host: str) -> int:
        with self.condition:
            return self._host(host).limit

    def allowed(self) -> int:
        """The most connections the run may have open now: the limits of the hosts with a
        connection open, together, within the ceiling (at least one host's START), or as many
        as are open (a lowered limit takes effect as connections are given back)."""
        with self.condition:
            return self._allowed()

    def _allowed(self) -> int:
        limits = sum(link.limit for link in self.hosts.values() if link.in_use)
        return max(self.ceiling - self.free, min(self.ceiling, max(limits, START)))
