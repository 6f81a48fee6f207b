"""Hugging Face items against the hub fake: single files, whole repositories, every error."""

from __future__ import annotations

import json
import threading

import pytest

from .conftest import blob, run_module, sha256, start_module, tree
from .fakes.hub import git_blob_sha1
from .test_url_and_drive import wait_for

BIG = blob(300_000, seed=1)  # an LFS file: 302 to the CDN, sha256 in X-Linked-Etag
SMALL = b'{"_class_name": "AutoencoderKL"}\n'  # a small file: 307 to resolve-cache, git sha1
TOKEN = "hf_fake_token_0123456789"


@pytest.fixture
def repo(hub):
    return hub.add_repo(
        "org/model",
        {
            "vae/diffusion_pytorch_model.safetensors": BIG,
            "vae/config.json": SMALL,
            "model_index.json": SMALL,
            ".gitattributes": b"*.bin filter=lfs\n",
            "unet/weights.bin": blob(20_000, seed=2),
            "README.md": b"# readme\n",
        },
    )


def config(write_config, body: str):
    return str(write_config(body))


def test_lfs_file_is_downloaded_verified_and_pinned_to_the_commit(cli, write_config, repo, hub, cdn, models):
    path = config(
        write_config,
        '[models.vae.sdxl]\nrepo = "org/model"\nfile = "vae/diffusion_pytorch_model.safetensors"\n',
    )
    result = cli(path, "--json")
    assert result.code == 0, result.err
    dest = models / "VAE" / "diffusion_pytorch_model.safetensors"
    assert sha256(dest.read_bytes()) == sha256(BIG)
    assert tree(models) == ["VAE/diffusion_pytorch_model.safetensors"]  # no .part, no .cache
    (row,) = json.loads(result.out)["items"]
    assert (row["status"], row["dest"], row["size"], row["bytes"]) == ("ok", str(dest), len(BIG), len(BIG))
    gets = [r for r in hub.seen("/org/model/resolve/") if r.method == "GET"]
    assert gets and all(f"/resolve/{repo.commit}/" in r.path for r in gets)
    assert cdn.seen("/lfs/")


def test_small_file_is_verified_by_its_git_blob_id(cli, write_config, repo, models):
    path = config(
        write_config,
        '[models.diffusers]\nindex = "https://huggingface.co/org/model/resolve/main/model_index.json"\n',
    )
    result = cli(path)
    assert result.code == 0, result.err
    assert (models / "Diffusers" / "model_index.json").read_bytes() == SMALL
    assert git_blob_sha1(SMALL) != sha256(SMALL)[:40]


def test_whole_repository_keeps_its_layout_filtered(cli, write_config, repo, models, workspace):
    path = config(
        write_config,
        '[models.diffusers.sdxl]\nrepo = "org/model"\ninclude = ["*.json", "vae/*"]\nexclude = ["*.md"]\n',
    )
    result = cli(path, "--json")
    assert result.code == 0, result.err
    assert tree(models / "Diffusers") == [
        "sdxl/model_index.json",
        "sdxl/vae/config.json",
        "sdxl/vae/diffusion_pytorch_model.safetensors",
    ]
    (row,) = json.loads(result.out)["items"]
    assert row["files"] == 3 and row["dest"] == str(models / "Diffusers" / "sdxl")
    assert not list(workspace.rglob(".cache"))


def test_whole_repository_without_filters_skips_dot_files(cli, write_config, repo, models):
    result = cli(config(write_config, '[models.diffusers.all]\nrepo = "org/model"\n'))
    assert result.code == 0, result.err
    assert ".gitattributes" not in " ".join(tree(models))
    assert (models / "Diffusers/all/unet/weights.bin").read_bytes() == repo.files["unet/weights.bin"]


def test_filters_that_match_nothing_are_an_item_error(cli, write_config, repo):
    result = cli(config(write_config, '[models.diffusers.x]\nrepo = "org/model"\ninclude = ["*.ckpt"]\n'))
    assert result.code == 1
    assert "no file of org/model at main matches include=['*.ckpt']" in result.err


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            'repo = "org/missing"\nfile = "x.safetensors"',
            "repository org/missing not found at http://127.0.0.1:",
        ),
        (
            'repo = "org/model"\nfile = "nope.safetensors"',
            "file 'nope.safetensors' not found in org/model at main: check \"file\"",
        ),
        (
            'repo = "org/model"\nfile = "model_index.json"\nrevision = "v9"',
            "revision 'v9' not found in org/model: check \"revision\"",
        ),
    ],
)
def test_missing_repo_file_and_revision_say_what_to_check(cli, write_config, repo, models, entry, message):
    result = cli(config(write_config, f"[models.vae.x]\n{entry}\n"), "--json")
    assert result.code == 1
    (row,) = json.loads(result.out)["items"]
    assert row["status"] == "failed" and message in row["reason"]
    assert tree(models) == []


def test_a_mirror_that_calls_a_missing_file_a_missing_repo_still_gets_check_file(
    write_config, hub, workspace
):
    hub.add_repo("org/model", {"model_index.json": b"{}"})
    hub.missing_file_as_repo = True  # olah's answer for a file the repository does not have
    path = config(write_config, '[models.vae.x]\nrepo = "org/model"\nfile = "nope.safetensors"\n')
    result = run_module(str(path), "--workspace", str(workspace), "--json", env={"HF_ENDPOINT": hub.url})
    assert result.returncode == 1
    (row,) = json.loads(result.stdout)["items"]
    assert row["reason"].startswith(
        "file 'nope.safetensors' not found in org/model at main: check \"file\""
    ), row
    assert 'check "repo"' not in result.stderr


