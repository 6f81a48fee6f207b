"""CivitAI items against the CivitAI fake: metadata, the token in a header only, every error."""

from __future__ import annotations

import json

import pytest

from .conftest import blob, sha256, tree
from .fakes.civitai import VersionFile

TOKEN = "civitai_fake_key_abcdef0123"
LORA = blob(200_000, seed=3)


@pytest.fixture
def lora(civitai, monkeypatch):
    civitai.valid_tokens.add(TOKEN)
    monkeypatch.setenv("CIVITAI_TOKEN", TOKEN)
    civitai.add_version(135867, 122359, [VersionFile("add_detail_xl.safetensors", LORA)])
    return civitai


def run(cli, write_config, body: str, *args):
    return cli(str(write_config(body)), "--json", *args)


def test_version_is_downloaded_with_its_name_and_verified(cli, write_config, lora, cdn, models):
    result = run(cli, write_config, "[models.lora.detail]\nversion_id = 135867\n")
    assert result.code == 0, result.err
    dest = models / "Lora" / "add_detail_xl.safetensors"
    assert sha256(dest.read_bytes()) == sha256(LORA)
    (row,) = json.loads(result.out)["items"]
    assert (row["status"], row["dest"], row["size"]) == ("ok", str(dest), len(LORA))
    downloads = lora.seen("/api/download/models/135867")
    assert downloads and all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in downloads)
    assert all(r.headers["user-agent"].startswith("sdnext-provision/") for r in lora.requests)
    assert all("token" not in r.query for r in lora.requests)
    # Storage got no Authorization header (it would answer 400) and never saw the token.
    assert cdn.seen("/r2/") and not any(TOKEN in json.dumps(r.headers) for r in cdn.requests)
    assert TOKEN not in result.text


def test_model_id_resolves_to_the_newest_version_and_says_so(cli, write_config, lora, models, workspace):
    lora.add_version(200000, 122359, [VersionFile("add_detail_xl_v2.safetensors", blob(1000, seed=4))])
    result = run(cli, write_config, "[models.lora.detail]\nmodel_id = 122359\n")
    assert result.code == 0, result.err
    assert tree(models) == ["Lora/add_detail_xl_v2.safetensors"]
    log = (workspace / "logs" / "provision.log").read_text()
    assert "models.lora.detail: CivitAI model 122359 -> newest version 200000 (v200000)" in log


def test_model_page_url_and_download_url_forms(cli, write_config, lora, models):
    body = (
        f'[models.lora]\npage = "{lora.url}/models/122359?modelVersionId=135867"\n'
        f'[models.embeddings]\ndl = "{lora.url}/api/download/models/135867"\n'
    )
    result = run(cli, write_config, body)
    assert result.code == 0, result.err
    assert tree(models) == ["Lora/add_detail_xl.safetensors", "embeddings/add_detail_xl.safetensors"]


def test_a_non_primary_file_by_type_and_format(cli, write_config, civitai, monkeypatch, models):
    civitai.valid_tokens.add(TOKEN)
    monkeypatch.setenv("CIVITAI_TOKEN", TOKEN)
    pruned = blob(5000, seed=5)
    civitai.add_version(
        9,
        8,
        [
            VersionFile("full.safetensors", blob(6000, seed=6)),
            VersionFile(
                "pruned.ckpt", pruned, type="Pruned Model", format="PickleTensor", primary=False, file_id=2
            ),
        ],
    )
    result = run(
        cli,
        write_config,
        '[models.checkpoints.x]\nversion_id = 9\ntype = "Pruned Model"\nformat = "PickleTensor"\n',
    )
    assert result.code == 0, result.err
    assert (models / "Stable-diffusion" / "pruned.ckpt").read_bytes() == pruned
    result = run(cli, write_config, '[models.checkpoints.y]\nversion_id = 9\ntype = "VAE"\n')
    assert (
        result.code == 1
        and "has no file of type='VAE'" in result.err
        and "Pruned Model/PickleTensor" in result.err
    )


