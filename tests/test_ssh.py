"""SSH into the container, under real s6 with Debian's OpenSSH (sshd and ssh, rsync, scp): keys
only, started only when a key is given, the host key kept on the workspace volume.

The image runs nixpkgs' OpenSSH with the same config (nix/runtime/bin/sshd-setup writes it)."""

from __future__ import annotations

import functools
import re
import socket
import subprocess
from pathlib import Path

import pytest

from .conftest import blob, sha256, which
from .runtime_harness import free_port, listening, make_runtime
from .test_runtime import wait_for

PASSWORD = "correct-horse-battery-9"
HF_TOKEN = "hf_ssh_test_secret_4242"


@pytest.fixture(autouse=True)
def tools():
    for tool in ("s6-svscan", "caddy", "sshd", "ssh", "ssh-keygen", "rsync", "scp"):
        if which(tool) is None:
            pytest.skip(f"{tool} is not installed (tests/run.sh installs it)")


@pytest.fixture
def keys(tmp_path):
    """A fresh key pair per name: keys("alice") -> (private key path, public key line)."""
    made: dict[str, tuple[Path, str]] = {}

    def make(name: str) -> tuple[Path, str]:
        if name not in made:
            path = tmp_path / "client-keys" / name
            path.parent.mkdir(exist_ok=True)
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test", "-f", str(path)],
                check=True,
            )
            made[name] = (path, path.with_suffix(".pub").read_text().strip())
        return made[name]

    return make


@pytest.fixture
def start(tmp_path):
    """Boots containers (each with its own free SSH_PORT unless given); kills them all at the end."""
    booted: list = []
    yield functools.partial(boot, tmp_path, booted)
    for runtime in booted:
        runtime.kill()


def boot(tmp_path: Path, booted: list, workspace: Path | None = None, **env: str):
    env = {"PASSWORD": PASSWORD, "SSH_PORT": str(free_port()), **env}
    if workspace is not None:
        env["WORKSPACE"] = str(workspace)
    booted.append(make_runtime(tmp_path / f"container{len(booted)}", env).start())
    booted[-1].wait_ready()
    return booted[-1]


def sshd_up(runtime) -> int:
    port = int(runtime.env["SSH_PORT"])
    wait_for(lambda: listening(port), 30)
    return port


def known_hosts(runtime, path: Path) -> Path:
    """The client trusts exactly the host key the container keeps on its workspace."""
    host_key = (runtime.workspace / ".sshd" / "ssh_host_ed25519_key.pub").read_text().split()
    path.write_text(f"[127.0.0.1]:{runtime.env['SSH_PORT']} {host_key[0]} {host_key[1]}\n")
    return path


def ssh_options(runtime, key: Path, trusted: Path) -> list[str]:
    return [
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={trusted}",
        "-o",
        "ConnectTimeout=20",
        "-i",
        str(key),
    ]


def ssh(runtime, key: Path, trusted: Path, command: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "ssh",
            *ssh_options(runtime, key, trusted),
            *extra,
            "-p",
            runtime.env["SSH_PORT"],
            "root@127.0.0.1",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def sshd_log(runtime) -> str:
    path = runtime.workspace / "logs" / "sshd" / "current"
    return path.read_text(errors="replace") if path.exists() else ""


def fingerprint(public_key: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(public_key)], capture_output=True, text=True, check=True
    )
    return out.stdout.split()[1]


