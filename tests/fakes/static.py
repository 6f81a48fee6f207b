"""A static file server over a folder (what serves a mirror written by `provision mirror`):
every request sees the folder as it is now; Range as the CDN fake answers it, with its faults
and its count of body bytes. `die_after_fault`: once a fault has cut a body, the server is gone
for every later request (a mirror that goes down in the middle of a run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .cdn import FakeCDN, Fault
from .server import Handler


@dataclass
class StaticFolder(FakeCDN):
    root: Path = field(default_factory=Path)
    die_after_fault: bool = False
    dead: bool = False
    reject_authorization: bool = False  # a header that reaches it is seen in `requests` instead

    def handle(self, h: Handler, path: str, query: dict) -> None:
        if self.dead:
            self._end(h, reset=True)
            return
        file = self.root / path.lstrip("/")
        if ".." in Path(path).parts or not file.is_file():
            h.reply(404, b"no such file")
            return
        self.files[path] = self.files.get(path) or self.add(path, file.read_bytes())
        self.files[path].data = file.read_bytes()  # the folder as it is now
        with self.lock:
            faulted = bool(self.faults.get(path))
        super().handle(h, path, query)
        if faulted and self.die_after_fault:
            self.dead = True

    def cut(self, path: str, at: int) -> None:
        """The next answer for `path` resets the connection after `at` body bytes."""
        self.fault(path, Fault(reset_at=at))
