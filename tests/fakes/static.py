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
        with self.lock:
            # The request that meets a fault is the last one served: any later one, even one
            # racing it, finds the server gone.
            gone = self.dead
            if self.die_after_fault and self.faults.get(path):
                self.dead = True
        if gone:
            self._end(h, reset=True)
            return
        file = self.root / path.lstrip("/")
        if ".." in Path(path).parts or not file.is_file():
            h.reply(404, b"no such file")
            return
        self.add(path, file.read_bytes())  # the folder as it is now
        super().handle(h, path, query)

    def cut(self, path: str, at: int) -> None:
        """The next answer for `path` resets the connection after `at` body bytes."""
        self.fault(path, Fault(reset_at=at))
