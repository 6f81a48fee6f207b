"""Progress: tqdm bars on a terminal (one per active file and a total); in a log, a total line
every PROVISION_PROGRESS_INTERVAL seconds (default 15). Item start/end lines come from run.py."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from tqdm import tqdm

from .download import Download
from .engine import Progress
from .report import human_size

log = logging.getLogger("provision")


class _Totals(Progress):
    def __init__(self, expected_total: int):
        self.lock = threading.Lock()
        self.expected_total = expected_total
        self.done = 0
        self.active: set[int] = set()

    def file_started(self, download: Download, total: int | None, have: int) -> None:
        with self.lock:
            self.active.add(id(download))

    def advance(self, download: Download, n: int) -> None:
        with self.lock:
            self.done += n

    def file_finished(self, download: Download) -> None:
        with self.lock:
            self.active.discard(id(download))

    def close(self) -> None:
        pass


class LogProgress(_Totals):
    def __init__(self, expected_total: int, interval: float | None = None):
        super().__init__(expected_total)
        self.interval = interval or float(os.environ.get("PROVISION_PROGRESS_INTERVAL", 15))
        self.started = time.monotonic()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._report, daemon=True)
        self.thread.start()

    def _report(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.lock:
                done, active = self.done, len(self.active)
            if not active:
                continue
            rate = done / max(time.monotonic() - self.started, 1e-6)
            of = f" of {human_size(self.expected_total)}" if self.expected_total else ""
            log.info(
                f"progress: {human_size(done)}{of} at {human_size(int(rate))}/s, {active} file(s) active"
            )

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()


class _ByteBar(tqdm):
    """A bar that writes sizes and speed as the log does (KiB, MiB, GiB): tqdm's own rate is
    in units of 1000 whatever the divisor, with binary-looking labels."""

    @property
    def format_dict(self):
        values = super().format_dict
        n, total, elapsed = values["n"], values["total"], values["elapsed"]
        rate = values["rate"] or (n / elapsed if elapsed else None)
        values["done"] = human_size(int(n))
        values["size"] = human_size(int(total)) if total else "?"
        values["speed"] = f"{human_size(int(rate))}/s" if rate else "-"
        return values


_BYTES = {"bar_format": "{desc}: {percentage:3.0f}%|{bar}| {done}/{size} [{speed}]"}
SMALL_FILE = 1024 * 1024  # no bar of its own below this: it would only flicker


class TqdmProgress(_Totals):
    """One bar per file under way and a total, all gone when the run ends (the summary line and
    the log say what happened); nothing at all when there was nothing to download."""

    def __init__(self, expected_total: int):
        super().__init__(expected_total)
        self.total_bar: tqdm | None = None
        self.bars: dict[int, tqdm] = {}
        self.free_positions: list[int] = []
        self.next_position = 1

    def file_started(self, download: Download, total: int | None, have: int) -> None:
        super().file_started(download, total, have)
        with self.lock:
            if self.total_bar is None:
                self.total_bar = _ByteBar(
                    total=self.expected_total or None,
                    desc="total",
                    position=0,
                    leave=False,
                    file=sys.stderr,
                    dynamic_ncols=True,
                    **_BYTES,
                )
            if total is not None and total < SMALL_FILE:
                return
            position = self.free_positions.pop(0) if self.free_positions else self.next_position
            if position == self.next_position:
                self.next_position += 1
            self.bars[id(download)] = _ByteBar(
                total=total,
                initial=have,
                desc=download.dest.name[:30],
                position=position,
                leave=False,
                file=sys.stderr,
                dynamic_ncols=True,
                **_BYTES,
            )

    def advance(self, download: Download, n: int) -> None:
        super().advance(download, n)
        with self.lock:
            bar = self.bars.get(id(download))
            if bar is not None:
                bar.update(n)
            if self.total_bar is not None:
                self.total_bar.update(n)

    def file_waiting(self, download: Download, waiting: bool) -> None:
        with self.lock:
            bar = self.bars.get(id(download))
            if bar is not None:
                name = download.dest.name[:30]
                bar.set_description(f"{name} (waiting)" if waiting else name, refresh=False)

    def file_finished(self, download: Download) -> None:
        super().file_finished(download)
        with self.lock:
            bar = self.bars.pop(id(download), None)
            if bar is not None:
                self.free_positions.append(bar.pos if bar.pos > 0 else abs(bar.pos))
                bar.close()

    def close(self) -> None:
        with self.lock:
            for bar in self.bars.values():
                bar.close()
            self.bars.clear()
            if self.total_bar is not None:
                self.total_bar.close()


def make_progress(enabled: bool | None, expected_total: int) -> _Totals:
    """Bars when asked for or on a terminal; a periodic log line otherwise."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return TqdmProgress(expected_total) if enabled else LogProgress(expected_total)
