"""Write wheel-manifest.json: what each binary wheel of uv.lock installs and links against.

    python nix/sdnext/wheel_manifest.py [--cache DIR] [--jobs N]

Downloads every wheel uv2nix installs (lockwheels.py chooses it) once into a cache outside the
repository (default ~/.cache/sdnext-wheels, checked against the lock's sha256), then records,
keyed by that sha256:
- `files`: every installed path (site-packages/..., bin/..., include/..., data/...) with its
  RECORD hash; console scripts as bin/NAME with their entry point;
- `elf`: per ELF file its DT_NEEDED, RUNPATH, SONAME, whether auto-patchelf skips it, and
  `loads`: the names of libraries of the same wheel that the file mentions without needing
  them (it loads them by name at run time, e.g. cuDNN's sub-libraries).

buildcheck.py reads the manifest offline; a re-lock without re-running this fails there.
Needs pyelftools (the test extras have it) and PyPI.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import configparser
import csv
import hashlib
import io
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import requests
from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection

sys.path.insert(0, str(Path(__file__).parent))
from lockwheels import LOCK, Locked, read_lock

MANIFEST = Path(__file__).with_name("wheel-manifest.json")
_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.+-")


def mentions(data: bytes, name: bytes) -> bool:
    """Whether a library name occurs in the file as a whole word (bytes.find: fast on 1 GB)."""
    start = data.find(name)
    while start != -1:
        end = start + len(name)
        if (start == 0 or data[start - 1] not in _NAME_CHARS) and (
            end == len(data) or data[end] not in _NAME_CHARS
        ):
            return True
        start = data.find(name, start + 1)
    return False


def fetch(package: Locked, cache: Path) -> Path:
    """The wheel file in the cache, downloaded and checked when missing."""
    wheel = package.wheel
    assert wheel is not None
    target = cache / f"{wheel.sha256}.whl"
    if target.exists():
        return target
    partial = target.with_suffix(".part")
    digest = hashlib.sha256()
    with requests.get(wheel.url, stream=True, timeout=60) as response:
        response.raise_for_status()
        with open(partial, "wb") as out:
            for chunk in response.iter_content(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    if digest.hexdigest() != wheel.sha256:
        partial.unlink()
        raise RuntimeError(f"{wheel.filename}: sha256 {digest.hexdigest()} is not the lock's {wheel.sha256}")
    partial.rename(target)
    return target


def installed_path(member: str) -> str | None:
    """Where a wheel member lands in the environment (None for the .data folder itself)."""
    first, _, rest = member.partition("/")
    if first.endswith(".data"):
        scheme, _, inner = rest.partition("/")
        if not inner:
            return None
        return {
            "purelib": "site-packages/",
            "platlib": "site-packages/",
            "scripts": "bin/",
            "headers": "include/",
            "data": "data/",
        }[scheme] + inner
    return "site-packages/" + member


def inspect_elf(path: Path) -> dict:
    with open(path, "rb") as stream:
        elf = ELFFile(stream)
        info = {"needed": [], "runpath": [], "soname": None, "dlopen": []}
        for section in elf.iter_sections():
            if isinstance(section, DynamicSection):
                for tag in section.iter_tags():
                    if tag.entry.d_tag == "DT_NEEDED":
                        info["needed"].append(tag.needed)
                    elif tag.entry.d_tag in ("DT_RUNPATH", "DT_RPATH") and not info["runpath"]:
                        info["runpath"] = (
                            tag.runpath.split(":") if hasattr(tag, "runpath") else tag.rpath.split(":")
                        )
                    elif tag.entry.d_tag == "DT_SONAME":
                        info["soname"] = tag.soname
            elif isinstance(section, NoteSection) and section.name == ".note.dlopen":
                for note in section.iter_notes():
                    if note["n_name"] == "FDO":
                        for entry in json.loads(note["n_desc"].decode().rstrip("\0")):
                            info["dlopen"].append(entry["soname"])
        # auto-patchelf skips static executables, files without segments and other architectures.
        static = elf.header["e_type"] == "ET_EXEC" and not elf.get_section_by_name(".interp")
        if static or elf.num_segments() == 0 or elf.get_machine_arch() != "x64":
            info["skipped"] = (
                "static" if static else ("no segments" if elf.num_segments() == 0 else elf.get_machine_arch())
            )
        info["executable"] = bool(elf.get_section_by_name(".interp"))
    if not info["dlopen"]:
        del info["dlopen"]
    return info


def inspect_wheel(package: Locked, wheel_file: Path) -> dict:
    files: dict[str, str] = {}
    elf: dict[str, dict] = {}
    contents: dict[str, Path] = {}
    with zipfile.ZipFile(wheel_file) as archive, tempfile.TemporaryDirectory() as scratch:
        record_name = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
        rows = csv.reader(io.StringIO(archive.read(record_name).decode()))
        recorded = {row[0]: row[1] for row in rows if row}
        for member in archive.infolist():
            if member.is_dir():
                continue
            target = installed_path(member.filename)
            if target is None:
                continue
            hashed = recorded.get(member.filename) or ""
            if not hashed:  # RECORD lists itself without a hash
                digest = hashlib.sha256(archive.read(member)).digest()
                hashed = "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            files[target] = hashed
            with archive.open(member) as stream:
                if stream.read(4) != b"\x7fELF":
                    continue
            extracted = Path(archive.extract(member, scratch))
            try:
                elf[target] = inspect_elf(extracted)
            except ELFError as error:
                elf[target] = {"skipped": f"not parseable: {error}"}
            contents[target] = extracted
        entry_points = next(
            (n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")), None
        )
        if entry_points:
            parser = configparser.ConfigParser(delimiters=("=",))
            parser.optionxform = str
            parser.read_file(io.StringIO(archive.read(entry_points).decode()))
            for section in ("console_scripts", "gui_scripts"):
                if parser.has_section(section):
                    for name, target in parser.items(section):
                        files[f"bin/{name}"] = f"entry-point={target.strip()}"
        # A library may name a sibling without its version (cuDNN: "libcudnn_graph.so", then
        # ".9" appended at run time), so the unversioned stem counts as a mention too.
        library_names = sorted({Path(p).name for p in elf if ".so" in Path(p).name})
        stems = {name: name[: name.index(".so") + 3] for name in library_names}
        for target, info in elf.items():
            data = contents[target].read_bytes()
            loads = [
                name
                for name in library_names
                if name not in info.get("needed", [])
                and name != Path(target).name
                and (mentions(data, name.encode()) or mentions(data, stems[name].encode()))
            ]
            if loads:
                info["loads"] = loads
            contents[target].unlink()
    return {
        "package": package.name,
        "version": package.version,
        "filename": package.wheel.filename,
        "elf": dict(sorted(elf.items())),
        "files": dict(sorted(files.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=LOCK)
    parser.add_argument("--output", type=Path, default=MANIFEST)
    parser.add_argument("--cache", type=Path, default=Path(os.path.expanduser("~/.cache/sdnext-wheels")))
    parser.add_argument("--jobs", type=int, default=4)
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    wheels = [p for p in read_lock(args.lock) if p.wheel is not None]

    def one(package: Locked) -> tuple[str, dict]:
        entry = inspect_wheel(package, fetch(package, args.cache))
        print(f"{package.name} {package.version}: {len(entry['elf'])} ELF files", file=sys.stderr)
        return package.wheel.sha256, entry

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        manifest = dict(sorted(pool.map(one, wheels)))
    document = {"generated-by": "python nix/sdnext/wheel_manifest.py", "wheels": manifest}
    args.output.write_text(json.dumps(document, indent=0, sort_keys=False) + "\n")
    elf_files = sum(len(w["elf"]) for w in manifest.values())
    print(f"{args.output}: {len(manifest)} wheels, {elf_files} ELF files", file=sys.stderr)


if __name__ == "__main__":
    main()
