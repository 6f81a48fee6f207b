"""nix/sdnext/bump.py, offline, against a small SD.Next-like repository with one submodule."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from .conftest import REPO, which

BUMP = REPO / "nix" / "sdnext" / "bump.py"
sys.path.insert(0, str(BUMP.parent))

import bump  # noqa: E402


def git(*args, cwd):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env |= {"GIT_COMMITTER_EMAIL": "t@t", "GIT_ALLOW_PROTOCOL": "file"}
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout


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
    (main / "requirements.txt").write_text("torch==2.9.1\nrich==14.2.0\nnewpkg==1.0\n")
    (main / "installer.py").write_text(
        "def check_onnx():\n    install('onnxruntime-gpu', 'onnxruntime-gpu')\n"
        "def check_diffusers():\n    install(f'git+https://github.com/huggingface/diffusers@{sha}')\n"
        "    install('rich==13.0.0')\n    install('torch==2.9.1')\n"
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
    assert "pin: 2026-01-22 -> 2099-01-01" in out
    assert "extension sd-extension-system-info: removed" in out
    assert "requirements.txt: rich: pyproject 14.1.0 -> requirements 14.2.0" in out
    assert "requirements.txt: newpkg: pyproject (not pinned) -> requirements 1.0" in out
    assert "requirements.txt: torch" not in out  # the same pin on both sides
    # installer.py's own installs at start: what the image's environment lacks or pins otherwise.
    assert "installer.py installs onnxruntime-gpu (unpinned): not in pyproject.toml" in out
    assert "installer.py installs rich==13.0.0: pyproject.toml pins 14.1.0" in out
    assert "installer.py installs torch" not in out and "diffusers" not in out


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
