"""models.lock: what every item of a config resolved to, so every host installs the same bytes.

`provision lock CONFIG` writes it beside the config (`models.toml` -> `models.lock`). One
`[[item]]` per config item records what the config asked for; one `[[file]]` per file what it
resolved to: its path under the models folder, size, sha256 (or, for the Hub's small files, the
git blob id the Hub publishes instead) and the source's own identity of it (Hub commit, CivitAI
file id, a URL's ETag). A run whose items match their `[[item]]` fetches exactly those files
and checks those hashes; an item that changed in the config is resolved again.

This module is the format and the comparison with a plan; it makes no request. The sources turn
a locked item into downloads (sources/locked.py); run.py reports what new items resolved to.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from .config import ConfigError, parse_toml
from .configsource import is_remote, read_config
from .download import Checksum, Download
from .paths import write_atomically
from .plan import Item, LockedExtension, LockedFile, Plan, UrlSpec

LOCK_VERSION = 1
# Where each hash came from (the `sha256_from` key): said in the lock and in the output.
FROM_SOURCE = "source"  # published by the source (the Hub's LFS sha256, CivitAI's SHA256)
FROM_CONFIG = "config"  # written in the config (url items' sha256)
FROM_DISK = "disk"  # no source publishes one: hashed from the file verified on disk
FROM_DOWNLOAD = "download"  # no source publishes one: downloaded to hash it
# The identity each source gives a file, in the order the lock writes it.
PIN_KEYS = {
    "huggingface": ("repo", "file", "commit"),
    "civitai": ("model_id", "version_id", "file_id"),
    "url": ("url", "final_url", "etag", "last_modified"),
    "gdrive": ("file_id",),
}


@dataclass
class Lock:
    items: dict[str, str]  # "category/name" -> what the config asked for (`request`)
    files: list[LockedFile]
    # "NAME" -> (what the config asked for, what it resolved to): `[[extension]]` tables.
    extensions: dict[str, tuple[str, LockedExtension]] = field(default_factory=dict)

    def files_of(self, name: str) -> tuple[LockedFile, ...]:
        return tuple(f for f in self.files if f.item == name)


@dataclass
class LockDiff:
    """How a config differs from its lock: item names."""

    added: list[str]
    changed: list[str]
    removed: list[str]

    @property
    def up_to_date(self) -> bool:
        return not (self.added or self.changed or self.removed)

    def describe(self) -> str:
        parts = [
            f"{what}: {', '.join(names)}"
            for what, names in (("added", self.added), ("changed", self.changed), ("removed", self.removed))
            if names
        ]
        return "; ".join(parts)


def request(item: Item, models_root: Path) -> str:
    """What the config asks of an item, independent of the host: the lock's `request`."""
    return f"{item.asked} -> {item.dest.relative_to(models_root).as_posix()}"


def compare(lock: Lock, plan: Plan) -> LockDiff:
    asked = {i.key: request(i, plan.models_root) for i in plan.items}
    asked.update({e.key: e.asked for e in plan.extensions})
    lock_items = {**lock.items, **{f"extensions/{n}": asked_ for n, (asked_, _) in lock.extensions.items()}}
    return LockDiff(
        added=[n for n in asked if n not in lock_items],
        changed=[n for n in asked if n in lock_items and lock_items[n] != asked[n]],
        removed=[n for n in lock_items if n not in asked],
    )


def attach(plan: Plan, lock: Lock, *, except_names: set[str] | None = None) -> None:
    """Pin each item whose request is unchanged to its locked files (`Item.locked`), except the
    named ones (to be resolved again). A locked path outside its item's folder is refused."""
    for item in plan.items:
        name = item.key
        if lock.items.get(name) != request(item, plan.models_root) or name in (except_names or set()):
            continue
        files = tuple(
            dataclasses.replace(f, dest=plan.models_root.joinpath(*PurePosixPath(f.path).parts))
            for f in lock.files_of(name)
        )
        for file in files:
            dest = file.dest
            if item.is_repository:
                inside = item.folder in dest.parents
            else:  # a name from the config, or one the server gave inside the item's folder
                inside = dest == item.dest if item.filename else dest.parent == item.folder
            if not inside:
                raise ConfigError(
                    [f"lock entry {name}: path {file.path!r} is not where the item goes: lock again"]
                )
        item.locked = files
    for extension in plan.extensions:
        asked, locked = lock.extensions.get(extension.name, (None, None))
        if asked == extension.asked and extension.key not in (except_names or set()):
            extension.locked = locked


