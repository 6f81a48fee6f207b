"""Whole repositories appear all at once: their files are fetched into a staging folder under
`<workspace>/.provision/staging/` (where SD.Next never looks) and the folder is renamed into
place once every file is verified. SD.Next scanning its Diffusers folder during a download
never finds weights without their `model_index.json`, or the reverse.

Only a repository that is not in place yet is staged: one already there (a new revision, a
file added) is updated file by file, each file still replaced only once its bytes verified.
A run that stops resumes in the same staging folder.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from . import paths
from .download import Download
from .partfile import fsync_dir
from .plan import Item
from .records import VerifiedRecords


def stage(item: Item, downloads: list[Download], workspace: Path) -> Path | None:
    """Point the downloads of a repository not yet in place at its staging folder (returned);
    None when the item is not staged."""
    if not item.is_repository or item.folder.exists() or not downloads:
        return None
    folder = paths.state_dir(workspace) / "staging" / item.category / item.folder.name
    for download in downloads:
        download.dest = folder / download.dest.relative_to(item.folder)
    return folder


def final_path(item: Item, staged: Path, dest: Path) -> Path:
    return item.folder / dest.relative_to(staged) if dest.is_relative_to(staged) else dest


def publish(item: Item, downloads: list[Download], staged: Path, records: VerifiedRecords) -> None:
    """Every file verified: rename the staging folder into place, and point the downloads and
    their verified records at the final paths (a rename keeps size and mtime)."""
    item.folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staged, item.folder)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        shutil.move(staged, item.folder)  # the models folder is another disk: not atomic
    fsync_dir(item.folder.parent)
    for download in downloads:
        old, download.dest = download.dest, final_path(item, staged, download.dest)
        records.moved(old, download.dest)
