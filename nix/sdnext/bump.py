"""Move the SD.Next pin to another tag: `provision/sdnext_pin.toml` and what depends on it.

    python nix/sdnext/bump.py TAG [--repo URL_OR_PATH] [--archives DIR] [--nearest NAME=REV]...
                                  [--patches DIR] [--python PYTHON] [--no-lock]

1. Resolves TAG in SD.Next's repository (default https://github.com/vladmandic/sdnext) and the
   submodules it records under extensions-builtin/ (the wiki is left out), each at the commit
   the tag pins: from `--archives DIR` when it holds `REPO-COMMIT.tar.gz` (a `git archive` with
   one top folder, as ../shared/sources has), else from a clone of the submodule's URL. A commit
   that neither has (a public snapshot may lack it) stops the bump, unless `--nearest NAME=REV`
   names the commit to use instead: the pin then records the tag's commit as `tag-rev` and why.
   The image's patches to SD.Next (nix/sdnext/patches, or `--patches DIR`) are applied to the
   tag's files as source.nix applies them: one that no longer applies stops the bump, named.
2. Computes the NAR hash fetchFromGitHub will see for each (the commit's files as GitHub's
   tarball holds them, through `nix-hash`), and rewrites the pin's source and extensions.
3. Compares requirements.txt at the tag with nix/sdnext/pyproject.toml's `==` pins and prints
   the differences to review, and proposes what installer.py installs at start that
   pyproject.toml lacks or pins otherwise (calls built from variables are left to a person).
4. Unless --no-lock: re-locks with uv (torch stays as pyproject.toml says), rewrites
   wheel-manifest.json and runs the emulated build check; prints packages added, removed and
   moved, which image layers change (and the MB of wheels a pull fetches anew), and the
   payload before and after.

The model folders and rescans of the new tag stay as they were for a person to decide, but the
script reads them at the tag (the `*_dir` / `*_models_path` options of modules/ui_definitions.py
or modules/shared.py, and the refresh routes of modules/api/) and prints what differs from the
pin's [categories] and [rescans].
Needs git and nix-hash (Debian's nix-bin); the lock step needs uv and PyPI (`--python` names the
interpreter uv locks for, so uv never tries to download one).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
REPO_ROOT = HERE.parent.parent
PIN = REPO_ROOT / "provision" / "sdnext_pin.toml"
_NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"

sys.path.insert(0, str(HERE))
import sdnext_patches  # noqa: E402 - beside this script, not a package
from lockwheels import read_lock, tomllib  # noqa: E402


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def show(clone: Path, rev: str, path: str) -> str:
    """A file at a commit, or "" when the commit has no such file."""
    try:
        return git("show", f"{rev}:{path}", cwd=clone)
    except subprocess.CalledProcessError:
        return ""


def sri_from_nix32(text: str) -> str:
    """nix-hash's base32 (Nix's own alphabet, least significant first) as an SRI sha256."""
    size = len(text) * 5 // 8
    out = bytearray(size)
    for n, char in enumerate(reversed(text)):
        digit, bit = _NIX32.index(char), n * 5
        i, j = divmod(bit, 8)
        out[i] |= (digit << j) & 0xFF
        if i + 1 < size:
            out[i + 1] |= digit >> (8 - j)
    return "sha256-" + base64.b64encode(bytes(out)).decode()


def nar_hash(repository: Path, rev: str) -> str:
    """The hash fetchFromGitHub checks: the NAR of the commit's files as GitHub's tarball has them."""
    archive = subprocess.run(["git", "archive", rev], cwd=repository, check=True, capture_output=True)
    return _tree_hash(archive.stdout, strip=0)


def archive_hash(archive: Path) -> str:
    """nar_hash of a commit from its `git archive` tarball (one top folder, gzipped or not)."""
    return _tree_hash(archive.read_bytes(), strip=1)


def _tree_hash(tar_bytes: bytes, strip: int) -> str:
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "source"
        tree.mkdir()
        gzipped = tar_bytes[:2] == b"\x1f\x8b"
        subprocess.run(
            ["tar", "-x", *(["-z"] if gzipped else []), f"--strip-components={strip}", "-C", str(tree)],
            input=tar_bytes,
            check=True,
        )
        base32 = subprocess.run(
            ["nix-hash", "--type", "sha256", "--base32", str(tree)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    return sri_from_nix32(base32)


def owner_repo(url: str) -> tuple[str, str]:
    parts = [p for p in re.split(r"[/:]", url.removesuffix(".git")) if p]
    return parts[-2], parts[-1]


class BumpError(Exception):
    """A bump that cannot go on: the message says what is missing and how to go on."""


def resolve(
    repo: str,
    tag: str,
    work: Path,
    archives: Path | None = None,
    nearest: dict | None = None,
    patches: Path = sdnext_patches.PATCHES,
) -> dict:
    """The tag's commit, its submodules (path -> url, commit), every NAR hash and the image's
    patches, which must apply to the tag's files."""
    nearest = nearest or {}
    clone = work / "sdnext"
    git("clone", "--quiet", "--no-checkout", repo, str(clone))
    rev = git("rev-parse", f"{tag}^{{commit}}", cwd=clone).strip()
    pin_patches = apply_patches(clone, rev, work / "patched", patches)
    gitmodules = show(clone, rev, ".gitmodules")
    urls = dict(re.findall(r"path\s*=\s*(\S+)\s*\n\s*url\s*=\s*(\S+)", gitmodules))
    owner, name = owner_repo(repo)
    pin = {"tag": tag, "source": {"owner": owner, "repo": name, "rev": tag, "hash": nar_hash(clone, rev)}}
    extensions = {}
    for line in git("ls-tree", "-r", rev, cwd=clone).splitlines():
        mode, _kind, commit, path = line.split(maxsplit=3)
        if mode != "160000" or not path.startswith("extensions-builtin/"):
            continue
        folder = path.split("/", 1)[1]
        url = urls[path]
        source = url if "://" in url or Path(url).is_absolute() else str((Path(repo) / url).resolve())
        sub_owner, sub_repo = owner_repo(url)
        entry = {"owner": sub_owner, "repo": sub_repo, "rev": commit}
        hash_ = extension_hash(source, sub_repo, commit, work / path.replace("/", "_"), archives)
        if hash_ is None and folder in nearest:
            instead = nearest[folder]
            hash_ = extension_hash(source, sub_repo, instead, work / path.replace("/", "_"), archives)
            if hash_ is None:
                raise BumpError(
                    f"{folder}: neither {commit} (the tag's) nor {instead} (--nearest) can be had"
                )
            entry = {
                "owner": sub_owner,
                "repo": sub_repo,
                "rev": instead,
                "tag-rev": commit,
                "deviation": f"{tag} pins {commit[:8]}, which no reachable source holds; "
                f"{instead[:8]} is the nearest commit that can be hashed",
            }
        elif hash_ is None:
            raise BumpError(
                f"{folder}: commit {commit} that {tag} pins is neither in --archives nor reachable at {url}; "
                f"give --nearest {folder}=REV (the nearest commit you can have) to pin that one instead"
            )
        entry["hash"] = hash_
        extensions[folder] = entry
    pin["extensions"] = dict(sorted(extensions.items()))
    pin["patches"] = pin_patches
    pin["requirements"] = show(clone, rev, "requirements.txt")
    pin["installer"] = show(clone, rev, "installer.py")
    pin["folders"] = folder_options(
        show(clone, rev, "modules/ui_definitions.py") or show(clone, rev, "modules/shared.py")
    )
    pin["rescans"] = rescan_routes(
        show(clone, rev, "modules/api/api.py")
        + "".join(show(clone, rev, f"modules/api/{m}.py") for m in ("loras", "endpoints"))
    )
    return pin


