"""The Nix build of the SD.Next environment, emulated from data: would it succeed, and would the
libraries load at run time?

    python nix/sdnext/buildcheck.py          # totals, then every problem; exit 1 if any

Reads uv.lock (which package is a wheel, which a source build: lockwheels.py),
wheel-manifest.json (what each wheel holds: wheel_manifest.py) and build-fixes.toml (the fixes,
which wheel-fixes.nix applies from the same file), and checks what would stop `nix build`:

- build systems: uv2nix gives a package built from source only `pyproject-hook`, so each one
  needs its backend declared;
- libraries: autoPatchelfHook runs over every ELF file of every wheel and fails on a DT_NEEDED
  it cannot find. Modelled on nixpkgs' pkgs/by-name/au/auto-patchelf/source/auto-patchelf.py:
  glibc's own libraries are left to the dynamic linker; then the wheel's own *.so* files (any
  folder), then the lib/ folders of buildInputs (pyproject.nix adds the manylinux2014 set for a
  manylinux wheel; build-fixes.toml adds nixpkgs libraries), then every folder holding a *.so*
  below each addAutoPatchelfSearchPath argument (other wheels' folders); else it must be in
  autoPatchelfIgnoreMissingDeps (fnmatch patterns). RUNPATH becomes the folders found plus
  appendRunpaths, and stays as shipped only when both are empty;
- loads by name: a library that loads another of its wheel by name (dlopen, not DT_NEEDED)
  finds it only through its own RUNPATH, so that must still reach it after patching;
- collisions: pyproject.nix's venv builder stops on two wheels installing one path with
  different bytes (byte-code excepted).
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from lockwheels import LOCK, Locked, read_lock, tomllib

HERE = Path(__file__).parent
FIXES = HERE / "build-fixes.toml"
MANIFEST = HERE / "wheel-manifest.json"
REGENERATE = "python nix/sdnext/wheel_manifest.py"

# Files in glibc's lib/ (nixpkgs glibc 2.4x): auto-patchelf leaves these to the dynamic linker.
GLIBC = frozenset(
    {
        "ld-linux-x86-64.so.2",
        "libBrokenLocale.so.1",
        "libanl.so.1",
        "libc.so.6",
        "libc_malloc_debug.so.0",
        "libdl.so.2",
        "libm.so.6",
        "libmvec.so.1",
        "libnsl.so.1",
        "libnss_dns.so.2",
        "libnss_files.so.2",
        "libpthread.so.0",
        "libresolv.so.2",
        "librt.so.1",
        "libthread_db.so.1",
        "libutil.so.1",
        "libgcc_s.so.1",  # glibc's lib/ carries a copy (and manylinux2014 maps it to glibc)
    }
)

# pythonManylinuxPackages.manylinux2014 (pkgs/development/interpreters/python/manylinux/default.nix,
# PEP 599), which pyproject.nix adds to every manylinux wheel's buildInputs. No libz, no libexpat.
MANYLINUX2014 = frozenset(
    {
        "libgcc_s.so.1",
        "libstdc++.so.6",
        "libm.so.6",
        "libdl.so.2",
        "librt.so.1",
        "libc.so.6",
        "libnsl.so.1",
        "libutil.so.1",
        "libpthread.so.0",
        "libresolv.so.2",
        "libX11.so.6",
        "libXext.so.6",
        "libXrender.so.1",
        "libICE.so.6",
        "libSM.so.6",
        "libGL.so.1",
        "libgobject-2.0.so.0",
        "libgthread-2.0.so.0",
        "libglib-2.0.so.0",
    }
)


@dataclass(frozen=True)
class WheelFix:
    """One [wheel.NAME] table of build-fixes.toml."""

    search: dict[str, list[str]] = field(default_factory=dict)  # wheel -> folders in site-packages
    libraries: list[str] = field(default_factory=list)  # nixpkgs attributes
    ignore: dict[str, str] = field(default_factory=dict)  # fnmatch pattern -> reason
    keep_origin: str = ""  # why $ORIGIN is appended to RUNPATH ("" = not appended)


@dataclass(frozen=True)
class Fixes:
    build_systems: dict[str, list[str]]
    nixpkgs: dict[str, list[str]]  # attribute -> sonames in its lib/
    wheels: dict[str, WheelFix]


def read_fixes(path: Path = FIXES) -> Fixes:
    data = tomllib.loads(path.read_text())
    wheels = {
        name: WheelFix(
            search=table.get("search", {}),
            libraries=table.get("libraries", []),
            ignore=table.get("ignore", {}),
            keep_origin=table.get("keep-origin", ""),
        )
        for name, table in data.get("wheel", {}).items()
    }
    return Fixes(data.get("build-system", {}), data.get("nixpkgs", {}), wheels)


def read_manifest(path: Path = MANIFEST) -> dict[str, dict]:
    return json.loads(path.read_text())["wheels"]


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    rules: Counter = field(default_factory=Counter)  # how each DT_NEEDED was resolved
    elf_files: int = 0
    wheels: int = 0
    runpaths: dict[str, list[str]] = field(default_factory=dict)  # "package:path" -> after patching


def check_build_systems(packages: list[Locked], fixes: Fixes, report: Report) -> None:
    built = {p.name for p in packages if p.built_from_source}
    for name in sorted(built - set(fixes.build_systems)):
        report.problems.append(
            f"{name} is built from source (no cp312 x86_64 wheel in uv.lock) and has no build system: "
            f'add `{name} = ["setuptools", "wheel"]` (or its backend) to [build-system] in build-fixes.toml'
        )
    for name in sorted(set(fixes.build_systems) - built):
        report.problems.append(f"[build-system] {name}: not built from source by uv.lock; remove the entry")


def check_manifest_matches_lock(packages: list[Locked], manifest: dict[str, dict], report: Report) -> None:
    locked = {p.wheel.sha256: p for p in packages if p.wheel}
    for sha in sorted(set(locked) - set(manifest)):
        report.problems.append(
            f"wheel-manifest.json lacks {locked[sha].wheel.filename} (uv.lock changed): run `{REGENERATE}`"
        )
    for sha in sorted(set(manifest) - set(locked)):
        report.problems.append(
            f"wheel-manifest.json has {manifest[sha]['filename']}, which uv.lock no longer installs: "
            f"run `{REGENERATE}`"
        )


def library_folders(entry: dict, below: str) -> dict[str, str]:
    """addAutoPatchelfSearchPath DIR: file name -> folder, for every *.so* below DIR (recursive)."""
    found = {}
    for path, info in entry["elf"].items():
        name, folder = posixpath.basename(path), posixpath.dirname(path)
        if ".so" in name and "skipped" not in info and fnmatch.fnmatch(folder + "/", below + "/*"):
            found.setdefault(name, folder)
    return found


@dataclass
class Providers:
    """Where autoPatchelf looks for one wheel's libraries, in its order; each value is where the
    library is (a folder of the wheel, or <the store path> it comes from)."""

    own: dict[str, str]
    build_inputs: dict[str, str]
    searched: dict[str, str]
    rules: dict[str, str] = field(default_factory=dict)  # file name -> how it was found


def providers(package: str, entry: dict, by_name: dict, fixes: Fixes, report: Report) -> Providers:
    fix = fixes.wheels.get(package, WheelFix())
    found = Providers(own=library_folders(entry, "site-packages"), build_inputs={}, searched={})
    found.rules.update(dict.fromkeys(found.own, "the wheel's own libraries"))
    platforms = entry["filename"].removesuffix(".whl").split("-")[-1].split(".")
    if any(tag.startswith("manylinux") for tag in platforms):
        for soname in MANYLINUX2014:
            found.build_inputs[soname] = "<manylinux2014>"
            found.rules.setdefault(soname, "manylinux2014")
    for attribute in fix.libraries:
        if attribute not in fixes.nixpkgs:
            report.problems.append(f"[wheel.{package}] libraries: {attribute} is not in [nixpkgs]")
        for soname in fixes.nixpkgs.get(attribute, []):
            found.build_inputs.setdefault(soname, f"<{attribute}>")
            found.rules.setdefault(soname, f"nixpkgs {attribute}")
    for other, folders in fix.search.items():
        if other not in by_name:
            report.problems.append(f"[wheel.{package}] search: {other} is not a wheel of uv.lock")
            continue
        for folder in folders:
            libraries = library_folders(by_name[other], f"site-packages/{folder}")
            if not libraries:
                report.problems.append(f"[wheel.{package}] search: {other} has no libraries in {folder}")
            for soname, where in libraries.items():
                found.searched.setdefault(soname, f"<{other}>/{where}")
                found.rules.setdefault(soname, f"search path into {other}")
    return found


def check_libraries(packages: list[Locked], manifest: dict[str, dict], fixes: Fixes, report: Report) -> None:
    by_name = {p.name: manifest[p.wheel.sha256] for p in packages if p.wheel and p.wheel.sha256 in manifest}
    for name in sorted(set(fixes.wheels) - set(by_name)):
        report.problems.append(f"[wheel.{name}] in build-fixes.toml: no such wheel in uv.lock; remove it")
    for package, entry in sorted(by_name.items()):
        report.wheels += 1
        fix = fixes.wheels.get(package, WheelFix())
        found = providers(package, entry, by_name, fixes, report)
        for path, info in entry["elf"].items():
            if "skipped" not in info:
                report.elf_files += 1
                final = patch(package, path, info, fix, found, report)
                check_loads_by_name(package, entry, path, info, final, report)


def patch(package: str, path: str, info: dict, fix: WheelFix, found: Providers, report: Report) -> list[str]:
    """One file through autoPatchelf: counts how each need is met, returns the new RUNPATH."""
    rpath: list[str] = []
    for needed in info["needed"]:
        where = found.own.get(needed) or found.build_inputs.get(needed) or found.searched.get(needed)
        if needed in GLIBC:
            report.rules["glibc (left to the dynamic linker)"] += 1
        elif where:
            report.rules[found.rules[needed]] += 1
            rpath.append(where)
        elif any(fnmatch.fnmatch(needed, pattern) for pattern in fix.ignore):
            report.rules["ignored with a reason"] += 1
        else:
            report.problems.append(
                f"{package}: {path.removeprefix('site-packages/')} needs {needed}, which autoPatchelf cannot "
                f"find: give [wheel.{package}] in build-fixes.toml a `search` folder of the wheel that has "
                "it, a nixpkgs library, or an `ignore` entry with the reason"
            )
    if fix.keep_origin:
        rpath.append("$ORIGIN")
    final = list(dict.fromkeys(rpath)) if rpath else list(info["runpath"])
    report.runpaths[f"{package}:{path}"] = final
    return final


def check_loads_by_name(
    package: str, entry: dict, path: str, info: dict, final: list[str], report: Report
) -> None:
    for loaded in info.get("loads", []):
        homes = {
            posixpath.dirname(p)
            for p in entry["elf"]
            if posixpath.basename(p) == loaded and entry["files"][p] != entry["files"][path]
        }
        # Only what the wheel as shipped reaches and the patched file no longer does.
        if homes & reached(info["runpath"], path) and not homes & reached(final, path):
            report.problems.append(
                f"{package}: {path.removeprefix('site-packages/')} loads {loaded} by name from its own "
                f"folder, which the patched RUNPATH ({':'.join(final)}) no longer has: give "
                f'[wheel.{package}] a `keep-origin = "<why>"` (appendRunpaths) in build-fixes.toml'
            )


def reached(runpath: list[str], path: str) -> set[str]:
    """The folders of the wheel a RUNPATH names: $ORIGIN is the file's own folder; the folders
    autoPatchelf found in the wheel itself are written relative to it (site-packages/...)."""
    folder = posixpath.dirname(path)
    return {
        posixpath.normpath(e.replace("${ORIGIN}", folder).replace("$ORIGIN", folder))
        for e in runpath
        if "ORIGIN" in e or e.startswith("site-packages/")
    }


def check_collisions(manifest: dict[str, dict], report: Report) -> None:
    owners: dict[str, tuple[str, str]] = {}
    for entry in manifest.values():
        for path, digest in entry["files"].items():
            if "/__pycache__/" in path and path.endswith(".pyc"):
                continue
            first = owners.setdefault(path, (entry["package"], digest))
            if first[1] != digest:
                report.problems.append(
                    f"{first[0]} and {entry['package']} both install {path} with different bytes "
                    "(FileCollisionError in the venv): keep one of them out of uv.lock"
                )


def check(lock: Path = LOCK, manifest_path: Path = MANIFEST, fixes_path: Path = FIXES) -> Report:
    packages = read_lock(lock)
    manifest = read_manifest(manifest_path)
    fixes = read_fixes(fixes_path)
    report = Report()
    check_build_systems(packages, fixes, report)
    check_manifest_matches_lock(packages, manifest, report)
    check_libraries(packages, manifest, fixes, report)
    check_collisions(manifest, report)
    return report


def main() -> int:
    report = check()
    print(f"{report.wheels} wheels, {report.elf_files} ELF files patched by autoPatchelf")
    for rule, count in report.rules.most_common():
        print(f"  {count:5d} needs resolved: {rule}")
    for problem in report.problems:
        print(f"problem: {problem}")
    print(f"{len(report.problems)} problems")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
