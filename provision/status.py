"""`provision status [CONFIG]`: the model folders as SD.Next will see them.

Every file under `<workspace>/sdnext/models`, with whether a run verified it as it is now (size
and mtime of its record), which config item owns it (from the items' records, when CONFIG is
given) and partial downloads with how far they got. Reads only; never hashes, never writes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from . import lockfile, paths
from .config import ConfigError
from .configsource import default_source
from .core import Provisioner
from .lockfile import LockedFile
from .ondisk import PARTIAL, OnDisk
from .partfile import PartFile
from .records import Record, workspace_records
from .report import columns, human_size


@dataclass
class FileStatus:
    path: str  # relative to the models folder
    size: int
    state: str  # "verified", "unverified" (changed or never checked), "partial N%"
    owner: str | None  # the config item's table, "-" when CONFIG is given and no item owns it
    # With the config's lock: "as locked", "drifted" (verified with other bytes, or changed since),
    # "unchecked" (never verified), "missing" (locked, not on disk), "-" (not in the lock).
    lock: str | None = None


def survey(workspace: Path, config: str | None, lock_file: str | None = None) -> list[FileStatus]:
    root = paths.models_root(workspace)
    verified, recorded = workspace_records(workspace)
    owners: dict[str, str] = {}
    locked: dict[str, LockedFile] = {}
    if config:
        provisioner = Provisioner(workspace, dry_run=True, offline=True, lock_file=lock_file)
        plan = provisioner.plan(config)
        where = provisioner.lock_path(config)
        if lock_file or Path(where).exists():
            lockfile.attach(plan, lockfile.read_lock(where))
        for item in plan.items:
            for name in recorded.items.get(item.identity, []):
                owners[name] = item.table
            for file in item.locked or ():
                locked[str(file.dest)] = file
    has_lock = bool(locked)
    found = []
    for folder, _dirs, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = Path(folder) / name
            if name.endswith(".part.state"):
                continue
            stat = path.stat()
            if name.endswith(".part"):
                part = PartFile(path.with_name(name.removesuffix(".part"))).peek(any_file=True)
                shown = OnDisk(PARTIAL, part.done.covered()).label(part.total) if part else PARTIAL
            else:
                record = verified.lookup(path)
                shown = "verified" if record and record.unchanged(stat) else "unverified"
            owner = owners.get(str(path), "-") if config else None
            pinned = locked.pop(str(path), None)
            lock = _lock_state(pinned, verified.lookup(path), stat) if has_lock else None
            found.append(FileStatus(str(path.relative_to(root)), stat.st_size, shown, owner, lock))
    for file in locked.values():  # locked, but not on disk
        owner = "models." + file.item.replace("/", ".")
        found.append(FileStatus(file.path, file.size or 0, "missing", owner, "missing"))
    return found


def _shown(files: list[FileStatus], column: str) -> bool:
    return any(getattr(f, column) is not None for f in files)


def _lock_state(pinned: LockedFile | None, record: Record | None, stat: os.stat_result) -> str:
    if pinned is None:
        return "-"
    if record is None:
        return "unchecked"
    return "as locked" if record.unchanged(stat) and record.checksum == pinned.checksum else "drifted"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="provision status", description=__doc__.splitlines()[0])
    parser.add_argument(
        "config", nargs="?", help="the config whose items own the files (default: $PROVISION_URL)"
    )
    parser.add_argument(
        "--workspace", type=Path, help="workspace folder (default: $WORKSPACE, else /workspace)"
    )
    parser.add_argument("--lock-file", help="the config's lock (default: beside it, models.lock)")
    parser.add_argument("--json", action="store_true", help="the files as JSON on stdout")
    args = parser.parse_args(argv)
    workspace = Path(args.workspace or os.environ.get("WORKSPACE") or paths.DEFAULT_WORKSPACE).absolute()
    try:
        files = survey(workspace, args.config or default_source(), args.lock_file)
    except ConfigError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(json.dumps([asdict(f) for f in files], indent=2) + "\n")
        return 0
    rows = [
        (f.path, human_size(f.size), f.state, *(x for x in (f.owner, f.lock) if x is not None)) for f in files
    ]
    extra = [name for name, key in (("ITEM", "owner"), ("LOCK", "lock")) if _shown(files, key)]
    headers = ("FILE", "SIZE", "STATE", *extra)
    print("\n".join(columns(headers, rows)))
    unowned = sum(f.owner == "-" for f in files)
    print(
        f"{len(files)} files under {paths.models_root(workspace)}"
        + (f"; {unowned} owned by no item" if unowned else "")
    )
    return 0