def apply_patches(clone: Path, rev: str, tree: Path, patches: Path) -> list[str]:
    """The names of the patches source.nix applies, each applied to the commit's files; a patch
    that does not apply stops the bump, named."""
    tree.mkdir()
    archive = subprocess.run(["git", "archive", rev], cwd=clone, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    try:
        return sdnext_patches.apply(tree, patches)
    except sdnext_patches.PatchError as error:
        raise BumpError(
            f"{error}\nmake it again against this tag's files (or delete it if the tag does what it did)"
        ) from None


def extension_hash(url: str, repo: str, commit: str, work: Path, archives: Path | None) -> str | None:
    """The NAR hash of one extension commit, from an archive or a clone; None when neither has it."""
    if archives is not None:
        for archive in (archives / f"{repo}-{commit}.tar.gz", archives / f"{repo}-{commit}.tar"):
            if archive.exists():
                return archive_hash(archive)
    try:
        if not work.exists():
            git("clone", "--quiet", "--no-checkout", url, str(work))
        git("cat-file", "-e", f"{commit}^{{commit}}", cwd=work)
    except subprocess.CalledProcessError:
        return None
    return nar_hash(work, commit)


_FOLDER_OPTION = re.compile(
    r"""["'](\w+?(?:_dir|_models_path))["']\s*:\s*OptionInfo\(\s*os\.path\.join\(\s*paths\.models_path\s*,"""
    r"""\s*((?:["'][^"']+["']\s*,?\s*)+)\)"""
)


def folder_options(source: str) -> dict[str, str]:
    """SD.Next's folder options under the models dir at the tag: option name -> folder."""
    return {
        option: "/".join(re.findall(r"""["']([^"']+)["']""", parts))
        for option, parts in _FOLDER_OPTION.findall(source)
    }


_RESCAN_ROUTE = re.compile(r"""add_api_route\(\s*["']/sdapi/v1/(refresh-[\w-]+)["'][^)]*\)""")


def rescan_routes(source: str) -> dict[str, int]:
    """POST /sdapi/v1/refresh-* at the tag: route -> the status code it answers (200 unless set)."""
    routes = {}
    for match in _RESCAN_ROUTE.finditer(source):
        status = re.search(r"status_code\s*=\s*(\d+)", match.group(0))
        routes[match.group(1)] = int(status.group(1)) if status else 200
    return routes


def review_folders(pin_text: str, folders: dict[str, str], rescans: dict[str, int]) -> list[str]:
    """What the tag's folders and rescan routes say that the pin's tables do not (for a person)."""
    old = tomllib.loads(pin_text)
    ours = {c["folder"] for c in old.get("categories", {}).values()}
    theirs = set(folders.values())
    lines = [f"folder {f}: in the pin's [categories], gone at the tag" for f in sorted(ours - theirs)]
    lines += [
        f"folder {f}: new at the tag ({o}); add a category if people download into it"
        for o, f in sorted(folders.items())
        if f not in ours
    ]
    known = set(old.get("rescans", {}))
    lines += [
        f"rescan {r}: new at the tag (answers {s})" for r, s in sorted(rescans.items()) if r not in known
    ]
    lines += [f"rescan {r}: in the pin, gone at the tag" for r in sorted(known - set(rescans))]
    return lines


def rewrite_pin(text: str, pin: dict) -> str:
    """The pin file with the new tag, source and extensions; every other table kept as it was."""
    head, _, rest = text.partition("\n[source]")
    head = re.sub(r'^tag = ".*"$', f'tag = "{pin["tag"]}"', head, flags=re.M)
    tail = rest[rest.index("\n# Config categories") :] if "\n# Config categories" in rest else ""
    lines = ["", "[source]", *(f'{k} = "{v}"' for k, v in pin["source"].items()), ""]
    lines.append(
        "# The submodules under extensions-builtin/ (the wiki submodule is left out: documentation only)."
    )
    for folder, source in pin["extensions"].items():
        lines += ["", f"[extensions.{folder}]", *(f"{k} = {json.dumps(v)}" for k, v in source.items())]
    return head + "\n".join(lines) + "\n" + tail


def pin_changes(requirements: str, pyproject: Path) -> list[str]:
    """requirements.txt pins that differ from (or are missing in) pyproject.toml's `==` pins."""
    ours = {}
    for dep in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        match = re.match(r"([A-Za-z0-9_.-]+)==([^;\s]+)", dep)
        if match:
            ours[match[1].lower().replace("_", "-")] = match[2]
    changes = []
    for line in requirements.splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)==([^;\s#]+)", line.strip())
        if not match:
            continue
        name, version = match[1].lower().replace("_", "-"), match[2]
        if ours.get(name) != version:
            changes.append(f"{name}: pyproject {ours.get(name, '(not pinned)')} -> requirements {version}")
    return changes


_INSTALL_CALL = re.compile(r"""\binstall\(\s*(['"])([^'"{}]+)\1""")


def installer_proposals(installer: str, pyproject: Path) -> list[str]:
    """What installer.py at the tag installs at start that pyproject.toml does not pin the same
    way: the image installs nothing at start, so each is a change to consider. Calls built from
    variables (f-strings) are left to the person reading the file."""
    ours = {}
    for dep in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        match = re.match(r"([A-Za-z0-9_.-]+)\s*(?:==\s*([^;\s]+))?", dep)
        if match:
            ours[match[1].lower().replace("_", "-")] = match[2]
    proposals, seen = [], set()
    for _quote, spec in _INSTALL_CALL.findall(installer):
        if spec.startswith("-") or "+" in spec.split()[0] or "://" in spec:
            continue  # pip options and git or URL installs: left to the person reading the file
        match = re.match(r"([A-Za-z0-9_.-]+)\s*(?:==\s*([^;\s,]+))?", spec.strip())
        if not match:
            continue
        name, version = match[1].lower().replace("_", "-"), match[2]
        if name in seen:
            continue
        seen.add(name)
        if name not in ours:
            pinned = f"=={version}" if version else " (unpinned)"
            proposals.append(
                f"installer.py installs {name}{pinned}: not in pyproject.toml; add it if the image needs it"
            )
        elif version and ours[name] != version:
            proposals.append(
                f"installer.py installs {name}=={version}: pyproject.toml pins {ours[name] or 'no version'}"
            )
    return proposals


def layer_changes(before: list, after: list, source_changed: bool, extensions_changed: int) -> list[str]:
    """Which image layers a pull has to fetch anew. Every locked package is a store path of its
    own (a layer of its own when big: streamLayeredImage, maxLayers 120; the small ones share
    the last layer); the source, each extension and the virtualenv are store paths as well."""
    old = {(p.name, p.version) for p in before}
    changed = [p for p in after if (p.name, p.version) not in old]
    size = sum((p.wheel.size if p.wheel else p.sdist_size) for p in changed)
    lines = []
    if source_changed:
        lines.append("image layer: the SD.Next source (new tag)")
    if extensions_changed:
        lines.append(f"image layers: {extensions_changed} extension source(s)")
    if changed or source_changed:
        lines.append("image layers: sdnext-env (the virtualenv) and the sdnext wrapper")
    for package in sorted(changed, key=lambda p: -(p.wheel.size if p.wheel else p.sdist_size)):
        bytes_ = package.wheel.size if package.wheel else package.sdist_size
        lines.append(f"image layer: {package.name} {package.version} ({bytes_ / 1e6:.1f} MB wheel)")
    reused = len(after) - len(changed)
    lines.append(
        f"{len(changed)} package(s) changed, about {size / 1e6:.0f} MB of wheels; {reused} reused as they are"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bump", description=__doc__.splitlines()[0])
    parser.add_argument("tag")
    parser.add_argument("--repo", default="https://github.com/vladmandic/sdnext")
    parser.add_argument("--pin", type=Path, default=PIN)
    parser.add_argument("--pyproject", type=Path, default=HERE / "pyproject.toml")
    parser.add_argument("--archives", type=Path, help="a folder of REPO-COMMIT.tar.gz git archives")
    parser.add_argument(
        "--nearest",
        action="append",
        default=[],
        metavar="NAME=REV",
        help="pin extension NAME at REV when the tag's commit cannot be had (recorded with why)",
    )
    parser.add_argument(
        "--patches", type=Path, default=sdnext_patches.PATCHES, help="the image's patches to SD.Next"
    )
    parser.add_argument("--python", help="the Python 3.12 uv locks for (else uv's own choice)")
    parser.add_argument("--no-lock", action="store_true", help="do not re-lock (offline, tests)")
    args = parser.parse_args(argv)
    nearest = dict(item.split("=", 1) for item in args.nearest)
    before = args.pin.read_text()
    try:
        with tempfile.TemporaryDirectory() as work:
            pin = resolve(args.repo, args.tag, Path(work), args.archives, nearest, args.patches)
    except BumpError as error:
        print(f"bump: {error}", file=sys.stderr)
        return 1
    old = tomllib.loads(before)
    if "://" not in args.repo:  # a local clone or snapshot: GitHub's owner/repo stay the pin's
        pin["source"].update(owner=old["source"]["owner"], repo=old["source"]["repo"])
    args.pin.write_text(rewrite_pin(before, pin))
    print(f"pin: {old['tag']} -> {pin['tag']} ({args.pin})")
    for folder, source in pin["extensions"].items():
        was = old.get("extensions", {}).get(folder, {}).get("rev")
        print(f"  extension {folder}: {was or '(new)'} -> {source['rev']}")
        if "deviation" in source:
            print(f"    deviation: {source['deviation']}")
    for folder in sorted(set(old.get("extensions", {})) - set(pin["extensions"])):
        print(f"  extension {folder}: removed")
    for name in pin["patches"]:
        print(f"  patch {name}: applies at {pin['tag']}")
    for change in pin_changes(pin["requirements"], args.pyproject):
        print(f"  requirements.txt: {change}")
    for proposal in installer_proposals(pin["installer"], args.pyproject):
        print(f"  {proposal}")
    for line in review_folders(before, pin["folders"], pin["rescans"]):
        print(f"  {line}")
    print("  review at the tag: installer.py (what it installs at start), modules/ui_definitions.py")
    print("  (folders), modules/api/ (rescan routes); then update [categories] and [rescans] in the pin")
    if args.no_lock:
        return 0
    locked_before = read_lock()
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never")
    if args.python:
        env["UV_PYTHON"] = args.python
    subprocess.run(["uv", "lock"], cwd=HERE, check=True, env=env)
    locked_after = read_lock()
    packages_before = {p.name: p.version for p in locked_before}
    packages_after = {p.name: p.version for p in locked_after}
    for name in sorted(set(packages_after) | set(packages_before)):
        a, b = packages_before.get(name), packages_after.get(name)
        if a != b:
            print(f"  {name}: {a or '(new)'} -> {b or '(removed)'}")
    moved = sum(
        1
        for folder, source in pin["extensions"].items()
        if old.get("extensions", {}).get(folder, {}).get("rev") != source["rev"]
    )
    for line in layer_changes(locked_before, locked_after, old["tag"] != pin["tag"], moved):
        print(f"  {line}")
    subprocess.run([sys.executable, str(HERE / "payload.py")], check=True)
    subprocess.run([sys.executable, str(HERE / "wheel_manifest.py")], check=True)
    return subprocess.run([sys.executable, str(HERE / "buildcheck.py")]).returncode


if __name__ == "__main__":
    sys.exit(main())
