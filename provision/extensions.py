"""SD.Next extensions the config declares (`[extensions.NAME]`): fetched, checked and unpacked into
`<workspace>/sdnext/extensions/NAME`, the folder SD.Next loads user extensions from (its data
dir's `extensions/`: modules/paths.py at tag 2026-07-14).

A GitHub repository is fetched as the archive GitHub makes of the commit (`/archive/COMMIT.tar.gz`,
over HTTPS: no git needed); its `git archive` header must name that commit. Any other archive must
match the sha256 the config gives. Either way the unpacked files are hashed (`tree_hash`) and a lock
pins that hash, so the next host gets the same files even if GitHub compresses them anew.

The archive is streamed to `.provision/staging/` and hashed on the way; the files appear at
once: unpacked there, then renamed into place (an old version is renamed aside first and removed
after). An entry that would land outside the folder, a link pointing out of it, a device or a
setuid bit is refused (tarfile's `data` filter; zip names checked). The Python packages an
extension needs are overlay.py's job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import requests
from packaging.utils import canonicalize_name

from . import failures, links, overlay, paths
from .http import TIMEOUT, new_session
from .plan import Extension, LockedExtension
from .report import FAILED, OK, SKIPPED, ItemResult
from .secrets import redact

log = logging.getLogger("provision")

MAX_ARCHIVE = 1024 * 1024 * 1024  # an extension is code (and some assets): bigger is a wrong URL


class ExtensionError(Exception):
    """The extension cannot be installed; the message names it and what to do."""


@dataclass
class Unpacked:
    """An extension fetched and checked, in its staging folder; `place` puts it where SD.Next looks."""

    extension: Extension
    folder: Path  # the staging folder holding its files
    archive_sha256: str
    files: dict[str, str]  # manifest()
    commit: str | None
    size: int  # archive bytes
    requirements: list[str] = field(default_factory=list)

    @property
    def tree_sha256(self) -> str:
        return tree_hash(self.files)


def extensions_root(workspace: Path) -> Path:
    return workspace / "sdnext" / "extensions"


def folder_of(extension: Extension, workspace: Path) -> Path:
    return extensions_root(workspace) / extension.name


def archive_url(extension: Extension) -> str:
    if extension.github:
        owner, repo = extension.github
        return links.github_archive_url(owner, repo, extension.commit or "")
    return extension.url


# --- what is in place --------------------------------------------------------------------------


def manifest(folder: Path) -> dict[str, str]:
    """Each file under `folder` (relative path) -> what it is: "x:" or "-:" (executable or not)
    and its content's sha256, or "link:" and where a link points."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if not p.is_dir() or p.is_symlink()):
        files[path.relative_to(folder).as_posix()] = _what(path)
    return files


def _what(path: Path) -> str:
    if path.is_symlink():
        return f"link:{os.readlink(path)}"
    executable = "x" if path.stat().st_mode & stat.S_IXUSR else "-"
    return f"{executable}:{hashlib.sha256(path.read_bytes()).hexdigest()}"  # extensions are small