def test_gated_repo_with_a_token_that_did_not_accept_the_terms(cli, write_config, hub, monkeypatch, models):
    hub.add_repo("bfl/flux", {"ae.safetensors": BIG}, gated=True)
    hub.valid_tokens.add(TOKEN)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = cli(
        config(write_config, '[models.vae.ae]\nrepo = "bfl/flux"\nfile = "ae.safetensors"\ngated = true\n')
    )
    assert result.code == 1
    assert (
        f"bfl/flux is gated: accept its terms at {hub.url}/bfl/flux with the account whose token is in HF_TOKEN"
        in result.err
    )
    assert TOKEN not in result.text


def test_gated_repo_with_an_accepted_token_downloads_and_token_stays_on_the_hub(
    cli, write_config, hub, cdn, monkeypatch, models
):
    hub.add_repo("bfl/flux", {"ae.safetensors": BIG}, gated=True, accepted_tokens={TOKEN})
    hub.valid_tokens.add(TOKEN)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = cli(
        config(write_config, '[models.vae.ae]\nrepo = "bfl/flux"\nfile = "ae.safetensors"\ngated = true\n'),
        "--json",
    )
    assert result.code == 0, result.err
    assert sha256((models / "VAE" / "ae.safetensors").read_bytes()) == sha256(BIG)
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.seen("/bfl/"))
    assert cdn.requests and not any(
        TOKEN in json.dumps(r.headers) or TOKEN in str(r.query) for r in cdn.requests
    )
    assert TOKEN not in result.text


def test_a_refused_token_is_checked_once_and_named(cli, write_config, repo, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_revoked_token_000")
    result = cli(
        config(
            write_config,
            '[models.vae]\na = "https://huggingface.co/org/model/resolve/main/model_index.json"\n'
            'b = "https://huggingface.co/org/model/resolve/main/vae/config.json"\n',
        )
    )
    assert result.code == 1
    assert (
        "HF_TOKEN was refused (401): create a read token at https://huggingface.co/settings/tokens"
        in result.err
    )
    assert len(hub.seen("/api/whoami-v2")) == 1
    assert hub.seen("/org/model/") == []  # no file request with a token known to be bad
    assert "hf_revoked_token_000" not in result.text


def test_a_token_check_that_cannot_get_through_is_retried_then_only_warned_about(
    cli, write_config, repo, hub, monkeypatch, models
):
    # A mirror behind HF_ENDPOINT answers the token check with 504: public files still come.
    monkeypatch.setenv("HF_TOKEN", "hf_valid_token_but_check_fails")
    hub.valid_tokens.add("hf_valid_token_but_check_fails")
    hub.whoami_status = 504
    result = cli(
        config(
            write_config,
            '[models.vae]\na = "https://huggingface.co/org/model/resolve/main/vae/config.json"\n',
        )
    )
    assert result.code == 0, result.err
    assert len(hub.seen("/api/whoami-v2")) > 1  # retried like any request
    assert "warning: cannot check HF_TOKEN at " in result.err and "going on without the check" in result.err
    assert (models / "VAE" / "config.json").exists()
    assert "hf_valid_token_but_check_fails" not in result.text


def test_dry_run_resolves_names_and_sizes_without_file_bodies(cli, write_config, repo, hub, cdn, models):
    path = config(
        write_config,
        '[models.vae.a]\nrepo = "org/model"\nfile = "vae/diffusion_pytorch_model.safetensors"\n'
        '[models.diffusers.b]\nrepo = "org/model"\ninclude = ["*.json"]\n',
    )
    result = cli(path, "--dry-run", "--json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)["items"]
    assert [(r["status"], r["size"]) for r in rows] == [("planned", len(BIG)), ("planned", 2 * len(SMALL))]
    assert rows[0]["dest"] == str(models / "VAE" / "diffusion_pytorch_model.safetensors")
    assert cdn.body_bytes == 0 and not cdn.requests
    assert all(r.method == "HEAD" for r in hub.seen("/org/model/resolve/"))
    assert "free on the models disk" in result.err and "to download 293.0 KiB of 293.0 KiB" in result.err
    assert tree(models) == []


def test_a_whole_repository_appears_in_the_models_folder_all_at_once(
    cdn, hub, write_config, workspace, models
):
    weights = blob(3 * 1024 * 1024, seed=41)
    hub.add_repo(
        "org/pipe", {"model_index.json": b'{"_class_name": "X"}', "unet/weights.safetensors": weights}
    )
    cdn.gate = threading.Event()  # the weights' body waits: the small files are done meanwhile
    config = write_config('[models.diffusers.pipe]\nrepo = "org/pipe"\n')
    args = (str(config), "--workspace", str(workspace), "--json")
    process = start_module(*args, env={"HF_ENDPOINT": hub.url, "PROVISION_RETRY_BASE": "0.01"})
    staged = workspace / ".provision" / "staging" / "diffusers" / "pipe"
    wait_for(lambda: (staged / "model_index.json").exists(), process)
    # model_index.json is verified and on disk, the weights are not: SD.Next sees nothing yet.
    assert not (models / "Diffusers" / "pipe").exists()
    cdn.gate.set()
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert tree(models) == ["Diffusers/pipe/model_index.json", "Diffusers/pipe/unet/weights.safetensors"]
    assert sha256((models / "Diffusers/pipe/unet/weights.safetensors").read_bytes()) == sha256(weights)
    assert not staged.exists()
    again = run_module(*args, env={"HF_ENDPOINT": hub.url})
    assert [r["status"] for r in json.loads(again.stdout)["items"]] == ["skipped"], again.stderr
    status = run_module("status", str(config), "--workspace", str(workspace))
    assert status.returncode == 0 and "unverified" not in status.stdout, status.stdout
