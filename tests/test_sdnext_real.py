"""The real SD.Next start on this CPU machine (opt-in: pytest --run-sdnext-real).

Needs the environment of nix/sdnext/uv.lock and SD.Next's source at the pin:

    SDNEXT_VENV=/path/to/venv      # uv sync --frozen (see README, "The real SD.Next start")
    SDNEXT_SRC=/path/to/sdnext     # tag 2026-01-22; made read-only by this test

Starts sdnext-launch with `--use-cpu all`, waits for /sdapi/v1/status to answer 200, checks that
no pip or git process ran and nothing was written into the source tree, then stops it with
SIGTERM. Prints the start-up time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from .runtime_harness import free_port, listening

LAUNCHER = Path(__file__).resolve().parent.parent / "nix" / "sdnext" / "sdnext_launch.py"
pytestmark = pytest.mark.sdnext_real


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_sdnext_starts_on_cpu_with_nothing_installed_and_nothing_written(tmp_path):
    venv, source = os.environ.get("SDNEXT_VENV"), os.environ.get("SDNEXT_SRC")
    if not venv or not source:
        pytest.fail("set SDNEXT_VENV and SDNEXT_SRC (see the module docstring)")
    source = Path(source)
    subprocess.run(["chmod", "-R", "a-w", str(source)], check=True)
    before = snapshot(source)

    # As in the image: no git, pip or uv on PATH (the system tools here, less those).
    shims = tmp_path / "bin"
    shims.mkdir()
    for tool in Path("/usr/bin").iterdir():
        if not tool.name.startswith(("git", "pip", "uv")):
            (shims / tool.name).symlink_to(tool)

    port = free_port()
    workspace = tmp_path / "workspace"
    env = {
        "PATH": f"{shims}:{venv}/bin",
        "HOME": str(tmp_path / "home"),
        "WORKSPACE": str(workspace),
        "SDNEXT_SRC": str(source),
        "SDNEXT_ARGS": "--use-cpu all",
        "HF_HUB_OFFLINE": "1",
    }
    log = open(tmp_path / "sdnext.out", "wb")  # noqa: SIM115 - closed in finally
    began = time.monotonic()
    process = subprocess.Popen(
        [f"{venv}/bin/python", str(LAUNCHER), "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    seen_commands: set[str] = set()
    try:
        status = None
        while time.monotonic() - began < 900 and process.poll() is None:
            for pid in [*descendants(process.pid), process.pid]:
                with contextlib.suppress(OSError):
                    seen_commands.add(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            with contextlib.suppress(requests.RequestException):
                status = requests.get(f"http://127.0.0.1:{port}/sdapi/v1/status", timeout=5).status_code
                if status == 200:
                    break
            time.sleep(0.5)
        startup = time.monotonic() - began
        output = (tmp_path / "sdnext.out").read_text(errors="replace")
        assert status == 200, f"no 200 from /sdapi/v1/status after {startup:.0f}s:\n{output[-5000:]}"
        print(f"\nSD.Next answered /sdapi/v1/status 200 after {startup:.1f}s")
    finally:
        tree = [*descendants(process.pid), process.pid]
        process.send_signal(signal.SIGTERM)  # as s6 stops the service: the launcher only
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
    # Not just the launcher: SD.Next itself (behind accelerate) is gone and its port is free.
    deadline = time.monotonic() + 30
    while any(os.path.exists(f"/proc/{pid}") for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in tree if os.path.exists(f"/proc/{pid}")] == [], "SD.Next outlived its launcher"
    assert listening(port) == set()
    installs = [
        c
        for c in seen_commands
        if " -m pip" in c or "pip install" in c or c.split(" ")[0].rsplit("/", 1)[-1] in ("git", "pip", "uv")
    ]
    assert installs == [], installs
    # bitsandbytes 0.47 runs `pip list | grep habana-torch-plugin` through a shell when imported;
    # with no pip on PATH that is a "not found" from the shell, and no pip process.
    print("shell commands seen:", sorted(c for c in seen_commands if c.startswith(("/bin/sh -c", "sh -c"))))
    assert snapshot(source) == before
    assert (workspace / "sdnext" / "config.json").exists()
    assert (workspace / "logs" / "sdnext.log").exists()
