from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provision.cli import main

from .fakes.cdn import FakeCDN
from .fakes.civitai import FakeCivitai
from .fakes.gdrive import FakeDrive
from .fakes.hub import FakeHub
from .fakes.server import TLS_TRUST
from .runtime_harness import missing_runtime_tool, runtime_starter

REPO = Path(__file__).resolve().parent.parent
ENDPOINT_VARS = ("HF_ENDPOINT", "CIVITAI_ENDPOINT", "GDRIVE_ENDPOINT", "GITHUB_ENDPOINT")
# Git archives of SD.Next and its extensions for a machine without GitHub (their README lists them).
SOURCES = REPO.parent / "shared" / "sources"
# A real wheel from PyPI that the fake package index serves (tests/run.sh downloads it): small,
# pure Python, not in the image, so an extension that needs it gets it in the overlay.
WHEELS = Path(sys.prefix) / "test-wheels"
INFLECTION = "inflection-0.5.1-py2.py3-none-any.whl"
SECRET_VARS = (
    "HF_TOKEN",
    "CIVITAI_TOKEN",
    "GITHUB_TOKEN",
    "PASSWORD",
    "OPEN_BUTTON_TOKEN",
    "PROVISION_URL",
    "HF_ENDPOINT",
    "CIVITAI_ENDPOINT",
    "GDRIVE_ENDPOINT",
    "GITHUB_ENDPOINT",
    "WORKSPACE",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No test sees the developer's tokens or endpoints, and none can reach the real services:
    every endpoint points at a closed loopback port unless a fake replaces it."""
    for name in SECRET_VARS:
        monkeypatch.delenv(name, raising=False)
    for name in ENDPOINT_VARS:
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.setenv("PROVISION_RETRY_BASE", "0.01")  # fast retries; the count stays the same
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


@pytest.fixture
def workspace(tmp_path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
def models(workspace) -> Path:
    return workspace / "sdnext" / "models"


@pytest.fixture
def write_config(tmp_path):
    def write(text: str, name: str = "models.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


class CliResult:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    @property
    def text(self) -> str:
        return self.out + self.err


@pytest.fixture
def cli(capsys, workspace):
    """Run the CLI in-process; --workspace defaults to the test's workspace."""

    def run(*args: str) -> CliResult:
        argv = list(args)
        if "--workspace" not in argv:
            argv += ["--workspace", str(workspace)]
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def child_env() -> dict[str, str]:
    """The environment for a child process: this one's, without any secret. The endpoints stay
    as this test set them (a fake's or a closed loopback port, see clean_env): dropped, they
    would send the child to the real services."""
    return {k: v for k, v in os.environ.items() if k not in SECRET_VARS or k in ENDPOINT_VARS}


def run_module(
    *args: str, env: dict | None = None, cwd=None, timeout=120, inside: list[str] = ()
) -> subprocess.CompletedProcess:
    """`python -m provision ...` in a child process, run to its end (exit codes, argv);
    `env` is added to the secret-free environment; `inside`: a command prefix to run it under
    (nsenter into a namespace)."""
    return subprocess.run(
        [*inside, sys.executable, "-m", "provision", *args],
        env={**child_env(), **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_module(*args: str, env: dict | None = None, inside: list[str] = ()) -> subprocess.Popen:
    """`python -m provision ...` started and left running, for what a test does meanwhile
    (signals, a second run at once, a disk filled under it); its stdout and stderr are text
    pipes. Arguments as for run_module."""
    return subprocess.Popen(
        [*inside, sys.executable, "-m", "provision", *args],
        env={**child_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def drive(monkeypatch):
    server = FakeDrive().start()
    monkeypatch.setenv("GDRIVE_ENDPOINT", server.url)
    yield server
    server.stop()


def tree(root: Path) -> list[str]:
    """Every file below root, relative, sorted ([] when root does not exist)."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def which(tool: str) -> str | None:
    """The tool on PATH or beside this Python (the venv's caddy); under CI=true a missing tool fails."""
    found = shutil.which(
        tool, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    if found is None and os.environ.get("CI") == "true":
        pytest.fail(f"{tool} is missing; tests/run.sh installs it (CI must skip nothing)")
    return found


@pytest.fixture
def cdn():
    server = FakeCDN().start()
    yield server
    server.stop()


@pytest.fixture(params=["http", "https"])
def any_cdn(request, monkeypatch):
    """The fake CDN over plain HTTP, then over HTTPS (as the Hub and every CDN serve): a TLS
    socket hands out a record at a time, and the engine reads it its own way (tls_body_reader)."""
    server = FakeCDN().start(tls=request.param == "https")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(TLS_TRUST))
    yield server
    server.stop()


@pytest.fixture
def hub(monkeypatch, cdn):
    server = FakeHub(cdn=cdn).start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.stop()


@pytest.fixture
def civitai(monkeypatch, cdn):
    server = FakeCivitai(cdn=cdn).start()
    monkeypatch.setenv("CIVITAI_ENDPOINT", server.url)
    yield server
    server.stop()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ at every offset (so a misplaced piece is noticed)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest() * 128
        counter += 1
    return bytes(out[:size])


@pytest.fixture
def runtime_tools():
    """A runtime test skips without s6 or Caddy (under CI=true, `which` fails it instead)."""
    if missing := missing_runtime_tool():
        pytest.skip(f"{missing} is not installed (tests/run.sh installs it)")


@pytest.fixture
def start(runtime_tools, tmp_path):
    """`start(**env)`: boot a container under real s6 and Caddy, killed at the end of the test."""
    with runtime_starter(tmp_path) as run:
        yield run
