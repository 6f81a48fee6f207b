"""The runtime's plain files: every script passes shellcheck, every run script ends in exec."""

from __future__ import annotations

import os
import subprocess

import pytest

from .conftest import which
from .runtime_harness import RUNTIME, defaults

SERVICES = RUNTIME / "services"
SCRIPTS = [
    RUNTIME / "init",
    *sorted((RUNTIME / "bin").iterdir()),
    *sorted(SERVICES.glob("*/run")),
    *sorted(SERVICES.glob("*/finish")),
    *sorted(SERVICES.glob("*/log/run")),
]


def test_shellcheck_passes_on_every_runtime_script():
    if which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (tests/run.sh installs it)")
    result = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(RUNTIME)))
def test_scripts_are_executable(script):
    assert os.access(script, os.X_OK)


@pytest.mark.parametrize(
    "run",
    sorted(SERVICES.glob("*/run")) + sorted(SERVICES.glob("*/log/run")),
    ids=lambda p: str(p.relative_to(SERVICES)),
)
def test_every_run_script_ends_in_exec(run):
    logical = run.read_text().replace("\\\n", " ").splitlines()  # join continued lines
    commands = [line.strip() for line in logical if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1].startswith("exec "), f"{run}: the last command must exec the daemon"


def test_every_service_of_the_defaults_has_a_directory_with_a_log():
    values = defaults()
    assert sorted(values["SERVICES"].split()) == sorted(p.name for p in SERVICES.iterdir())
    for service in values["SERVICES"].split():
        assert (SERVICES / service / "log" / "run").exists()
    assert values["PROXIED_SERVICES"].split() == ["sdnext", "filebrowser", "ttyd", "logdy"]
    ports = [
        values[f"{s.upper()}_{kind}PORT"]
        for s in values["PROXIED_SERVICES"].split()
        for kind in ("", "INTERNAL_")
    ]
    assert ports == ["8010", "18010", "7010", "17010", "7020", "17020", "7030", "17030"]


def test_the_runtime_under_test_gets_the_callers_path_and_no_system_folders(tmp_path, monkeypatch):
    # `nix flake check` has no /usr/bin: coreutils, s6, Caddy and provision are store paths on
    # PATH, so the harness must hand init the caller's PATH, not a list of system folders.
    from .runtime_harness import make_runtime

    store = ["/nix/store/0000-coreutils/bin", "/nix/store/1111-s6/bin", "/nix/store/2222-provision/bin"]
    monkeypatch.setenv("PATH", ":".join(store))
    entries = make_runtime(tmp_path).env["PATH"].split(":")
    assert entries[-3:] == store
    assert not {"/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin"} & set(entries)