def locked_files(
    item: Item, models_root: Path, files: list[tuple[Download, Checksum | None, str | None]]
) -> list[LockedFile]:
    """What a run found for an item (run.Outcome.resolved) as lock entries: the published hash,
    else the sha256 of the file verified on disk or just downloaded."""
    out = []
    for download, checksum, status in files:
        sha256 = git_blob = how = None
        published = download.checksum
        if published is not None and published.algorithm == "git-sha1":
            git_blob = published.value
        elif published is not None:
            sha256, how = published.value, FROM_CONFIG if isinstance(item.spec, UrlSpec) else FROM_SOURCE
        elif checksum is not None and checksum.algorithm == "sha256":
            sha256, how = checksum.value, FROM_DISK if status == "skipped" else FROM_DOWNLOAD
        else:
            raise ValueError(f"{download.dest}: no hash to lock")  # lock_only fetches these
        size = download.size
        if size is None and status is not None and download.dest.exists():
            size = download.dest.stat().st_size
        out.append(
            LockedFile(
                item=item.key,
                path=download.dest.relative_to(models_root).as_posix(),
                size=size,
                source=item.source,
                sha256=sha256,
                git_blob=git_blob,
                sha256_from=how,
                pin=download.pin,
            )
        )
    return out


def merged(
    lock: Lock | None,
    plan: Plan,
    resolved: dict[str, list[LockedFile]],
    extensions: dict[str, LockedExtension] | None = None,
) -> Lock:
    """The lock for this plan: each item's newly resolved files, else its locked ones; items no
    longer in the config are dropped. Items with neither (they failed) are left out. The same for
    extensions (`extensions`: those installed by this run, by name)."""
    items: dict[str, str] = {}
    files: list[LockedFile] = []
    for item in plan.items:
        name = item.key
        if name in resolved:
            chosen = resolved[name]
        elif item.locked is not None:
            chosen = list(item.locked)
        else:
            continue
        items[name] = request(item, plan.models_root)
        files.extend(sorted(chosen, key=lambda f: f.path))
    pinned: dict[str, tuple[str, LockedExtension]] = {}
    for extension in plan.extensions:
        locked = (extensions or {}).get(extension.name) or extension.locked
        if locked is not None:
            pinned[extension.name] = (extension.asked, locked)
    return Lock(items, files, pinned)


# --- where it lives ---------------------------------------------------------------------------


def default_lock_path(config: str) -> Path:
    """Beside a local config (`models.toml` -> `models.lock`); for a remote one, the same name
    in the working directory (`models.lock` for a link without a file name)."""
    if not is_remote(config):
        path = Path(config)
        return path.with_suffix(".lock") if path.suffix else path.with_name(path.name + ".lock")
    name = PurePosixPath(unquote(urlsplit(config).path)).name
    stem = PurePosixPath(name).stem if name.endswith(".toml") else "models"
    return Path.cwd() / f"{stem}.lock"


def read_lock(source: str, *, offline: bool = False) -> Lock:
    """A lock from a path or URL (the config's URL rules); ConfigError names what is wrong."""
    text, origin = read_config(source, offline=offline)
    data = parse_toml(text, origin)
    again = "write it again with `provision lock CONFIG`"
    if data.get("version") != LOCK_VERSION:
        raise ConfigError([f"{origin}: not a version {LOCK_VERSION} lock file: {again}"])
    try:
        items = {str(entry["name"]): str(entry["request"]) for entry in data.get("item", [])}
        files = [_locked_file(entry) for entry in data.get("file", [])]
        extensions = {
            str(entry["name"]): (str(entry["request"]), _locked_extension(entry))
            for entry in data.get("extension", [])
        }
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError([f"{origin}: a damaged lock entry ({err}): {again}"]) from None
    for file in files:
        parts = PurePosixPath(file.path).parts
        if file.item not in items or not parts or file.path.startswith("/") or ".." in parts:
            raise ConfigError([f"{origin}: entry {file.item}: bad path {file.path!r}: {again}"])
    return Lock(items, files, extensions)


