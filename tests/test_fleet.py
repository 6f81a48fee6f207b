"""A fleet on one machine: N hosts as N `provision --locked` processes against the fakes.
Without a mirror the sources serve the set N times; with a mirror the first host filled, once;
a mirror that dies mid-run or serves a corrupt file still leaves every host verified; and four
processes on one shared workspace wait for the one that downloads."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from .conftest import sha256
from .fakes.static import StaticFolder
from .fleet import Host, ModelSet, run_hosts, start_host, static_server

HOSTS = 4  # the bench runs 8; two shared cores keep the test at four


@pytest.fixture
def models(tmp_path):
    served = ModelSet.serve(tmp_path / "config", scale_kib=256)
    locked = subprocess.run(
        [
            sys.executable,
            "-m",
            "provision",
            "lock",
            str(served.config),
            "--workspace",
            str(tmp_path / "locker"),
        ],
        env={**served.env},
        capture_output=True,
        text=True,
    )
    assert locked.returncode == 0, locked.stderr
    served.cdn.body_bytes = 0  # locking downloaded the plain URL's file to hash it
    served.hub.requests.clear()
    yield served
    served.stop()


def fill_mirror(models: ModelSet, tmp_path):
    """The first host installs the set from the sources, then writes the mirror folder."""
    (first,) = run_hosts(models, [tmp_path / "host-1"])
    assert first.code == 0, first.text
    folder = tmp_path / "mirror"
    argv = ["mirror", str(folder), str(models.config), "--workspace", str(tmp_path / "host-1")]
    filled = subprocess.run(
        [sys.executable, "-m", "provision", *argv],
        env=models.env,
        capture_output=True,
        text=True,
    )
    assert filled.returncode == 0, filled.stderr
    return folder


def test_without_a_mirror_every_host_downloads_the_whole_set(models, tmp_path):
    hosts = run_hosts(models, [tmp_path / f"host-{n}" for n in range(1, HOSTS + 1)])
    for host in hosts:
        assert host.code == 0, host.text
        assert models.verified(host.workspace)
    assert models.origin_bytes() >= HOSTS * models.size


def other_hosts(models: ModelSet, tmp_path, mirror: str) -> list[Host]:
    """Hosts 2..N at once with the mirror; each must end with exit 0 and the set verified."""
    hosts = run_hosts(models, [tmp_path / f"host-{n}" for n in range(2, HOSTS + 1)], "--mirror", mirror)
    for host in hosts:
        assert host.code == 0, host.text
        assert models.verified(host.workspace)
    return hosts


def test_with_a_mirror_the_sources_serve_the_set_once(models, tmp_path):
    folder = fill_mirror(models, tmp_path)
    assert models.origin_bytes() == models.size
    with static_server(folder) as url:
        hosts = other_hosts(models, tmp_path, url)
    for host in hosts:
        assert set(host.fetched_from().values()) == {"mirror"}, host.text
    assert models.origin_bytes() == models.size, "the other hosts' bytes all came from the mirror"


def test_a_mirror_that_dies_mid_run_leaves_every_host_verified_from_the_sources(models, tmp_path):
    folder = fill_mirror(models, tmp_path)
    mirror = StaticFolder(root=folder, die_after_fault=True).start()
    big = "Stable-diffusion/model.safetensors"
    mirror.cut(f"/sha256/{sha256(models.files[big])}", at=len(models.files[big]) // 2)
    try:
        hosts = other_hosts(models, tmp_path, mirror.url)
    finally:
        mirror.stop()
    assert mirror.dead, "the mirror went down during the run"
    for host in hosts:
        assert host.fetched_from()[big] == "source"
        assert f"the mirror {mirror.url} is not answering" in host.text
    assert models.origin_bytes() >= HOSTS * len(models.files[big])


def test_a_corrupt_mirror_file_is_served_by_its_source_on_every_host(models, tmp_path):
    folder = fill_mirror(models, tmp_path)
    lora = "Lora/style.safetensors"
    bad = folder / "sha256" / sha256(models.files[lora])
    bad.unlink()  # a hard link into host-1's workspace: a new file, not a write into that one
    bad.write_bytes(b"\0" + models.files[lora][1:])
    with static_server(folder) as url:
        hosts = other_hosts(models, tmp_path, url)
    for host in hosts:
        origins = host.fetched_from()
        assert origins.pop(lora) == "source" and set(origins.values()) == {"mirror"}
        assert f"style.safetensors: the mirror {url} served other bytes" in host.text


def test_four_processes_on_one_shared_workspace_download_once(models, tmp_path):
    shared = tmp_path / "shared-volume"
    models.cdn.gate = threading.Event()  # bodies wait: the first host holds the workspace meanwhile
    first = start_host(models, shared)
    first.wait_for_line(r"^start ")
    others = [start_host(models, shared) for _ in range(3)]
    for host in others:
        host.wait_for_line(rf"another provision \(PID {first.process.pid}, .*waiting for it to finish")
    models.cdn.gate.set()
    hosts = [first.finish(), *(host.finish() for host in others)]
    for host in hosts:
        assert host.code == 0, host.text
    assert models.verified(shared)
    assert models.origin_bytes() == models.size, "one host downloaded, the others found it in place"
    for host in others:
        assert "skipped" in host.text
