"""The Nix side, as far as this machine can check it: every file parses, the lock matches the
flake, and the data the image config and the runtime share evaluates to what the runtime files and
the README say. (nixpkgs cannot be fetched here, so nothing that imports it is built.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO, which
from .runtime_harness import defaults

NIX_FILES = sorted(p for p in REPO.rglob("*.nix") if ".venv" not in p.parts)
FLAKES = ["--extra-experimental-features", "nix-command flakes"]


@pytest.fixture(scope="module")
def nix_env():
    if which("nix-instantiate") is None or which("nix") is None:
        pytest.skip("Nix is not installed (tests/run.sh installs nix-bin)")
    return {**os.environ, "NIX_CONFIG": "experimental-features = nix-command flakes"}


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_nix_file_parses(nix_env, path):
    result = subprocess.run(
        ["nix-instantiate", "--parse", str(path)], capture_output=True, text=True, env=nix_env
    )
    assert result.returncode == 0, result.stderr


def test_the_lock_matches_the_flake(nix_env, tmp_path):
    # A copy outside git, so the check sees exactly the files of this checkout.
    work = tmp_path / "flake"
    work.mkdir()
    for name in ("flake.nix", "flake.lock"):
        (work / name).write_text((REPO / name).read_text())
    before = (work / "flake.lock").read_text()
    result = subprocess.run(
        ["nix", *FLAKES, "flake", "lock", "--no-update-lock-file", "--offline"],
        cwd=work,
        capture_output=True,
        text=True,
        env=nix_env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (work / "flake.lock").read_text() == before


def test_every_locked_input_is_a_full_triple():
    lock = json.loads((REPO / "flake.lock").read_text())
    nodes = {k: v for k, v in lock["nodes"].items() if k != lock["root"]}
    assert sorted(nodes) == ["nixpkgs", "pyproject-build-systems", "pyproject-nix", "uv2nix"]
    for name, node in nodes.items():
        locked = node["locked"]
        assert re.fullmatch(r"[0-9a-f]{40}", locked["rev"]), name
        assert re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", locked["narHash"]), name
        assert 1_700_000_000 < locked["lastModified"] < 1_900_000_000, name
    # Everything follows our nixpkgs: one nixpkgs in the closure.
    for name in ("pyproject-nix", "uv2nix", "pyproject-build-systems"):
        assert nodes[name]["inputs"]["nixpkgs"] == ["nixpkgs"]
    assert nodes["nixpkgs"]["original"]["ref"] == "nixos-26.05-small"


def evaluate(nix_env, expression_file: Path):
    result = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", str(expression_file)],
        capture_output=True,
        text=True,
        env=nix_env,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_shared_settings_match_the_runtime_and_the_readme(nix_env):
    settings = evaluate(nix_env, REPO / "nix" / "settings.nix")
    assert settings["env"] == defaults()
    assert sorted(settings["services"]) == sorted(p.name for p in (REPO / "nix/runtime/services").iterdir())
    ports = {p["service"]: (p["external"], p["internal"]) for p in settings["ports"]}
    assert ports == {
        "sdnext": (8010, 18010),
        "filebrowser": (7010, 17010),
        "ttyd": (7020, 17020),
        "logdy": (7030, 17030),
    }
    # The gateway's four and SSH's (SSH_PORT): what `docker run -P` and a host's template publish.
    assert sorted(settings["exposedPorts"]) == ["22/tcp", "7010/tcp", "7020/tcp", "7030/tcp", "8010/tcp"]
    readme = (REPO / "README.md").read_text()
    for service, (external, internal) in ports.items():
        assert re.search(rf"\| {service} \| 127\.0\.0\.1:{internal} \|", readme), service
        assert f"-p {external}:{external}" in readme, f"the README's docker run must publish {external}"
    assert "8010, 7010, 7020, 7030" in readme


def test_the_image_reads_ports_and_defaults_from_the_settings():
    image = (REPO / "nix" / "image.nix").read_text()
    assert "import ./settings.nix" in image
    assert "ExposedPorts = settings.exposedPorts;" in image
    assert not re.search(r"\b(8010|7010|7020|7030|18010|17010|17020|17030)\b", image)


def test_the_sdnext_source_pin_evaluates_with_every_builtin_extension(nix_env, tmp_path):
    # fetchFromGitHub, applyPatches and runCommand stubbed: what is checked is the pin's own
    # logic and data.
    stub = tmp_path / "eval.nix"
    stub.write_text(
        f"""
        let
          fetched = args: args // {{ outPath = "/nix/store/00000000000000000000000000000000-${{args.repo}}"; }};
          pin = import {REPO}/nix/sdnext/source.nix {{
            fetchFromGitHub = fetched;
            applyPatches = args: args // {{ outPath = "/nix/store/11111111111111111111111111111111-${{args.name}}"; }};
            runCommand = name: attrs: script: {{ inherit name script; inherit (attrs) passthru; }};
          }};
        in {{
          inherit (pin) name script;
          patched = {{
            inherit (pin.passthru.patched) name;
            src = pin.passthru.patched.src.repo;
            patches = map baseNameOf pin.passthru.patched.patches;
          }};
          sources = map (src: {{ inherit (src) owner repo rev hash; arguments = builtins.attrNames src; }})
            ([ pin.passthru.sdnext ] ++ builtins.attrValues pin.passthru.extensions);
        }}
        """
    )
    pin = evaluate(nix_env, stub)
    assert pin["name"] == "sdnext-source-2026-07-14"
    sources = {s["repo"]: s for s in pin["sources"]}
    assert sources["sdnext"]["rev"] == "2026-07-14"
    assert sources["sdnext-modernui"]["rev"] == "4b8d5f67781b4fb33058ffda39dc4228eb2f98ee"
    assert len(sources) == 4
    for source in sources.values():
        assert re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", source["hash"]), source
        # A kept-back extension's tag-rev and deviation are for people, not fetchFromGitHub.
        assert source["arguments"] == ["hash", "outPath", "owner", "repo", "rev"]
    # SD.Next's own files with every patch of nix/sdnext/patches (the tests apply the same).
    assert pin["patched"] == {
        "name": "sdnext-2026-07-14-patched",
        "src": "sdnext",
        "patches": sorted(p.name for p in (REPO / "nix" / "sdnext" / "patches").glob("*.patch")),
    }
    assert "extensions-tab.patch" in pin["patched"]["patches"]
    assert pin["script"].startswith(
        "cp -r /nix/store/11111111111111111111111111111111-sdnext-2026-07-14-patched $out\n"
    )
    for folder in ("sd-extension-chainner", "sdnext-modernui", "sdnext-kanvas"):
        assert "cp -r /nix/store/" in pin["script"] and f"$out/extensions-builtin/{folder}\n" in pin["script"]
