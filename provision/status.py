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

from . import paths
from .config import ConfigError
from .configsource import default_source
from .core import Provisioner
from .ondisk import PARTIAL, OnDisk
from .partfile import PartFile
from .records import workspace_records
from .report import columns, human_size


@dataclass
class FileStatus:
    path: str  # relative to the models folder
    size: int
    state: str  # "verified", "unverified" (changed or never checked), "partial N%"
    owner: str | None  # the config item's table, "-" when CONFIG is given and no item owns it


def survey(workspace: Path, config: str | None) -> list[FileStatus]:
    root = paths.models_root(workspace)
    verified, recorded = workspace_records(workspace)
    owners: dict[str, str] = {}
    if config:
        provisioner = Provisioner(workspace, dry_run=True, offline=True)
        for item in provisioner.plan(config).items:
            for name in recorded.items.get(item.identity, []):
                owners[name] = item.table
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
            found.append(FileStatus(str(path.relative_to(root)), stat.st_size, shown, owner))
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="provision status", description=__doc__.splitlines()[0])
    parser.add_argument(
        "config", nargs="?", help="the config whose items own the files (default: $PROVISION_URL)"
    )
    parser.add_argument(
        "--workspace", type=Path, help="workspace folder (default: $WORKSPACE, else /workspace)"
    )
    parser.add_argument("--json", action="store_true", help="the files as JSON on stdout")
    args = parser.parse_args(argv)
    workspace = Path(args.workspace or os.environ.get("WORKSPACE") or paths.DEFAULT_WORKSPACE).absolute()
    try:
        files = survey(workspace, args.config or default_source())
    except ConfigError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(json.dumps([asdict(f) for f in files], indent=2) + "\n")
        return 0
    rows = [(f.path, human_size(f.size), f.state, *([f.owner] if f.owner is not None else [])) for f in files]
    headers = ("FILE", "SIZE", "STATE", *(["ITEM"] if any(f.owner is not None for f in files) else []))
    print("\n".join(columns(headers, rows)))
    unowned = sum(f.owner == "-" for f in files)
    print(
        f"{len(files)} files under {paths.models_root(workspace)}"
        + (f"; {unowned} owned by no item" if unowned else "")
    )
    return 0
