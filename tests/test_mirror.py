"""A content-addressed mirror: `provision mirror DIR` fills it from a host's verified files, and
`--mirror URL` / PROVISION_MIRROR asks it first, verifies what it serves, and falls back to the
source (with a warning naming the mirror) when it lacks a file, is down, or serves other bytes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from provision.ranges import Ranges

from .conftest import blob, run_module, sha256, start_module, tree
from .fakes.civitai import VersionFile
from .fakes.hub import git_blob_sha1
from .fakes.static import StaticFolder
from .fleet import fetched_from, report_items, static_server

COMMIT = "a" * 40
WEIGHTS = blob(300 * 1024, seed=11)  # an LFS file: the Hub publishes its sha256
CONFIG_JSON = b'{"model_type": "test"}\n' * 20  # a small file: pinned by its git blob id
LORA = blob(120 * 1024, seed=12)  # CivitAI, behind a token
UPSCALER = blob(90 * 1024, seed=13)  # a plain URL: the lock hashed it by downloading it
HF_SECRET, CIVITAI_SECRET = "hf_mirror_secret_123", "civitai-mirror-secret-456"

FILES = {
    "Stable-diffusion/model.safetensors": WEIGHTS,
    "VAE/config.json": CONFIG_JSON,
    "Lora/style.safetensors": LORA,
    "ESRGAN/upscaler.pth": UPSCALER,
}


@pytest.fixture
def origin(hub, civitai, cdn, monkeypatch, write_config):
    """The fakes with one model set, its config and lock; returns the config."""
    hub.add_repo("org/model", {"model.safetensors": WEIGHTS, "config.json": CONFIG_JSON}, commit=COMMIT)
    hub.valid_tokens.add(HF_SECRET)
    civitai.valid_tokens.add(CIVITAI_SECRET)
    civitai.add_version(300, 30, [VersionFile("style.safetensors", LORA, file_id=31)])
    cdn.add("/upscaler.pth", UPSCALER)
    config = write_config(
        '[models.checkpoints.base]\nrepo = "org/model"\nfile = "model.safetensors"\n\n'
        '[models.vae.cfg]\nrepo = "org/model"\nfile = "config.json"\n\n'
        "[models.lora.style]\nversion_id = 300\n\n"
        f'[models.esrgan]\nup = "{cdn.url}/upscaler.pth"\n'
    )
    monkeypatch.setenv("CIVITAI_TOKEN", CIVITAI_SECRET)
    return config


def first_host(cli, config, workspace: Path) -> None:
    """Lock the set and install it the ordinary way: the host that fills the mirror."""
    assert cli("lock", str(config)).code == 0
    result = cli(str(config), "--locked", "--workspace", str(workspace))
    assert result.code == 0, result.text


def origin_requests(*servers) -> int:
    return sum(len(server.seen()) for server in servers)


@pytest.fixture
def http_mirror(tmp_path):
    """`python -m http.server` over a folder: a plain static file server in its own process
    (no Range, no ETag), the kind the README points at."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    with static_server(folder) as url:
        yield folder, url


def test_a_second_host_gets_every_locked_file_from_the_mirror_without_tokens_or_source_requests(
    cli, origin, workspace, tmp_path, hub, civitai, cdn, http_mirror, monkeypatch
):
    folder, url = http_mirror
    first_host(cli, origin, workspace)
    filled = cli("mirror", str(folder), str(origin), "--json")
    assert filled.code == 0, filled.text
    rows = {row["path"]: row for row in json.loads(filled.out)}
    assert {path: row["result"] for path, row in rows.items()} == dict.fromkeys(FILES, "linked")
    assert rows["VAE/config.json"]["mirrored_as"] == [
        f"git-blob/{git_blob_sha1(CONFIG_JSON)}",
        f"sha256/{sha256(CONFIG_JSON)}",
    ]
    for data in FILES.values():
        assert (folder / "sha256" / sha256(data)).read_bytes() == data
    # Hard links: the mirror costs no second copy on the workspace's disk.
    assert (folder / "sha256" / sha256(WEIGHTS)).stat().st_ino == (
        workspace / "sdnext/models/Stable-diffusion/model.safetensors"
    ).stat().st_ino
    again = cli("mirror", str(folder), str(origin), "--json")
    assert {row["result"] for row in json.loads(again.out)} == {"already there"}

    # The second host: no token at all, the source fakes must not see a single request.
    monkeypatch.delenv("CIVITAI_TOKEN")
    before = origin_requests(hub, civitai, cdn)
    second = tmp_path / "host-2"
    result = cli(str(origin), "--locked", "--workspace", str(second), "--mirror", url, "--json")
    assert result.code == 0, result.text
    assert origin_requests(hub, civitai, cdn) == before, "a file the mirror serves is not asked of its source"
    for path, data in FILES.items():
        assert (second / "sdnext" / "models" / path).read_bytes() == data
    assert tree(second / "sdnext" / "models") == sorted(FILES)
    assert fetched_from(result.out) == dict.fromkeys(FILES, "mirror")
    # Run again: everything in place, nothing asked anywhere.
    rerun = cli(str(origin), "--locked", "--workspace", str(second), "--mirror", url, "--json")
    assert set(fetched_from(rerun.out).values()) == {"disk"}


