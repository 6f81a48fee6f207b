"""The image's self-test: does SD.Next's Python environment work on this host?

    docker run --rm --gpus all IMAGE selftest        # exit 0 only when every check passes
    selftest [--cpu] [--gpu] [--modules a,b] [--site DIR] [--fixes build-fixes.toml]

1. imports torch, torchvision, diffusers, transformers, cv2 and onnxruntime and prints versions;
2. loads every shared library of the environment on its own, each in a child process, so a
   library whose dependency the Nix build could not see fails here by name. A library whose
   missing dependency is one build-fixes.toml ignores (with its reason) is reported as skipped,
   and so is the host driver's libcuda.so.1 when no GPU is present; one that needs symbols of a
   sibling its package loads first is a note;
3. the host's NVIDIA driver version (from /proc/driver/nvidia/version, else nvidia-smi, else
   NVML) against what the CUDA 12.8 wheels need: older than 525.60.13 fails (the least any
   CUDA 12 runs on, through minor version compatibility), older than 570.26 (CUDA 12.8's own
   driver) is a note; no driver at all (no GPU) is skipped;
4. the C compiler triton builds its CUDA glue and kernel launchers with: a tiny Python extension
   built the way triton builds them, into a fresh cache, on every host. Without one no triton
   kernel runs on the GPU (SD.Next's startup compile test, SDNQ's compiled dequantization);
5. with a GPU (a /dev/nvidia0 device, or --gpu): a conv2d with cuDNN and an fp16 matmul on CUDA,
   the device and cuDNN's version, then a torch.compile (inductor, triton) and a triton kernel,
   each compiled afresh in a child process. A GPU device torch cannot use is a failure; `--cpu`
   checks the CPU part only. torch.compile on the CPU is not checked: SD.Next runs with it off
   when there is no GPU (TORCH_COMPILE_DISABLE=1; README, "Kernels compiled at run time").
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import glob
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

MODULES = ["torch", "torchvision", "diffusers", "transformers", "cv2", "onnxruntime"]
FIXES = Path(__file__).with_name("build-fixes.toml")
DRIVER_LIBRARIES = {"libcuda.so.1": "the host driver's library: present only with a GPU (--gpus all)"}
_MISSING = re.compile(r"([^\s:]+\.so[^\s:]*): cannot open shared object file")
_LOAD = "import ctypes, os, sys\nctypes.CDLL(sys.argv[1], mode=os.RTLD_LAZY)\n"

# The host driver the CUDA 12.8 wheels need (NVIDIA's CUDA 12.8 release notes): 525.60.13 is the
# least any CUDA 12 runs on (minor version compatibility: no PTX JIT, no GPU the driver predates),
# 570.26 is CUDA 12.8's own driver (full support, Blackwell GPUs).
CUDA12_MINOR_COMPAT_DRIVER = (525, 60, 13)
CUDA128_DRIVER = (570, 26)
NVIDIA_PROC_VERSION = Path("/proc/driver/nvidia/version")
_PROC_DRIVER = re.compile(r"^NVRM version:.*Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)\s", re.MULTILINE)
_DRIVER_VERSION = re.compile(r"^\d+(?:\.\d+)+$")
_EXCEPTION = re.compile(r"^[\w.]+(Error|Exception)\b")

# A Python extension built the way triton builds its CUDA glue (triton/runtime/build.py: the
# compiler from CC, else gcc, else clang; its flags; Python's headers), into a fresh cache.
_C_EXTENSION = r"""
#include <Python.h>
static PyObject *answer(PyObject *self, PyObject *args) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "selftest_cc", NULL, -1, methods};
PyMODINIT_FUNC PyInit_selftest_cc(void) { return PyModule_Create(&module); }
"""
_C_COMPILER = f"""
import os, shutil
from triton.runtime.build import compile_module_from_src

