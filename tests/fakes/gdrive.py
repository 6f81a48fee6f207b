"""Google Drive as FACTS.md describes it: /uc?id= answers the file (with Content-Disposition)
for small files, a one-line virus-scan confirm form for large ones, or the quota page."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

from .server import FakeServer, Handler

CONFIRM_PAGE = (
    "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
    '<form id="download-form" action="{action}" method="get">'
    '<input type="submit" value="Download anyway"/>'
    '<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">'
    '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="1234-abcd">'
    "</form></body></html>"
)
QUOTA_PAGE = (
    '<!DOCTYPE html><html><body><div class="uc-main">\n'
    '<p class="uc-error-caption">Sorry, you can\'t view or download this file at this time.</p>\n'
    '<p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently.'
    " Please try accessing the file again later.</p>\n</div></body></html>"
)


@dataclass
class DriveFile:
    name: str
    data: bytes
    mode: str = "direct"  # direct | confirm | quota | private


@dataclass
class FakeDrive(FakeServer):
    files: dict[str, DriveFile] = field(default_factory=dict)
    faults: list[int] = field(default_factory=list)  # statuses for the next requests (503, 429)

    def handle(self, h: Handler, path: str, query: dict) -> None:
        with self.lock:
            fault = self.faults.pop(0) if self.faults else None
        if fault:
            h.reply(fault, b"<html>try again later</html>", content_type="text/html")
            return
        file = self.files.get(query.get("id", ""))
        if file is None:
            h.reply(404, b"<html>not found</html>", content_type="text/html")
            return
        if path == "/uc":
            if file.mode == "private":
                h.reply(403, b"<html>Access denied</html>", content_type="text/html")
                return
            if file.mode == "quota":
                h.reply(200, QUOTA_PAGE.encode(), content_type="text/html; charset=utf-8")
                return
            if file.mode == "confirm":
                page = CONFIRM_PAGE.format(action=f"{self.url}/download", id=query["id"])
                h.reply(200, page.encode(), content_type="text/html; charset=utf-8")
                return
        if path in ("/uc", "/download"):
            if path == "/download" and query.get("confirm") != "t":
                h.reply(400, b"no confirm")
                return
            self.serve_file(h, file)
            return
        h.reply(404, b"not found")

    def serve_file(self, h: Handler, file: DriveFile) -> None:
        h.reply(
            200,
            file.data,
            {
                "Content-Disposition": f"attachment; filename=\"{file.name}\"; filename*=UTF-8''{quote(file.name)}"
            },
            content_type="application/octet-stream",
        )