def tree_hash(files: dict[str, str]) -> str:
    """One sha256 for a manifest: the same files give the same hash whatever archive carried them."""
    text = "".join(f"{path}\0{what}\n" for path, what in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def unchanged(folder: Path, files: dict[str, str]) -> bool:
    """Every file the extension came with is there as it came. Files it wrote itself (settings,
    caches, models some extensions download into their folder) do not count."""
    for relative, what in files.items():
        path = folder / relative
        if not (path.is_symlink() or path.is_file()) or _what(path) != what:
            return False
    return True


class Records:
    """What this workspace installed (`.provision/extensions.json`): per extension, the config's
    request, what it is pinned to and the manifest of the files it came with. An extension whose
    files are all still as they came needs no request: a restart works offline."""

    def __init__(self, workspace: Path):
        self.workspace = workspace
        self.path = paths.state_dir(workspace) / "extensions.json"
        try:
            self.data: dict[str, dict] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def pinned(self, name: str) -> LockedExtension:
        entry = self.data[name]
        packages = tuple(entry.get("packages", ()))
        return LockedExtension(
            name, entry["archive_sha256"], entry["tree_sha256"], entry.get("commit"), packages
        )

    def files(self, name: str) -> dict[str, str]:
        return self.data.get(name, {}).get("files", {})

    def in_place(self, extension: Extension) -> LockedExtension | None:
        """What is installed, if it is what the config (and the lock, if any) asks for."""
        entry = self.data.get(extension.name)
        folder = folder_of(extension, self.workspace)
        if not entry or entry.get("request") != extension.asked or not folder.is_dir():
            return None
        installed = self.pinned(extension.name)
        locked = extension.locked
        if locked is not None and (locked.tree_sha256, locked.packages) != (
            installed.tree_sha256,
            installed.packages,
        ):
            return None
        return installed if unchanged(folder, self.files(extension.name)) else None

    def installed_elsewhere(self, names: set[str]) -> dict[str, LockedExtension]:
        """Extensions an earlier run installed that this run does not work on (`--only`, or no
        longer in the config) and whose folder is still there: their packages stay in the overlay."""
        root = extensions_root(self.workspace)
        return {name: self.pinned(name) for name in self.data if name not in names and (root / name).is_dir()}

    def store(self, extension: Extension, installed: LockedExtension, files: dict[str, str]) -> None:
        self.data[extension.name] = {
            "request": extension.asked,
            "archive_sha256": installed.archive_sha256,
            "tree_sha256": installed.tree_sha256,
            "commit": installed.commit,
            "packages": list(installed.packages),
            "files": files,
        }
        # An extension whose folder is gone (its user removed it) is forgotten, with its packages.
        root = extensions_root(self.workspace)
        self.data = {name: entry for name, entry in self.data.items() if (root / name).is_dir()}
        paths.write_atomically(self.path, json.dumps(self.data, indent=2, sort_keys=True))


# --- fetch and unpack ------------------------------------------------------------------------


def fetch(extension: Extension, workspace: Path) -> Unpacked:
    """Download the extension's archive, check it and unpack it into a staging folder."""
    staging = paths.state_dir(workspace) / "staging" / "extensions"
    staging.mkdir(parents=True, exist_ok=True)
    url = archive_url(extension)
    archive = staging / f"{extension.name}.{os.getpid()}.archive"
    folder = staging / f"{extension.name}.{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    try:
        with new_session(pool_size=2) as session:
            archive_sha256, size = _download(session, url, extension, archive)
        if extension.sha256 and archive_sha256 != extension.sha256:
            raise ExtensionError(
                f"{extension.table}: the archive's sha256 is {archive_sha256}, the config says"
                f" {extension.sha256}: check the URL, or put the new sha256 in the config if you trust it"
            )
        commit = _unpack(archive, folder, extension)
        files = manifest(folder)
        tree = tree_hash(files)
        locked = extension.locked
        if locked is not None and tree != locked.tree_sha256:
            raise ExtensionError(
                f"{extension.table}: the files of {redact(url)} differ from what the lock pins"
                f" (tree sha256 {tree}, locked {locked.tree_sha256}): run `provision lock CONFIG"
                f" --upgrade --only {extension.key}` if the change is expected"
            )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        archive.unlink(missing_ok=True)
    return Unpacked(extension, folder, archive_sha256, files, commit, size, read_requirements(folder))


def _download(session: requests.Session, url: str, extension: Extension, archive: Path) -> tuple[str, int]:
    """Stream the archive into `archive`; its sha256 and size."""
    shown = redact(url)
    # A private repository's archive needs a token; GitHub answers 404 without one. The session
    # drops it when GitHub redirects to codeload (another host: its URL carries its own token).
    token = os.environ.get("GITHUB_TOKEN") if extension.github else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with session.get(url, headers=headers, stream=True, timeout=TIMEOUT) as response:
            if response.status_code == 404:
                what = "the commit" if extension.github else "the archive"
                private = (
                    "; a private repository needs GITHUB_TOKEN" if extension.github and not token else ""
                )
                raise ExtensionError(
                    f"{extension.table}: {shown} answered 404: check the URL and {what}{private}"
                )
            if response.status_code != 200:
                raise ExtensionError(f"{extension.table}: {shown} answered HTTP {response.status_code}")
            digest, size = hashlib.sha256(), 0
            with archive.open("wb") as sink:
                for chunk in response.iter_content(1024 * 1024):
                    sink.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if size > MAX_ARCHIVE:
                        raise ExtensionError(
                            f"{extension.table}: {shown} is over {MAX_ARCHIVE >> 20} MiB: not an extension"
                        )
            return digest.hexdigest(), size
    except requests.RequestException as err:
        failure = failures.classify(err, url)
        reason = failure.message(1) if failure else redact(str(err))
        raise ExtensionError(f"{extension.table}: {reason}") from None


def _unpack(archive_file: Path, folder: Path, extension: Extension) -> str | None:
    """Unpack into `folder` (a single top folder, as GitHub's archives have, is dropped); for a
    GitHub commit return it once checked against the archive's own header."""
    folder.mkdir(parents=True)
    commit = None
    if zipfile.is_zipfile(archive_file):
        with zipfile.ZipFile(archive_file) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            for name in names:
                _check_member(name, extension)
            strip = _common_top(names)
            for name in names:
                target = folder.joinpath(*PurePosixPath(name).parts[strip:])
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(name) as source, target.open("wb") as sink:
                    shutil.copyfileobj(source, sink)
    else:
        try:
            with tarfile.open(archive_file) as archive:
                commit = _unpack_tar(archive, folder, extension)
        except tarfile.TarError:
            raise ExtensionError(
                f"{extension.table}: {redact(archive_url(extension))} is not a tar or zip archive"
                " (or a damaged one)"
            ) from None
    if extension.github and commit is None:
        raise ExtensionError(f"{extension.table}: the archive states no commit: not GitHub's archive of it")
    return commit


def _unpack_tar(archive: tarfile.TarFile, folder: Path, extension: Extension) -> str | None:
    commit = archive.pax_headers.get("comment")  # `git archive` writes the commit there
    if extension.github and commit != extension.commit:
        raise ExtensionError(
            f"{extension.table}: the archive is of commit {commit or '(none stated)'}, not"
            f" {extension.commit}: check GITHUB_ENDPOINT and the commit"
        )
    members = [m for m in archive.getmembers() if not m.isdir()]
    for member in members:
        _check_member(member.name, extension)
        if not (member.isfile() or member.issym()):
            raise ExtensionError(f"{extension.table}: the archive holds {member.name!r}, not a file")
    strip = _common_top([m.name for m in members])
    for member in members:
        member.name = PurePosixPath(*PurePosixPath(member.name).parts[strip:]).as_posix()
        try:
            archive.extract(member, folder, filter="data")
        except tarfile.FilterError as err:
            raise ExtensionError(f"{extension.table}: refused an archive entry: {err}") from None
    return commit


def _check_member(name: str, extension: Extension) -> None:
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts or "\\" in name:
        raise ExtensionError(f"{extension.table}: the archive holds {name!r}, a path outside its folder")


def _common_top(names: list[str]) -> int:
    """1 when every name sits under one top folder (GitHub's `REPO-COMMIT/`), else 0."""
    tops = {PurePosixPath(n).parts[0] for n in names}
    return 1 if len(tops) == 1 and all(len(PurePosixPath(n).parts) > 1 for n in names) else 0


def read_requirements(folder: Path) -> list[str]:
    """The extension's requirements.txt: one requirement per line, comments and pip options
    (`-r`, `--index-url`: not ours to follow) left out."""
    file = folder / "requirements.txt"
    if not file.is_file():
        return []
    lines = []
    for raw in file.read_text(errors="replace").splitlines():
        line = raw.split(" #")[0].strip()
        if line and not line.startswith(("#", "-")):
            lines.append(line)
    return lines


def place(unpacked: Unpacked, workspace: Path, came_with: dict[str, str]) -> Path:
    """Rename the staging folder into place; an older version is renamed aside first. Files the
    old version did not come with (`came_with`: its manifest) were written by the extension or
    its user: as a `git pull` keeps them, they are moved into the new version."""
    target = folder_of(unpacked.extension, workspace)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = unpacked.folder.with_name(f"{unpacked.folder.name}.old")
    if target.is_dir() and not target.is_symlink():
        for relative in sorted(set(manifest(target)) - set(came_with)):
            moved = unpacked.folder / relative
            if not (moved.exists() or moved.is_symlink()):
                moved.parent.mkdir(parents=True, exist_ok=True)
                os.rename(target / relative, moved)
    if target.exists() or target.is_symlink():
        os.rename(target, old)
    os.rename(unpacked.folder, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def discard(unpacked: Unpacked) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(unpacked.folder)


# --- a run -------------------------------------------------------------------------------------


def install_all(
    extensions: list[Extension], workspace: Path, *, update: bool = False
) -> tuple[list[ItemResult], dict[str, LockedExtension]]:
    """Install every declared extension and, together, their packages (overlay.py). An extension
    recorded as in place is not fetched (`update`: fetched again). Returns a result per extension
    and what each installed one is pinned to, for the lock."""
    records = Records(workspace)
    results: dict[str, ItemResult] = {}
    pinned: dict[str, LockedExtension] = {}
    fetched: list[Unpacked] = []
    image: dict[str, str] | None = None
    for extension in extensions:
        start = time.monotonic()
        result = ItemResult(
            "extensions", extension.name, _source(extension), str(folder_of(extension, workspace)), OK
        )
        result.verified = "commit, files" if extension.github else "sha256, files"
        results[extension.name] = result
        try:
            have = None if update else records.in_place(extension)
            if have is not None:
                result.status, result.verified = SKIPPED, "records"
                pinned[extension.name] = have
                continue
            folder = folder_of(extension, workspace)
            if (folder.exists() or folder.is_symlink()) and extension.name not in records.data:
                raise ExtensionError(
                    f"{extension.table}: {folder} is there already and provision did not put it there:"
                    " move it away (or rename this entry) so nothing of yours is replaced"
                )
            unpacked = fetch(extension, workspace)
            result.size = result.bytes = unpacked.size
            if extension.locked is not None:
                packages = extension.locked.packages
            else:
                wanted = (
                    unpacked.requirements if extension.requirements is None else list(extension.requirements)
                )
                packages = ()
                if wanted:
                    if image is None:
                        image = overlay.image_packages(overlay.sdnext_python())
                    packages = overlay.resolve(extension.table, wanted, image, workspace)
            pinned[extension.name] = LockedExtension(
                extension.name, unpacked.archive_sha256, unpacked.tree_sha256, unpacked.commit, packages
            )
            fetched.append(unpacked)
        except (ExtensionError, overlay.OverlayError, OSError) as err:
            result.status, result.reason = FAILED, str(err).removeprefix(f"{extension.table}: ")
            log.error(f"error: {extension.table}: {result.reason}")
        finally:
            result.seconds = round(time.monotonic() - start, 3)
    kept = records.installed_elsewhere({e.name for e in extensions})
    _install_packages(pinned, kept, fetched, results, workspace)
    for unpacked in fetched:
        name = unpacked.extension.name
        if results[name].status == FAILED:
            discard(unpacked)
            pinned.pop(name, None)
            continue
        place(unpacked, workspace, records.files(name))
        records.store(unpacked.extension, pinned[name], unpacked.files)
        log.info(f"{unpacked.extension.table}: installed in {folder_of(unpacked.extension, workspace)}")
    return list(results.values()), pinned


def _install_packages(
    pinned: dict[str, LockedExtension],
    kept: dict[str, LockedExtension],
    fetched: list[Unpacked],
    results: dict[str, ItemResult],
    workspace: Path,
) -> None:
    """One overlay for the packages of every extension in place (`kept`: those this run does not
    work on, first). Two versions of one package are refused, naming both extensions; a failed
    install fails the fetched extensions that need packages (the overlay in place stays as it was)."""
    by_package: dict[str, tuple[str, str]] = {}  # package -> (its pinned line, the extension asking)
    for name, locked in [*kept.items(), *pinned.items()]:
        for line in locked.packages:
            wanted = line.split()[0]
            first, asker = by_package.setdefault(canonicalize_name(wanted.split("==")[0]), (wanted, name))
            if first != wanted and name in results:
                results[name].status = FAILED
                results[
                    name
                ].reason = f"needs {wanted}, but extensions.{asker} needs {first}: leave one of them out"
                log.error(f"error: extensions.{name}: {results[name].reason}")
    lines = [line for name, locked in kept.items() for line in locked.packages]
    lines += [
        line for name, locked in pinned.items() if results[name].status != FAILED for line in locked.packages
    ]
    try:
        overlay.install(lines, workspace)
    except (overlay.OverlayError, OSError) as err:
        for unpacked in fetched:
            name = unpacked.extension.name
            if pinned[name].packages and results[name].status != FAILED:
                results[name].status = FAILED
                results[name].reason = f"its Python packages were not installed: {err}"
                log.error(f"error: extensions.{name}: {results[name].reason}")


def _source(extension: Extension) -> str:
    return "github" if extension.github else "url"
