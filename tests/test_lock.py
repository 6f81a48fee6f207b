"""models.lock: `provision lock` pins every item; runs install exactly the locked bytes, follow
the config's edits, and refuse or fail loudly when the lock and the world disagree."""

from __future__ import annotations

import json
import re

import pytest

from provision.config import tomllib
from provision.core import Provisioner

from .conftest import blob, run_module, sha256, tree
from .fakes.civitai import VersionFile

OLD_COMMIT = "1" * 40
NEW_COMMIT = "2" * 40
WEIGHTS_V1 = blob(64 * 1024, seed=1)
WEIGHTS_V2 = blob(64 * 1024, seed=2)


def lock_of(config) -> dict:
    return tomllib.loads(config.with_suffix(".lock").read_text())


def files_of(lock: dict, item: str) -> list[dict]:
    return [f for f in lock["file"] if f["item"] == item]


def test_a_run_installs_the_locked_commit_after_main_moves(cli, write_config, hub, models):
    hub.add_repo("org/model", {"model.safetensors": WEIGHTS_V1}, commit=OLD_COMMIT)
    config = write_config('[models.checkpoints.base]\nrepo = "org/model"\nfile = "model.safetensors"\n')

    locked = cli("lock", str(config))
    assert locked.code == 0, locked.text
    entry = files_of(lock_of(config), "checkpoints/base")[0]
    assert entry == {
        "item": "checkpoints/base",
        "path": "Stable-diffusion/model.safetensors",
        "size": len(WEIGHTS_V1),
        "sha256": sha256(WEIGHTS_V1),
        "sha256_from": "source",
        "source": "huggingface",
        "repo": "org/model",
        "file": "model.safetensors",
        "commit": OLD_COMMIT,
    }
    assert tree(models) == [], "the Hub publishes the sha256: locking downloads nothing"

    hub.push("org/model", {"model.safetensors": WEIGHTS_V2}, commit=NEW_COMMIT)
    result = cli(str(config), "--locked")
    assert result.code == 0, result.text
    assert (models / "Stable-diffusion" / "model.safetensors").read_bytes() == WEIGHTS_V1

    # Moving on is a decision: --upgrade re-resolves, and the next run installs the new commit.
    assert cli("lock", str(config), "--upgrade").code == 0
    assert files_of(lock_of(config), "checkpoints/base")[0]["commit"] == NEW_COMMIT
    assert cli(str(config), "--locked").code == 0
    assert (models / "Stable-diffusion" / "model.safetensors").read_bytes() == WEIGHTS_V2


def test_a_locked_civitai_model_keeps_its_version_when_a_newer_one_is_published(
    cli, write_config, civitai, models, monkeypatch
):
    monkeypatch.setenv("CIVITAI_TOKEN", "civitai-secret-123")
    civitai.valid_tokens.add("civitai-secret-123")
    civitai.add_version(100, 7, [VersionFile("style.safetensors", WEIGHTS_V1, file_id=11)])
    config = write_config("[models.lora.style]\nmodel_id = 7\n")
    assert cli("lock", str(config)).code == 0
    entry = files_of(lock_of(config), "lora/style")[0]
    assert (entry["model_id"], entry["version_id"], entry["file_id"]) == (7, 100, 11)
    assert entry["sha256"] == sha256(WEIGHTS_V1)

    civitai.add_version(200, 7, [VersionFile("style.safetensors", WEIGHTS_V2, file_id=22)])
    result = cli(str(config), "--locked")
    assert result.code == 0, result.text
    assert (models / "Lora" / "style.safetensors").read_bytes() == WEIGHTS_V1
    assert "civitai-secret-123" not in config.with_suffix(".lock").read_text()


