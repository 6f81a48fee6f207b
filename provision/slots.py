"""The global cap on connections, shared by every file of a run."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
from collections.abc import Callable


class ConnectionSlots:
    """The global cap on connections, granted by priority: files smaller than a piece first,
    then the earliest-started file (Engine.priority).

    A plain semaphore hands slots to whichever thread asks first, so five files share sixteen
    connections evenly and the biggest one finishes last, alone. Granting by file order (and
    starting the biggest files first) keeps the big files at full speed from the start, which
    is what makes the whole set finish early.
    """

    def __init__(self, count: int):
        self.free = count
        self.condition = threading.Condition()
        self.waiting: list[tuple[int, int]] = []  # (priority, ticket), a heap
        self.tickets = itertools.count()

    def acquire(self, priority: int, on_wait: Callable[[], None] | None = None) -> bool:
        """Take a slot; returns whether it had to wait (`on_wait` is called once, if so)."""
        waited = False
        with self.condition:
            entry = (priority, next(self.tickets))
            heapq.heappush(self.waiting, entry)
            while not (self.free > 0 and self.waiting[0] == entry):
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                self.condition.wait()
            heapq.heappop(self.waiting)
            self.free -= 1
            self.condition.notify_all()
        return waited

    def contended(self, besides: int) -> bool:
        """A worker of another file than `besides` (a priority) waits for a slot: no connection
        will be idle soon. Read without the lock, on purpose: the caller holds its transfer's
        lock, and `acquire` calls `on_wait` (which takes that lock) while holding this one. A
        stale answer only changes a request's size."""
        return any(priority != besides for priority, _ in list(self.waiting))

    def wanted_before(self, priority: int) -> bool:
        """Someone who goes before `priority` waits for a slot: a worker holding one hands it
        over between pieces. Read without the lock, as `contended`."""
        return any(waiting < priority for waiting, _ in list(self.waiting))

    def release(self) -> None:
        with self.condition:
            self.free += 1
            self.condition.notify_all()

    @contextlib.contextmanager
    def hold(self, priority: int):
        self.acquire(priority)
        try:
            yield
        finally:
            self.release()
