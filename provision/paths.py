"""Where things live in the workspace, file names that are safe to write, and how a small file
is replaced so that no reader sees it half written."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
import unicodedata
from pathlib import Path

DEFAULT_WORKSPACE = "/workspace"
_MAX_NAME_BYTES = 255
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"|?*]')


def disk_full(err: OSError) -> str | None:
    """How a write that found no room reads to a user, or None when it failed otherwise. A used-up
    quota (EDQUOT) is said as such: `df` still shows free space there."""
    if err.errno == errno.ENOSPC:
        return "full"
    if err.errno == errno.EDQUOT:
        return "full for this user (its disk quota is used up)"
    return None


def models_root(workspace: Path) -> Path:
    return workspace / "sdnext" / "models"


def log_file(workspace: Path) -> Path:
    return workspace / "logs" / "provision.log"


def state_dir(workspace: Path) -> Path:
    """Verification records and the like: outside the models root, so SD.Next never sees them."""
    return workspace / ".provision"


def write_atomically(path: Path, text: str) -> None:
    """Replace the file atomically: a reader sees the old content or the new, never half. On a
    full disk the old content stays and no temporary file is left beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def safe_filename(name: str | None) -> str | None:
    """Reduce a name from a config or a server to a plain file name, or None if nothing is left.

    Only the last path component survives (both separators count), control and shell-hostile
    characters are dropped, leading dots and blanks are stripped (no hidden files, no `..`),
    and the name is cut to 255 bytes keeping its extension.
    """
    if not name:
        return None
    name = unicodedata.normalize("NFC", name)
    name = re.split(r"[/\\]", name)[-1]
    name = _UNSAFE.sub("", name).strip().lstrip(". ").rstrip(". ")
    if not name:
        return None
    if len(name.encode()) > _MAX_NAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        if not dot or len(ext) > 16:
            stem, ext = name, ""
        suffix = f".{ext}" if ext else ""
        budget = _MAX_NAME_BYTES - len(suffix.encode())
        stem = stem.encode()[:budget].decode(errors="ignore")
        name = stem + suffix
    return name
