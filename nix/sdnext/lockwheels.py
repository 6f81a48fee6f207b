"""What uv2nix builds from uv.lock: for each locked package, the wheel it installs or the source
it builds, chosen the way pyproject.nix chooses (`sourcePreference = "wheel"`).

The rules modelled, read at pyproject.nix's lib/pypa.nix (`selectWheels`, `isABITagCompatible`,
`isPythonTagCompatible`, `isPlatformTagCompatible`) and uv2nix's lib/build.nix (`format`):
- a wheel is compatible with CPython 3.12 on x86_64-linux (glibc) when one ABI tag is `none`,
  `any`, `abi3` or `cp312`, one Python tag is `py3`, `py312`, `cp3` or `cp3N` with N <= 12, and
  one platform tag is `any` or `manylinux*_x86_64`;
- among compatible wheels the highest Python tag wins (cp312 > cp37-abi3 > py3); ties keep the
  lock's order (Nix's sort is stable);
- no compatible wheel: the sdist is built; a git source is always built.

Used by payload.py, wheel_manifest.py and buildcheck.py, so all three see the same choice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

LOCK = Path(__file__).with_name("uv.lock")

# The newest glibc a manylinux_X_Y tag may ask for: nixos-26.05's glibc is 2.42.
GLIBC = (2, 42)


@dataclass(frozen=True)
class Wheel:
    filename: str
    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Locked:
    """One package of uv.lock and how Nix gets it."""

    name: str
    version: str
    source: str  # "registry", "git", ...
    wheel: Wheel | None  # the wheel uv2nix installs; None when it builds from source
    sdist_url: str | None = None
    sdist_size: int = 0
    dependencies: tuple[str, ...] = field(default=())

    @property
    def built_from_source(self) -> bool:
        return self.wheel is None


_WHEEL_NAME = re.compile(
    r"^(?P<dist>[^-]+)-(?P<version>[^-]+)(-(?P<build>\d[^-]*))?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$"
)


def python_tag_rank(tag: str) -> int | None:
    """pyproject.nix's numeric language tag for CPython 3.12, None when incompatible."""
    match = re.fullmatch(r"(py|cp)(\d*)", tag)
    if not match:
        return None
    version = match[2]
    if version == "":
        return 0
    if version == "3" or (version.startswith("3") and int(version) <= 312):
        return int(version)
    return None


def platform_compatible(tag: str) -> bool:
    if tag == "any":
        return True
    if tag in ("manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"):
        return True
    match = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", tag)
    return bool(match) and (int(match[1]), int(match[2])) <= GLIBC


def wheel_rank(filename: str) -> int | None:
    """The best Python tag of a compatible wheel (higher is preferred), None when incompatible."""
    match = _WHEEL_NAME.match(filename)
    if not match:
        return None
    if not any(abi in ("none", "any", "abi3", "cp312") for abi in match["abi"].split(".")):
        return None
    if not any(platform_compatible(p) for p in match["plat"].split(".")):
        return None
    ranks = [r for r in (python_tag_rank(t) for t in match["py"].split(".")) if r is not None]
    return max(ranks) if ranks else None


def select_wheel(wheels: list[dict]) -> Wheel | None:
    best: tuple[int, dict] | None = None
    for wheel in wheels:
        filename = wheel["url"].rsplit("/", 1)[-1]
        rank = wheel_rank(filename)
        if rank is not None and (best is None or rank > best[0]):
            best = (rank, wheel)
    if best is None:
        return None
    wheel = best[1]
    filename = wheel["url"].rsplit("/", 1)[-1]
    return Wheel(filename, wheel["url"], wheel["hash"].removeprefix("sha256:"), wheel.get("size", 0))


def read_lock(path: Path = LOCK) -> list[Locked]:
    """Every package Nix builds for the environment (the virtual root project left out)."""
    lock = tomllib.loads(path.read_text())
    packages = []
    for package in lock["package"]:
        source = next(iter(package["source"]))
        if source == "virtual":
            continue
        wheel = select_wheel(package.get("wheels", [])) if source == "registry" else None
        packages.append(
            Locked(
                name=package["name"],
                version=package["version"],
                source=source,
                wheel=wheel,
                sdist_url=package.get("sdist", {}).get("url"),
                sdist_size=package.get("sdist", {}).get("size", 0),
                dependencies=tuple(d["name"] for d in package.get("dependencies", [])),
            )
        )
    return packages
