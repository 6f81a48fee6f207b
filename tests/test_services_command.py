"""`sdnext-services start|stop` from an ordinary shell, not PID 1: the launch modes that replace
the image's entrypoint (Vast.ai's SSH and Jupyter modes, SkyPilot) start the runtime this way.
(The plain start and stop: tests/test_runtime.py.)"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess

import pytest

from .conftest import which
from .runtime_harness import PROXIED, make_runtime
from .test_runtime import PASSWORD, get, wait_for


@pytest.fixture(autouse=True)
def tools():
    for tool in ("s6-svscan", "s6-setsid", "caddy"):
        if which(tool) is None:
            pytest.skip(f"{tool} is not installed (tests/run.sh installs it)")


def services(runtime, action: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", f"sdnext-services {action}"],
        env=runtime.env,
        capture_output=True,
        text=True,
        timeout=90,
        **kw,
    )


def serving(runtime) -> bool:
    return all(runtime.serves(service) for service in PROXIED)


@pytest.fixture
def runtime(tmp_path):
    runtime = make_runtime(tmp_path / "c", {"PASSWORD": PASSWORD})
    yield runtime
    services(runtime, "stop")  # as documented, whatever a check found
    wait_for(lambda: runtime.tree_pids() == [], 15)


def test_signals_to_the_shell_that_started_it_leave_the_services_supervised(runtime):
    # The shell the command was typed in, in a session of its own (a terminal, an SSH session).
    shell = subprocess.Popen(
        ["bash", "-c", "sdnext-services start"],
        env=runtime.env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    out, _ = shell.communicate(timeout=90)
    assert shell.returncode == 0 and "sdnext-services: started" in out
    wait_for(lambda: serving(runtime), 30)
    # The terminal closes (SIGHUP), a Ctrl-C there (SIGINT), a job runner ends the job (SIGTERM):
    # each signals the process group of the shell that started the services.
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signum)
    # A service that dies afterwards is still brought back.
    first = runtime.starts("ttyd")[-1]["pid"]
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: len(runtime.starts("ttyd")) == 2, 30)
    wait_for(lambda: serving(runtime), 30)
    assert get(runtime, "ttyd", auth=("admin", PASSWORD)).status_code == 200


def test_a_start_that_fails_says_why_and_a_second_start_finds_the_first(runtime):
    with socket.create_server(("127.0.0.1", int(runtime.env["LOGDY_PORT"]))):
        failed = services(runtime, "start")
    assert failed.returncode == 1
    assert "sdnext-services: init failed (exit code 1)" in failed.stderr
    assert f"LOGDY_PORT={runtime.env['LOGDY_PORT']} is already in use on this host" in failed.stderr
    assert runtime.tree_pids() == []

    assert services(runtime, "start").returncode == 0
    again = services(runtime, "start")
    assert again.returncode == 0 and "sdnext-services: already running" in again.stdout
    wait_for(lambda: serving(runtime), 30)
    assert get(runtime, "sdnext", auth=("admin", PASSWORD)).status_code == 200
