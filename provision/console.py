"""What the subcommands share (`provision`, `provision lock`): exit codes, the console and log
file, and the guard that turns a bad config, a busy workspace, a refused disk or Ctrl-C into
one line and an exit code. Below cli.py and lockcli.py, so neither imports the other."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

from . import paths
from .config import ConfigError, ConfigUnreachable
from .interrupt import Interrupted, stop_on_signals
from .logsetup import setup_logging
from .report import error_json
from .workspacelock import WorkspaceBusy

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("provision")
T = TypeVar("T")


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def start_logging(log_file: Path | None, args: argparse.Namespace) -> None:
    """The console (by --quiet/--verbose) and the log file."""
    warning = setup_logging(log_file, verbosity=-1 if args.quiet else 1 if args.verbose else 0)
    if warning:
        log.warning(warning)


def guarded(
    action: Callable[[], T], workspace: Path, json_out: bool = False
) -> tuple[T, None] | tuple[None, int]:
    """Run the action under Ctrl-C/SIGTERM handling: (its result, None), or (None, the exit
    code) after saying why for a bad config, a busy workspace or a disk that refuses writes
    (with `json_out`, also as a JSON object on stdout)."""
    try:
        with stop_on_signals():
            return action(), None
    except ConfigUnreachable as err:
        return None, _stopped("unreachable", err.problems, EXIT_USAGE, "nothing was downloaded", json_out)
    except ConfigError as err:
        end = f"{len(err.problems)} problem(s) in the configuration; nothing was downloaded"
        return None, _stopped("config", err.problems, EXIT_USAGE, end, json_out)
    except WorkspaceBusy as err:
        return None, _stopped("busy", [str(err)], EXIT_FAILED, None, json_out)
    except OSError as err:
        if err.errno not in _DISK_ERRORS:
            raise
        return None, _stopped("disk", [describe_disk_error(err, workspace)], EXIT_FAILED, None, json_out)
    except (Interrupted, KeyboardInterrupt) as stop:
        _leave_interrupted(stop, paths.models_root(workspace))


def _stopped(kind: str, problems: list[str], code: int, end: str | None, json_out: bool) -> int:
    for problem in problems:
        log.error(f"error: {problem}")
    if end:
        log.error(end)
    if json_out:
        sys.stdout.write(error_json(kind, problems, code) + "\n")
    return code


# What a disk can refuse (an item's own download reports these per item).
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def describe_disk_error(err: OSError, workspace: Path) -> str:
    where = f": {err.filename}" if err.filename else ""
    if full := paths.disk_full(err):
        return f"the disk is {full}{where}; free some space or rent a bigger disk, then run again"
    if err.filename and not Path(os.fsdecode(err.filename)).absolute().is_relative_to(workspace.absolute()):
        return f"{err.strerror}{where}"  # not the workspace: no advice about --workspace
    return f"{err.strerror}{where}; --workspace (or $WORKSPACE) must be a folder this user can write"


def _leave_interrupted(stop: BaseException, models_root: Path) -> NoReturn:
    """One line, then exit 130 (SIGINT) or 143 (SIGTERM) without waiting for worker threads
    that may sit in a socket read: every transfer has saved which bytes it has."""
    code = stop.exit_code if isinstance(stop, Interrupted) else 130
    partial = getattr(stop, "partial_files", [])
    if partial:
        shown = [
            str(p.relative_to(models_root)) if p.is_relative_to(models_root) else str(p) for p in partial
        ]
        names = ", ".join(shown[:3]) + (f" and {len(partial) - 3} more" if len(partial) > 3 else "")
        kept = f"{len(partial)} partial file{'s' if len(partial) > 1 else ''} kept ({names})"
    else:
        kept = "no partial file"
    log.error(f"interrupted: {kept}; run the same command again to resume")
    for handler in log.handlers:
        handler.flush()
    os._exit(code)