module = compile_module_from_src(src={_C_EXTENSION!r}, name="selftest_cc")
assert module.answer() == 42, "the extension it built does not work"
print(os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang"))
"""

# On CUDA: torch.compile (inductor writes triton kernels) or a kernel written in triton itself,
# as SDNQ's are. Run from a file, not `-c`: triton.jit reads its function's source.
_CUDA_KERNELS = """
import sys
import torch
import triton
import triton.language as tl


@triton.jit
def add(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, x + tl.load(y_ptr + offsets, mask=mask), mask=mask)


a, b, c = (torch.randn(4096, device="cuda") for _ in range(3))
if sys.argv[1] == "compile":
    fused = torch.compile(lambda a, b, c: a * b + c, fullgraph=True)
    torch.testing.assert_close(fused(a, b, c), a * b + c)
else:
    out = torch.empty_like(a)
    add[(triton.cdiv(a.numel(), 1024),)](a, b, out, a.numel(), BLOCK=1024)
    torch.testing.assert_close(out, a + b)
"""


@dataclass(frozen=True)
class Outcome:
    status: str  # "ok", "skipped", "note" (neither fails the test), "FAIL"
    what: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.status:7s} {self.what}" + (f": {self.detail}" if self.detail else "")


@dataclass(frozen=True)
class Driver:
    version: str
    source: str  # where the version came from, as shown to the user


def check_imports(modules: list[str]) -> list[Outcome]:
    outcomes = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as error:  # any import-time failure is what this check is for
            outcomes.append(Outcome("FAIL", f"import {name}", f"{type(error).__name__}: {error}"))
        else:
            outcomes.append(Outcome("ok", f"import {name}", getattr(module, "__version__", "")))
    return outcomes


def ignored_libraries(fixes: Path) -> dict[str, str]:
    """file-name pattern -> why the build leaves it unresolved (build-fixes.toml's ignore tables)."""
    ignored = dict(DRIVER_LIBRARIES)
    if fixes.exists():
        for table in tomllib.loads(fixes.read_text()).get("wheel", {}).values():
            ignored.update(table.get("ignore", {}))
    return ignored


def shared_libraries(sites: list[Path]) -> list[Path]:
    found = set()
    for site in sites:
        for path in glob.iglob(f"{site}/**/*.so*", recursive=True):
            if os.path.isfile(path) and Path(path).read_bytes()[:4] == b"\x7fELF":
                found.add(os.path.realpath(path))
    return sorted(map(Path, found))


def load_library(path: Path, ignored: dict[str, str]) -> Outcome:
    result = subprocess.run([sys.executable, "-c", _LOAD, str(path)], capture_output=True, text=True)
    if result.returncode == 0:
        return Outcome("ok", str(path))
    message = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
    if "undefined symbol" in message:
        # Some libraries need symbols of a sibling their package loads first (torch's
        # libtorch_nvshmem.so wants libc10_cuda.so's); the imports above load them in order.
        symbol = message.rsplit(": ", 1)[-1]
        return Outcome("note", str(path), f"{symbol} comes from a library its package loads first")
    missing = _MISSING.search(message)
    if missing and missing[1] != path.name:
        for pattern, reason in ignored.items():
            if fnmatch.fnmatch(missing[1], pattern):
                return Outcome("skipped", str(path), f"needs {missing[1]}: {reason}")
    return Outcome("FAIL", str(path), message)


def check_libraries(sites: list[Path], ignored: dict[str, str]) -> list[Outcome]:
    libraries = shared_libraries(sites)
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        return list(pool.map(lambda path: load_library(path, ignored), libraries))


def find_driver(proc_version: Path) -> tuple[Driver | None, list[str]]:
    """The host driver's version and where it came from; else None and why each source failed.

    The kernel module's /proc file is there whenever the host has the driver loaded (also in a
    container started without --gpus); nvidia-smi and NVML only when the NVIDIA runtime mounted
    the driver's utilities."""
    tried = []
    try:
        found = _PROC_DRIVER.search(proc_version.read_text(errors="replace"))
    except OSError as error:
        tried.append(f"{proc_version}: {error.strerror or error}")
    else:
        if found:
            return Driver(found[1], str(proc_version)), tried
        tried.append(f"{proc_version}: no NVRM version line")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        tried.append("nvidia-smi: not on PATH")
    else:
        try:
            result = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            tried.append(f"nvidia-smi: {error}")
        else:
            lines = result.stdout.split()
            if result.returncode == 0 and lines and _DRIVER_VERSION.match(lines[0]):
                return Driver(lines[0], "nvidia-smi"), tried
            said = (result.stdout + result.stderr).strip().splitlines()
            tried.append(f"nvidia-smi: exit code {result.returncode}" + (f", {said[0]}" if said else ""))
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return Driver(version.decode() if isinstance(version, bytes) else str(version), "NVML"), tried
    except Exception as error:  # no nvidia-ml-py, or no libnvidia-ml.so.1 (no GPU)
        tried.append(f"NVML: {type(error).__name__}: {error}")
    return None, tried


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def check_driver(proc_version: Path) -> Outcome:
    driver, tried = find_driver(proc_version)
    if driver is None:
        return Outcome(
            "skipped",
            "NVIDIA driver",
            "none found (no GPU, or the container was started without --gpus all): " + "; ".join(tried),
        )
    what = f"NVIDIA driver {driver.version} (from {driver.source})"
    minimum = ".".join(map(str, CUDA12_MINOR_COMPAT_DRIVER))
    full = ".".join(map(str, CUDA128_DRIVER))
    version = _version(driver.version)
    if version < CUDA12_MINOR_COMPAT_DRIVER:
        return Outcome(
            "FAIL",
            what,
            f"too old for this image's CUDA 12.8: it needs at least {minimum} (CUDA 12 minor version "
            f"compatibility), {full} or newer for full CUDA 12.8 support. torch cannot use the GPU "
            "with this driver: choose a host with a newer driver",
        )
    if version < CUDA128_DRIVER:
        return Outcome(
            "note",
            what,
            f"older than CUDA 12.8's own driver {full}: CUDA 12.8 runs through minor version "
            f"compatibility (at least {minimum}), without PTX JIT and without GPUs newer than the "
            f"driver; {full} or newer gives full CUDA 12.8 support",
        )
    return Outcome("ok", what, f"new enough for CUDA 12.8 (at least {full})")


def _child(argv: list[str], cache: str) -> subprocess.CompletedProcess:
    """Run a compile check in a child whose caches are fresh, so it compiles instead of reusing,
    and where torch.compile is on (with it off, the check would pass without compiling)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_COMPILE_DISABLE", "TORCHDYNAMO_DISABLE")}
    env.update(TRITON_CACHE_DIR=f"{cache}/triton", TORCHINDUCTOR_CACHE_DIR=f"{cache}/inductor")
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=900)


def _failure(result: subprocess.CompletedProcess) -> str:
    """The line of a failed child that says what went wrong: the compiler's own error message
    (`gcc: fatal error: ...`), else the exception's (the last line)."""
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    diagnostics = [line for line in lines if "error:" in line.lower() and not _EXCEPTION.match(line)]
    return diagnostics[0] if diagnostics else lines[-1] if lines else f"exit code {result.returncode}"


def check_c_compiler() -> Outcome:
    what = "C compiler for triton (its CUDA glue and kernel launchers)"
    if importlib.util.find_spec("triton") is None:
        return Outcome("skipped", what, "triton is not installed in this environment")
    with tempfile.TemporaryDirectory(prefix="selftest-cc-") as cache:
        result = _child(["-c", _C_COMPILER], cache)
    if result.returncode == 0:
        return Outcome("ok", what, f"{result.stdout.strip()} built and loaded a Python extension")
    problem = _failure(result)
    if "Failed to find C compiler" in problem:
        problem = "none found (CC is not set; no gcc or clang on PATH)"
    return Outcome(
        "FAIL",
        what,
        f"{problem}. Without it no triton kernel runs on the GPU (SD.Next's compile test, SDNQ's "
        "compiled dequantization, torch.compile): the image sets CC to its gcc: was CC or PATH changed?",
    )


def check_cuda_kernels() -> list[Outcome]:
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="selftest-kernels-") as cache:
        script = Path(cache, "kernels.py")
        script.write_text(_CUDA_KERNELS)
        for mode, what in (
            ("compile", "torch.compile on CUDA (inductor, triton)"),
            ("kernel", "triton kernel on CUDA"),
        ):
            result = _child([str(script), mode], cache)
            failed = result.returncode != 0
            outcomes.append(Outcome("FAIL", what, _failure(result)) if failed else Outcome("ok", what))
    return outcomes


def check_gpu() -> list[Outcome]:
    import torch

    if not torch.cuda.is_available():
        return [
            Outcome(
                "FAIL",
                "CUDA",
                "a GPU device is present but torch.cuda.is_available() is False: is the host's "
                "libcuda.so.1 in one of LD_LIBRARY_PATH's folders (run with --gpus all)?",
            )
        ]
    outcomes = []
    device = torch.device("cuda")
    try:
        torch.backends.cudnn.enabled = True
        image = torch.randn(1, 3, 64, 64, device=device)
        kernel = torch.randn(8, 3, 3, 3, device=device)
        torch.nn.functional.conv2d(image, kernel).sum().item()
        outcomes.append(Outcome("ok", "conv2d on CUDA with cuDNN", f"cuDNN {torch.backends.cudnn.version()}"))
    except Exception as error:
        outcomes.append(Outcome("FAIL", "conv2d on CUDA with cuDNN", f"{type(error).__name__}: {error}"))
    try:
        a = torch.randn(256, 256, device=device, dtype=torch.float16)
        (a @ a).float().sum().item()
        outcomes.append(Outcome("ok", "fp16 matmul on CUDA"))
    except Exception as error:
        outcomes.append(Outcome("FAIL", "fp16 matmul on CUDA", f"{type(error).__name__}: {error}"))
    outcomes.append(Outcome("ok", "device", f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}"))
    return outcomes + check_cuda_kernels()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="selftest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="check the CPU part only, even with a GPU")
    parser.add_argument("--gpu", action="store_true", help="fail unless the GPU checks pass")
    parser.add_argument("--modules", help=f"comma-separated modules to import (default {','.join(MODULES)})")
    parser.add_argument("--site", type=Path, action="append", help="folder whose libraries to load")
    parser.add_argument("--fixes", type=Path, default=FIXES, help="build-fixes.toml (for ignored libraries)")
    parser.add_argument(
        "--nvidia-proc",
        type=Path,
        default=NVIDIA_PROC_VERSION,
        help=f"the driver's version file (default {NVIDIA_PROC_VERSION})",
    )
    args = parser.parse_args(argv)

    modules = args.modules.split(",") if args.modules else MODULES
    sites = args.site or sorted({Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")})
    outcomes = check_imports(modules)
    outcomes += check_libraries(sites, ignored_libraries(args.fixes))
    outcomes.append(check_driver(args.nvidia_proc))
    outcomes.append(check_c_compiler())
    outcomes.append(
        Outcome(
            "skipped",
            "torch.compile on the CPU",
            "off in this image: SD.Next runs with TORCH_COMPILE_DISABLE=1 when there is no GPU",
        )
    )
    gpu = not args.cpu and (args.gpu or os.path.exists("/dev/nvidia0"))
    if gpu:
        outcomes += check_gpu()
    else:
        why = "--cpu" if args.cpu else "no GPU here (run the image with --gpus all)"
        outcomes.append(Outcome("skipped", "torch.compile and a triton kernel on CUDA", why))
    for outcome in outcomes:
        if outcome.status != "ok" or not outcome.what.startswith("/"):
            print(outcome.line())
    libraries = [o for o in outcomes if o.what.startswith("/")]
    failed = [o for o in outcomes if o.status == "FAIL"]
    print(
        f"selftest: {len(libraries)} libraries loaded or skipped, "
        f"{'GPU checked' if gpu else 'no GPU checked'}; {len(failed)} failed"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
