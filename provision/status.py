"""`provision status [CONFIG]`: the model folders as SD.Next will see them, and a health check.

Every file under `<workspace>/sdnext/models`, with whether a run verified it as it is now (size
and mtime of its record; with `--verify`, its bytes hashed again), which config item owns it
(from the items' records and the lock, when CONFIG is given), partial downloads with how far
they got and whose they are, and state files left beside no partial file; then every extension
provision installed (or the config declares), whether its files are as they came. Exit 1 when a
file or extension is missing, partial, changed since it was verified, or (with --verify) no longer
has its bytes; 0 when all is well. Reads only, never writes (`provision clean` removes stray state files).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from . import lockfile, paths
from .config import ConfigError
from .configsource import default_source
from .core import Provisioner
from .hashing import hash_file
from .ondisk import PARTIAL, OnDisk
from .partfile import PartFile
from .paths import safe_filename
from .plan import Item, LockedFile, Plan, UrlSpec
from .records import Record, workspace_records
from .report import WIDTH, columns, human_size

VERIFIED, UNVERIFIED, CHANGED, CORRUPT = "verified", "unverified", "changed", "corrupt"
MISSING, STRAY = "missing", "stray state"
# States a health check fails on (exit 1): the models are not what a run left in place.
UNHEALTHY = {CHANGED, CORRUPT, MISSING}
UNHEALTHY_LOCK = {"drifted", "missing"}


@dataclass
class FileStatus:
    path: str  # relative to the models folder
    size: int
    # "verified", "unverified" (never checked), "changed" (since it was verified), "corrupt"
    # (--verify: other bytes than verified), "partial N%", "stray state", "missing"
    state: str
    owner: str | None  # the config item's table, "-" when CONFIG is given and no item owns it
    # With the config's lock: "as locked", "drifted" (verified with other bytes, or changed since),
    # "unchecked" (never verified), "missing" (locked, not on disk), "-" (not in the lock).
    lock: str | None = None

    @property
    def healthy(self) -> bool:
        """In place as verified. A partial file is an item not in place yet, unless no item of
        the config owns it (then it is a leftover: listed, not a failure)."""
        unfinished = self.state.startswith(PARTIAL) and self.owner != "-"
        return not unfinished and self.state not in UNHEALTHY and (self.lock or "-") not in UNHEALTHY_LOCK


class _Owners:
    """Which config item a path belongs to: its records, its lock entries, its planned name,
    or the folder of a whole repository."""

    def __init__(self, items: list[Item], recorded: dict[str, list[str]]):
        self.exact: dict[str, str] = {}
        self.folders: list[tuple[Path, str]] = []
        self.named: dict[str, Path] = {}  # item table -> its file, where the name is known or guessed
        for item in items:
            for name in recorded.get(item.identity, []):
                self.exact[name] = item.table
            for file in item.locked or ():
                self.exact[str(file.dest)] = item.table
            if item.is_repository:
                self.folders.append((item.dest, item.table))
            elif item.filename:
                self.exact.setdefault(str(item.dest), item.table)
            elif isinstance(item.spec, UrlSpec):  # named by the server: most often the URL's own name
                guess = safe_filename(unquote(PurePosixPath(urlsplit(item.spec.url).path).name))
                if guess:
                    self.exact.setdefault(str(item.folder / guess), item.table)
                    self.named[item.table] = item.folder / guess

    def of(self, path: Path) -> str:
        if str(path) in self.exact:
            return self.exact[str(path)]
        return next((table for folder, table in self.folders if path.is_relative_to(folder)), "-")


def read_plan(workspace: Path, config: str | None, lock_file: str | None = None) -> Plan | None:
    """The config's plan with its lock attached (None without a config): read once, for the
    files and the extensions alike."""
    if not config:
        return None
    provisioner = Provisioner(workspace, dry_run=True, offline=True, lock_file=lock_file)
    plan = provisioner.plan(config)
    where = provisioner.lock_path(config)
    if lock_file or Path(where).exists():
        lockfile.attach(plan, lockfile.read_lock(where))
    return plan


def survey(workspace: Path, plan: Plan | None, *, verify: bool = False) -> list[FileStatus]:
    root = paths.models_root(workspace)
    verified, recorded = workspace_records(workspace)
    owned = plan is not None  # with a config, each file's owner is said
    items: list[Item] = plan.items if plan else []
    locked: dict[str, LockedFile] = {}
    if plan:
        for item in items:
            for file in item.locked or ():
                locked[str(file.dest)] = file
    owners = _Owners(items, recorded.items)
    has_lock = bool(locked)
    found = []
    for folder, _dirs, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = Path(folder) / name
            stat = path.stat()
            shown = str(path.relative_to(root))
            if name.endswith(".part.state"):
                base = path.with_name(name.removesuffix(".state"))
                if not base.exists():  # a state file beside no .part: left by a crash or a bug
                    owner = owners.of(base.with_name(base.name.removesuffix(".part"))) if owned else None
                    found.append(FileStatus(shown, stat.st_size, STRAY, owner, "-" if has_lock else None))
                continue
            if name.endswith(".part"):
                dest = path.with_name(name.removesuffix(".part"))
                part = PartFile(dest).peek(any_file=True)
                state = OnDisk(PARTIAL, part.done.covered()).label(part.total) if part else PARTIAL
                owner = owners.of(dest) if owned else None
                found.append(FileStatus(shown, stat.st_size, state, owner, "-" if has_lock else None))
                continue
            record = verified.lookup(path)
            pinned = locked.pop(str(path), None)
            state = _state(path, record, pinned, stat, verify)
            lock = _lock_state(pinned, record, stat, state) if has_lock else None
            found.append(FileStatus(shown, stat.st_size, state, owners.of(path) if owned else None, lock))
    for file in locked.values():  # locked, but not on disk
        owner = "models." + file.item.replace("/", ".")
        found.append(FileStatus(file.path, file.size or 0, MISSING, owner, "missing"))
    for item in items:  # recorded by a run, gone since; or never fetched (items without a lock)
        if item.locked is not None:
            continue
        names = recorded.items.get(item.identity)
        for name in names or []:
            if not Path(name).exists():
                found.append(FileStatus(_relative(Path(name), root), 0, MISSING, item.table))
        if names is None and not _something_at(item, owners):
            where = owners.named.get(item.table, item.dest)
            found.append(FileStatus(_relative(where, root), 0, MISSING, item.table))
    return found


@dataclass
class ExtensionStatus:
    name: str
    state: str  # "verified" (its files as they came), "changed" or "missing"
    commit: str | None
    packages: int  # how many packages of its own it has in the overlay

    @property
    def healthy(self) -> bool:
        return self.state == VERIFIED


def extension_survey(workspace: Path, declared: list[str]) -> list[ExtensionStatus]:
    """Every extension provision installed, and those the config declares (`declared`)."""
    from .extensions import Records, extensions_root, unchanged

    records = Records(workspace)
    found = []
    for name in sorted(set(records.data) | set(declared)):
        entry = records.data.get(name, {})
        folder = extensions_root(workspace) / name
        if not entry or not folder.is_dir():
            state = MISSING
        else:
            state = VERIFIED if unchanged(folder, records.files(name)) else CHANGED
        found.append(ExtensionStatus(name, state, entry.get("commit"), len(entry.get("packages", []))))
    return found


def _something_at(item: Item, owners: _Owners) -> bool:
    """Whether a file of this never-recorded item is on disk (then its row says how it is)."""
    if item.is_repository:
        return item.dest.is_dir() and any(p.is_file() for p in item.dest.rglob("*"))
    if item.filename:
        return item.dest.exists() or Path(f"{item.dest}.part").exists()
    return any(
        owners.of(Path(name)) == item.table and (Path(name).exists() or Path(f"{name}.part").exists())
        for name in owners.exact
    )


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _state(path: Path, record: Record | None, pinned: LockedFile | None, stat, verify: bool) -> str:
    """verified / unverified / changed; with `verify` the bytes are hashed against what a run
    verified (or the lock pins): verified or corrupt."""
    expected = record.checksum if record else (pinned.checksum if pinned else None)
    if verify and expected is not None:
        return VERIFIED if hash_file(path, expected.algorithm) == expected else CORRUPT
    if record is None:
        return UNVERIFIED
    return VERIFIED if record.unchanged(stat) else CHANGED


def _lock_state(pinned: LockedFile | None, record: Record | None, stat: os.stat_result, state: str) -> str:
    if pinned is None:
        return "-"
    if state == CORRUPT:
        return "drifted"
    if record is None:
        return "as locked" if state == VERIFIED else "unchecked"  # hashed by --verify
    return "as locked" if record.unchanged(stat) and record.checksum == pinned.checksum else "drifted"


def _shown(files: list[FileStatus], column: str) -> bool:
    return any(getattr(f, column) is not None for f in files)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="provision status", description=__doc__.splitlines()[0])
    parser.add_argument(
        "config", nargs="?", help="the config whose items own the files (default: $PROVISION_URL)"
    )
    parser.add_argument(
        "--workspace", type=Path, help="workspace folder (default: $WORKSPACE, else /workspace)"
    )
    parser.add_argument("--lock-file", help="the config's lock (default: beside it, models.lock)")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="hash every verified file again (finds bit rot; reads every byte)",
    )
    parser.add_argument("--json", action="store_true", help="the files and a summary as JSON on stdout")
    parser.add_argument("--wide", action="store_true", help="whole cells (default: rows fit 80 columns)")
    args = parser.parse_args(argv)
    workspace = Path(args.workspace or os.environ.get("WORKSPACE") or paths.DEFAULT_WORKSPACE).absolute()
    try:
        plan = read_plan(workspace, args.config or default_source(), args.lock_file)
        files = survey(workspace, plan, verify=args.verify)
        extensions = extension_survey(workspace, [e.name for e in plan.extensions] if plan else [])
    except ConfigError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        if args.json:
            from .report import error_json

            print(error_json("config", err.problems, 2))
        return 2
    unhealthy = [f for f in files if not f.healthy]
    code = 1 if unhealthy or not all(e.healthy for e in extensions) else 0
    if args.json:
        summary = {
            "files": len(files),
            "unhealthy": len(unhealthy),
            "partial": sum(f.state.startswith(PARTIAL) for f in files),
            "stray": sum(f.state == STRAY for f in files),
            "unowned": sum(f.owner == "-" for f in files),
            "exit_code": code,
        }
        sys.stdout.write(
            json.dumps(
                {
                    "files": [asdict(f) for f in files],
                    "extensions": [asdict(e) for e in extensions],
                    "summary": summary,
                },
                indent=2,
            )
            + "\n"
        )
        return code
    root = paths.models_root(workspace)
    rows = [
        (
            str(root / f.path) if args.wide else f.path,  # --wide: absolute paths
            human_size(f.size),
            f.state,
            *(x for x in (_item(f.owner), f.lock) if x is not None),
        )
        for f in files
    ]
    extra = [name for name, key in (("ITEM", "owner"), ("LOCK", "lock")) if _shown(files, key)]
    headers = ("FILE", "SIZE", "STATE", *extra)
    print("\n".join(columns(headers, rows, None if args.wide else WIDTH, squeeze=(0, 3))))
    summary = summary_line(files, workspace, unhealthy, args.wide)
    wrapped = textwrap.fill(summary, WIDTH, subsequent_indent="  ", break_on_hyphens=False)
    print(summary if args.wide else wrapped)
    if extensions:
        rows = [(e.name, e.state, (e.commit or "-")[:12], str(e.packages)) for e in extensions]
        print()
        print(
            "\n".join(
                columns(("EXTENSION", "STATE", "COMMIT", "PACKAGES"), rows, None if args.wide else WIDTH)
            )
        )
    return code


def _item(owner: str | None) -> str | None:
    """An owner as the run's tables name items (lora.x): "models." says nothing in a column."""
    return owner.removeprefix("models.") if owner else owner


def summary_line(files: list[FileStatus], workspace: Path, unhealthy: list[FileStatus], wide: bool) -> str:
    unowned = sum(f.owner == "-" for f in files)
    stray = sum(f.state == STRAY for f in files)
    root = str(paths.models_root(workspace))
    where = root if wide or len(root) < WIDTH // 2 else "the models folder (--wide: where)"
    text = f"{len(files)} files under {where}"
    if unowned:
        text += f"; {unowned} owned by no item"
    if stray:
        text += f"; {stray} stray state file{'s' if stray > 1 else ''} (`provision clean` removes them)"
    if unhealthy:
        text += f"; {len(unhealthy)} not in place as verified (missing, partial, changed or corrupt)"
    return text