def test_tokens_stay_with_their_sources_and_the_table_says_where_each_file_came_from(
    cli, origin, workspace, tmp_path, hub, civitai, cdn, monkeypatch
):
    first_host(cli, origin, workspace)
    mirror = StaticFolder(root=tmp_path / "mirror").start()
    try:
        assert cli("mirror", str(mirror.root), str(origin)).code == 0
        (mirror.root / "sha256" / sha256(UPSCALER)).unlink()  # one file the mirror lacks
        monkeypatch.setenv("HF_TOKEN", HF_SECRET)
        result = cli(str(origin), "--locked", "--workspace", str(tmp_path / "host-2"), "--mirror", mirror.url)
        assert result.code == 0, result.text
        for seen in mirror.seen():
            assert not {"authorization", "cookie"} & set(seen.headers), seen
            assert HF_SECRET not in str(seen.headers) and CIVITAI_SECRET not in str(seen.headers)
        assert (
            f"warning: upscaler.pth: the mirror {mirror.url} has no copy of it (404): downloading it from its source"
            in result.text
        )
        assert f"checkpoints.base: from the mirror {mirror.url}" in result.text
        assert "esrgan.up: from its source" in result.text
    finally:
        mirror.stop()


@pytest.mark.parametrize(
    ("served", "why"),
    [
        (WEIGHTS[:-1] + b"\0", "checksum mismatch"),
        # Some static hosts answer a missing file with 200 and a page: other bytes, not "down".
        (b"<html>404: try the home page</html>", "the server offers 35 bytes, but the source says 307200"),
    ],
    ids=["corrupt", "page"],
)
def test_other_bytes_from_the_mirror_never_land_and_the_source_serves_that_file(
    cli, origin, workspace, tmp_path, http_mirror, served, why
):
    folder, url = http_mirror
    first_host(cli, origin, workspace)
    assert cli("mirror", str(folder), str(origin)).code == 0
    bad = folder / "sha256" / sha256(WEIGHTS)
    bad.unlink()  # a hard link: write a new file, not into the workspace's
    bad.write_bytes(served)
    second = tmp_path / "host-2"
    result = cli(str(origin), "--locked", "--workspace", str(second), "--mirror", url, "--json")
    assert result.code == 0, result.text
    assert f"model.safetensors: the mirror {url} served other bytes ({why}" in result.err
    assert "is not answering" not in result.err, "the mirror answered: it stays asked for the others"
    assert (second / "sdnext/models/Stable-diffusion/model.safetensors").read_bytes() == WEIGHTS
    origins = fetched_from(result.out)
    assert origins.pop("Stable-diffusion/model.safetensors") == "source"
    assert set(origins.values()) == {"mirror"}

    # `provision mirror` checks what is there and replaces a bad copy.
    refilled = cli("mirror", str(folder), str(origin), "--json")
    results = {row["path"]: row["result"] for row in json.loads(refilled.out)}
    assert results["Stable-diffusion/model.safetensors"] == "replaced"
    assert bad.read_bytes() == WEIGHTS


def test_a_mirror_that_is_down_costs_one_warning_and_every_file_comes_from_its_source(
    cli, origin, workspace, tmp_path
):
    first_host(cli, origin, workspace)
    second = tmp_path / "host-2"
    result = cli(str(origin), "--locked", "--workspace", str(second), "--mirror", "http://127.0.0.1:9/fleet")
    assert result.code == 0, result.text
    assert result.text.count("warning: the mirror http://127.0.0.1:9/fleet is not answering") == 1
    assert "this run asks the sources for every file left" in result.text
    assert tree(second / "sdnext" / "models") == sorted(FILES)


def test_a_local_folder_from_the_environment_is_a_mirror_too(
    cli, origin, workspace, tmp_path, monkeypatch, hub, cdn
):
    first_host(cli, origin, workspace)
    # Another filesystem where there is one (no hard link across devices: copies).
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else tmp_path
    folder = Path(tempfile.mkdtemp(dir=base, prefix="provision-mirror-"))
    try:
        filled = cli("mirror", str(folder), str(origin), "--json")
        expected = "copied" if folder.stat().st_dev != workspace.stat().st_dev else "linked"
        assert {row["result"] for row in json.loads(filled.out)} == {expected}
        monkeypatch.delenv("CIVITAI_TOKEN")
        monkeypatch.setenv("PROVISION_MIRROR", str(folder))
        before = origin_requests(hub, cdn)
        second = tmp_path / "host-2"
        result = cli(str(origin), "--locked", "--workspace", str(second), "--json")
        assert result.code == 0, result.text
        assert origin_requests(hub, cdn) == before
        assert set(fetched_from(result.out).values()) == {"mirror"}
        for path, data in FILES.items():
            assert (second / "sdnext" / "models" / path).read_bytes() == data
    finally:
        for file in folder.rglob("*"):
            if file.is_file():
                file.unlink()
        for sub in sorted(folder.rglob("*"), reverse=True):
            sub.rmdir()
        folder.rmdir()


