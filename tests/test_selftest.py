"""The image's `selftest` (nix/sdnext/selftest.py), its CPU part, against a small environment
made here: real ELF files (this Python's _ssl extension), one intact, one whose dependency is
missing, one whose missing dependency build-fixes.toml ignores with a reason; the host's NVIDIA
driver from stand-ins (the kernel module's /proc file, nvidia-smi); the C compiler triton builds
with, run by SD.Next's own environment (SDNEXT_VENV: the one with triton) with this machine's gcc
and without any."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, child_env, which

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


def selftest(
    *args: str, python: str = sys.executable, env: dict[str, str | None] | None = None
) -> subprocess.CompletedProcess:
    """selftest's CPU part; no driver unless a test gives one (`--nvidia-proc`, nvidia-smi on PATH).
    `env` goes over this environment (without secrets); a None value removes that variable."""
    if "--nvidia-proc" not in args:
        args = ("--nvidia-proc", "/nonexistent/driver/nvidia/version", *args)
    merged = {**child_env(), **(env or {})}
    return subprocess.run(
        [python, str(SELFTEST), "--cpu", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={key: value for key, value in merged.items() if value is not None},
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
    assert any(
        line.startswith("skipped NVIDIA driver: none found (no GPU, or the container") for line in lines
    )
    assert "skipped torch.compile and a triton kernel on CUDA: --cpu" in lines
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


# The kernel module's version file as the two driver flavours write it (only the NVRM line counts).
PROPRIETARY = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {version}  Wed Oct 27 21:21:55 UTC 2021\n"
    "GCC version:  gcc version 9.3.0 (Ubuntu 9.3.0-17ubuntu1~20.04)\n"
)
OPEN = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {version}  Release Build  "
    "(dvs-builder@U16-I3-B03-4-3)  Thu Jan 16 23:21:53 UTC 2025\n"
    "GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04)\n"
)
NVIDIA_SMI = """#!{python}
import sys
# As strict as the real one for what selftest asks; anything else is refused.
if sys.argv[1:] != ["--query-gpu=driver_version", "--format=csv,noheader"]:
    print("Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.", file=sys.stderr)
    sys.exit(2)
print("{version}\\n{version}")  # one line per GPU: two GPUs here
"""


def check_driver(
    tmp_path: Path, proc: str | None = None, nvidia_smi: str | None = None
) -> tuple[subprocess.CompletedProcess, str, Path]:
    """selftest with this driver version file (when given) and an nvidia-smi on PATH that
    reports this version (when given); its result, its driver line, and the file's path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if nvidia_smi:
        fake = bin_dir / "nvidia-smi"
        fake.write_text(NVIDIA_SMI.format(python=sys.executable, version=nvidia_smi))
        fake.chmod(0o755)
    version_file = tmp_path / "version"
    if proc:
        version_file.write_text(proc)
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent)])
    result = selftest(
        *("--modules", "json", "--site", str(tmp_path / "none"), "--nvidia-proc", str(version_file)),
        env={"PATH": path},
    )
    lines = [line for line in result.stdout.splitlines() if line[8:].startswith("NVIDIA driver")]
    assert len(lines) == 1, result.stdout + result.stderr
    return result, lines[0], version_file


def test_a_driver_too_old_for_cuda_12_8_fails_and_says_so(tmp_path):
    result, line, proc = check_driver(tmp_path, proc=PROPRIETARY.format(version="470.82.01"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert line == (
        f"FAIL    NVIDIA driver 470.82.01 (from {proc}): too old for this image's CUDA 12.8: it needs at "
        "least 525.60.13 (CUDA 12 minor version compatibility), 570.26 or newer for full CUDA 12.8 "
        "support. torch cannot use the GPU with this driver: choose a host with a newer driver"
    )
    assert result.stdout.splitlines()[-1].endswith("; 1 failed")


def test_a_driver_older_than_cuda_12_8s_own_is_a_note(tmp_path):
    result, line, proc = check_driver(tmp_path, proc=OPEN.format(version="535.183.01"))
    assert line.startswith(
        f"note    NVIDIA driver 535.183.01 (from {proc}): older than CUDA 12.8's own driver 570.26: "
        "CUDA 12.8 runs through minor version compatibility (at least 525.60.13)"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_new_driver_reported_by_nvidia_smi_passes(tmp_path):
    # No /proc file (as in a container whose /proc hides it): nvidia-smi answers.
    result, line, _ = check_driver(tmp_path, nvidia_smi="575.57.08")
    assert (
        line
        == "ok      NVIDIA driver 575.57.08 (from nvidia-smi): new enough for CUDA 12.8 (at least 570.26)"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_old_driver_from_nvidia_smi_fails_too(tmp_path):
    result, line, _ = check_driver(tmp_path, nvidia_smi="520.61.05")
    assert line.startswith("FAIL    NVIDIA driver 520.61.05 (from nvidia-smi): too old")
    assert result.returncode == 1


@pytest.fixture(scope="module")
def sdnext_python() -> str:
    """The Python of SD.Next's locked environment (it has triton), as in the image."""
    venv = os.environ.get("SDNEXT_VENV")
    python = Path(venv, "bin", "python") if venv else None
    if python is None or not python.exists():
        message = "SDNEXT_VENV must name the environment of nix/sdnext/uv.lock (README: the real SD.Next)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return str(python)


COMPILER = "C compiler for triton (its CUDA glue and kernel launchers)"


def test_the_c_compiler_triton_builds_with_is_checked_for_real(tmp_path, sdnext_python):
    gcc = which("gcc")  # the image's gcc (Nix); here Debian's, which tests/run.sh installs
    if gcc is None:
        pytest.skip("no gcc here (tests/run.sh installs it)")
    home = tmp_path / "home"
    home.mkdir()
    # The image names its gcc in CC.
    env = {"HOME": str(home), "CC": gcc}
    result = selftest("--modules", "json", "--site", str(tmp_path / "none"), python=sdnext_python, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok      {COMPILER}: {gcc} built and loaded a Python extension" in result.stdout.splitlines()
    # It compiled into a cache of its own that is gone now, not into triton's default (~/.triton).
    assert not (home / ".triton").exists()


def test_without_a_c_compiler_selftest_fails_and_says_why(tmp_path, sdnext_python):
    # PATH holds SD.Next's Python and nothing else: no gcc, no clang; CC is not set.
    env = {"CC": None, "PATH": str(Path(sdnext_python).parent)}
    result = selftest("--modules", "json", "--site", str(tmp_path / "none"), python=sdnext_python, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert failures == [
        f"FAIL    {COMPILER}: none found (CC is not set; no gcc or clang on PATH). Without it no triton "
        "kernel runs on the GPU (SD.Next's compile test, SDNQ's compiled dequantization, torch.compile): "
        "the image sets CC to its gcc: was CC or PATH changed?"
    ]
