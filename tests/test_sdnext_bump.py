"""nix/sdnext/bump.py, offline, against a small SD.Next-like repository with one submodule."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from .conftest import REPO, SOURCES, which

BUMP = REPO / "nix" / "sdnext" / "bump.py"
sys.path.insert(0, str(BUMP.parent))

import bump  # noqa: E402


def git(*args, cwd):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env |= {"GIT_COMMITTER_EMAIL": "t@t", "GIT_ALLOW_PROTOCOL": "file"}
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout


LAUNCH_PATCH = """--- a/launch.py
+++ b/launch.py
@@ -1 +1 @@
-print('sdnext')
+print('sdnext, patched')
"""


@pytest.fixture(autouse=True)
def patches(tmp_path, monkeypatch) -> Path:
    """The image's patches for the small SD.Next, which has none of the real patches' files: one
    patch of its launch.py stands in (bump.py's default folder, as nix/sdnext/patches is)."""
    folder = tmp_path / "patches"
    folder.mkdir()
    (folder / "launch.patch").write_text(LAUNCH_PATCH)
    monkeypatch.setattr(bump.sdnext_patches, "PATCHES", folder)
    return folder


@pytest.fixture
def upstream(tmp_path) -> tuple[Path, str]:
    if which("git") is None or which("nix-hash") is None:
        pytest.skip("needs git and nix-hash")
    ext = tmp_path / "owner" / "sd-extension-demo"
    ext.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=ext)
    (ext / "demo.py").write_text("print('demo')\n")
    git("add", ".", cwd=ext)
    git("commit", "-q", "-m", "ext", cwd=ext)
    ext_rev = git("rev-parse", "HEAD", cwd=ext).strip()
    main = tmp_path / "vladmandic" / "sdnext"
    main.mkdir(parents=True)
    git("init", "-q", "-b", "master", cwd=main)
    (main / "launch.py").write_text("print('sdnext')\n")
    (main / "requirements.txt").write_text("torch==2.10.0\nrich==14.2.0\nnewpkg==1.0\n")
    (main / "installer.py").write_text(
        "def check_onnx():\n    install('onnxruntime-gpu', 'onnxruntime-gpu')\n"
        "def check_diffusers():\n    install(f'git+https://github.com/huggingface/diffusers@{sha}')\n"
        "    install('rich==13.0.0')\n    install('torch==2.10.0')\n"
    )
    git("add", ".", cwd=main)
    git(
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        str(ext),
        "extensions-builtin/sd-extension-demo",
        cwd=main,
    )
    git("commit", "-q", "-m", "release", cwd=main)
    git("tag", "2099-01-01", cwd=main)
    return main, ext_rev


def test_bump_rewrites_the_pin_from_the_tag_and_its_submodules(upstream, tmp_path, capsys):
    main, ext_rev = upstream
    pin = tmp_path / "pin.toml"
    pin.write_text((REPO / "provision" / "sdnext_pin.toml").read_text())
    os.environ["GIT_ALLOW_PROTOCOL"] = "file"
    code = bump.main(["2099-01-01", "--repo", str(main), "--pin", str(pin), "--no-lock"])
    assert code == 0
    new = bump.tomllib.loads(pin.read_text())
    assert new["tag"] == "2099-01-01"
    assert new["source"]["rev"] == "2099-01-01" and new["source"]["owner"] == "vladmandic"
    assert list(new["extensions"]) == ["sd-extension-demo"]
    assert new["extensions"]["sd-extension-demo"]["rev"] == ext_rev
    # The folders and rescans of the pin stay for a person to check at the new tag.
    assert (
        new["categories"]
        == bump.tomllib.loads((REPO / "provision" / "sdnext_pin.toml").read_text())["categories"]
    )
    out = capsys.readouterr().out
    assert "pin: 2026-07-14 -> 2099-01-01" in out
    assert "patch launch.patch: applies at 2099-01-01" in out
    assert "extension sdnext-kanvas: removed" in out
    assert "requirements.txt: rich: pyproject 15.0.0 -> requirements 14.2.0" in out
    assert "requirements.txt: newpkg: pyproject (not pinned) -> requirements 1.0" in out
    assert "requirements.txt: torch" not in out  # the same pin on both sides
    # installer.py's own installs at start: what the image's environment lacks or pins otherwise.
    assert "installer.py installs onnxruntime-gpu (unpinned): not in pyproject.toml" in out
    assert "installer.py installs rich==13.0.0: pyproject.toml pins 15.0.0" in out
    assert "installer.py installs torch" not in out and "diffusers" not in out


