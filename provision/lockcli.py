"""`provision lock CONFIG [--upgrade [--only PATTERN]]`: resolve every item and write its lock.

Exit 0 when the lock is written, 1 when an item cannot be resolved (nothing written), 2 for a
bad config or command line, 130/143 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import paths
from .configsource import default_source
from .console import EXIT_FAILED, EXIT_OK, guarded, positive, start_logging
from .core import DEFAULT_CONNECTIONS, DEFAULT_JOBS, LockFailed, Provisioner
from .lockfile import Lock
from .report import FAILED, WIDTH, columns, human_size

log = logging.getLogger("provision")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="provision lock",
        description="Resolve every item of the config to exact files and hashes and write the lock"
        " (models.toml -> models.lock). Metadata only where the source publishes a sha256; other"
        " files are hashed from disk when verified there, else downloaded into place.",
    )
    parser.add_argument("config", nargs="?", help="path or URL of the TOML file (default: $PROVISION_URL)")
    parser.add_argument(
        "--lock-file",
        type=Path,
        help="where to write the lock (default: beside the config; for a URL, in the working directory)",
    )
    parser.add_argument(
        "--upgrade", action="store_true", help="resolve again items the lock already pins (moving revisions)"
    )
    parser.add_argument(
        "--only", action="append", metavar="PATTERN", help="with --upgrade: only these category/name globs"
    )
    parser.add_argument(
        "--workspace", type=Path, help="workspace folder (default: $WORKSPACE, else /workspace)"
    )
    parser.add_argument("--jobs", type=positive, default=DEFAULT_JOBS, help="items at once (default 5)")
    parser.add_argument("--connections", type=positive, default=DEFAULT_CONNECTIONS, help=argparse.SUPPRESS)
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("--quiet", "-q", action="store_true", help="console: errors only")
    noise.add_argument("--verbose", "-v", action="store_true", help="console: debug detail")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = args.config or default_source()
    if not config:
        parser.error("no config given: pass a path or URL, or set PROVISION_URL")
    if args.only and not args.upgrade:
        parser.error("--only picks the items to --upgrade: add --upgrade")
    provisioner = Provisioner(
        args.workspace,
        jobs=args.jobs,
        connections=args.connections,
        progress=False if args.quiet else None,
        only=args.only,
        lock_file=args.lock_file,
    )
    start_logging(paths.log_file(provisioner.workspace), args)
    try:
        lock, failure = guarded(lambda: provisioner.lock(config, upgrade=args.upgrade), provisioner.workspace)
    except LockFailed as failed:
        for line in failed.report.reasons(FAILED):  # one line per distinct reason
            log.error(line)
        log.error("no lock written: fix the items above and run `provision lock` again")
        return EXIT_FAILED
    if failure is not None:
        return failure
    sys.stdout.write(table(lock) + "\n")
    where = provisioner.lock_path(config)
    log.info(f"wrote {where}: {len(lock.items)} items, {len(lock.files)} files")
    return EXIT_OK


def table(lock: Lock) -> str:
    """The locked files, for people: item, path, size, hash and where the hash came from."""
    rows = []
    for file in lock.files:
        digest = f"sha256:{file.sha256[:12]}" if file.sha256 else f"git blob:{(file.git_blob or '')[:12]}"
        size = human_size(file.size) if file.size is not None else "?"
        rows.append((file.item, file.path, size, digest, file.sha256_from or "source"))
    return "\n".join(columns(("ITEM", "FILE", "SIZE", "HASH", "FROM"), rows, WIDTH, squeeze=(1, 0)))