def test_a_gated_file_comes_from_the_mirror_without_hf_token(
    cli, hub, write_config, workspace, tmp_path, monkeypatch
):
    hub.add_repo(
        "bfl/gated", {"flux.safetensors": WEIGHTS}, commit=COMMIT, gated=True, accepted_tokens={HF_SECRET}
    )
    hub.valid_tokens.add(HF_SECRET)
    config = write_config('[models.unet.flux]\nrepo = "bfl/gated"\nfile = "flux.safetensors"\ngated = true\n')
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    first_host(cli, config, workspace)
    folder = tmp_path / "mirror"
    assert cli("mirror", str(folder), str(config)).code == 0
    monkeypatch.delenv("HF_TOKEN")
    second = tmp_path / "host-2"
    result = cli(str(config), "--locked", "--workspace", str(second), "--mirror", str(folder))
    assert result.code == 0, result.text
    assert (second / "sdnext/models/UNET/flux.safetensors").read_bytes() == WEIGHTS
    # Without the mirror the same host still needs the token, and says so.
    third = cli(str(config), "--locked", "--workspace", str(tmp_path / "host-3"))
    assert third.code == 1 and "set HF_TOKEN" in third.text


@pytest.mark.parametrize(
    ("mirror", "message"),
    [
        (
            "ftp://mirror.example/models",
            "--mirror ftp://mirror.example/models: give an http(s) URL or a folder, not a ftp: URL",
        ),
        (
            "/no/such/mirror",
            "--mirror /no/such/mirror: no such folder (mount the shared volume, or give an http(s) URL)",
        ),
        ("https://user:hunter2pass@/x", "--mirror https:///x: no host in the URL"),
    ],
)
def test_a_wrong_mirror_is_a_usage_error_before_anything_is_fetched(
    cli, origin, mirror, message, models, cdn
):
    before = len(cdn.seen())
    result = cli(str(origin), "--mirror", mirror)
    assert result.code == 2
    assert message in result.text and "hunter2pass" not in result.text
    assert tree(models) == [] and len(cdn.seen()) == before


def test_filling_a_mirror_from_a_host_without_the_files_says_what_to_run(cli, origin, tmp_path, workspace):
    assert cli("lock", str(origin)).code == 0
    folder = tmp_path / "mirror"
    result = cli("mirror", str(folder), str(origin))
    assert result.code == 1
    # Locking downloaded the plain URL's file to hash it: that one is in place, the rest is not.
    assert "3 locked files are not in place as locked" in result.text
    assert f"run `provision {origin} --locked` here first" in result.text
    assert tree(folder) == [f"sha256/{sha256(UPSCALER)}"]
    nolock = cli("mirror", str(folder), str(tmp_path / "other.toml"))
    assert nolock.code == 2 and "create it with `provision lock" in nolock.text


def test_a_signal_during_a_mirror_download_keeps_its_bytes_and_the_next_run_resumes_from_the_mirror(
    cli, hub, write_config, workspace, tmp_path
):
    big = blob(2 * 1024 * 1024, seed=14)
    hub.add_repo("org/big", {"big.safetensors": big}, commit=COMMIT)
    config = write_config('[models.checkpoints.big]\nrepo = "org/big"\nfile = "big.safetensors"\n')
    first_host(cli, config, workspace)
    mirror = StaticFolder(root=tmp_path / "mirror").start()
    try:
        assert cli("mirror", str(mirror.root), str(config)).code == 0
        mirror.rate = 256 * 1024  # per connection: still on its way at the signal
        second = tmp_path / "host-2"
        argv = [str(config), "--locked", "--json", "--workspace", str(second), "--mirror", mirror.url]
        env = {"HF_ENDPOINT": hub.url, "PROVISION_READ_TIMEOUT": "300"}
        state = second / "sdnext/models/Stable-diffusion/big.safetensors.part.state"
        process = start_module(*argv, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                if Ranges(json.loads(state.read_text())["done"]).covered() >= 512 * 1024:
                    break
            time.sleep(0.05)
        mirror.gate = threading.Event()  # no body moves from now on
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 143, err
        assert "interrupted: 1 partial file kept (Stable-diffusion/big.safetensors)" in err
        kept = Ranges(json.loads(state.read_text())["done"]).covered()

        mirror.gate.set()
        mirror.gate, mirror.rate = None, None
        mirror.wait_idle()
        mirror.body_bytes = 0
        again = run_module(*argv, env=env)
        assert again.returncode == 0, again.stderr
        (row,) = report_items(again.stdout)
        assert row["fetched_from"] == {"Stable-diffusion/big.safetensors": "mirror"}
        assert row["bytes"] == len(big) - kept, "only the missing bytes, from the mirror"
        assert (second / "sdnext/models/Stable-diffusion/big.safetensors").read_bytes() == big
    finally:
        mirror.stop()
