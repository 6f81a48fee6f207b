"""The Python packages extensions need that the image lacks: resolved with uv against the image's
own packages, pinned with their hashes, installed into `<workspace>/sdnext/extension-packages`.

The image's packages win. `sdnext-launch` adds the overlay to SD.Next's path *after* its own
site-packages (nix/sdnext/overlay_site/sitecustomize.py), and nothing the image has is ever put
in the overlay: a requirement the image already meets is left out, one it cannot meet is refused
with both versions named (an extension asking for `numpy<2` on an image with numpy 2.2 would
otherwise break SD.Next, or itself). Resolution (`uv pip compile`) takes the image's versions as
constraints, so a package's own dependencies follow them too. Installation is
`uv pip install --target NEW --no-deps --require-hashes` of exactly the pinned lines, then NEW is
renamed into place: a run that fails leaves the previous overlay as it was.

The image's packages are read from SD.Next's own interpreter: SDNEXT_PYTHON, else `sdnext-python`
on PATH (the image has it). Packages come from uv's index (PyPI, or UV_DEFAULT_INDEX and uv's own
settings); uv's cache is on the workspace (UV_CACHE_DIR) unless set.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from . import paths
from .secrets import redact

log = logging.getLogger("provision")

OVERLAY_FOLDER = "extension-packages"  # under <workspace>/sdnext; sdnext-launch reads the same
_LIST_PACKAGES = (
    "import importlib.metadata as m, json, sys;"
    "json.dump({d.metadata['Name']: d.version for d in m.distributions() if d.metadata['Name']}, sys.stdout)"
)


class OverlayError(Exception):
    """A requirement cannot be met next to the image's packages; the message says which and why."""


def overlay_folder(workspace: Path) -> Path:
    return workspace / "sdnext" / OVERLAY_FOLDER


def sdnext_python(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    found = env.get("SDNEXT_PYTHON") or shutil.which("sdnext-python")
    if not found:
        raise OverlayError(
            "cannot find SD.Next's Python to check the requirements against the image's packages:"
            " run provision in the container (it has sdnext-python), or set SDNEXT_PYTHON"
        )
    return found


def image_packages(python: str) -> dict[str, str]:
    """The image's packages: canonical name -> version."""
    result = subprocess.run([python, "-c", _LIST_PACKAGES], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise OverlayError(
            f"SD.Next's Python ({python}) could not list its packages: {result.stderr.strip()[-300:]}"
        )
    return {canonicalize_name(name): version for name, version in json.loads(result.stdout).items()}


def resolve(
    name: str, requirements: Iterable[str], image: Mapping[str, str], workspace: Path
) -> tuple[str, ...]:
    """The packages `requirements` need beyond the image, as pinned lines with hashes
    ("name==version --hash=sha256:..."); OverlayError when one conflicts with the image."""
    wanted = []
    for line in requirements:
        try:
            requirement = Requirement(line)
        except InvalidRequirement as err:
            raise OverlayError(f"{name}: requirement {line!r} is not valid ({err})") from None
        if requirement.url:
            raise OverlayError(
                f"{name}: requirement {line!r} names a URL: only packages from the index can be"
                " pinned by hash; give `requirements = [...]` in its [extensions] table instead"
            )
        have = image.get(canonicalize_name(requirement.name))
        if have is not None:
            if requirement.specifier and not requirement.specifier.contains(have, prereleases=True):
                raise OverlayError(
                    f"{name}: requires {requirement.name}{requirement.specifier}, but the image has"
                    f" {requirement.name} {have} (the image's packages win): use a version of the"
                    " extension that accepts it, or leave the extension out"
                )
            continue  # the image meets it
        wanted.append(str(requirement))
    if not wanted:
        return ()
    with tempfile.TemporaryDirectory(prefix="provision-overlay-") as scratch:
        requirements_in = Path(scratch) / "requirements.in"
        constraints = Path(scratch) / "image.txt"
        requirements_in.write_text("\n".join(wanted) + "\n")
        # == without a local label matches the image's "2.10.0+cu128" and PyPI's "2.10.0" alike.
        constraints.write_text(
            "".join(f"{n}=={Version(v).public}\n" for n, v in sorted(image.items()) if _is_version(v))
        )
        output = _uv(
            workspace,
            "pip", "compile", str(requirements_in), "--constraints", str(constraints),
            "--generate-hashes", "--no-header", "--no-annotate", "--quiet",
        )  # fmt: skip
    pinned = _pinned_lines(output)
    return tuple(line for line in pinned if canonicalize_name(line.split("==")[0]) not in image)


def install(packages: Iterable[str], workspace: Path) -> Path | None:
    """Install exactly these pinned lines into a new overlay and rename it into place (None:
    nothing to install; an overlay left from earlier is removed)."""
    packages = sorted(set(packages))
    target = overlay_folder(workspace)
    stamp = paths.state_dir(workspace) / "extension-packages.json"
    if not packages:
        if target.exists():
            shutil.rmtree(target)
            stamp.unlink(missing_ok=True)
        return None
    if target.is_dir() and _read(stamp) == packages:
        return target  # in place as recorded: no request
    new = target.with_name(f".{OVERLAY_FOLDER}.{os.getpid()}")
    shutil.rmtree(new, ignore_errors=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="provision-overlay-") as pinned:
        pinned.write("".join(line.replace(" --hash", " \\\n    --hash") + "\n" for line in packages))
        pinned.flush()
        try:
            command = ["pip", "install", "--target", str(new), "--no-deps", "--require-hashes", "--quiet"]
            _uv(workspace, *command, "-r", pinned.name)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
    old = target.with_name(f".{OVERLAY_FOLDER}.old")
    if target.exists():
        os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)
    paths.write_atomically(stamp, json.dumps(packages, indent=2))
    return target


def _uv(workspace: Path, *args: str) -> str:
    uv = os.environ.get("UV") or shutil.which("uv")
    if not uv:
        raise OverlayError("uv is not on PATH (the image has it): the extensions' packages need it")
    env = dict(os.environ)
    env.setdefault("UV_CACHE_DIR", str(workspace / ".cache" / "uv"))
    env.setdefault("UV_PYTHON_DOWNLOADS", "never")
    command = [uv, *args, "--python", sdnext_python()]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        said = "\n".join(
            line for line in result.stderr.strip().splitlines() if not line.startswith("warning:")
        )
        raise OverlayError(f"`uv {' '.join(args[:2])}` failed:\n{redact(said)}")
    return result.stdout


def _pinned_lines(output: str) -> list[str]:
    """uv's `name==version \\ --hash=...` blocks as one line each."""
    joined = re.sub(r"\s*\\\n\s*", " ", output)
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def _is_version(text: str) -> bool:
    try:
        Version(text)
    except ValueError:
        return False
    return True


def _read(stamp: Path) -> list[str] | None:
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
