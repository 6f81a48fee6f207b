"""The value a source hands to the engine: one file to fetch, where, and how to check it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # "sha256" or "git-sha1" (a git blob id, what the Hub publishes for small files)
    value: str  # lower-case hex

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.value}"


@dataclass
class Download:
    url: str
    dest: Path  # the final file name; nothing unverified ever sits here
    size: int | None = None  # exact size when the source publishes one (checked)
    checksum: Checksum | None = None
    size_hint: int | None = None  # approximate size (CivitAI's sizeKB): free-space checks only
    # Values may hold tokens: never shown in a repr. They go only to the URL's own host.
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    # A stable name for what this file is (repo@commit:path, civitai file id, URL): a file
    # recorded as verified for another identity is checked again.
    identity: str = ""
    # What the source resolved the file to, as the lock writes it (lockfile.PIN_KEYS): Hub repo,
    # file and commit; CivitAI model, version and file ids; a URL's final URL and ETag.
    pin: dict[str, str | int] = field(default_factory=dict)
    locked: bool = False  # fetched as a lock entry says: a mismatch is drift from the lock
    # Maps an HTTP status of the download request to a message a person can act on.
    explain: Callable[[int], str | None] | None = field(default=None, repr=False)

    @property
    def expected_size(self) -> int | None:
        return self.size if self.size is not None else self.size_hint


class FetchError(Exception):
    """The file cannot be fetched; the message says why and what to do. `gave_up`: every try
    failed without an answer to judge (refused, cut, timed out, 5xx): the server, not the file."""

    def __init__(self, message: str, gave_up: bool = False):
        super().__init__(message)
        self.gave_up = gave_up
