"""`provision mirror DIR [CONFIG]`: the lock's files that are in place, by hash, for other hosts.

Every file of the config's lock that is on disk and verified goes to `DIR/sha256/<hex>`; a Hub
file the lock pins by its git blob id also to `DIR/git-blob/<hex>`. A hard link where the
filesystem allows (no second copy on the same disk), else a copy hashed as it is written; either
way under a temporary name first, then renamed, so a reader of the mirror never sees half a
file. A file already in DIR is hashed, and kept when it is right (replaced when not). Serve DIR
with any static file server, or sync it to a bucket, and give its URL to `--mirror`.

Exit 0 when every locked file is in the mirror, 1 when some are not (missing here, or other
bytes than locked: run `provision CONFIG --locked` first), 2 for a bad command line or lock.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from . import lockfile, paths
from .config import ConfigError
from .configsource import default_source
from .core import Provisioner
from .download import Checksum
from .hashing import blob_header, hash_file, new_digest
from .lockfile import LockedFile
from .logsetup import setup_logging
from .mirror import address
from .records import workspace_records
from .report import columns, human_size

log = logging.getLogger("provision")

LINKED, COPIED, THERE, REPLACED = "linked", "copied", "already there", "replaced"
MISSING, DRIFTED = "missing", "drifted"
BLOCK = 8 * 1024 * 1024


@dataclass
class Mirrored:
    path: str  # the locked file, relative to the models folder
    size: int | None
    mirrored_as: list[str]  # relative to DIR: sha256/<hex>, git-blob/<hex>
    result: str  # linked, copied, already there, replaced; missing or drifted (not mirrored)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="provision mirror", description=__doc__.splitlines()[0].split(": ", 1)[1]
    )
    parser.add_argument("dir", type=Path, help="the mirror's folder (created when missing)")
    parser.add_argument("config", nargs="?", help="the config whose lock to mirror (default: $PROVISION_URL)")
    parser.add_argument("--lock-file", help="the lock (default: beside the config; $PROVISION_LOCK_URL)")
    parser.add_argument(
        "--workspace", type=Path, help="workspace folder (default: $WORKSPACE, else /workspace)"
    )
    parser.add_argument("--json", action="store_true", help="the files as JSON on stdout")
    args = parser.parse_args(argv)
    config = args.config or default_source()
    if not config:
        parser.error("no config given: pass a path or URL, or set PROVISION_URL")
    setup_logging(None, verbosity=0)  # the console only: filling a mirror is not the workspace's log
    lock_file = args.lock_file or os.environ.get("PROVISION_LOCK_URL") or None
    provisioner = Provisioner(args.workspace, dry_run=True, offline=True, lock_file=lock_file)
    try:
        where = provisioner.lock_path(config)
        if not lock_file and not Path(where).exists():
            raise ConfigError([f"there is no lock {where}: create it with `provision lock {config}`"])
        lock = lockfile.read_lock(where)
    except ConfigError as err:
        for problem in err.problems:
            log.error(f"error: {problem}")
        return 2
    try:
        done = fill(args.dir.absolute(), provisioner.workspace, lock)
    except OSError as err:
        log.error(f"error: {args.dir}: {err.strerror}: give a folder this user can write")
        return 1
    if args.json:
        sys.stdout.write(json.dumps([asdict(m) for m in done], indent=2) + "\n")
    else:
        rows = [(m.path, human_size(m.size), ", ".join(m.mirrored_as) or "-", m.result) for m in done]
        sys.stdout.write("\n".join(columns(("FILE", "SIZE", "IN THE MIRROR AS", "RESULT"), rows)) + "\n")
    left = [m for m in done if m.result in (MISSING, DRIFTED)]
    log.info(f"{len(done) - len(left)} of {len(done)} locked files in the mirror {args.dir}")
    if left:
        log.error(
            f"{len(left)} locked files are not in place as locked ({', '.join(m.path for m in left[:3])}"
            f"{' ...' if len(left) > 3 else ''}): run `provision {config} --locked` here first"
        )
        return 1
    return 0


def fill(mirror: Path, workspace: Path, lock: lockfile.Lock) -> list[Mirrored]:
    """Put every locked file that is in place into the mirror; one Mirrored per locked file."""
    root = paths.models_root(workspace)
    verified, _ = workspace_records(workspace)
    out = []
    for file in lock.files:
        source = root.joinpath(*Path(file.path).parts)
        record = verified.lookup(source)
        try:
            stat = source.stat()
        except FileNotFoundError:
            out.append(Mirrored(file.path, file.size, [], MISSING))
            continue
        trusted = record is not None and record.unchanged(stat) and record.checksum == file.checksum
        out.append(_mirror_one(mirror, source, file, trusted))
    return out


def _mirror_one(mirror: Path, source: Path, file: LockedFile, trusted: bool) -> Mirrored:
    """One locked file into the mirror under each name its hashes give it."""
    names = [file.checksum]
    if file.checksum.algorithm == "git-sha1":  # small files: cheap to hash for the sha256 name too
        if not trusted and hash_file(source, "git-sha1") != file.checksum:
            log.warning(f"warning: {file.path}: not the locked bytes: not mirrored")
            return Mirrored(file.path, file.size, [], DRIFTED)
        trusted = True
        names.append(hash_file(source, "sha256"))
    results = []
    for checksum in names:
        result = _put(mirror / address(checksum), source, checksum, trusted)
        if result == DRIFTED:
            log.warning(f"warning: {file.path}: not the locked bytes ({checksum} expected): not mirrored")
            return Mirrored(file.path, file.size, [], DRIFTED)
        trusted = True  # the first name checked the bytes
        results.append(result)
    result = next((r for r in results if r != THERE), THERE)
    return Mirrored(file.path, file.size, [address(c) for c in names], result)


def _put(target: Path, source: Path, checksum: Checksum, trusted: bool) -> str:
    """`source` as `target`: linked or copied under a temporary name, then renamed."""
    replacing = False
    if target.exists():
        same_file = trusted and os.path.samestat(target.stat(), source.stat())
        if same_file or hash_file(target, checksum.algorithm) == checksum:
            return THERE
        log.warning(f"warning: {target}: other bytes than its name says: replacing it")
        replacing = True
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        result = _link(source, tmp, checksum) if trusted else None
        if result is None:
            if not _copy(source, tmp, checksum):
                tmp.unlink()
                return DRIFTED
            result = COPIED
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return REPLACED if replacing else result


def _link(source: Path, tmp: Path, checksum: Checksum) -> str | None:
    """A hard link (the file is verified already), or None where the filesystem refuses one."""
    try:
        os.link(source, tmp)
    except OSError as err:
        if err.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise
    return LINKED


def _copy(source: Path, tmp: Path, checksum: Checksum) -> bool:
    """Copy and hash the bytes written; False (and nothing kept) when they are not the locked ones."""
    digest = new_digest(checksum.algorithm)
    if checksum.algorithm == "git-sha1":
        digest.update(blob_header(source.stat().st_size))
    with open(source, "rb") as reader, open(tmp, "wb") as writer:
        while block := reader.read(BLOCK):
            digest.update(block)
            writer.write(block)
        writer.flush()
        os.fsync(writer.fileno())
    return digest.hexdigest() == checksum.value
