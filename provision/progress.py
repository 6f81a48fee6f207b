"""Progress: live lines on a terminal (one per active file and a total, screen.py draws them);
in a log, a total line every PROVISION_PROGRESS_INTERVAL seconds (default 15). Item start and
end lines come from run.py."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections import deque

from . import screen
from .download import Download
from .engine import Progress
from .report import elide, human_size

log = logging.getLogger("provision")


class _Totals(Progress):
    def __init__(self, expected_total: int):
        self.lock = threading.Lock()
        self.expected_total = expected_total
        self.done = 0  # bytes transferred by this run
        self.before = 0  # bytes of the total on disk before it (resumed, or verified in place)
        self.active: set[int] = set()

    def file_started(self, download: Download, total: int | None, have: int) -> None:
        with self.lock:
            self.active.add(id(download))
            self.before += have

    def advance(self, download: Download, n: int) -> None:
        with self.lock:
            self.done += n

    def file_verifying(self, download: Download) -> None:
        pass

    def file_finished(self, download: Download) -> None:
        with self.lock:
            self.active.discard(id(download))

    def already_done(self, n: int) -> None:
        """Bytes of the total that were in place before this run (files skipped as verified)."""
        with self.lock:
            self.before += n

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
                done, before, active = self.done, self.before, len(self.active)
            if not active:
                continue
            rate = done / max(time.monotonic() - self.started, 1e-6)
            of = f" of {human_size(self.expected_total)}" if self.expected_total else ""
            left = self.expected_total - done - before
            eta = f", {_eta(left / rate)}" if self.expected_total and rate and left > 0 else ""
            log.info(
                f"progress: {human_size(done + before)}{of} at {human_size(int(rate))}/s{eta},"
                f" {active} file(s) active"
            )

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()


class TerminalProgress(_Totals):
    """Live lines at the bottom of a terminal (screen.Block): one per file under way, named by
    its path under the models folder (two `diffusion_pytorch_model.safetensors` stay apart),
    with size, speed and ETA, a phase when it waits for a connection or is being verified, and
    a total that counts what was on disk already. All gone when the run ends or is stopped."""

    def __init__(self, expected_total: int, labels: dict[int, str] | None = None, stream=None):
        super().__init__(expected_total)
        self.labels = labels or {}
        self.files: dict[int, _File] = {}
        self.total = _File("total", expected_total or None)
        self.block = screen.Block(stream or sys.stderr)
        self.block.__enter__()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._refresh, daemon=True)
        self.thread.start()

    def file_started(self, download: Download, total: int | None, have: int) -> None:
        super().file_started(download, total, have)
        size = total if total is not None else download.expected_size  # the metadata's size
        with self.lock:
            self.total.resumed(have)
            if size is None or size >= SMALL_FILE:
                label = self.labels.get(id(download), download.dest.name)
                self.files[id(download)] = _File(label, size, have)
        self._draw()

    def already_done(self, n: int) -> None:
        with self.lock:
            self.total.resumed(n)

    def advance(self, download: Download, n: int) -> None:
        super().advance(download, n)
        with self.lock:
            self.total.add(n)
            file = self.files.get(id(download))
            if file is not None:
                file.add(n)

    def file_waiting(self, download: Download, waiting: bool) -> None:
        with self.lock:
            file = self.files.get(id(download))
            if file is not None:
                file.phase = "waiting" if waiting else None

    def file_verifying(self, download: Download) -> None:
        with self.lock:
            file = self.files.get(id(download))
            if file is not None:
                file.phase = "verifying"
        self._draw()

    def file_finished(self, download: Download) -> None:
        super().file_finished(download)
        with self.lock:
            self.files.pop(id(download), None)
        self._draw()

    def close(self) -> None:
        self.stopped.set()
        self.block.close()

    def _refresh(self) -> None:
        while not self.stopped.wait(REFRESH):
            self._draw()

    def _draw(self) -> None:
        columns = screen.width()
        rows = max(3, shutil.get_terminal_size((80, 24)).lines - 4)
        with self.lock:
            if not self.active and not self.files:
                return
            now = time.monotonic()
            files = list(self.files.values())
            lines = [self.total.line(now, columns, f"{len(self.active)} file(s)")]
            shown = files[: rows - 1] if len(files) > rows - 1 else files
            lines += [file.line(now, columns) for file in shown]
            if len(files) > len(shown):
                lines.append(f"  and {len(files) - len(shown)} more file(s)")
        self.block.show(lines)


REFRESH = 0.5  # seconds between redraws
SPEED_WINDOW = 5.0  # seconds of history behind a speed (and so an ETA)
SMALL_FILE = 1024 * 1024  # no line of its own below this: it would only flicker


class _File:
    """One line: a name, bytes done of a size, the recent speed and what that leaves."""

    def __init__(self, label: str, size: int | None, have: int = 0):
        self.label = label
        self.size = size
        self.done = have
        self.phase: str | None = None
        self.samples: deque[tuple[float, int]] = deque([(time.monotonic(), have)])

    def resumed(self, n: int) -> None:
        """Bytes that were there before (a resumed .part, a file already in place): counted
        as done, but not as speed."""
        self.done += n
        self.samples = deque((t, d + n) for t, d in self.samples)

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        self.samples.append((now, self.done))
        while len(self.samples) > 2 and self.samples[1][0] < now - SPEED_WINDOW:
            self.samples.popleft()

    def speed(self, now: float) -> float | None:
        start, first = self.samples[0]
        if now - start < 0.5:
            return None
        return (self.done - first) / (now - start)

    def line(self, now: float, columns: int, note: str = "") -> str:
        speed = self.speed(now)
        size = human_size(self.size) if self.size else "?"
        percent = f"{min(100, 100 * self.done // self.size):3d}%" if self.size else "   ?"
        if self.phase == "verifying":
            rate, eta = "verifying", ""
        elif self.phase == "waiting":
            rate, eta = "waiting", ""
        else:
            rate = f"{human_size(int(speed))}/s" if speed else "-"
            eta = _eta((self.size - self.done) / speed) if speed and self.size else "ETA -"
        tail = f" {percent} {human_size(self.done)}/{size} {rate:>11} {eta:<9}"
        tail += f" {note}" if note else ""
        room = max(8, columns - len(tail))
        return f"{elide_path(self.label, room):<{room}}{tail}".rstrip()


def elide_path(path: str, width: int) -> str:
    """A path in at most `width` characters: leading folders go first ("…/unet/x"), as the
    end tells two files of one name apart; then the middle of what is left."""
    parts = path.split("/")
    while len("/".join(parts)) > width and len([p for p in parts if p != "…"]) > 2:
        parts = ["…", *parts[2:]] if parts[0] == "…" else ["…", *parts[1:]]
    return elide("/".join(parts), width)


def _eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"ETA {hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"ETA {rest // 60}:{rest % 60:02d}"


def make_progress(enabled: bool | None, expected_total: int, labels: dict[int, str] | None = None) -> _Totals:
    """Live lines when asked for or on a terminal; a periodic log line otherwise. `labels`:
    what each download is called (by id), its path under the models folder."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return TerminalProgress(expected_total, labels) if enabled else LogProgress(expected_total)
