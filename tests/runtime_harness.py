"""Runs nix/runtime/init as the image would, under real s6 and Caddy, with stand-ins on PATH."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
RUNTIME = REPO / "nix" / "runtime"
STANDIN = Path(__file__).resolve().parent / "standins" / "standin.py"
STANDIN_NAMES = ("sdnext-launch", "filebrowser", "ttyd", "logdy")
PROXIED = ("sdnext", "filebrowser", "ttyd", "logdy")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Distinct free ports for servers a test starts later. They come from outside the kernel's
    ephemeral range: a port handed out by bind(0) is free again once its socket closes, and
    any outgoing connection (a test's request, a service's) may take it before the server
    binds it (seen: Caddy refused to start). Each stays bound until all are chosen, so no two
    are the same (init refuses a port given twice)."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    outside = [port for port in range(10000, 65536) if not low <= port <= high]
    candidates = random.sample(outside, min(len(outside), 50 * count))
    chosen: list[int] = []
    with contextlib.ExitStack() as stack:
        for port in candidates:
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"no {count} free ports outside the ephemeral range {low}-{high}")


def defaults() -> dict[str, str]:
    values = {}
    for line in (RUNTIME / "defaults.env").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


@dataclass
class Runtime:
    root: Path
    env: dict[str, str]
    process: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)  # service -> external port
    internal: dict[str, int] = field(default_factory=dict)

    @property
    def workspace(self) -> Path:
        return Path(self.env["WORKSPACE"])

    @property
    def runtime_dir(self) -> Path:
        return Path(self.env["RUNTIME_DIR"])

    @property
    def records(self) -> Path:
        return Path(self.env["STANDIN_RECORDS"])

    @property
    def console(self) -> str:
        """What the container printed (its log, as `docker logs` shows it)."""
        return (self.root / "console.log").read_text(errors="replace")

    def url(self, service: str, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def start(self) -> Runtime:
        with open(self.root / "console.log", "wb") as console:
            self.process = subprocess.Popen(
                [str(RUNTIME / "init")],
                env=self.env,
                stdout=console,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def serves(self, service: str) -> bool:
        """The service answers on its own port, and the gateway in front of it answers with
        more than a 502: a 502 means a hop behind Caddy (the login guard, the service) is not
        listening yet, which happens on a loaded machine for the first moments after start."""
        # Over HTTPS the gateway is ready once it can make its certificate (Caddy's internal CA
        # makes one at the first handshake): until then a handshake ends in an internal error.
        tls = self.env.get("TLS_SELF_SIGNED") == "true" or bool(self.env.get("TLS_CERT"))
        gateway = self.url(service).replace("http://", "https://") if tls else self.url(service)
        with contextlib.suppress(requests.RequestException), warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # urllib3's InsecureRequestWarning: the CA is checked by the tests
            if requests.get(f"http://127.0.0.1:{self.internal[service]}/", timeout=2).ok:
                return requests.get(gateway, timeout=2, verify=False).status_code != 502
        return False

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        for service in PROXIED:
            while not self.serves(service):
                if self.process.poll() is not None:
                    raise AssertionError(f"init exited {self.process.returncode}:\n{self.console}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{service} did not come up:\n{self.console}")
                time.sleep(0.1)

    def starts(self, name: str) -> list[dict]:
        """Every start of a stand-in so far, oldest first."""
        files = sorted(glob.glob(str(self.records / f"{name}.start.*.json")), key=os.path.getmtime)
        return [json.loads(Path(f).read_text()) | {"pid": int(Path(f).name.split(".")[2])} for f in files]

    def refreshes(self) -> list[str]:
        return sorted(
            json.loads(Path(f).read_text())["path"]
            for f in glob.glob(str(self.records / "sdnext-launch.refresh.*"))
        )

    def tree_pids(self) -> list[int]:
        """Every process of this container, however reparented: s6-supervise starts each service
        in a session of its own, so the marker is the RUNTIME_DIR every one of them inherits. sshd
        writes its title over its arguments and environment (setproctitle): its title still
        names its config under RUNTIME_DIR."""
        marker = f"RUNTIME_DIR={self.env['RUNTIME_DIR']}".encode()
        config = f"{self.env['RUNTIME_DIR']}/".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if marker in (entry / "environ").read_bytes().split(b"\0") or (
                        config in (entry / "cmdline").read_bytes()
                    ):
                        pids.append(int(entry.name))
        return pids

    def stop(self, timeout: float = 10) -> float:
        """SIGTERM to PID 1, as `docker stop` does; returns the seconds until everything is gone."""
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout)
        while self.tree_pids() and time.monotonic() - began < timeout:
            time.sleep(0.05)
        return time.monotonic() - began

    def kill(self) -> None:
        if self.process is None:
            return
        for pid in self.tree_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def make_runtime(root: Path, extra_env: dict[str, str] | None = None) -> Runtime:
    bin_dir = root / "standin-bin"
    bin_dir.mkdir(parents=True)
    for name in STANDIN_NAMES:
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" {name} "$@"\n')
        wrapper.chmod(0o755)
    records = root / "records"
    records.mkdir()
    # The caller's PATH, not /usr/bin: under `nix flake check` the tools (coreutils, s6, Caddy,
    # provision) are store paths on PATH and there is no /usr/bin.
    venv_bin = Path(sys.executable).parent
    path = os.pathsep.join([str(bin_dir), str(RUNTIME / "bin"), str(venv_bin), os.environ.get("PATH", "")])
    env = {
        "PATH": path,
        "HOME": str(root / "home"),
        "LANG": "C.UTF-8",
        "WORKSPACE": str(root / "workspace"),
        "RUNTIME_DIR": str(root / "run"),
        "STANDIN_RECORDS": str(records),
        "PROVISION_RETRY_BASE": "0.01",
    }
    runtime = Runtime(root=root, env=env)
    ports = free_ports(2 * len(PROXIED) + 1)
    for service in PROXIED:
        upper = service.upper()
        runtime.ports[service], runtime.internal[service] = ports.pop(), ports.pop()
        env[f"{upper}_PORT"] = str(runtime.ports[service])
        env[f"{upper}_INTERNAL_PORT"] = str(runtime.internal[service])
    env["GUARD_INTERNAL_PORT"] = str(ports.pop())
    env.update(extra_env or {})
    return runtime


RUNTIME_TOOLS = ("s6-svscan", "s6-log", "s6-envdir", "s6-svstat", "caddy")


def missing_runtime_tool() -> str | None:
    """The first tool the runtime tests need that is not installed (None: all are)."""
    from .conftest import which  # under CI=true a missing tool fails here

    return next((tool for tool in RUNTIME_TOOLS if which(tool) is None), None)


@contextlib.contextmanager
def runtime_starter(root: Path):
    """`start(**env)` boots a container under root and waits until every port answers; each one
    started is killed at the end."""
    started: list[Runtime] = []

    def start(**env: str) -> Runtime:
        runtime = make_runtime(root / f"container{len(started)}", env)
        started.append(runtime)
        runtime.start()
        runtime.wait_ready()
        return runtime

    try:
        yield start
    finally:
        for runtime in started:
            runtime.kill()


def _tcp_sockets():
    """Every TCP socket of /proc/net/tcp{,6}: (local address, local port, remote port, state)."""
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                address, local_port = fields[1].rsplit(":", 1)
                remote_port = fields[2].rsplit(":", 1)[1]
                yield _address(address, width), int(local_port, 16), int(remote_port, 16), fields[3]


def listening(port: int) -> set[str]:
    """The local addresses a TCP port listens on."""
    return {address for address, local, _, state in _tcp_sockets() if local == port and state == "0A"}


def connected_to(port: int) -> bool:
    """A connection to this local port is established (the client's end has it as its remote
    port)."""
    return any(remote == port and state == "01" for _, _, remote, state in _tcp_sockets())


def _address(hex_address: str, width: int) -> str:
    if width == 8:
        return socket.inet_ntop(socket.AF_INET, bytes.fromhex(hex_address)[::-1])
    raw = bytes.fromhex(hex_address)
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