def test_without_a_token_the_401_says_to_set_civitai_token(cli, write_config, civitai, models):
    civitai.add_version(5, 4, [VersionFile("x.safetensors", LORA)])
    result = run(cli, write_config, "[models.lora.x]\nversion_id = 5\n")
    assert result.code == 1
    (row,) = json.loads(result.out)["items"]
    assert "CivitAI requires a login to download version 5 (401): set CIVITAI_TOKEN" in row["reason"]
    assert tree(models) == []


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (403, "CivitAI refused version 77 (403): it may be in early access"),
        (410, "CivitAI version 77 was removed or archived (410)"),
    ],
)
def test_download_refusals_are_explained(cli, write_config, lora, error, message, models):
    lora.add_version(77, 76, [VersionFile("y.safetensors", LORA)], error=error)
    result = run(cli, write_config, "[models.lora.y]\nversion_id = 77\n")
    assert result.code == 1 and message in json.loads(result.out)["items"][0]["reason"]
    assert tree(models) == []


def test_unknown_version_says_a_model_id_is_not_a_version_id(cli, write_config, lora):
    result = run(cli, write_config, "[models.lora.y]\nversion_id = 4242\n")
    assert result.code == 1
    assert (
        "CivitAI has no model version 4242 (404)" in result.err
        and "a model id is not a version id" in result.err
    )


def test_429_with_retry_after_is_waited_out(cli, write_config, lora, models, workspace):
    lora.download_faults += [429, 503]
    result = run(cli, write_config, "[models.lora.detail]\nversion_id = 135867\n")
    assert result.code == 0, result.err
    assert (models / "Lora" / "add_detail_xl.safetensors").read_bytes() == LORA
    log = (workspace / "logs" / "provision.log").read_text()
    assert "HTTP 429; retry 1 in 1.0s" in log and "HTTP 503; retry 2" in log


def test_a_refused_token_is_reported_once_for_every_civitai_item(cli, write_config, civitai, monkeypatch):
    monkeypatch.setenv("CIVITAI_TOKEN", "revoked_key_999")
    civitai.add_version(5, 4, [VersionFile("x.safetensors", LORA)])
    result = run(
        cli,
        write_config,
        '[models.lora]\na = "https://civitai.com/api/download/models/5"\n[models.vae.b]\nversion_id = 5\n',
    )
    assert result.code == 1
    rows = json.loads(result.out)["items"]
    assert all("CivitAI refused CIVITAI_TOKEN (401)" in r["reason"] for r in rows)
    assert len(civitai.seen("/api/v1/me")) == 1 and not civitai.seen("/api/download/")
    assert "revoked_key_999" not in result.text


def test_dry_run_reports_name_and_approximate_size_without_downloading(cli, write_config, lora, cdn, models):
    result = run(cli, write_config, "[models.lora.detail]\nversion_id = 135867\n", "--dry-run")
    assert result.code == 0, result.err
    (row,) = json.loads(result.out)["items"]
    assert row["dest"] == str(models / "Lora" / "add_detail_xl.safetensors")
    assert row["size"] == len(LORA) and row["detail"] == "CivitAI id from version_id"
    assert not lora.seen("/api/download/") and cdn.body_bytes == 0


def test_the_file_checked_is_the_file_downloaded_whatever_the_account_prefers(
    cli, write_config, civitai, monkeypatch, models
):
    # Without fileId CivitAI serves the file the account prefers (here: pickles), not the
    # primary file whose sha256 the metadata gave: the download must name its file.
    civitai.valid_tokens.add(TOKEN)
    monkeypatch.setenv("CIVITAI_TOKEN", TOKEN)
    full, pickle = blob(120_000, seed=7), blob(90_000, seed=8)
    civitai.add_version(
        500,
        50,
        [
            VersionFile("model.safetensors", full, file_id=11),
            VersionFile("model.ckpt", pickle, format="PickleTensor", primary=False, file_id=12),
        ],
    )
    civitai.preferred_format = "PickleTensor"
    result = run(cli, write_config, "[models.checkpoints.m]\nversion_id = 500\n")
    assert result.code == 0, result.err
    assert tree(models) == ["Stable-diffusion/model.safetensors"]
    assert sha256((models / "Stable-diffusion" / "model.safetensors").read_bytes()) == sha256(full)
    assert all(r.query.get("fileId") == "11" for r in civitai.seen("/api/download/models/500"))


def test_a_version_listed_under_another_category_than_its_type_is_warned_about(cli, write_config, lora):
    result = run(cli, write_config, "[models.checkpoints.detail]\nversion_id = 135867\n")
    assert result.code == 0, result.err
    assert (
        "warning: models.checkpoints.detail: CivitAI says version 135867 is a LORA, but it is listed under"
        " checkpoints: SD.Next will not load it from there; list it under [models.lora]" in result.err
    )
    assert "CivitAI says" not in run(cli, write_config, "[models.lora.detail]\nversion_id = 135867\n").err
