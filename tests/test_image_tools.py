"""nix/image.nix evaluated with stand-ins for nixpkgs (which cannot be fetched here): what the
image puts on PATH is what the README promises, nvtop comes without the CUDA toolkit, and the
image's /etc/passwd has the user sshd drops privileges to."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from .conftest import REPO, which

# Every function argument of image.nix, each a stand-in derivation named after it; the few that
# image.nix calls are stubbed so the call is recorded (dockerTools, buildEnv, runCommand,
# nvtopPackages, fakeNss.override).
STUB = """
let
  pkg = name: { inherit name; type = "derivation"; outPath = "/nix/store/00000000000000000000000000000000-${name}"; };
  recorded = name: args: pkg name // { inherit args; };
  image = import %(repo)s/nix/image.nix (
    builtins.mapAttrs (name: _: pkg name) (builtins.functionArgs (import %(repo)s/nix/image.nix))
    // {
      lib = { getBin = p: p; getLib = p: p; };
      buildEnv = args: recorded "buildEnv" args;
      runCommand = name: env: script: pkg name;
      nvtopPackages.nvidia = pkg "nvtop" // { override = recorded "nvtop-overridden"; };
      dockerTools = {
        streamLayeredImage = args: args;
        binSh = pkg "bin-sh";
        usrBinEnv = pkg "usr-bin-env";
        caCertificates = pkg "ca-certificates";
        fakeNss = pkg "fake-nss" // { override = recorded "fake-nss-overridden"; };
      };
    }
  );
  root = builtins.head image.contents;
in {
  path = map (p: p.name) root.args.paths;
  contents = map (p: p.name) image.contents;
  nvtop = (builtins.head (builtins.filter (p: p.name == "nvtop-overridden") root.args.paths)).args;
  nss = (builtins.head (builtins.filter (p: p.name == "fake-nss-overridden") image.contents)).args;
}
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    if which("nix-instantiate") is None:
        pytest.skip("Nix is not installed (tests/run.sh installs nix-bin)")
    stub = tmp_path_factory.mktemp("image") / "eval.nix"
    stub.write_text(STUB % {"repo": REPO})
    result = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", str(stub)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def readme_tools() -> list[str]:
    """The terminal's tools as the README lists them: `name` (nixpkgs attribute) pairs."""
    text = (REPO / "README.md").read_text()
    section = text.split("Terminal tools", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"`([A-Za-z0-9.-]+)`", section)


def test_the_tools_the_readme_lists_are_on_the_images_path(image):
    listed = readme_tools()
    assert "gitMinimal" in listed and "openssh" in listed, listed
    on_path = set(image["path"]) - {"sdnext-runtime"}
    for tool in listed:
        assert tool in on_path or (tool == "nvtop" and "nvtop-overridden" in on_path), tool
    # What a renter reaches for first (issue 30), whatever the README says.
    wanted = "gitMinimal curl wget nano vim procps htop less tmux rsync unzip zip jq file openssh"
    wanted += " gnugrep gnused gawk findutils diffutils gnutar gzip which"  # and what scripts use
    assert set(wanted.split()) <= on_path and "nvtop-overridden" in on_path


def test_nvtop_is_built_without_the_cuda_toolkit(image):
    assert image["nvtop"] == {"cudatoolkit": None}


def test_the_image_has_the_user_sshd_drops_privileges_to(image):
    assert "fake-nss" not in image["contents"] and "fake-nss-overridden" in image["contents"]
    passwd = image["nss"]["extraPasswdLines"]
    assert [line.split(":")[0] for line in passwd] == ["sshd"]
    _, _, uid, gid, _, home, shell = passwd[0].split(":")
    assert home == "/var/empty" and uid == gid and shell == "/bin/false"
    assert image["nss"]["extraGroupLines"] == [f"sshd:x:{gid}:"]