def test_the_right_key_runs_a_command_in_the_workspace_and_nothing_else_gets_in(start, keys, tmp_path):
    (alice, alice_pub), (bob, bob_pub), (carol, carol_pub) = keys("alice"), keys("bob"), keys("carol")
    dave, dave_pub = keys("dave")
    mallory, _ = keys("mallory")
    # One key per line, and two joined by a space on one line (as some platforms pass them).
    runtime = start(
        PUBLIC_KEY=f"{alice_pub}\n\n{bob_pub} {dave_pub}\n", SSH_PUBLIC_KEY=carol_pub, HF_TOKEN=HF_TOKEN
    )
    sshd_up(runtime)
    trusted = known_hosts(runtime, tmp_path / "known_hosts")

    # RunPod's PUBLIC_KEY (two keys, one per line) and Vast.ai's SSH_PUBLIC_KEY all let in root.
    for key in (alice, bob, carol, dave):
        done = ssh(runtime, key, trusted, 'pwd; echo "$WORKSPACE"; whoami; env')
        assert done.returncode == 0, done.stderr
        cwd, workspace, user, *env = done.stdout.splitlines()
        assert cwd == workspace == str(runtime.workspace) and user == "root"
        assert HF_TOKEN not in done.stdout and not any(line.startswith("PASSWORD=") for line in env)
    # The same tools as the web terminal: the container's PATH reaches the session.
    assert ssh(runtime, alice, trusted, "command -v sdnext-services").returncode == 0

    # Another key, and a password (the server offers no other way than a key), are refused.
    refused = ssh(runtime, mallory, trusted, "true")
    assert refused.returncode == 255 and "Permission denied (publickey)" in refused.stderr
    password = ssh(
        runtime,
        mallory,
        trusted,
        "true",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "PreferredAuthentications=password,keyboard-interactive",
    )
    assert password.returncode == 255 and "Permission denied (publickey)" in password.stderr

    # The refused key is in the service's log, with its fingerprint; the accepted ones too.
    refused_key = fingerprint(mallory.with_suffix(".pub"))
    wait_for(lambda: refused_key in sshd_log(runtime), 30)
    log = sshd_log(runtime)
    assert re.search(
        rf"Failed publickey for root from 127\.0\.0\.1 port \d+ ssh2: ED25519 {re.escape(refused_key)}", log
    )
    assert "Accepted publickey for root from 127.0.0.1" in log
    assert HF_TOKEN not in log and PASSWORD not in log
    # The console said which keys it accepts, from where.
    for key, variable in ((alice, "PUBLIC_KEY"), (dave, "PUBLIC_KEY"), (carol, "SSH_PUBLIC_KEY")):
        assert (
            f"{fingerprint(key.with_suffix('.pub'))} {key.name}@test (ED25519) from {variable}"
            in runtime.console
        )


def test_no_key_means_no_ssh_server_and_a_bad_key_is_named_not_shown(start, keys):
    runtime = start()
    assert "no SSH key given (PUBLIC_KEY, SSH_PUBLIC_KEY" in runtime.console
    assert not (runtime.runtime_dir / "service" / "sshd").exists()
    assert not listening(int(runtime.env["SSH_PORT"]))

    private_key = keys("pasted")[0].read_text()
    broken = start(PUBLIC_KEY="ssh-ed25519 not-base64-at-all me@laptop", SSH_PUBLIC_KEY=private_key)
    assert "PUBLIC_KEY line 1 is not an SSH public key: skipped" in broken.console
    assert "SSH_PUBLIC_KEY line 1 is a PRIVATE key: skipped" in broken.console
    assert "no usable SSH key given" in broken.console and not listening(int(broken.env["SSH_PORT"]))
    secret_line = private_key.splitlines()[1]
    assert secret_line not in broken.console and "not-base64-at-all" not in broken.console