def test_a_patch_that_no_longer_applies_stops_the_bump_and_names_the_patch(
    upstream, patches, tmp_path, capsys
):
    main, _ = upstream
    (patches / "launch.patch").write_text(LAUNCH_PATCH.replace("print('sdnext')", "print('sdnext 2')"))
    pin = tmp_path / "pin.toml"
    before = (REPO / "provision" / "sdnext_pin.toml").read_text()
    pin.write_text(before)
    os.environ["GIT_ALLOW_PROTOCOL"] = "file"
    assert bump.main(["2099-01-01", "--repo", str(main), "--pin", str(pin), "--no-lock"]) == 1
    err = capsys.readouterr().err
    assert f"bump: {patches / 'launch.patch'} does not apply to " in err
    assert "make it again against this tag's files" in err
    assert pin.read_text() == before


def test_the_layers_a_pull_fetches_anew_are_the_changed_packages():
    from lockwheels import Locked, Wheel

    def package(name, version, size):
        return Locked(name, version, "registry", Wheel(f"{name}-{version}.whl", "u", "0" * 64, size))

    before = [package("torch", "2.9.1", 900_000_000), package("rich", "14.1.0", 240_000)]
    after = [package("torch", "2.9.1", 900_000_000), package("rich", "14.2.0", 243_000)]
    after.append(package("newpkg", "1.0", 1_500_000))
    lines = bump.layer_changes(before, after, source_changed=True, extensions_changed=1)
    assert lines[:3] == [
        "image layer: the SD.Next source (new tag)",
        "image layers: 1 extension source(s)",
        "image layers: sdnext-env (the virtualenv) and the sdnext wrapper",
    ]
    assert lines[3:5] == ["image layer: newpkg 1.0 (1.5 MB wheel)", "image layer: rich 14.2.0 (0.2 MB wheel)"]
    assert lines[-1] == "2 package(s) changed, about 2 MB of wheels; 1 reused as they are"


def test_the_hash_is_the_nar_hash_of_the_commits_files(upstream, tmp_path):
    main, _ = upstream
    sri = bump.nar_hash(main, "2099-01-01")
    assert sri.startswith("sha256-") and len(base64.b64decode(sri[7:])) == 32
    # The same tree, unpacked by tar from git archive a second way, hashes the same.
    archive = tmp_path / "a.tar"
    archive.write_bytes(
        subprocess.run(["git", "archive", "2099-01-01"], cwd=main, capture_output=True).stdout
    )
    tree = tmp_path / "tree"
    tree.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="tar")
    base32 = subprocess.run(
        ["nix-hash", "--type", "sha256", "--base32", str(tree)], capture_output=True, text=True
    )
    assert bump.sri_from_nix32(base32.stdout.strip()) == sri
    hex_hash = subprocess.run(
        ["nix-hash", "--type", "sha256", str(tree)], capture_output=True, text=True
    ).stdout
    assert base64.b64decode(sri[7:]).hex() == hex_hash.strip()  # base32 decoded right


def forget_commit(repository: Path, keep: str) -> None:
    """Make the repository's newer commits unreachable, as a public snapshot that lacks them."""
    git("reset", "-q", "--hard", keep, cwd=repository)
    git("reflog", "expire", "--expire=now", "--all", cwd=repository)
    git("gc", "-q", "--prune=now", cwd=repository)


@pytest.fixture
def kept_back(upstream, tmp_path) -> tuple[Path, str, str]:
    """The fixture's tag pins an extension commit nobody can have; an older one can be had."""
    main, _ = upstream
    ext = tmp_path / "owner" / "sd-extension-demo"
    older = git("rev-parse", "HEAD", cwd=ext).strip()
    (ext / "demo.py").write_text("print('demo 2')\n")
    git("commit", "-q", "-am", "ext 2", cwd=ext)
    newer = git("rev-parse", "HEAD", cwd=ext).strip()
    sub = main / "extensions-builtin" / "sd-extension-demo"
    git("fetch", "-q", "origin", cwd=sub)
    git("checkout", "-q", newer, cwd=sub)
    git("commit", "-q", "-am", "release 2", cwd=main)
    git("tag", "2099-02-01", cwd=main)
    forget_commit(ext, older)
    return main, older, newer


def test_a_commit_the_tag_pins_that_cannot_be_had_stops_the_bump_and_names_the_way_on(
    kept_back, tmp_path, capsys
):
    main, _older, newer = kept_back
    pin = tmp_path / "pin.toml"
    pin.write_text((REPO / "provision" / "sdnext_pin.toml").read_text())
    before = pin.read_text()
    os.environ["GIT_ALLOW_PROTOCOL"] = "file"
    assert bump.main(["2099-02-01", "--repo", str(main), "--pin", str(pin), "--no-lock"]) == 1
    err = capsys.readouterr().err
    assert f"sd-extension-demo: commit {newer} that 2099-02-01 pins is neither in --archives" in err
    assert "give --nearest sd-extension-demo=REV" in err
    assert pin.read_text() == before  # nothing half-written


