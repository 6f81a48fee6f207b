"""A package index with PyPI's simple API (PEP 503) over a folder of wheels: `/simple/NAME/`
lists the files with their `#sha256=` fragments, `/files/WHEEL` serves them. `tamper(name)`
serves a wheel with other bytes than the listing's hash says (a compromised mirror)."""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .server import FakeServer, Handler


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class FakePyPI(FakeServer):
    wheels: Path = field(default_factory=Path)
    tampered: set[str] = field(default_factory=set)

    @property
    def index_url(self) -> str:
        return f"{self.url}/simple"

    def tamper(self, filename: str) -> None:
        self.tampered.add(filename)

    def handle(self, h: Handler, path: str, query: dict) -> None:
        if path.startswith("/simple/"):
            project = normalize(path.removeprefix("/simple/").strip("/"))
            files = [
                w for w in sorted(self.wheels.glob("*.whl")) if normalize(w.name.split("-")[0]) == project
            ]
            if not files:
                h.reply(404, b"Not Found")
                return
            links = "".join(
                f'<a href="/files/{w.name}#sha256={hashlib.sha256(w.read_bytes()).hexdigest()}">{w.name}</a><br>\n'
                for w in files
            )
            body = f"<!DOCTYPE html><html><body>\n{links}</body></html>\n".encode()
            h.reply(200, body, content_type="text/html")
            return
        if path.startswith("/files/"):
            wheel = self.wheels / path.removeprefix("/files/")
            if "/" in path.removeprefix("/files/") or not wheel.is_file():
                h.reply(404, b"Not Found")
                return
            data = wheel.read_bytes()
            if wheel.name in self.tampered:  # still a valid wheel, with other bytes
                buffer = io.BytesIO(data)
                with zipfile.ZipFile(buffer, "a") as archive:
                    archive.comment = b"tampered"
                data = buffer.getvalue()
            h.reply(200, data, content_type="application/octet-stream")
            return
        h.reply(404, b"Not Found")