def test_the_host_key_survives_a_restart_and_rsync_and_scp_work_both_ways(start, keys, tmp_path):
    key, public = keys("alice")
    workspace = tmp_path / "workspace"
    first = start(workspace=workspace, PUBLIC_KEY=public)
    sshd_up(first)
    line = next(line for line in first.console.splitlines() if "SSH on port" in line)
    host_key_file = workspace / ".sshd" / "ssh_host_ed25519_key.pub"
    assert f"host key 256 {fingerprint(host_key_file)}" in line and "keys only" in line
    trusted = known_hosts(first, tmp_path / "known_hosts")
    assert ssh(first, key, trusted, "true").returncode == 0
    first.stop()  # as docker stop: sshd goes with the rest
    assert first.tree_pids() == [] and not listening(int(first.env["SSH_PORT"]))

    # A new container on the same volume (a restart): the client that trusted the first host key
    # connects without a warning (StrictHostKeyChecking=yes with the first boot's known_hosts).
    again = start(workspace=workspace, PUBLIC_KEY=public, SSH_PORT=first.env["SSH_PORT"])
    sshd_up(again)
    assert line.split("host key")[1] in again.console
    assert "made a host key" not in again.console

    data = blob(3_000_000, seed=21)
    local = tmp_path / "outbound.bin"
    local.write_bytes(data)
    rsh = "ssh " + " ".join(ssh_options(again, key, trusted)) + f" -p {again.env['SSH_PORT']}"

    def rsync(source: str, dest: str) -> None:
        done = subprocess.run(
            ["rsync", "-a", "-e", rsh, source, dest], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr

    rsync(str(local), f"root@127.0.0.1:{workspace}/uploaded.bin")
    assert sha256((workspace / "uploaded.bin").read_bytes()) == sha256(data)
    (workspace / "outputs").mkdir()
    (workspace / "outputs" / "image.png").write_bytes(data[::-1])
    rsync(f"root@127.0.0.1:{workspace}/outputs/", str(tmp_path / "downloaded"))
    assert sha256((tmp_path / "downloaded" / "image.png").read_bytes()) == sha256(data[::-1])

    # scp speaks sftp (OpenSSH 9+): the sftp subsystem works too, relative to the workspace.
    scp = ["scp", *ssh_options(again, key, trusted), "-P", again.env["SSH_PORT"]]
    up = subprocess.run(
        [*scp, str(local), "root@127.0.0.1:scp-up.bin"], capture_output=True, text=True, timeout=60
    )
    assert up.returncode == 0, up.stderr
    assert sha256((workspace / "scp-up.bin").read_bytes()) == sha256(data)


def test_an_ssh_port_in_use_leaves_the_rest_running_and_a_duplicate_stops_init(start, keys, tmp_path):
    _, public = keys("alice")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        runtime = start(PUBLIC_KEY=public, SSH_PORT=str(port))
        assert f"SSH_PORT={port} is already in use on this host" in runtime.console
        assert not (runtime.runtime_dir / "service" / "sshd").exists()

    duplicate = make_runtime(tmp_path / "dup", {"PASSWORD": PASSWORD, "PUBLIC_KEY": public})
    duplicate.env["SSH_PORT"] = duplicate.env["TTYD_PORT"]
    duplicate.start()
    assert duplicate.process.wait(timeout=20) != 0
    assert f"SSH_PORT and TTYD_PORT are both {duplicate.env['TTYD_PORT']}" in duplicate.console


def test_a_key_already_in_roots_authorized_keys_starts_the_server(keys, tmp_path):
    # Where a platform may have put the account's keys: read at every login, so one added there
    # while the container runs works at once.
    (key, public), (later, later_public) = keys("alice"), keys("bob")
    runtime = make_runtime(tmp_path / "c", {"PASSWORD": PASSWORD, "SSH_PORT": str(free_port())})
    authorized = runtime.root / "home" / ".ssh" / "authorized_keys"
    authorized.parent.mkdir(parents=True)
    authorized.write_text(public + "\n")
    try:
        runtime.start()
        runtime.wait_ready()
        sshd_up(runtime)
        assert f"accepting the 1 key(s) in {authorized}" in runtime.console
        trusted = known_hosts(runtime, tmp_path / "known_hosts")
        assert ssh(runtime, key, trusted, "true").returncode == 0
        assert ssh(runtime, later, trusted, "true").returncode == 255
        authorized.write_text(public + "\n" + later_public + "\n")
        assert ssh(runtime, later, trusted, "true").returncode == 0
    finally:
        runtime.kill()
