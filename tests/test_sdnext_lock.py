"""nix/sdnext: the lock still matches pyproject.toml, and the payload estimate reads it."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import which

SDNEXT = Path(__file__).resolve().parent.parent / "nix" / "sdnext"


def python312() -> str | None:
    """A Python 3.12 for uv (it may not download one here): pyenv's, else one on PATH."""
    for candidate in sorted(
        glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")), reverse=True
    ):
        return candidate
    for candidate in (shutil.which("python3.12"), "/usr/bin/python3.12"):
        if candidate and os.path.exists(candidate) and ".pyenv/shims" not in candidate:
            return candidate
    if os.environ.get("CI") == "true":
        pytest.fail("no Python 3.12 for `uv lock --check` (CI must skip nothing)")
    return None


def test_uv_lock_matches_pyproject(tmp_path):
    uv = which("uv")
    python = python312()
    if uv is None or python is None:
        pytest.skip("needs uv and a Python 3.12")
    # --offline with an empty cache: an up-to-date lock needs no index, a stale one fails here too.
    env = {
        **os.environ,
        "UV_PYTHON": python,
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
    }
    result = subprocess.run(
        [uv, "lock", "--check", "--offline"], cwd=SDNEXT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"uv.lock is stale: run `uv lock` in nix/sdnext\n{result.stderr}"


def test_payload_estimate_names_the_big_wheels():
    result = subprocess.run(
        [sys.executable, str(SDNEXT / "payload.py")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    packages, gigabytes = int(first.split()[0]), float(first.split(", ")[1].split()[0])
    assert packages > 200 and 3.0 < gigabytes < 8.0
    assert "| torch | 2.10.0 |" in result.stdout and "nvidia-cudnn-cu12" in result.stdout


def test_lock_pins_what_sdnext_expects():
    lock = (SDNEXT / "uv.lock").read_text()
    for name, version in (
        ("torch", "2.10.0"),
        ("torchvision", "0.25.0"),
        ("transformers", "5.13.1"),
        ("diffusers", "0.39.0"),
        ("huggingface-hub", "1.23.0"),
        ("hf-xet", "1.5.2"),
        ("gradio", "3.43.2"),
        ("setuptools", "69.5.1"),
        ("numpy", "2.1.2"),
    ):
        assert f'name = "{name}"\nversion = "{version}"' in lock, name
    # Every package from PyPI: no git source for Nix to clone at evaluation time.
    assert "source = { git" not in lock
    # CUDA 12.8, and nothing of CUDA 13 (its wheels are *-cu13 and cuda-toolkit).
    assert 'name = "nvidia-cuda-runtime-cu12"\nversion = "12.8.' in lock
    assert 'name = "nvidia-cudnn-cu12"' in lock and 'name = "nvidia-cublas-cu12"\nversion = "12.8.' in lock
    assert "-cu13" not in lock and 'name = "cuda-toolkit"' not in lock
