"""Estimate the image payload of the SD.Next environment from uv.lock.

    python nix/sdnext/payload.py [uv.lock]

For each locked package it picks the wheel that Python 3.12 on x86_64 Linux would install
(cp312 or abi3 or py3 tags; manylinux x86_64 or any platform) and sums their sizes, as
recorded in the lock (compressed: the installed size is larger). Prints the total and the ten
largest.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

_WHEEL = re.compile(r"-(?P<python>[^-]+)-(?P<abi>[^-]+)-(?P<platform>[^-]+)\.whl$")


def wheel_rank(filename: str) -> int | None:
    """Lower is better; None when Python 3.12 on x86_64 Linux cannot install it."""
    match = _WHEEL.search(filename)
    if not match:
        return None
    pythons, abis, platforms = (match[k].split(".") for k in ("python", "abi", "platform"))
    if not any(p in ("cp312", "py3", "py2.py3") or p.startswith("py3") for p in pythons) and not (
        "abi3" in abis and any(p.startswith("cp3") for p in pythons)
    ):
        return None
    if any(p == "any" for p in platforms):
        return 2
    if any(re.match(r"(many|musl)?linux.*_x86_64$", p) for p in platforms):
        return 0 if "cp312" in pythons else 1
    return None


def payload(lock_path: Path) -> list[tuple[str, str, int]]:
    lock = tomllib.loads(lock_path.read_text())
    rows = []
    for package in lock["package"]:
        candidates = []
        for wheel in package.get("wheels", []):
            name = wheel["url"].rsplit("/", 1)[-1]
            rank = wheel_rank(name)
            if rank is not None and "size" in wheel:
                candidates.append((rank, wheel["size"]))
        if candidates:
            rows.append((package["name"], package["version"], min(candidates)[1]))
        elif "sdist" in package and "size" in package["sdist"]:
            rows.append((package["name"], package["version"], package["sdist"]["size"]))
    return sorted(rows, key=lambda row: -row[2])


def main() -> None:
    lock_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("uv.lock")
    rows = payload(lock_path)
    total = sum(size for *_, size in rows)
    print(f"{len(rows)} packages, {total / 1e9:.2f} GB of wheels (compressed) for cp312 x86_64 Linux\n")
    print("| package | version | MB |")
    print("| --- | --- | ---: |")
    for name, version, size in rows[:10]:
        print(f"| {name} | {version} | {size / 1e6:.0f} |")


if __name__ == "__main__":
    main()