def test_changed_bytes_behind_a_locked_url_fail_and_the_old_file_stays(
    cli, write_config, cdn, models, tmp_path
):
    cdn.add("/upscaler.pth", WEIGHTS_V1)
    config = write_config(f'[models.esrgan]\nup = "{cdn.url}/upscaler.pth"\n')
    locked = cli("lock", str(config))
    assert locked.code == 0, locked.text
    assert "no sha256 published for 1 file(s): hashed 0 on disk, downloaded 1 to hash them" in locked.text
    entry = files_of(lock_of(config), "esrgan/up")[0]
    assert (entry["sha256"], entry["sha256_from"]) == (sha256(WEIGHTS_V1), "download")
    dest = models / "ESRGAN" / "upscaler.pth"
    assert dest.read_bytes() == WEIGHTS_V1, "the download that gave the hash is kept in place"

    cdn.add("/upscaler.pth", WEIGHTS_V2)  # same size, other bytes
    result = cli(str(config), "--locked", "--force")
    assert result.code == 1
    assert f"expected sha256:{sha256(WEIGHTS_V1)}, got sha256:{sha256(WEIGHTS_V2)}" in result.text
    assert f"provision lock {config} --upgrade --only esrgan/up" in result.text
    assert dest.read_bytes() == WEIGHTS_V1
    assert tree(models) == ["ESRGAN/upscaler.pth"], "nothing unverified got a name, no .part left"

    # Another host with the same config and lock: nothing lands under a final name.
    other = tmp_path / "other-host"
    result = cli(str(config), "--locked", "--workspace", str(other))
    assert result.code == 1
    assert "the lock pins esrgan/up to these bytes" in result.text
    assert tree(other / "sdnext" / "models") == []


def test_a_lock_follows_config_edits_and_locked_refuses_them(cli, write_config, cdn, hub, models):
    hub.add_repo("org/a", {"a.safetensors": WEIGHTS_V1}, commit=OLD_COMMIT)
    hub.add_repo("org/b", {"b.safetensors": WEIGHTS_V2}, commit=OLD_COMMIT)
    first = (
        '[models.checkpoints.a]\nrepo = "org/a"\nfile = "a.safetensors"\n\n'
        '[models.lora.b]\nrepo = "org/b"\nfile = "b.safetensors"\n'
    )
    config = write_config(first)
    assert cli("lock", str(config)).code == 0
    before = config.with_suffix(".lock").read_text()
    hub.push("org/a", {"a.safetensors": WEIGHTS_V2}, commit=NEW_COMMIT)  # must not move item a

    cdn.add("/vae.pt", WEIGHTS_V1)
    config.write_text(first.split("\n\n")[0] + f'\n[models.vae]\nnew = "{cdn.url}/vae.pt"\n')
    refused = cli(str(config), "--locked")
    assert refused.code == 2
    assert "out of date with the config (added: vae/new; removed: lora/b)" in refused.text
    assert f"run `provision lock {config}`" in refused.text
    assert tree(models) == []

    result = cli(str(config))
    assert result.code == 0, result.text
    after = lock_of(config)
    assert [i["name"] for i in after["item"]] == ["checkpoints/a", "vae/new"]
    assert files_of(after, "checkpoints/a")[0]["commit"] == OLD_COMMIT
    assert files_of(after, "vae/new")[0]["sha256"] == sha256(WEIGHTS_V1)
    assert files_of(after, "lora/b") == []
    a_table = re.search(r'\[\[file\]\]\nitem = "checkpoints/a"\n(?:.+\n)+', before)[0]
    assert a_table in config.with_suffix(".lock").read_text(), "the untouched item's lines are unchanged"
    assert (models / "Stable-diffusion" / "a.safetensors").read_bytes() == WEIGHTS_V1
    assert cli(str(config), "--locked").code == 0


