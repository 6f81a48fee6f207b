"""A machine-readable picture of a run as it goes: `<workspace>/.provision/progress.json`, for the
container's portal (`/.gateway/`) and anything else that wants to show where a run is.

Rewritten atomically about once a second while files move, and once more at the end:

    {"pid": 12, "started": 1765000000.0, "updated": ..., "finished": false,
     "items": [{"item": "lora/detail", "state": "downloading", "size": 151000000, "done": 42000000,
                "speed": 9100000.0, "eta": 12.0, "reason": null}, ...],
     "total": {"size": ..., "done": ..., "speed": ..., "eta": ...}}

An item is `queued`, `downloading`, `verified` (this run put it in place), `in place` (an earlier
run did) or `failed` (with the reason the log gives). Speeds are bytes per second over the last
SPEED_WINDOW seconds; `eta` is null while the speed or the size is unknown. It wraps the run's own
progress display (bars or log lines) and passes every event on to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import deque
from pathlib import Path

from . import paths
from .download import Download
from .engine import Progress

INTERVAL = 1.0
SPEED_WINDOW = 10.0


def progress_path(workspace: Path) -> Path:
    return paths.state_dir(workspace) / "progress.json"


class _Rate:
    """Bytes per second over the last SPEED_WINDOW seconds."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, done: int) -> None:
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] > SPEED_WINDOW:
            self.samples.popleft()

    def speed(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0


class ProgressFile(Progress):
    def __init__(self, inner: Progress, workspace: Path, work: list):
        self.inner, self.work = inner, work  # run.py's _Work entries, read as they change
        self.path = progress_path(workspace)
        self.lock = threading.Lock()
        self.done: dict[int, int] = {}  # id(download) -> bytes on disk
        self.started_files: set[int] = set()
        self.rates: dict[int, _Rate] = {}  # id(entry) -> its rate
        self.total_rate = _Rate()
        self.started = time.time()
        self.stopped = threading.Event()
        self._try_write(finished=False)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    # -- the engine's events, passed on ------------------------------------------------------
    def file_started(self, download: Download, total: int | None, have: int) -> None:
        with self.lock:
            self.started_files.add(id(download))
            self.done[id(download)] = have
        self.inner.file_started(download, total, have)

    def advance(self, download: Download, n: int) -> None:
        with self.lock:
            self.done[id(download)] = self.done.get(id(download), 0) + n
        self.inner.advance(download, n)

    def file_waiting(self, download: Download, waiting: bool) -> None:
        self.inner.file_waiting(download, waiting)

    def file_verifying(self, download: Download) -> None:
        self.inner.file_verifying(download)

    def already_done(self, n: int) -> None:
        """A file in place and verified: done before this run, for the terminal's total."""
        self.inner.already_done(n)  # type: ignore[attr-defined]

    def file_finished(self, download: Download) -> None:
        self.inner.file_finished(download)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self._try_write(finished=True)
        self.inner.close()  # type: ignore[attr-defined]

    # -- the file ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self.stopped.wait(INTERVAL):
            self._try_write(finished=False)

    def _try_write(self, finished: bool) -> None:
        """The picture is for watching, never a reason to fail a run: on a full disk or a
        read-only state folder the portal shows the last picture that could be written."""
        with contextlib.suppress(OSError):
            self._write(finished)

    def _item(self, entry, now: float) -> dict:
        size = sum(d.expected_size or 0 for d in entry.downloads) or None
        with self.lock:
            done = sum(self.done.get(id(d), 0) for d in entry.downloads)
            started = any(id(d) in self.started_files for d in entry.downloads)
        rate = self.rates.setdefault(id(entry), _Rate())
        if entry.in_place is not None:
            state = "in place"
        elif entry.error:
            state = "failed"
        elif entry.fetching and len(entry.statuses) == entry.fetching:
            state, done = "verified", size or done
        elif started:
            state = "downloading"
            rate.add(now, done)
        else:
            state = "queued"
        speed = rate.speed() if state == "downloading" else 0.0
        eta = (size - done) / speed if state == "downloading" and size and speed > 0 else None
        return {
            "item": entry.item.key,
            "state": state,
            "size": size,
            "done": done,
            "speed": round(speed, 1),
            "eta": None if eta is None else round(eta, 1),
            "reason": entry.error,
        }

    def _write(self, finished: bool) -> None:
        now = time.time()
        items = [self._item(entry, now) for entry in self.work]
        counted = [i for i in items if i["state"] != "in place"]
        size = sum(i["size"] or 0 for i in counted)
        done = sum(i["done"] for i in counted)
        self.total_rate.add(now, done)
        speed = 0.0 if finished else self.total_rate.speed()
        eta = (size - done) / speed if speed > 0 and size > done else None
        picture = {
            "pid": os.getpid(),
            "started": self.started,
            "updated": now,
            "finished": finished,
            "items": items,
            "total": {
                "size": size,
                "done": done,
                "speed": round(speed, 1),
                "eta": None if eta is None else round(eta, 1),
            },
        }
        paths.write_atomically(self.path, json.dumps(picture))
