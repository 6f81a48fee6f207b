"""`provision clean`: remove the state files left beside no partial download.

A `<name>.part.state` says which bytes of `<name>.part` are on disk; without its `.part` it
describes nothing (a crash between the two removals, a `.part` deleted by hand). `provision
status` lists them; this removes them, holding the workspace lock so a run under way, whose
files come and go, is never touched.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import paths
from .workspacelock import WorkspaceBusy, workspace_lock


def stray_state_files(models_root: Path) -> list[Path]:
    found = []
    for folder, _dirs, files in sorted(os.walk(models_root)):
        for name in sorted(files):
            if name.endswith(".part.state") and not (Path(folder) / name.removesuffix(".state")).exists():
                found.append(Path(folder) / name)
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="provision clean", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workspace", type=Path, help="workspace folder (default: $WORKSPACE, else /workspace)"
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    args = parser.parse_args(argv)
    workspace = Path(args.workspace or os.environ.get("WORKSPACE") or paths.DEFAULT_WORKSPACE).absolute()
    root = paths.models_root(workspace)
    try:
        with workspace_lock(paths.state_dir(workspace), wait=False):
            stray = stray_state_files(root)
            for path in stray:
                if not args.dry_run:
                    path.unlink(missing_ok=True)
                print(f"{'would remove' if args.dry_run else 'removed'} {path.relative_to(root)}")
    except WorkspaceBusy as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{len(stray)} stray state file{'' if len(stray) == 1 else 's'} under {root}")
    return 0
