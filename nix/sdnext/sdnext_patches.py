"""The image's changes to SD.Next's own files: the unified diffs in nix/sdnext/patches.

source.nix applies them to the pinned tag with nixpkgs' applyPatches (`patch -p1` per file, in
name order); the real-SD.Next test applies them to the tree it unpacks and bump.py checks that they
still apply at a new tag, both through `apply`, so what the tests run is what the image ships and
a patch that no longer applies fails loudly, named.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

PATCHES = Path(__file__).resolve().parent / "patches"


class PatchError(Exception):
    """A patch that does not apply: the message names the file and what `patch` said."""


def patch_files(folder: Path = PATCHES) -> list[Path]:
    """The patches in the order source.nix applies them (builtins.readDir's: by name)."""
    return sorted(folder.glob("*.patch"), key=lambda p: p.name)


def digest(folder: Path = PATCHES) -> str:
    """A short hash of the patches' names and bytes, for a cache of a patched tree."""
    h = hashlib.sha256()
    for patch in patch_files(folder):
        h.update(patch.name.encode() + b"\0" + patch.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def apply(tree: Path, folder: Path = PATCHES) -> list[str]:
    """Every patch applied to `tree` as applyPatches does (`patch -p1`); their names.

    --forward and --batch: a patch already applied, or one whose hunks do not match, fails
    instead of asking; no .orig or .rej files are left behind."""
    applied = []
    for patch in patch_files(folder):
        command = ["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-r", "-"]
        command += ["-d", str(tree), "-i", str(patch)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            said = (result.stdout + result.stderr).strip()[-1500:]
            raise PatchError(f"{patch} does not apply to {tree}:\n{said}")
        applied.append(patch.name)
    return applied
