"""The values the config stage hands to the sources: what to fetch and where it goes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .download import Checksum
from .secrets import without_secrets


@dataclass(frozen=True)
class HuggingFaceSpec:
    repo: str
    file: str | None  # None: the whole repository (filtered by include/exclude)
    revision: str = "main"
    gated: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class CivitaiSpec:
    version_id: int | None
    model_id: int | None  # resolved to the newest version when version_id is None
    id_from: str  # which config key or URL gave the id, shown in dry-run
    file_type: str | None = None  # e.g. "Model", "Pruned Model", "VAE"
    file_format: str | None = None  # e.g. "SafeTensor", "PickleTensor"


@dataclass(frozen=True)
class UrlSpec:
    url: str
    # Values may hold expanded ${ENV} secrets: never shown in a repr.
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    sha256: str | None = None  # given in the config: checked like a source's published one
    size: int | None = None


@dataclass(frozen=True)
class GDriveSpec:
    file_id: str


Spec = HuggingFaceSpec | CivitaiSpec | UrlSpec | GDriveSpec

SOURCE_NAMES: dict[type, str] = {
    HuggingFaceSpec: "huggingface",
    CivitaiSpec: "civitai",
    UrlSpec: "url",
    GDriveSpec: "gdrive",
}


@dataclass(frozen=True)
class LockedFile:
    """One file as a lock pins it (lockfile.py reads and writes them): a value the plan's items
    carry, so the plan needs nothing of the lock stage."""

    item: str  # "category/name"
    path: str  # relative to the models folder, "/"-separated
    size: int | None  # None only for CivitAI files not on disk: it publishes an approximate size
    source: str
    sha256: str | None = None
    git_blob: str | None = None  # the Hub's small (non-LFS) files: it publishes their git blob id
    sha256_from: str | None = None
    pin: dict[str, str | int] = field(default_factory=dict, compare=False)
    dest: Path | None = field(default=None, compare=False)  # set when attached to a plan's item

    @property
    def checksum(self) -> Checksum:
        """What the file is checked against: its sha256, else the Hub's git blob id."""
        return Checksum("sha256", self.sha256) if self.sha256 else Checksum("git-sha1", self.git_blob or "")


@dataclass
class Item:
    """One model entry of the config, with where it will land."""

    category: str
    name: str
    spec: Spec
    folder: Path  # absolute destination folder
    filename: str | None  # None until a server names the file (or for whole repositories)
    # The files a lock (lockfile.py) pins this item to: fetched as locked, without resolving.
    locked: tuple[LockedFile, ...] | None = None

    @property
    def source(self) -> str:
        return SOURCE_NAMES[type(self.spec)]

    @property
    def key(self) -> str:
        """ "category/name": what --only matches and what a lock names the item by."""
        return f"{self.category}/{self.name}"

    @property
    def table(self) -> str:
        return f"models.{self.category}.{self.name}"

    @property
    def dest(self) -> Path:
        """The destination file, or its folder while the name is not yet known."""
        return self.folder / self.filename if self.filename else self.folder

    @property
    def detail(self) -> str | None:
        """How the item was read, where a dry-run should say so (CivitAI: which key gave the id)."""
        return f"CivitAI id from {self.spec.id_from}" if isinstance(self.spec, CivitaiSpec) else None

    @property
    def asked(self) -> str:
        """What the config asks for, as one stable string (no secret, no host path)."""
        spec = self.spec
        if isinstance(spec, HuggingFaceSpec):
            what = f"hf:{spec.repo}@{spec.revision}:{spec.file or '*'}:{','.join(spec.include)}:"
            return what + ",".join(spec.exclude)
        if isinstance(spec, CivitaiSpec):
            fields = (spec.version_id, spec.model_id, spec.file_type, spec.file_format)
            return "civitai:" + ":".join("" if value is None else str(value) for value in fields)
        if isinstance(spec, UrlSpec):
            return f"url:{without_secrets(spec.url)}:{spec.sha256 or ''}"
        return f"gdrive:{spec.file_id}"

    @property
    def identity(self) -> str:
        """What the config asks for, where it goes, and the lock entry it follows: a file
        recorded as done for this identity needs no request on the next run (records.py,
        ItemRecords); a new lock entry makes it a new identity."""
        pinned = f" locked:{lock_digest(self.locked)}" if self.locked is not None else ""
        return f"{self.asked} -> {self.dest}{pinned}"

    @property
    def is_repository(self) -> bool:
        return isinstance(self.spec, HuggingFaceSpec) and self.spec.file is None


def lock_digest(files: tuple[LockedFile, ...]) -> str:
    text = "\n".join(f"{f.path}:{f.size}:{f.sha256 or f.git_blob}:{sorted(f.pin.items())}" for f in files)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LockedExtension:
    """An extension as a lock pins it (lockfile.py): the exact bytes and the exact packages."""

    name: str
    archive_sha256: str  # of the archive as downloaded
    tree_sha256: str  # of the files unpacked (extensions.tree_hash): what is checked on disk
    commit: str | None = None  # a GitHub repository's commit, as its archive states it
    # Its Python packages that the image lacks, as uv writes them: "name==version --hash=sha256:...".
    packages: tuple[str, ...] = ()


@dataclass
class Extension:
    """One `[extensions.NAME]` of the config: an SD.Next extension unpacked into
    `<workspace>/sdnext/extensions/NAME`, its Python requirements into the overlay (overlay.py)."""

    name: str
    url: str  # as the config gives it: a GitHub repository or an archive
    commit: str | None  # a GitHub repository: the commit (40 hex digits)
    sha256: str | None  # an archive URL: its sha256
    # None: the extension's own requirements.txt; else exactly these (PEP 508 lines).
    requirements: tuple[str, ...] | None = None
    github: tuple[str, str] | None = None  # (owner, repo) when `url` is a GitHub repository
    locked: LockedExtension | None = None  # what the lock pins it to, when it does

    @property
    def key(self) -> str:
        return f"extensions/{self.name}"

    @property
    def table(self) -> str:
        return f"extensions.{self.name}"

    @property
    def asked(self) -> str:
        """What the config asks for, as one stable string: the lock's `request`."""
        url = without_secrets(self.url)  # written into the lock and the records
        wanted = f"{url}@{self.commit}" if self.commit else f"{url}#sha256={self.sha256}"
        requirements = (
            "requirements.txt" if self.requirements is None else json.dumps(list(self.requirements))
        )
        return f"extension:{wanted}:{requirements}"


@dataclass
class Plan:
    models_root: Path
    items: list[Item]
    warnings: list[str] = field(default_factory=list)
    extensions: list[Extension] = field(default_factory=list)
