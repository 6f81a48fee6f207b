"""The image's self-test: does SD.Next's Python environment work on this host?

    docker run --rm --gpus all IMAGE selftest        # exit 0 only when every check passes
    selftest [--cpu] [--modules a,b] [--site DIR] [--fixes build-fixes.toml]

1. imports torch, torchvision, diffusers, transformers, cv2 and onnxruntime and prints versions;
2. loads every shared library of the environment on its own, each in a child process, so a
   library whose dependency the Nix build could not see fails here by name. A library whose
   missing dependency is one build-fixes.toml ignores (with its reason) is reported as skipped,
   and so is the host driver's libcuda.so.1 when no GPU is present; one that needs symbols of a
   sibling its package loads first is a note;
3. with a GPU (a /dev/nvidia0 device, or --gpu): a conv2d with cuDNN and an fp16 matmul on CUDA,
   then the device, the driver and cuDNN's version. A GPU device with torch unable to use it is a
   failure; `--cpu` checks the CPU part only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import glob
import importlib
import os
import re
import subprocess
import sys
import sysconfig
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


@dataclass(frozen=True)
class Outcome:
    status: str  # "ok", "skipped", "note" (neither fails the test), "FAIL"
    what: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.status:7s} {self.what}" + (f": {self.detail}" if self.detail else "")


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
    name = torch.cuda.get_device_name(0)
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
    except Exception as error:  # nvidia-ml-py is informational here
        driver = f"unknown ({error})"
    outcomes.append(Outcome("ok", "device", f"{name}, driver {driver}, CUDA {torch.version.cuda}"))
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="selftest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="check the CPU part only, even with a GPU")
    parser.add_argument("--gpu", action="store_true", help="fail unless the GPU checks pass")
    parser.add_argument("--modules", help=f"comma-separated modules to import (default {','.join(MODULES)})")
    parser.add_argument("--site", type=Path, action="append", help="folder whose libraries to load")
    parser.add_argument("--fixes", type=Path, default=FIXES, help="build-fixes.toml (for ignored libraries)")
    args = parser.parse_args(argv)

    modules = args.modules.split(",") if args.modules else MODULES
    sites = args.site or sorted({Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")})
    outcomes = check_imports(modules)
    outcomes += check_libraries(sites, ignored_libraries(args.fixes))
    gpu = not args.cpu and (args.gpu or os.path.exists("/dev/nvidia0"))
    if gpu:
        outcomes += check_gpu()
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
