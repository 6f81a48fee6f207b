"""Move the SD.Next pin to another tag: `provision/sdnext_pin.toml` and what depends on it.

    python nix/sdnext/bump.py TAG [--repo URL_OR_PATH] [--no-lock]

1. Resolves TAG in SD.Next's repository (default https://github.com/vladmandic/sdnext) and the
   submodules it records under extensions-builtin/ (the wiki is left out), each at the commit
   the tag pins.
2. Computes the NAR hash fetchFromGitHub will see for each (`git archive` of the commit, as
   GitHub's tarball holds it, through `nix-hash`), and rewrites the pin's source and extensions.
3. Compares requirements.txt at the tag with nix/sdnext/pyproject.toml's `==` pins and prints
   the differences to review, and proposes what installer.py installs at start that
   pyproject.toml lacks or pins otherwise (calls built from variables are left to a person).
4. Unless --no-lock: re-locks with uv (torch stays as pyproject.toml says), rewrites
   wheel-manifest.json and runs the emulated build check; prints packages added, removed and
   moved, which image layers change (and the MB of wheels a pull fetches anew), and the
   payload before and after.

The model folders and rescans of the new tag stay as they were: the script names the files of
SD.Next that say them (modules/shared.py, modules/api/api.py) so a person checks them.
Needs git and nix-hash (Debian's nix-bin); the lock step needs uv and PyPI.
"""

from __future__ import annotations

import argparse
import base64
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
from lockwheels import read_lock, tomllib  # noqa: E402 - beside this script, not a package


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
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "source"
        tree.mkdir()
        archive = subprocess.run(["git", "archive", rev], cwd=repository, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
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


def resolve(repo: str, tag: str, work: Path) -> dict:
    """The tag's commit, its submodules (path -> url, commit) and every NAR hash."""
    clone = work / "sdnext"
    git("clone", "--quiet", "--no-checkout", repo, str(clone))
    rev = git("rev-parse", f"{tag}^{{commit}}", cwd=clone).strip()
    gitmodules = show(clone, rev, ".gitmodules")
    urls = dict(re.findall(r"path\s*=\s*(\S+)\s*\n\s*url\s*=\s*(\S+)", gitmodules))
    owner, name = owner_repo(repo)
    pin = {"tag": tag, "source": {"owner": owner, "repo": name, "rev": tag, "hash": nar_hash(clone, rev)}}
    extensions = {}
    for line in git("ls-tree", "-r", rev, cwd=clone).splitlines():
        mode, _kind, commit, path = line.split(maxsplit=3)
        if mode != "160000" or not path.startswith("extensions-builtin/"):
            continue
        url = urls[path]
        sub = work / path.replace("/", "_")
        source = url if "://" in url or Path(url).is_absolute() else str((Path(repo) / url).resolve())
        git("clone", "--quiet", "--no-checkout", source, str(sub))
        sub_owner, sub_repo = owner_repo(url)
        extensions[path.split("/", 1)[1]] = {
            "owner": sub_owner,
            "repo": sub_repo,
            "rev": commit,
            "hash": nar_hash(sub, commit),
        }
    pin["extensions"] = dict(sorted(extensions.items()))
    pin["requirements"] = show(clone, rev, "requirements.txt")
    pin["installer"] = show(clone, rev, "installer.py")
    return pin


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
        lines += ["", f"[extensions.{folder}]", *(f'{k} = "{v}"' for k, v in source.items())]
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
    parser.add_argument("--no-lock", action="store_true", help="do not re-lock (offline, tests)")
    args = parser.parse_args(argv)
    before = args.pin.read_text()
    with tempfile.TemporaryDirectory() as work:
        pin = resolve(args.repo, args.tag, Path(work))
    args.pin.write_text(rewrite_pin(before, pin))
    old = tomllib.loads(before)
    print(f"pin: {old['tag']} -> {pin['tag']} ({args.pin})")
    for folder, source in pin["extensions"].items():
        was = old.get("extensions", {}).get(folder, {}).get("rev")
        print(f"  extension {folder}: {was or '(new)'} -> {source['rev']}")
    for folder in sorted(set(old.get("extensions", {})) - set(pin["extensions"])):
        print(f"  extension {folder}: removed")
    for change in pin_changes(pin["requirements"], args.pyproject):
        print(f"  requirements.txt: {change}")
    for proposal in installer_proposals(pin["installer"], args.pyproject):
        print(f"  {proposal}")
    print("  review at the tag: installer.py (what it installs at start), modules/shared.py (folders),")
    print("  modules/api/api.py (rescan routes); then update [categories] and [rescans] in the pin")
    if args.no_lock:
        return 0
    locked_before = read_lock()
    subprocess.run(["uv", "lock"], cwd=HERE, check=True)
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
