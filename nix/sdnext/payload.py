"""Estimate the image payload of the SD.Next environment from uv.lock.

    python nix/sdnext/payload.py [uv.lock]

For each locked package it takes the wheel uv2nix installs (lockwheels.py chooses it as
pyproject.nix does) and sums their sizes, as recorded in the lock (compressed: the installed
size is larger). Prints the total and the ten largest.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from lockwheels import LOCK, read_lock


def payload(lock_path: Path = LOCK) -> list[tuple[str, str, int]]:
    """(name, version, bytes) per package, the wheel uv2nix installs or the sdist it builds."""
    rows = []
    for package in read_lock(lock_path):
        if package.wheel is not None:
            rows.append((package.name, package.version, package.wheel.size))
        elif package.sdist_size:
            rows.append((package.name, package.version, package.sdist_size))
    return sorted(rows, key=lambda row: -row[2])


def main() -> None:
    lock_path = Path(sys.argv[1]) if len(sys.argv) > 1 else LOCK
    rows = payload(lock_path)
    total = sum(size for *_, size in rows)
    print(f"{len(rows)} packages, {total / 1e9:.2f} GB of wheels (compressed) for cp312 x86_64 Linux\n")
    print("| package | version | MB |")
    print("| --- | --- | ---: |")
    for name, version, size in rows[:10]:
        print(f"| {name} | {version} | {size / 1e6:.0f} |")


if __name__ == "__main__":
    main()
