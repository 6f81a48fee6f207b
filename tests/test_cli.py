"""The command line: exit codes, dry-run output, JSON, logs, and nothing written on errors."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from .conftest import REPO, run_module, tree

EXAMPLES = sorted((REPO / "examples").glob("*.toml"))
VAE_URL = "https://huggingface.co/o/r/resolve/main/sdxl_vae.safetensors"


def test_dry_run_offline_prints_the_plan_and_writes_nothing(cli, write_config, workspace, models):
    config = write_config(f'[models.vae]\nsdxl = "{VAE_URL}"\n[models.lora.d]\nversion_id = 5\n')
    result = cli(str(config), "--dry-run", "--offline")
    assert result.code == 0
    header, vae, lora = result.out.splitlines()[:3]
    assert header.split() == ["ITEM", "SOURCE", "SIZE", "ON", "DISK", "DESTINATION"]
    # Destinations relative to the models folder: SD.Next's folder names, and rows that fit 80
    # columns; --wide shows them whole.
    assert vae.split() == ["vae.sdxl", "huggingface", "?", "missing", "VAE/sdxl_vae.safetensors"]
    assert lora.split() == ["lora.d", "civitai", "?", "missing", "Lora"]
    wide = cli(str(config), "--dry-run", "--offline", "--wide").out.splitlines()[1]
    assert wide.split()[-1] == f"{models}/VAE/sdxl_vae.safetensors"
    assert "lora.d: CivitAI id from version_id" in result.out
    assert not workspace.exists()


def test_json_plan_has_the_documented_fields(cli, write_config, models):
    config = write_config(f'[models.vae]\nsdxl = "{VAE_URL}"\n[models.diffusers.x]\nrepo = "o/x"\n')
    result = cli(str(config), "--dry-run", "--offline", "--json")
    assert result.code == 0
    rows = json.loads(result.out)["items"]
    assert [(r["category"], r["name"], r["source"], r["dest"], r["size"], r["status"]) for r in rows] == [
        ("vae", "sdxl", "huggingface", f"{models}/VAE/sdxl_vae.safetensors", None, "planned"),
        ("diffusers", "x", "huggingface", f"{models}/Diffusers/x", None, "planned"),
    ]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_plans(cli, example, monkeypatch):
    monkeypatch.setenv("EXAMPLE_MIRROR_TOKEN", "token-for-the-example")
    monkeypatch.setenv("HF_TOKEN", "hf_example_token_value")
    result = cli(str(example), "--dry-run", "--offline", "--json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)["items"]
    assert rows and all(r["status"] == "planned" for r in rows)
    assert "token-for-the-example" not in result.text and "hf_example_token_value" not in result.text


def test_full_example_covers_every_source_and_form(cli, monkeypatch):
    monkeypatch.setenv("EXAMPLE_MIRROR_TOKEN", "token-for-the-example")
    result = cli(str(REPO / "examples" / "test-provision-full.toml"), "--dry-run", "--offline", "--json")
    rows = json.loads(result.out)["items"]
    assert {r["source"] for r in rows} == {"huggingface", "civitai", "url", "gdrive"}
    # A correct config passes the lint; the gated FLUX entry without HF_TOKEN is a warning there.
    assert result.code == 0, result.err
    assert all(r["status"] == "planned" for r in rows)
    assert "warning: models.unet.flux-dev: " in result.err and "set HF_TOKEN" in result.err


def test_gated_item_without_token_fails_before_any_request(cli, write_config):
    config = write_config('[models.unet.f]\nrepo = "bfl/FLUX.1-dev"\nfile = "f.safetensors"\ngated = true\n')
    result = cli(str(config))
    assert result.code == 1
    assert "cannot reach" not in result.err  # failed before any request (the Hub is a closed port)
    # The page of the Hub in use (HF_ENDPOINT; the tests' closed port here).
    assert (
        "bfl/FLUX.1-dev is gated: accept its terms at http://127.0.0.1:9/bfl/FLUX.1-dev and set HF_TOKEN"
        in result.err
    )
    assert "set HF_TOKEN" in result.err


def test_bad_config_exits_2_lists_every_problem_and_writes_nothing(cli, write_config, workspace, models):
    config = write_config(
        '[models.lora.a]\nsource = "url"\n[models.lora.b]\nrepo = "x/y"\nfile = "f"\nrevison = "v1"\n'
    )
    for args in ([], ["--dry-run"], ["--dry-run", "--offline"]):
        result = cli(str(config), *args)
        assert result.code == 2
        assert 'error: models.lora.a: missing "url"' in result.err
        assert "error: models.lora.b: unknown key 'revison' (did you mean \"revision\"?)" in result.err
        assert "2 problem(s) in the configuration; nothing was downloaded" in result.err
        assert tree(models) == []
    # Only the real run keeps a log (where the runtime's users look for it).
    assert tree(workspace) == ["logs/provision.log"]
    assert 'models.lora.a: missing "url"' in (workspace / "logs/provision.log").read_text()


def test_missing_config_file_exits_2(cli, tmp_path, workspace):
    result = cli(str(tmp_path / "nope.toml"), "--dry-run")
    assert result.code == 2
    assert f"{tmp_path}/nope.toml: no such config file" in result.err
    assert tree(workspace) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--jobs", "0"], "--jobs: must be a whole number of at least 1"),
        (["--offline"], "--offline needs --dry-run"),
        (["--quiet", "--verbose"], "not allowed with argument"),
    ],
)
def test_bad_command_lines_exit_2(cli, write_config, args, message):
    config = write_config(f'[models.vae]\nv = "{VAE_URL}"\n')
    result = cli(str(config), *args)
    assert result.code == 2
    assert message in result.err


def test_config_comes_from_provision_url_when_omitted(cli, write_config, monkeypatch):
    config = write_config(f'[models.vae]\nv = "{VAE_URL}"\n')
    assert cli("--dry-run", "--offline").code == 2
    monkeypatch.setenv("PROVISION_URL", str(config))
    result = cli("--dry-run", "--offline")
    assert result.code == 0 and "sdxl_vae.safetensors" in result.out


def test_offline_refuses_a_remote_config_without_a_request(cli):
    result = cli("https://example.com/models.toml?token=abcdef123", "--dry-run", "--offline")
    assert result.code == 2
    assert "--offline makes no network request" in result.err
    assert "abcdef123" not in result.err


def test_workspace_comes_from_env_then_flag(cli, write_config, monkeypatch, tmp_path):
    config = write_config(f'[models.vae]\nv = "{VAE_URL}"\n')
    monkeypatch.setenv("WORKSPACE", str(tmp_path / "from-env"))
    result = cli(str(config), "--dry-run", "--offline", "--json", "--workspace", str(tmp_path / "flag"))
    assert json.loads(result.out)["items"][0]["dest"].startswith(f"{tmp_path}/flag/sdnext/models/VAE/")
    result = run_module(
        str(config),
        "--dry-run",
        "--offline",
        "--json",
        env={"WORKSPACE": str(tmp_path / "from-env")},
    )
    assert json.loads(result.stdout)["items"][0]["dest"].startswith(f"{tmp_path}/from-env/sdnext/models/VAE/")


def test_python_dash_m_and_log_file_with_secrets_redacted(write_config, tmp_path):
    config = write_config(
        '[models.esrgan.x]\nurl = "https://example.com/x.pth?token=urltoken999"\n'
        'headers = { Authorization = "Bearer ${MIRROR_TOKEN}" }\n'
    )
    log = tmp_path / "logs" / "p.log"
    result = run_module(
        str(config),
        "--dry-run",
        "--offline",
        "--verbose",
        "--log-file",
        str(log),
        "--workspace",
        str(tmp_path / "ws"),
        env={"MIRROR_TOKEN": "mirror-secret-42", "HF_TOKEN": "hf_secret_token_77"},
    )
    assert result.returncode == 0, result.stderr
    text = log.read_text()
    assert "1 item: 1 planned" in text
    everything = text + result.stdout + result.stderr
    for secret in ("mirror-secret-42", "hf_secret_token_77", "urltoken999"):
        assert secret not in everything


def test_version_and_help(cli):
    assert cli("--help").code == 0
    result = cli("--version")
    assert result.code == 0 and result.out.startswith("provision ")


def test_api_aliases_of_the_earlier_design(write_config, tmp_path):
    from provision import Provisioner
    from provision.core import ProvisioningSystem

    config = write_config(f'[models.vae]\nv = "{VAE_URL}"\n')
    report = Provisioner(tmp_path / "ws", dry_run=True, offline=True).run(config)
    assert report.exit_code == 0 and report.results[0].status == "planned"
    system = ProvisioningSystem(workspace_dir=tmp_path / "ws", dry_run=True, offline=True)
    assert system.provision_from_file(Path(config)).results[0].dest == report.results[0].dest
    with pytest.raises(ValueError):
        Provisioner(tmp_path, offline=True)


def test_a_workspace_that_is_a_file_is_a_usage_error(cli, tmp_path, write_config):
    not_a_folder = tmp_path / "ws-file"
    not_a_folder.write_text("")
    config = write_config('[models.lora]\nx = "https://example.com/x.safetensors"\n')
    result = cli(str(config), "--workspace", str(not_a_folder))
    assert result.code == 2
    assert f"--workspace {not_a_folder}: is a file, not a folder" in result.err


def test_help_names_every_environment_variable_the_tool_reads_and_fits_80_columns(capsys):
    import re

    from provision.cli import build_parser

    text = build_parser().format_help()
    source = "".join(p.read_text() for p in (REPO / "provision").rglob("*.py"))
    read = set(re.findall(r'environ(?:\.get)?\(\s*"([A-Z_]{4,})"|environ\["([A-Z_]{4,})"\]', source))
    names = {a or b for a, b in read} | {"HF_ENDPOINT", "CIVITAI_ENDPOINT", "GDRIVE_ENDPOINT"}
    assert len(names) > 10
    for name in sorted(names):
        assert name in text, f"--help does not mention {name}"
    assert "examples:" in text and "provision models.toml --dry-run --offline" in text
    assert all(len(line) <= 80 for line in text.splitlines())


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_example_passes_the_offline_lint_without_any_token(cli, example, monkeypatch):
    for name in ("HF_TOKEN", "CIVITAI_TOKEN", "EXAMPLE_MIRROR_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    result = cli(str(example), "--dry-run", "--offline")
    assert result.code == 0, result.err


def test_only_picks_items_by_category_and_name_and_says_when_nothing_matches(cli, write_config):
    config = str(
        write_config(
            '[models.lora]\na = "https://example.com/a.safetensors"\nb = "https://example.com/b.safetensors"\n'
            '[models.vae]\nv = "https://example.com/v.safetensors"\n'
        )
    )
    rows = json.loads(cli(config, "--dry-run", "--offline", "--json", "--only", "lora/*").out)["items"]
    assert [(r["category"], r["name"]) for r in rows] == [("lora", "a"), ("lora", "b")]
    rows = json.loads(
        cli(config, "--dry-run", "--offline", "--json", "--only", "lora/b", "--only", "vae/*").out
    )["items"]
    assert [r["name"] for r in rows] == ["b", "v"]
    none = cli(config, "--dry-run", "--offline", "--only", "unet/*")
    assert none.code == 2
    assert "--only unet/*: matches no item (the items: lora/a, lora/b, vae/v)" in none.err


def test_a_refused_write_names_the_workspace_fix_only_for_the_workspace():
    from provision.console import describe_disk_error

    def refused(path: str) -> OSError:
        return OSError(errno.EROFS, "Read-only file system", path)

    inside = describe_disk_error(refused("/workspace/.provision"), Path("/workspace"))
    assert inside == (
        "Read-only file system: /workspace/.provision; --workspace (or $WORKSPACE) must be a folder"
        " this user can write"
    )
    elsewhere = describe_disk_error(refused("/root/.cache/huggingface/x"), Path("/workspace"))
    assert elsewhere == "Read-only file system: /root/.cache/huggingface/x"


def test_a_used_up_quota_is_not_called_a_full_disk_without_saying_so():
    from provision.console import describe_disk_error

    quota = OSError(errno.EDQUOT, "Disk quota exceeded", "/workspace/.provision/verified.json")
    assert describe_disk_error(quota, Path("/workspace")) == (
        "the disk is full for this user (its disk quota is used up): /workspace/.provision/verified.json;"
        " free some space or rent a bigger disk, then run again"
    )


def test_the_offline_lint_warns_about_civitai_without_a_key_and_a_file_asked_for_twice(write_config):
    config = write_config(
        "[models.lora.style]\nversion_id = 5\n"
        '[models.vae]\na = "https://example.com/vae.safetensors"\n'
        '[models.checkpoints]\nb = "https://example.com/vae.safetensors"\n'
    )
    result = run_module(str(config), "--dry-run", "--offline")
    assert result.returncode == 0, result.stderr
    assert "warning: CIVITAI_TOKEN is not set: CivitAI items that need a login" in result.stderr
    assert (
        "models.checkpoints.b asks for the same file as models.vae.a: it is downloaded twice" in result.stderr
    )
    with_key = run_module(str(config), "--dry-run", "--offline", env={"CIVITAI_TOKEN": "k"})
    assert "CIVITAI_TOKEN" not in with_key.stderr
    usage = run_module("--help").stdout.split("\n\n")[0]
    assert "provision lock|status|clean" in usage  # the subcommands, not only in the examples
