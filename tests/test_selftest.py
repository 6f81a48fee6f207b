"""The image's `selftest` (nix/sdnext/selftest.py), its CPU part, against a small environment
made here: real ELF files (this Python's _ssl extension), one intact, one whose dependency is
missing, one whose missing dependency build-fixes.toml ignores with a reason."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

SELFTEST = REPO / "nix" / "sdnext" / "selftest.py"


@pytest.fixture
def extension() -> tuple[Path, str]:
    """A real Python extension and the first library it needs beyond glibc."""
    elffile = pytest.importorskip("elftools.elf.elffile", reason="pyelftools comes with the test extras")
    path = next(Path(sys.base_prefix, "lib").glob(f"python3.{sys.version_info.minor}/lib-dynload/_ssl*.so"))
    with open(path, "rb") as stream:
        dynamic = elffile.ELFFile(stream).get_section_by_name(".dynamic")
        needed = [tag.needed for tag in dynamic.iter_tags() if tag.entry.d_tag == "DT_NEEDED"]
    return path, next(n for n in needed if n.startswith("libssl"))


def copy_needing(source: Path, target: Path, needed: str, instead: str) -> None:
    """A copy of the library that needs `instead` where it needed `needed` (same length)."""
    assert len(instead) == len(needed)
    data = source.read_bytes()
    assert data.count(needed.encode() + b"\0") >= 1
    target.write_bytes(data.replace(needed.encode() + b"\0", instead.encode() + b"\0"))


def selftest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SELFTEST), "--cpu", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def site(tmp_path, extension) -> Path:
    path, needed = extension
    site = tmp_path / "site-packages" / "demo"
    site.mkdir(parents=True)
    shutil.copy(path, site / "_intact.so")
    copy_needing(path, site / "_optional.so", needed, "libX" + needed[4:])
    (tmp_path / "fixes.toml").write_text(
        f'[wheel.demo.ignore]\n"libX{needed[4:]}" = "an optional plugin of demo that this image leaves out"\n'
    )
    return site.parent


def test_a_whole_environment_passes_and_says_what_it_skipped(site, tmp_path, extension):
    result = selftest(
        "--modules", "json,sqlite3", "--site", str(site), "--fixes", str(tmp_path / "fixes.toml")
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ok      import json")
    assert any(
        line.startswith("skipped ")
        and line.endswith(
            f"_optional.so: needs libX{extension[1][4:]}: an optional plugin of demo that this image leaves out"
        )
        for line in lines
    ), lines
    assert lines[-1] == "selftest: 2 libraries loaded or skipped, no GPU checked; 0 failed"


def test_a_library_with_a_missing_dependency_fails_by_name(site, tmp_path, extension):
    path, needed = extension
    broken = "libQ" + needed[4:]
    copy_needing(path, site / "demo" / "_broken.so", needed, broken)
    result = selftest("--modules", "json", "--site", str(site), "--fixes", str(tmp_path / "fixes.toml"))
    assert result.returncode == 1
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failures) == 1
    assert "_broken.so" in failures[0] and f"{broken}: cannot open shared object file" in failures[0]
    assert result.stdout.splitlines()[-1].endswith("; 1 failed")


def test_an_import_that_fails_fails_the_test(tmp_path):
    (tmp_path / "empty").mkdir()
    result = selftest("--modules", "json,no_such_module_here", "--site", str(tmp_path / "empty"))
    assert result.returncode == 1
    assert (
        "FAIL    import no_such_module_here: ModuleNotFoundError: No module named 'no_such_module_here'"
        in (result.stdout)
    )
