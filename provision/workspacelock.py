"""One run at a time per workspace: an flock on `<workspace>/.provision/lock`.

Two runs on one workspace would write the same `.part` files (the boot-time provision service
and a `provision` typed in the web terminal): one renames a file while the other truncates it.
So a real run holds this lock from before it reads the verified records until its last rename.
A second run waits and says for whom (the holder writes its PID and start time into the file),
or with `wait=False` fails at once. The kernel drops the lock when its process dies, so a
killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("provision")


class WorkspaceBusy(Exception):
    """Another run holds the workspace and this one was told not to wait."""


def _holder(fd: int) -> str:
    """Who holds the lock, as the holder wrote it ("unknown" while it has not yet)."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"PID {int(info['pid'])}, running since {info['since']}"
    return "unknown PID"


@contextlib.contextmanager
def workspace_lock(state_dir: Path, *, wait: bool = True) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            workspace = state_dir.parent
            if not wait:
                raise WorkspaceBusy(
                    f"another provision ({holder}) is working on {workspace}; wait for it, "
                    "or run again without --no-wait to queue behind it"
                ) from None
            log.warning(
                f"another provision ({holder}) is working on {workspace}: waiting for it to finish "
                "(--no-wait to stop instead)"
            )
            fcntl.flock(fd, fcntl.LOCK_EX)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        with contextlib.suppress(OSError):  # a full disk: the flock holds all the same
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": since}).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the flock