def test_the_lock_never_holds_a_token(cli, write_config, cdn, hub, models, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    hub.valid_tokens.add("hf_secret_token_value")
    hub.add_repo("org/a", {"a.safetensors": WEIGHTS_V1, "config.json": b"{}"})
    cdn.add("/x.pth", WEIGHTS_V2)
    config = write_config(
        '[models.diffusers.a]\nrepo = "org/a"\n\n'
        f'[models.esrgan.x]\nurl = "{cdn.url}/x.pth?token=url-secret-456&v=2"\n'
    )
    result = cli("lock", str(config))
    assert result.code == 0, result.text
    text = config.with_suffix(".lock").read_text()
    for secret in ("hf_secret_token_value", "url-secret-456", "token=", "Authorization"):
        assert secret not in text
    lock = tomllib.loads(text)
    assert files_of(lock, "esrgan/x")[0]["url"] == f"{cdn.url}/x.pth?v=2"
    small = next(f for f in files_of(lock, "diffusers/a") if f["path"].endswith("config.json"))
    assert "sha256" not in small and len(small["git_blob"]) == 40, "small Hub files lock their blob id"


def test_a_file_verified_on_disk_gives_its_hash_without_a_download(cli, write_config, cdn, models):
    cdn.add("/up.pth", WEIGHTS_V1)
    config = write_config(f'[models.esrgan]\nup = "{cdn.url}/up.pth"\n')
    assert cli(str(config)).code == 0
    sent = cdn.body_bytes
    locked = cli("lock", str(config))
    assert locked.code == 0, locked.text
    assert "no sha256 published for 1 file(s): hashed 1 on disk, downloaded 0 to hash them" in locked.text
    assert files_of(lock_of(config), "esrgan/up")[0]["sha256_from"] == "disk"
    assert cdn.body_bytes == sent


def test_locked_without_a_lock_and_a_lock_that_cannot_be_resolved(cli, write_config, hub, cdn):
    config = write_config('[models.checkpoints.a]\nrepo = "org/missing"\nfile = "a.safetensors"\n')
    result = cli(str(config), "--locked")
    assert result.code == 2
    assert f"there is no lock {config.with_suffix('.lock')}: create it with `provision lock" in result.text
    failed = cli("lock", str(config))
    assert failed.code == 1
    assert "repository org/missing not found" in failed.text and "no lock written" in failed.text
    assert not config.with_suffix(".lock").exists()


def test_a_damaged_lock_names_the_file_and_the_fix(cli, write_config):
    config = write_config('[models.esrgan]\nup = "http://127.0.0.1:9/up.pth"\n')
    config.with_suffix(".lock").write_text(
        'version = 1\n[[item]]\nname = "esrgan/up"\nrequest = "x"\n'
        '[[file]]\nitem = "esrgan/up"\npath = "../../etc/passwd"\nsize = 1\nsha256 = "00"\nsource = "url"\n'
    )
    result = cli(str(config))
    assert result.code == 2
    assert "bad path '../../etc/passwd'" in result.text and "provision lock CONFIG" in result.text


def test_the_api_returns_the_lock_as_data(write_config, hub, workspace):
    hub.add_repo("org/a", {"a.safetensors": WEIGHTS_V1}, commit=OLD_COMMIT)
    config = write_config('[models.checkpoints.a]\nrepo = "org/a"\nfile = "a.safetensors"\n')
    provisioner = Provisioner(workspace, progress=False)
    lock = provisioner.lock(config)
    assert lock.items == {"checkpoints/a": "hf:org/a@main:a.safetensors:: -> Stable-diffusion/a.safetensors"}
    assert [(f.path, f.sha256) for f in lock.files] == [
        ("Stable-diffusion/a.safetensors", sha256(WEIGHTS_V1))
    ]
    assert provisioner.run(config, locked=True).exit_code == 0


@pytest.mark.parametrize("upgrade_only", ["checkpoints/*", "lora/b"])
def test_upgrade_only_moves_the_matching_items(cli, write_config, hub, upgrade_only):
    hub.add_repo("org/a", {"a.safetensors": WEIGHTS_V1}, commit=OLD_COMMIT)
    hub.add_repo("org/b", {"b.safetensors": WEIGHTS_V1}, commit=OLD_COMMIT)
    config = write_config(
        '[models.checkpoints.a]\nrepo = "org/a"\nfile = "a.safetensors"\n\n'
        '[models.lora.b]\nrepo = "org/b"\nfile = "b.safetensors"\n'
    )
    assert cli("lock", str(config)).code == 0
    hub.push("org/a", {"a.safetensors": WEIGHTS_V2}, commit=NEW_COMMIT)
    hub.push("org/b", {"b.safetensors": WEIGHTS_V2}, commit=NEW_COMMIT)
    assert cli("lock", str(config), "--upgrade", "--only", upgrade_only).code == 0
    lock = lock_of(config)
    moved = {f["item"] for f in lock["file"] if f["commit"] == NEW_COMMIT}
    assert moved == ({"checkpoints/a"} if upgrade_only.startswith("checkpoints") else {"lora/b"})


def test_a_lock_of_the_full_example_against_the_fakes(cli, tmp_path, hub, civitai, drive, monkeypatch):
    """Every source and form of examples/test-provision-full.toml, locked, then installed on a
    second host with --locked: every file lands with the locked sha256."""
    from .conftest import REPO, FakeCDN
    from .fakes.gdrive import DriveFile

    mirror, private = (
        FakeCDN().start(),
        FakeCDN(require_header=("Authorization", "Bearer mirror-tok"), reject_authorization=False).start(),
    )
    try:
        monkeypatch.setenv("HF_TOKEN", "hf_example_token")
        monkeypatch.setenv("CIVITAI_TOKEN", "civitai_example_token")
        monkeypatch.setenv("EXAMPLE_MIRROR_TOKEN", "mirror-tok")
        hub.valid_tokens.add("hf_example_token")
        civitai.valid_tokens.add("civitai_example_token")
        big = blob(16 * 1024, seed=5)
        for repo, name in [
            ("stable-diffusion-v1-5/stable-diffusion-v1-5", "v1-5-pruned-emaonly.safetensors"),
            ("madebyollin/sdxl-vae-fp16-fix", "sdxl_vae.safetensors"),
            ("black-forest-labs/FLUX.1-schnell", "text_encoder_2/model-00001-of-00002.safetensors"),
            ("nerijs/pixel-art-xl", "pixel-art-xl.safetensors"),
            ("xinsir/controlnet-canny-sdxl-1.0", "diffusion_pytorch_model.safetensors"),
            ("comfyanonymous/flux_text_encoders", "clip_l.safetensors"),
            ("Bingsu/adetailer", "face_yolov8n.pt"),
        ]:
            hub.add_repo(repo, {name: big + repo.encode()})
        hub.add_repo("black-forest-labs/FLUX.1-dev", {"flux1-dev.safetensors": big + b"dev"}, gated=True)
        hub.repos["black-forest-labs/FLUX.1-dev"].accepted_tokens.add("hf_example_token")
        turbo = {
            "model_index.json": b"{}",
            "unet/diffusion_pytorch_model.fp16.safetensors": big + b"unet",
            "text_encoder/model.fp16.safetensors": big + b"te",
            "text_encoder/model.onnx": big + b"onnx",
        }
        hub.add_repo("stabilityai/sdxl-turbo", turbo)
        for version, model, kind in [
            (62833, 1, "LORA"),
            (300, 122359, "LORA"),
            (9208, 7808, "TextualInversion"),
            (456194, 133005, "Checkpoint"),
            (225230, 195519, "LORA"),
        ]:
            files = [VersionFile(f"v{version}.safetensors", big + b"%d" % version, file_id=version + 1)]
            civitai.add_version(version, model, files, model_type=kind)
        drive.files["1aBcDeFgHiJkLmNoPqRsTuVwXyZ012345"] = DriveFile("drive.safetensors", big + b"d1")
        drive.files["1ZyXwVuTsRqPoNmLkJiHgFeDcBa98765"] = DriveFile("drive2.safetensors", big + b"d2")
        mirror.add("/models/4x-UltraSharp.pth", big + b"ultra")
        mirror.add("/hypernetworks/anime.pt", big + b"hyper")
        swinir = "/JingyunLiang/SwinIR/releases/download/v0.0/003_realSR_BSRGAN_DFO_s64w8_SwinIR-M_x4_GAN.pth"
        mirror.add(swinir, big + b"swinir")
        private.add("/private/RealESRGAN_x4plus.pth", big + b"private")

        text = (REPO / "examples" / "test-provision-full.toml").read_text()
        text = text.replace("https://example.com/private", f"{private.url}/private")
        text = text.replace("https://example.com", mirror.url).replace("https://github.com", mirror.url)
        config = tmp_path / "full.toml"
        config.write_text(text.replace("#:schema ../schema/models.schema.json\n", ""))

        locked = cli("lock", str(config), "--workspace", str(tmp_path / "locking-host"))
        assert locked.code == 0, locked.text
        lock = lock_of(config)
        assert len(lock["item"]) == 20
        sources = {f["source"] for f in lock["file"]}
        assert sources == {"huggingface", "civitai", "url", "gdrive"}
        by_from = {f["sha256_from"] for f in lock["file"] if "sha256" in f}
        assert by_from == {"source", "download"}
        assert [f["path"] for f in files_of(lock, "diffusers/sdxl-turbo")] == [
            "Diffusers/sdxl-turbo/model_index.json",
            "Diffusers/sdxl-turbo/text_encoder/model.fp16.safetensors",
            "Diffusers/sdxl-turbo/unet/diffusion_pytorch_model.fp16.safetensors",
        ]
        assert files_of(lock, "lora/add-detail-xl")[0]["version_id"] == 300
        text = config.with_suffix(".lock").read_text()
        for secret in ("hf_example_token", "civitai_example_token", "mirror-tok"):
            assert secret not in text

        host = tmp_path / "second-host"
        installed = cli(str(config), "--locked", "--workspace", str(host))
        assert installed.code == 0, installed.text
        for file in lock["file"]:
            data = (host / "sdnext" / "models" / file["path"]).read_bytes()
            if "sha256" in file:
                assert sha256(data) == file["sha256"], file["path"]
            assert len(data) == file.get("size", len(data))
    finally:
        mirror.stop()
        private.stop()


def test_status_shows_each_locked_file_as_locked_drifted_or_missing(
    cli, write_config, cdn, workspace, models
):
    cdn.add("/a.pth", WEIGHTS_V1)
    cdn.add("/b.pth", WEIGHTS_V2)
    cdn.add("/c.pth", WEIGHTS_V1 + b"c")
    config = write_config(
        f'[models.esrgan]\na = "{cdn.url}/a.pth"\nb = "{cdn.url}/b.pth"\n[models.lora]\nc = "{cdn.url}/c.pth"\n'
    )
    assert cli("lock", str(config)).code == 0
    (models / "ESRGAN" / "b.pth").write_bytes(WEIGHTS_V1)  # replaced by hand after the lock
    (models / "Lora" / "c.pth").unlink()
    result = cli("status", str(config), "--workspace", str(workspace), "--json")
    assert result.code == 1, result.err  # a health check: a drifted and a missing file
    states = {f["path"]: (f["state"], f["lock"]) for f in json.loads(result.out)["files"]}
    assert states == {
        "ESRGAN/a.pth": ("verified", "as locked"),
        "ESRGAN/b.pth": ("changed", "drifted"),
        "Lora/c.pth": ("missing", "missing"),
    }
    text = cli("status", str(config), "--workspace", str(workspace)).out
    assert text.splitlines()[0].split() == ["FILE", "SIZE", "STATE", "ITEM", "LOCK"]


def test_a_remote_config_locks_into_the_working_directory(cli, cdn, hub, tmp_path, monkeypatch):
    hub.add_repo("org/a", {"a.safetensors": WEIGHTS_V1}, commit=OLD_COMMIT)
    cdn.add("/team/models.toml", b'[models.checkpoints.a]\nrepo = "org/a"\nfile = "a.safetensors"\n')
    monkeypatch.chdir(tmp_path)
    url = f"{cdn.url}/team/models.toml"
    assert cli("lock", url).code == 0
    assert (tmp_path / "models.lock").exists()
    assert f"from {url};" in (tmp_path / "models.lock").read_text()
    assert cli(url, "--locked").code == 0


def test_an_offline_dry_run_checks_that_the_lock_is_up_to_date(cli, write_config, hub):
    hub.add_repo("org/a", {"a.safetensors": WEIGHTS_V1}, commit=OLD_COMMIT)
    config = write_config('[models.checkpoints.a]\nrepo = "org/a"\nfile = "a.safetensors"\n')
    assert cli("lock", str(config)).code == 0
    hub.stop()  # a CI lint: no network
    assert cli(str(config), "--dry-run", "--offline", "--locked").code == 0
    config.write_text(config.read_text().replace('"a.safetensors"\n', '"a.safetensors"\nrevision = "v2"\n'))
    stale = cli(str(config), "--dry-run", "--offline", "--locked")
    assert stale.code == 2 and "(changed: checkpoints/a)" in stale.text


def test_a_first_lock_of_many_items_in_place_says_it_in_a_few_lines(write_config, cdn, workspace):
    lines = ""
    for n in range(20):
        cdn.add(f"/f{n}.pth", blob(1000, seed=n))
        lines += f'f{n} = "{cdn.url}/f{n}.pth"\n'
    config = write_config(f"[models.esrgan]\n{lines}")
    assert run_module(str(config), "--workspace", str(workspace)).returncode == 0
    locked = run_module("lock", str(config), "--workspace", str(workspace))
    assert locked.returncode == 0, locked.stderr
    # Not a start, a skip and a "hashed on disk" line per item: one line for the hashing.
    assert locked.stderr.splitlines() == [
        "no sha256 published for 20 file(s): hashed 20 on disk, downloaded 0 to hash them",
        f"wrote {config.with_suffix('.lock')}: 20 items, 20 files",
    ], locked.stderr
    assert all(len(row) <= 80 for row in locked.stdout.splitlines())  # the table of locked files


def test_a_lock_with_a_dead_host_says_why_once_and_writes_nothing(write_config, workspace):
    lines = "".join(f'f{n} = "http://127.0.0.1:9/f{n}.pth"\n' for n in range(10))
    config = write_config(f"[models.esrgan]\n{lines}")
    locked = run_module("lock", str(config), "--workspace", str(workspace))
    assert locked.returncode == 1
    reason = "cannot reach 127.0.0.1:9 (connection refused)"
    assert locked.stderr.count(reason) == 1, locked.stderr
    assert "failed esrgan.f0, esrgan.f1, esrgan.f2 and 7 more: " in locked.stderr
    assert not config.with_suffix(".lock").exists()