def test_nearest_pins_the_commit_that_can_be_had_and_records_the_tags_and_why(kept_back, tmp_path, capsys):
    main, older, newer = kept_back
    pin = tmp_path / "pin.toml"
    pin.write_text((REPO / "provision" / "sdnext_pin.toml").read_text())
    os.environ["GIT_ALLOW_PROTOCOL"] = "file"
    argv = ["2099-02-01", "--repo", str(main), "--pin", str(pin), "--no-lock"]
    assert bump.main([*argv, "--nearest", f"sd-extension-demo={older}"]) == 0
    entry = bump.tomllib.loads(pin.read_text())["extensions"]["sd-extension-demo"]
    assert entry["rev"] == older and entry["tag-rev"] == newer
    assert entry["deviation"] == (
        f"2099-02-01 pins {newer[:8]}, which no reachable source holds; "
        f"{older[:8]} is the nearest commit that can be hashed"
    )
    assert entry["hash"] == bump.nar_hash(tmp_path / "owner" / "sd-extension-demo", older)
    assert "deviation: 2099-02-01 pins" in capsys.readouterr().out


def test_an_archive_of_the_commit_serves_when_no_clone_can(upstream, tmp_path):
    main, ext_rev = upstream
    ext = tmp_path / "owner" / "sd-extension-demo"
    archives = tmp_path / "archives"
    archives.mkdir()
    tarball = archives / f"sd-extension-demo-{ext_rev}.tar.gz"
    prefix = f"--prefix=sd-extension-demo-{ext_rev}/"
    with open(tarball, "wb") as out:
        archive = subprocess.run(
            ["git", "archive", prefix, ext_rev], cwd=ext, capture_output=True, check=True
        )
        out.write(subprocess.run(["gzip", "-n"], input=archive.stdout, capture_output=True).stdout)
    expected = bump.nar_hash(ext, ext_rev)
    subprocess.run(["rm", "-rf", str(ext)], check=True)  # GitHub out of reach
    pin = tmp_path / "pin.toml"
    pin.write_text((REPO / "provision" / "sdnext_pin.toml").read_text())
    os.environ["GIT_ALLOW_PROTOCOL"] = "file"
    argv = ["2099-01-01", "--repo", str(main), "--pin", str(pin), "--archives", str(archives), "--no-lock"]
    assert bump.main(argv) == 0
    assert bump.tomllib.loads(pin.read_text())["extensions"]["sd-extension-demo"]["hash"] == expected


def tag_file(path: str) -> str:
    """A file of SD.Next at the pinned tag, from the archive ../shared/sources holds."""
    tag = bump.tomllib.loads((REPO / "provision" / "sdnext_pin.toml").read_text())["tag"]
    archive = SOURCES / f"sdnext-{tag}.tar.gz"
    if not archive.exists():
        pytest.fail(f"{archive} is missing: the test run needs ../shared/sources beside the checkout")
    with tarfile.open(archive) as tar:
        member = tar.extractfile(f"sdnext-{tag}/{path}")
        assert member is not None
        return member.read().decode()


def test_the_pins_folders_and_rescans_are_the_tags_own():
    pin = bump.tomllib.loads((REPO / "provision" / "sdnext_pin.toml").read_text())
    folders = bump.folder_options(tag_file("modules/ui_definitions.py"))
    assert folders["lora_dir"] == "Lora" and folders["unet_dir"] == "UNET"
    assert "GFPGAN" not in folders.values() and "Codeformer" not in folders.values()
    controlnet = "os.path.join(opts.control_dir, 'controlnet')"
    assert controlnet in tag_file("modules/control/units/controlnet.py")
    for name, category in pin["categories"].items():
        if category.get("removed"):
            assert category["folder"] not in folders.values(), name
        elif category.get("warning") and category["folder"] not in folders.values():
            assert "no longer loads" in category["warning"], name  # downloaded, with why
        elif category["folder"] == "control/controlnet":
            assert folders["control_dir"] == "control"
        else:
            assert category["folder"] in folders.values(), name
    routes = bump.rescan_routes(
        tag_file("modules/api/api.py")
        + tag_file("modules/api/loras.py")
        + tag_file("modules/api/endpoints.py")
    )
    assert routes == {
        "refresh-checkpoints": 204,
        "refresh-vae": 204,
        "refresh-unets": 204,
        "refresh-loras": 200,
    }
    assert set(pin["rescans"]) == set(routes)


def test_the_pins_hashes_are_the_archives_of_the_commits_they_name():
    pin = bump.tomllib.loads((REPO / "provision" / "sdnext_pin.toml").read_text())
    if which("nix-hash") is None:
        pytest.fail("needs nix-hash (tests/run.sh installs nix-bin)")
    assert bump.archive_hash(SOURCES / f"sdnext-{pin['tag']}.tar.gz") == pin["source"]["hash"]
    for entry in pin["extensions"].values():
        archive = SOURCES / f"{entry['repo']}-{entry['rev']}.tar.gz"
        assert bump.archive_hash(archive) == entry["hash"], entry["repo"]
