"""A content-addressed mirror, asked before a file's source: a fleet downloads each model once.

`--mirror URL` (or `PROVISION_MIRROR`) names an http(s) URL (any static file server, a public
S3 or R2 bucket) or a local folder (a shared volume), laid out as `provision mirror DIR` writes
it (mirrorcli.py): `<URL>/sha256/<hex>`, and `<URL>/git-blob/<hex>` for the Hub's small files
a lock pins by their git blob id. Every file whose hash the lock or the source publishes is asked
there first, through the same engine as any download (size and hash checked, then the atomic
rename), with no header of its source: no token ever reaches the mirror. When the mirror lacks
the file, is down, or serves other bytes, the file comes from its source after a warning naming
the mirror; a mirror that stops answering is not asked again during the run. A local folder is
read through a `file://` adapter, so it resumes and verifies exactly like HTTP.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import os
import re
import threading
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests
from requests.adapters import BaseAdapter

from .config import ConfigError
from .download import Checksum, Download, FetchError
from .engine import Engine, FetchResult, Progress
from .http import new_session
from .records import VerifiedRecords
from .report import ItemResult
from .retry import RetryPolicy
from .secrets import without_secrets

log = logging.getLogger("provision")

# Where a file of a run came from (the report's `fetched_from`).
FROM_MIRROR, FROM_SOURCE, FROM_DISK = "mirror", "source", "disk"
# The mirror's folders, by the kind of hash that names a file in them.
FOLDERS = {"sha256": "sha256", "git-sha1": "git-blob"}
# A mirror is one hop on a network people control: two tries, then the source.
MIRROR_ATTEMPTS = 2


def address(checksum: Checksum) -> str:
    """A file's path inside a mirror: `sha256/<hex>` or `git-blob/<hex>`."""
    return f"{FOLDERS[checksum.algorithm]}/{checksum.value}"


@dataclass(frozen=True)
class Mirror:
    base: str  # an http(s) URL or a file:// URL of an absolute folder, without a trailing "/"

    @classmethod
    def parse(cls, text: str) -> Mirror:
        """`--mirror` as given: an http(s) URL or a folder; ConfigError says what is wrong."""
        scheme = urlsplit(text).scheme.lower()
        if scheme in ("http", "https"):
            if not urlsplit(text).hostname:
                raise ConfigError([f"--mirror {without_secrets(text)}: no host in the URL"])
            return cls(text.rstrip("/"))
        if scheme and scheme != "file":
            raise ConfigError(
                [f"--mirror {without_secrets(text)}: give an http(s) URL or a folder, not a {scheme}: URL"]
            )
        folder = Path(unquote(urlsplit(text).path) if scheme == "file" else text).absolute()
        if not folder.is_dir():
            raise ConfigError(
                [f"--mirror {folder}: no such folder (mount the shared volume, or give an http(s) URL)"]
            )
        return cls(folder.as_uri().rstrip("/"))

    @property
    def shown(self) -> str:
        """The mirror as logs name it: no `user:password@`, no secret query parameter."""
        return without_secrets(self.base)

    def url(self, checksum: Checksum) -> str:
        return f"{self.base}/{address(checksum)}"


class MirrorFirst:
    """Fetches a file from the mirror when it can, else from its source (`engine`): the hook
    run.py calls instead of `engine.fetch`. Thread-safe: the run's workers share it."""

    def __init__(self, mirror: Mirror, engine: Engine, records: VerifiedRecords, retry: RetryPolicy):
        self.mirror = mirror
        self.source = engine
        policy = dataclasses.replace(retry, attempts=min(retry.attempts, MIRROR_ATTEMPTS))
        self.engine = Engine(
            records,
            connections=engine.per_file,  # its own slots are replaced by the source engine's below
            per_file=engine.per_file,
            retry=policy,
            timeout=engine.timeout,
            verify=engine.verify,
            force=engine.force,
            session_factory=_session_with_files,
        )
        self.engine.slots = engine.slots  # one cap on connections for both
        self.records = records
        self._down: str | None = None  # why the mirror is not asked any more in this run
        self._lock = threading.Lock()

    def fetch(self, download: Download, progress: Progress | None = None) -> tuple[FetchResult, str]:
        """The file, and where it came from: FROM_MIRROR, FROM_SOURCE or FROM_DISK (in place)."""
        checksum = download.checksum
        if checksum is None or not checksum.value or self._down:
            return self._from_source(download, progress)
        refusal: list[int] = []  # a 4xx from the mirror: it has no copy (not: it is down)

        def refused(status: int) -> str:
            refusal.append(status)
            return f"the mirror answered {status}"

        mirrored = Download(
            url=self.mirror.url(checksum),
            dest=download.dest,
            size=download.size,
            checksum=checksum,
            size_hint=download.size_hint,
            headers={},  # nothing of the source's (tokens, cookies) goes to the mirror
            identity=f"mirror:{address(checksum)}",  # its own .part: never stitched onto the source's
            explain=refused,
        )
        try:
            result = self.engine.fetch(mirrored, progress)
        except FetchError as err:
            if self.engine.cancelled.is_set():
                raise  # Ctrl-C or SIGTERM: nothing falls back
            self._fell_back(download, str(err), refusal, err.gave_up)
            return self._from_source(download, progress)
        if result.status == "skipped":
            return result, FROM_DISK
        # Recorded under the source's identity, as if its source had served it.
        self.records.store(download.dest, download.identity, checksum)
        return result, FROM_MIRROR

    def _from_source(self, download: Download, progress: Progress | None) -> tuple[FetchResult, str]:
        result = self.source.fetch(download, progress)
        return result, FROM_DISK if result.status == "skipped" else FROM_SOURCE

    def _fell_back(self, download: Download, error: str, refusal: list[int], gave_up: bool) -> None:
        name = download.dest.name
        if refusal:
            why = f"has no copy of it ({refusal[0]})"
        elif not gave_up:  # it answered, with another size or hash
            why = f"served other bytes ({error.split(';')[0]})"
        else:  # connections refused or cut, timeouts, 5xx: every try failed
            with self._lock:
                first = self._down is None
                self._down = error
            why = f"is not answering ({error})"
            if first:
                log.warning(
                    f"warning: the mirror {self.mirror.shown} {why}: this run asks the sources for"
                    " every file left"
                )
                return
        log.warning(f"warning: {name}: the mirror {self.mirror.shown} {why}: downloading it from its source")

    def cancel(self) -> list[Path]:
        return self.engine.cancel()

    def close(self) -> None:
        self.engine.close()