def _locked_extension(entry: dict) -> LockedExtension:
    packages = entry.get("packages", [])
    if not isinstance(packages, list) or not all(
        isinstance(p, str) and "--hash=sha256:" in p for p in packages
    ):
        raise ValueError(f"extension {entry['name']}: packages must be pinned lines with their hashes")
    for key in ("archive_sha256", "tree_sha256"):
        if not isinstance(entry[key], str) or len(entry[key]) != 64:
            raise ValueError(f"extension {entry['name']}: {key}")
    return LockedExtension(
        name=str(entry["name"]),
        archive_sha256=entry["archive_sha256"],
        tree_sha256=entry["tree_sha256"],
        commit=entry.get("commit"),
        packages=tuple(packages),
    )


def _locked_file(entry: dict) -> LockedFile:
    source = str(entry["source"])
    size = entry.get("size")
    if source not in PIN_KEYS or not (size is None or (isinstance(size, int) and size >= 0)):
        raise ValueError(f"source {source!r}, size {size!r}")
    if not (entry.get("sha256") or entry.get("git_blob")):
        raise ValueError(f"{entry['path']}: neither sha256 nor git_blob")
    return LockedFile(
        item=str(entry["item"]),
        path=str(entry["path"]),
        size=size,
        source=source,
        sha256=entry.get("sha256"),
        git_blob=entry.get("git_blob"),
        sha256_from=entry.get("sha256_from"),
        pin={key: entry[key] for key in PIN_KEYS[source] if key in entry},
    )


def write_lock(path: Path, lock: Lock, config: str) -> None:
    write_atomically(path, render(lock, config))


def render(lock: Lock, config: str) -> str:
    """The lock as TOML: fixed key order, one table per item and per file, so a change of one
    item is a change of a few lines in a diff."""
    lines = [
        f"# Written by `provision lock` from {_shown_config(config)}; do not edit by hand.",
        "# `provision lock CONFIG --upgrade [--only PATTERN]` resolves again; commit it with the config.",
        f"version = {LOCK_VERSION}",
    ]
    for name, asked in lock.items.items():
        lines += ["", "[[item]]", f"name = {_toml(name)}", f"request = {_toml(asked)}"]
    for file in lock.files:
        values = {
            "item": file.item,
            "path": file.path,
            "size": file.size,
            "sha256": file.sha256,
            "git_blob": file.git_blob,
            "sha256_from": file.sha256_from,
            "source": file.source,
            **{key: file.pin.get(key) for key in PIN_KEYS[file.source]},
        }
        lines += ["", "[[file]]"]
        lines += [f"{key} = {_toml(value)}" for key, value in values.items() if value is not None]
    for name, (asked, locked) in lock.extensions.items():
        lines += ["", "[[extension]]", f"name = {_toml(name)}", f"request = {_toml(asked)}"]
        if locked.commit:
            lines.append(f"commit = {_toml(locked.commit)}")
        lines += [
            f"archive_sha256 = {_toml(locked.archive_sha256)}",
            f"tree_sha256 = {_toml(locked.tree_sha256)}",
        ]
        if locked.packages:
            lines += ["packages = [", *(f"  {_toml(p)}," for p in locked.packages), "]"]
    return "\n".join(lines) + "\n"


def _shown_config(config: str) -> str:
    from .secrets import without_secrets

    return without_secrets(config) if is_remote(config) else Path(config).name


def _toml(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    escaped = []
    for char in value:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'
