"""Ctrl-C and `docker stop` for the command line: stop within a second, resumably.

SIGINT and SIGTERM raise `Interrupted` in the main thread (wherever it waits). The pipeline then
cancels every transfer and saves each `.part`'s state (run.py); the CLI prints one line and
leaves with 130 or 143 without waiting for the worker threads, which may sit in a socket read
for up to the read timeout (nothing they still do is recorded, so nothing is lost or trusted
wrongly). A second signal while that happens exits at once.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(BaseException):
    """A signal asked the run to stop (BaseException, like KeyboardInterrupt: nothing catches
    it by accident)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 128 + self.signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: SIGINT/SIGTERM raise Interrupted once; a second one ends the process at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum, _frame):
        if received:
            os._exit(EXIT_CODES.get(signum, 128 + signum))
        received.append(signum)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in EXIT_CODES}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