# --- a local folder as a mirror -------------------------------------------------------------------


def _session_with_files() -> requests.Session:
    session = new_session()
    session.mount("file://", LocalFiles())
    return session


_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class LocalFiles(BaseAdapter):
    """`file://` URLs for requests, answering as a static file server would: 200, 206 for a
    Range, 404, 416. Only for the mirror's sessions (a config cannot name a local file)."""

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        path = Path(unquote(urlsplit(request.url).path))
        response = requests.Response()
        response.request, response.url = request, request.url
        try:
            file = open(path, "rb")  # noqa: SIM115  (the response owns it; closed with it)
            stat = os.fstat(file.fileno())
        except OSError as err:
            response.status_code = 404 if isinstance(err, FileNotFoundError | IsADirectoryError) else 403
            response.reason = err.strerror or "error"
            response.raw = BytesIO(b"")
            return response
        size, start, end = stat.st_size, 0, stat.st_size - 1
        response.status_code, response.reason = 200, "OK"
        response.headers["Accept-Ranges"] = "bytes"
        response.headers["Last-Modified"] = email.utils.formatdate(
            os.fstat(file.fileno()).st_mtime, usegmt=True
        )
        match = _RANGE.match(request.headers.get("Range", ""))
        if match:
            start = int(match[1])
            end = min(int(match[2]) if match[2] else size - 1, size - 1)
            if start >= size:
                file.close()
                response.status_code, response.reason = 416, "Range Not Satisfiable"
                response.headers["Content-Range"] = f"bytes */{size}"
                response.raw = BytesIO(b"")
                return response
            response.status_code, response.reason = 206, "Partial Content"
            response.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        file.seek(start)
        response.headers["Content-Length"] = str(end - start + 1)
        response.raw = _Limited(file, end - start + 1)
        return response

    def close(self) -> None:
        pass


class _Limited:
    """A file's bytes from its current offset, `left` of them: a response body."""

    def __init__(self, file, left: int):
        self.file, self.left = file, left

    def readinto(self, view: memoryview) -> int:
        if self.left <= 0:
            return 0
        n = self.file.readinto(memoryview(view)[: min(len(view), self.left)])
        self.left -= n
        return n

    def read(self, amount: int | None = None, **_kw) -> bytes:
        data = self.file.read(self.left if amount is None else min(amount, self.left))
        self.left -= len(data)
        return data

    def stream(self, amount: int = 65536, **_kw):
        while data := self.read(amount):
            yield data

    def close(self) -> None:
        self.file.close()


def shown_fetched_from(results: list[ItemResult], mirror: Mirror) -> list[str]:
    """Lines for the end of a run: where each item's files came from."""
    lines = []
    for result in results:
        origins = result.fetched_from or {}
        counts: dict[str, list[str]] = {}
        for path, origin in origins.items():
            counts.setdefault(origin, []).append(path)
        if not counts:
            continue
        parts = []
        for origin, what in ((FROM_MIRROR, f"the mirror {mirror.shown}"), (FROM_SOURCE, "its source")):
            files = counts.get(origin, [])
            if len(files) == 1 and len(origins) == 1:
                parts.append(f"from {what}")
            elif files:
                names = ", ".join(Path(f).name for f in files[:3]) + (" ..." if len(files) > 3 else "")
                parts.append(f"{len(files)} from {what} ({names})")
        if in_place := counts.get(FROM_DISK):
            parts.append(f"{len(in_place)} in place" if len(origins) > 1 else "in place")
        lines.append(f"  {result.category}.{result.name}: {', '.join(parts)}")
    return lines


def for_run(mirror: str | None, engine: Engine, records: VerifiedRecords, retry: RetryPolicy):
    """The run's fetch function: the mirror first when one is given, else the engine alone."""
    if not mirror:
        return None
    return MirrorFirst(Mirror.parse(mirror), engine, records, retry)
