#!/usr/bin/env python3
"""sdnext-launch: start SD.Next from its (read-only) source folder with nothing to install.

    sdnext-launch [--host 127.0.0.1] [--port 18010]

Everything SD.Next needs is already in this Python environment, so it starts with
`--skip-all --skip-torch` (no installer, no git), `PIP_NO_INDEX=1` (a stray pip install fails
at once instead of downloading), and `"offline_mode": true` in a new config (no lazy installs).
Everything it writes goes under $WORKSPACE: the data dir `sdnext/`, the models dir
`sdnext/models/`, its log `logs/sdnext.log`, and byte-code under `.cache/` (the source folder
may be the read-only Nix store). User extensions are in `sdnext/extensions/` (SD.Next's own
place) and their packages in `sdnext/extension-packages/`, after the image's on sys.path.

Environment: WORKSPACE (/workspace), SDNEXT_SRC (the source folder; the image sets it),
SDNEXT_ARGS (more SD.Next flags, split like a shell would, never evaluated), TCMALLOC_LIB (the
library preloaded for SD.Next only) and NO_TCMALLOC, NO_ACCELERATE (else `accelerate launch`
when accelerate is installed), SDNEXT_INTERNAL_PORT (the port when --port is not given).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 18010
MAX_CPU_THREADS = 6
STOP_GRACE = 6.0  # seconds SD.Next gets after SIGTERM; under the sdnext service's timeout-kill


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: Path


def build(
    args: argparse.Namespace,
    env: Mapping[str, str],
    *,
    python: str,
    accelerate_available: bool,
    cpu_count: int,
    gpu_present: bool,
) -> Launch:
    """The command line, environment and folder SD.Next starts with (no side effects)."""
    workspace = Path(env.get("WORKSPACE") or "/workspace")
    source = Path(env.get("SDNEXT_SRC") or Path(__file__).resolve().parent)
    port = args.port or int(env.get("SDNEXT_INTERNAL_PORT") or DEFAULT_PORT)
    sdnext_args = [
        "--skip-all",
        "--skip-torch",
        "--server-name",
        args.host,
        "--port",
        str(port),
        "--data-dir",
        str(workspace / "sdnext"),
        "--models-dir",
        str(workspace / "sdnext" / "models"),
        "--log",
        str(workspace / "logs" / "sdnext.log"),
        *shlex.split(env.get("SDNEXT_ARGS", "")),
    ]
    launcher = [python]
    if accelerate_available and not env.get("NO_ACCELERATE"):
        threads = max(1, min(MAX_CPU_THREADS, cpu_count))
        launcher += ["-m", "accelerate.commands.launch", f"--num_cpu_threads_per_process={threads}"]
    child_env = dict(env)
    # Kernels torch and triton compile at run time are cached on the workspace volume, where a
    # restart finds them again, not in the container's /tmp (their defaults: /tmp/torchinductor_USER
    # and ~/.triton). torch keeps its precompiled headers under tempfile.gettempdir() whatever
    # TORCHINDUCTOR_CACHE_DIR says (torch/_inductor/codecache.py, _HEADER_DIR), so TMPDIR too.
    child_env.update(
        {
            "PIP_NO_INDEX": "1",
            "PYTHONPYCACHEPREFIX": str(workspace / ".cache" / "sdnext-pycache"),
            "TMPDIR": str(workspace / ".cache" / "tmp"),
        }
    )
    # The packages of the extensions the config declares (provision/overlay.py installs them):
    # after the image's own, through overlay_site/sitecustomize.py, so the image's pins win.
    child_env["SDNEXT_EXTENSION_PACKAGES"] = str(workspace / "sdnext" / "extension-packages")
    site_dir = str(Path(__file__).resolve().parent / "overlay_site")
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (site_dir, env.get("PYTHONPATH")) if p)
    # Caches that follow XDG (matplotlib's font cache, torch hub) go to the workspace, not $HOME
    # (/root is the container's own layer: lost on a new container, and counted against it).
    child_env.setdefault("XDG_CACHE_HOME", str(workspace / ".cache"))
    child_env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(workspace / ".cache" / "torchinductor"))
    child_env.setdefault("TRITON_CACHE_DIR", str(workspace / ".cache" / "triton"))
    # Without a GPU, SD.Next's start-up test compiles a kernel with g++ (modules/devices.py,
    # test_triton) and SDNQ would compile its dequantization: minutes of CPU for nothing the CPU
    # path needs, and a compiler the image has for triton's GPU launchers only. torch reads this.
    if not gpu_present or "--use-cpu" in sdnext_args:
        child_env.setdefault("TORCH_COMPILE_DISABLE", "1")
    # SD.Next imports GitPython, which refuses to load without a git binary (the image has git;
    # a bare environment may not): quiet lets it load either way.
    child_env.setdefault("GIT_PYTHON_REFRESH", "quiet")
    tcmalloc = env.get("TCMALLOC_LIB")
    if tcmalloc and not env.get("NO_TCMALLOC") and Path(tcmalloc).exists():
        preload = env.get("LD_PRELOAD")
        child_env["LD_PRELOAD"] = f"{tcmalloc}:{preload}" if preload else tcmalloc
    return Launch([*launcher, str(source / "launch.py"), *sdnext_args], child_env, source)


def prepare_data_dir(workspace: Path) -> None:
    """Create the data and log folders; a new config starts in offline mode."""
    data = workspace / "sdnext"
    (data / "models").mkdir(parents=True, exist_ok=True)
    (workspace / "logs").mkdir(parents=True, exist_ok=True)
    (workspace / ".cache" / "tmp").mkdir(parents=True, exist_ok=True)
    config = data / "config.json"
    try:
        settings = json.loads(config.read_text()) if config.exists() else {}
    except ValueError:
        print(f"sdnext-launch: {config} is not valid JSON; leaving it as it is", file=sys.stderr)
        return
    if isinstance(settings, dict) and "offline_mode" not in settings:
        settings["offline_mode"] = True  # a user who turns it off keeps it off
        tmp = config.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(settings, indent=2))
        os.replace(tmp, config)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sdnext-launch", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help=f"port (default $SDNEXT_INTERNAL_PORT, else {DEFAULT_PORT})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    launch = build(
        args,
        os.environ,
        python=sys.executable,
        accelerate_available=importlib.util.find_spec("accelerate") is not None,
        cpu_count=os.cpu_count() or 1,
        gpu_present=Path("/dev/nvidia0").exists(),
    )
    prepare_data_dir(Path(os.environ.get("WORKSPACE") or "/workspace"))
    if not (launch.cwd / "launch.py").exists():
        sys.exit(f"sdnext-launch: no launch.py in {launch.cwd}: set SDNEXT_SRC to SD.Next's source folder")
    os.chdir(launch.cwd)
    # SDNEXT_ARGS may hold --auth user:password: name how many there are, not what they say.
    extra = len(shlex.split(os.environ.get("SDNEXT_ARGS", "")))
    shown = launch.argv[: len(launch.argv) - extra] if extra else launch.argv
    print(
        f"sdnext-launch: {shlex.join(shown)}" + (f" (+{extra} from SDNEXT_ARGS)" if extra else ""), flush=True
    )
    sys.exit(run_as_group(launch))


def run_as_group(launch: Launch, grace: float = STOP_GRACE) -> int:
    """Run SD.Next in a process group of its own and pass every stop signal to the whole group.

    `accelerate launch` starts launch.py as a child and does not forward SIGTERM: with a plain
    exec, s6 would stop the launcher and SD.Next would keep its port. So this process stays the
    parent: SIGTERM, SIGINT or SIGHUP go to the group; whatever is still running `grace` seconds
    later gets SIGKILL (before s6's own timeout-kill); the exit code is the launcher's."""
    child = subprocess.Popen(launch.argv, env=launch.env, start_new_session=True)
    stopping: list[int] = []

    def forward(signum, _frame):
        stopping.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    code = child.wait()
    if stopping:
        deadline = time.monotonic() + grace
        while _group_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    return code if code >= 0 else 128 - code


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


if __name__ == "__main__":
    main()
