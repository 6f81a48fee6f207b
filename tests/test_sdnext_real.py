"""The real SD.Next at the pinned tag, end to end, in every test run (on this machine's CPU).

Needs what tests/run.sh makes: SD.Next's locked environment (SDNEXT_VENV: nix/sdnext/uv.lock
installed by uv) and, for the source, ../shared/sources (git archives of the tag and of every
extension commit the pin names) or GitHub. The test:

1. makes a tiny random-weight SD 1.x pipeline and a LoRA for it (tests/sdnext_tiny.py) and
   serves them as a Hub repository and a plain URL, and a tiny extension (an API route that
   answers with what a PyPI package computes) as GitHub's archive of a commit (the fakes);
2. starts sdnext-launch with `--use-cpu all` from the read-only source, as the image does, with
   no git, pip or uv on PATH;
3. runs `provision` into the workspace while SD.Next runs, then `sdnext-refresh` (exit 0);
4. finds every provisioned model in SD.Next's API, and makes a 64x64 image without the LoRA,
   with it (another image, the LoRA named in its info) and without it again (the first image);
5. stops the launcher with SIGTERM: nothing of SD.Next keeps running, its port is free, no
   installer ran, the source tree is unchanged and the compile caches are in the workspace;
6. with every server gone, provisions again (nothing to fetch) and starts SD.Next again: the
   extension is in SD.Next's list and its route answers, its package loaded from the overlay.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import requests

from provision.categories import PIN

from .conftest import INFLECTION, REPO, SOURCES, WHEELS, child_env, run_module
from .fakes.github import FakeGitHub, commit_files
from .fakes.pypi import FakePyPI
from .runtime_harness import free_port, listening

LAUNCHER = REPO / "nix" / "sdnext" / "sdnext_launch.py"
sys.path.insert(0, str(LAUNCHER.parent))
import sdnext_patches  # noqa: E402 - beside the launcher, not a package

STARTUP = 900  # seconds SD.Next may take to answer on a loaded 2-core machine (a deadline, not a target)
pytestmark = pytest.mark.sdnext_real


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


# -- SD.Next's environment and source --------------------------------------------------------


@pytest.fixture(scope="module")
def sdnext_venv() -> Path:
    venv = Path(os.environ.get("SDNEXT_VENV", REPO / ".venv" / "sdnext"))
    if not (venv / "bin" / "python").exists():
        pytest.fail(f"no SD.Next environment at {venv}: ./tests/run.sh makes it (uv sync of nix/sdnext)")
    return venv


def unpack(archive: Path, into: Path) -> None:
    """A `git archive` tarball's files (its one top folder stripped) into `into`."""
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            member.name = member.name.partition("/")[2]
            if member.name:
                tar.extract(member, into, filter="tar")


def from_archives(tree: Path) -> bool:
    """SD.Next and its extensions at the pin from ../shared/sources; False when one is missing."""
    wanted = [(SOURCES / f"sdnext-{PIN['tag']}.tar.gz", tree)]
    for folder, entry in PIN["extensions"].items():
        archive = SOURCES / f"{entry['repo']}-{entry['rev']}.tar.gz"
        wanted.append((archive, tree / "extensions-builtin" / folder))
    if not all(archive.exists() for archive, _ in wanted):
        return False
    for archive, into in wanted:
        unpack(archive, into)
    return True


def from_github(tree: Path) -> str | None:
    """SD.Next and its extensions at the pin cloned from GitHub; the reason when that fails."""
    source = PIN["source"]
    clones = [(f"https://github.com/{source['owner']}/{source['repo']}", PIN["tag"], tree)]
    for folder, entry in PIN["extensions"].items():
        url = f"https://github.com/{entry['owner']}/{entry['repo']}"
        clones.append((url, entry["rev"], tree / "extensions-builtin" / folder))
    for url, rev, into in clones:
        shutil.rmtree(into, ignore_errors=True)
        for step in (
            ["clone", "--quiet", "--no-checkout", url, str(into)],
            ["-C", str(into), "checkout", "-q", rev],
        ):
            result = subprocess.run(["git", *step], capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                return f"git {' '.join(step[:2])} {url}: {result.stderr.strip()[-300:]}"
        shutil.rmtree(into / ".git")
    return None


@pytest.fixture(scope="module")
def sdnext_source(sdnext_venv) -> Path:
    """SD.Next's source at the pin with its extensions and the image's patches (source.nix
    applies the same files), made once beside the venv per set of patches, read-only."""
    tree = sdnext_venv.parent / f"sdnext-src-{PIN['tag']}-{sdnext_patches.digest()}"
    if not (tree / "launch.py").exists():
        building = tree.with_name(tree.name + ".new")
        shutil.rmtree(building, ignore_errors=True)
        if not from_archives(building):
            reason = from_github(building)
            if reason is not None:
                pytest.fail(
                    f"SD.Next {PIN['tag']} is neither in {SOURCES} (sdnext-{PIN['tag']}.tar.gz and one"
                    f" archive per extension of the pin) nor reachable on GitHub: {reason}"
                )
        try:
            sdnext_patches.apply(building)
        except sdnext_patches.PatchError as error:
            pytest.fail(str(error))
        subprocess.run(["chmod", "-R", "a-w", str(building)], check=True)
        building.rename(tree)
    return tree


@pytest.fixture(scope="module")
def tiny(sdnext_venv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    result = subprocess.run(
        [str(sdnext_venv / "bin" / "python"), str(REPO / "tests" / "sdnext_tiny.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


# -- talking to SD.Next -----------------------------------------------------------------------


def api(port: int, path: str, payload: dict | None = None):
    url = f"http://127.0.0.1:{port}/sdapi/v1/{path}"
    response = (
        requests.post(url, json=payload, timeout=600)
        if payload is not None
        else requests.get(url, timeout=60)
    )
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:2000]}"
    return response.json()


def txt2img(port: int, prompt: str) -> tuple[bytes, dict]:
    result = api(
        port,
        "txt2img",
        {"prompt": prompt, "width": 64, "height": 64, "steps": 2, "seed": 1, "cfg_scale": 1.0},
    )
    assert len(result["images"]) == 1, result
    image = base64.b64decode(result["images"][0])
    assert image_size(image) == (64, 64)
    return image, json.loads(result["info"])


def image_size(image: bytes) -> tuple[int, int]:
    """Width and height of a PNG (IHDR) or a JPEG (its SOF segment), as the API returns either."""
    if image.startswith(b"\x89PNG\r\n\x1a\n"):
        return struct.unpack(">II", image[16:24])
    assert image.startswith(b"\xff\xd8"), image[:16]
    at = 2
    while at < len(image):
        marker, length = image[at + 1], struct.unpack(">H", image[at + 2 : at + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", image[at + 5 : at + 9])
            return width, height
        at += 2 + length
    raise AssertionError("a JPEG without a frame header")


def wait_until_answering(process: subprocess.Popen, port: int, seen: set[str], output: Path) -> float:
    """Seconds until /sdapi/v1/status answers 200; every command line of the tree is noted."""
    began = time.monotonic()
    while time.monotonic() - began < STARTUP and process.poll() is None:
        for pid in [*descendants(process.pid), process.pid]:
            with contextlib.suppress(OSError):
                seen.add(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"http://127.0.0.1:{port}/sdapi/v1/status", timeout=5).status_code == 200:
                return time.monotonic() - began
        time.sleep(0.5)
    text = output.read_text(errors="replace")
    pytest.fail(f"SD.Next did not answer /sdapi/v1/status (exit {process.poll()}):\n{text[-6000:]}")


# A user extension as SD.Next loads them (scripts/*.py of sdnext/extensions/NAME): an API route
# that answers with what its PyPI package computes, where the package was loaded from, and the
# user extensions SD.Next lists as enabled (what its Extensions tab shows).
TINY_EXTENSION = {
    "requirements.txt": "inflection==0.5.1\n",
    "scripts/tiny_route.py": """
import inflection
from modules import extensions, script_callbacks


def add_route(_demo, app):
    @app.get("/tiny-extension/hello")
    def hello():
        enabled = [e.name for e in extensions.extensions if e.enabled and not e.is_builtin]
        return {"camel": inflection.camelize("tiny_extension"), "module": inflection.__file__, "enabled": enabled}


script_callbacks.on_app_started(add_route)
""",
}


def start_sdnext(sdnext_venv: Path, env: dict, port: int, output: Path) -> subprocess.Popen:
    with open(output, "ab") as log:
        return subprocess.Popen(
            [f"{sdnext_venv}/bin/python", str(LAUNCHER), "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_sdnext(process: subprocess.Popen) -> list[int]:
    """SIGTERM to the launcher only, as s6 stops the service; returns the tree it had."""
    tree = [*descendants(process.pid), process.pid]
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    return tree


def test_provisioned_models_generate_images_in_the_real_sdnext(
    sdnext_venv, sdnext_source, tiny, hub, cdn, write_config, tmp_path
):
    # The models, served as the Hub and a CDN serve them.
    pipeline = tiny / "tiny-sd"
    hub.add_repo(
        "tests/tiny-sd",
        {str(p.relative_to(pipeline)): p.read_bytes() for p in pipeline.rglob("*") if p.is_file()},
    )
    lora = (tiny / "tiny-lora.safetensors").read_bytes()
    cdn.add("/loras/tiny-lora.safetensors", lora)
    # The extension, as GitHub serves a commit; its package from a PyPI-like index.
    github = FakeGitHub().start()
    extension_commit = commit_files(tmp_path / "sd-tiny-route", TINY_EXTENSION)
    github.add("someone/sd-tiny-route", tmp_path / "sd-tiny-route")
    pypi = FakePyPI(wheels=WHEELS).start()
    assert (WHEELS / INFLECTION).exists(), "tests/run.sh downloads it"
    config = write_config(
        '[models.diffusers.tiny-sd]\nrepo = "tests/tiny-sd"\n\n'
        f'[models.lora.tiny-lora]\nurl = "{cdn.url}/loras/tiny-lora.safetensors"\n'
        f'sha256 = "{hashlib.sha256(lora).hexdigest()}"\n\n'
        '[extensions.tiny-route]\nurl = "https://github.com/someone/sd-tiny-route"\n'
        f'commit = "{extension_commit}"\n'
    )
    provision_env = {
        "GITHUB_ENDPOINT": github.url,
        "UV_DEFAULT_INDEX": pypi.index_url,
        "UV_NO_CONFIG": "1",
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
        "SDNEXT_PYTHON": str(sdnext_venv / "bin" / "python"),
    }

    before = snapshot(sdnext_source)
    # As in the image: no git, pip or uv on PATH (this machine's tools, less those).
    shims = tmp_path / "bin"
    shims.mkdir()
    for tool in Path("/usr/bin").iterdir():
        if not tool.name.startswith(("git", "pip", "uv")):
            (shims / tool.name).symlink_to(tool)
    workspace = tmp_path / "workspace"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    port = free_port()
    env = {
        "PATH": f"{shims}:{sdnext_venv}/bin",
        "HOME": str(tmp_path / "home"),
        "TMPDIR": str(scratch),
        "WORKSPACE": str(workspace),
        "SDNEXT_SRC": str(sdnext_source),
        "SDNEXT_ARGS": "--use-cpu all",
        "HF_HUB_OFFLINE": "1",
    }
    output = tmp_path / "sdnext.out"
    process = start_sdnext(sdnext_venv, env, port, output)
    seen: set[str] = set()
    tree: list[int] = []
    try:
        startup = wait_until_answering(process, port, seen, output)
        print(f"\nSD.Next {PIN['tag']} answered /sdapi/v1/status 200 after {startup:.1f}s")
        assert "Diffusers/tiny-sd" not in json.dumps(api(port, "sd-models"))
        extensions_tab_says_to_declare(port, workspace / "logs" / "sdnext.log")

        # provision while SD.Next runs, then the rescan the runtime's provision service asks for.
        provisioned = run_module(str(config), "--workspace", str(workspace), env=provision_env, timeout=600)
        assert provisioned.returncode == 0, provisioned.stdout + provisioned.stderr
        models = workspace / "sdnext" / "models"
        assert (models / "Lora" / "tiny-lora.safetensors").read_bytes() == lora
        assert (models / "Diffusers" / "tiny-sd" / "unet" / "diffusion_pytorch_model.safetensors").exists()
        refresh = subprocess.run(
            [sys.executable, "-m", "provision.sdnext", "--port", str(port), "--timeout", "600"],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert refresh.returncode == 0, refresh.stdout + refresh.stderr
        assert "refresh-checkpoints: 204" in refresh.stdout and "refresh-loras: 200" in refresh.stdout
        assert "refresh-unets: 204" in refresh.stdout

        # Every provisioned model is listed, without a restart.
        checkpoints = {m["title"]: m for m in api(port, "sd-models")}
        assert checkpoints["Diffusers/tiny-sd"]["filename"] == str(models / "Diffusers" / "tiny-sd")
        assert {n["name"] for n in api(port, "loras")} >= {"tiny-lora"}

        # Images: without the LoRA, with it, and without it again.
        assert api(port, "options", {"sd_model_checkpoint": "Diffusers/tiny-sd"})
        assert api(port, "checkpoint")["title"] == "Diffusers/tiny-sd"
        plain, info = txt2img(port, "a cat")
        assert "LoRA networks" not in info["extra_generation_params"]
        with_lora, info = txt2img(port, "a cat <lora:tiny-lora:1.0>")
        assert info["extra_generation_params"]["LoRA networks"] == "tiny-lora"
        assert with_lora != plain
        again, _ = txt2img(port, "a cat")
        assert again == plain  # same seed, LoRA unloaded: the same image
    finally:
        tree = stop_sdnext(process)

    # Not just the launcher: SD.Next itself (behind accelerate) is gone and its port is free.
    deadline = time.monotonic() + 30
    while any(os.path.exists(f"/proc/{pid}") for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in tree if os.path.exists(f"/proc/{pid}")] == [], "SD.Next outlived its launcher"
    assert listening(port) == set()
    installs = [
        c
        for c in seen
        if " -m pip" in c or "pip install" in c or c.split(" ")[0].rsplit("/", 1)[-1] in ("git", "pip", "uv")
    ]
    assert installs == [], installs
    assert snapshot(sdnext_source) == before
    assert (workspace / "logs" / "sdnext.log").exists()
    # What torch compiles at run time is cached on the workspace volume, never in the caller's /tmp.
    assert list(scratch.iterdir()) == []
    assert (workspace / ".cache" / "tmp").is_dir()
    # Nothing in $HOME (the container's own layer): caches are on the workspace.
    home = tmp_path / "home"
    assert not home.exists() or [str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()] == []

    # A restart with the network gone: provision finds everything in place without a request,
    # and the extension it installed while SD.Next ran is loaded now, its package from the overlay.
    github.stop()
    pypi.stop()
    hub.stop()
    cdn.stop()
    again = run_module(str(config), "--workspace", str(workspace), env=provision_env, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "3 items: 3 skipped" in again.stderr, again.stderr
    process = start_sdnext(sdnext_venv, env, port, output)
    try:
        wait_until_answering(process, port, seen, output)
        # The API answers a moment before SD.Next runs the extensions' app-started callbacks
        # (one adds the route): a 404 until then (seen once, under load).
        hello, deadline = f"http://127.0.0.1:{port}/tiny-extension/hello", time.monotonic() + 60
        while (
            response := requests.get(hello, timeout=60)
        ).status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert response.status_code == 200, output.read_text(errors="replace")[-4000:]
        answer = response.json()
        assert answer["camel"] == "TinyExtension"
        assert answer["module"].startswith(str(workspace / "sdnext" / "extension-packages"))
        assert answer["enabled"] == ["tiny-route"]
    finally:
        tree = stop_sdnext(process)
    deadline = time.monotonic() + 30
    while any(os.path.exists(f"/proc/{pid}") for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert listening(port) == set()
    assert snapshot(sdnext_source) == before


# -- the Extensions tab (nix/sdnext/patches/extensions-tab.patch) ----------------------------


def gradio_fn(config: dict, *, button: str | None = None, input_label: str | None = None) -> int:
    """The fn_index of the one event of SD.Next's UI that a button (its label or elem_id)
    triggers, or that takes the textbox with this label as an input."""
    components = {c["id"]: c.get("props", {}) for c in config["components"]}
    found = []
    for index, dependency in enumerate(config["dependencies"]):
        props = [components.get(t, {}) for t in dependency["targets"]]
        inputs = [components.get(i, {}) for i in dependency["inputs"]]
        if button is not None and any(button in (p.get("value"), p.get("elem_id")) for p in props):
            found.append(index)
        if input_label is not None and any(p.get("label") == input_label for p in inputs):
            found.append(index)
    assert len(found) == 1, (button, input_label, found)
    return found[0]


def press(port: int, fn_index: int, data: list) -> list:
    """What the browser gets back when the button's event runs (gradio 3's HTTP API)."""
    response = requests.post(
        f"http://127.0.0.1:{port}/run/predict", json={"fn_index": fn_index, "data": data}, timeout=120
    )
    assert response.status_code == 200, response.text[:2000]
    return response.json()["data"]


def extensions_tab_says_to_declare(port: int, log: Path) -> None:
    """Each button of the Extensions tab that would install, update or apply answers in its info
    box, and in SD.Next's log, why it is off in this image and what to declare instead: never
    nothing, never a stack trace, never a credential the user typed."""
    began = time.monotonic()
    config = requests.get(f"http://127.0.0.1:{port}/config", timeout=60).json()
    logged_before = len(log.read_bytes())
    why = "from this tab is off in this image: SD.Next&#x27;s source is read-only"
    declare = "Extensions are declared in your models TOML as [extensions.NAME]"

    # "Manual install": a URL with a token in it, a folder name with a space.
    url = "https://user:tok3n-secret@github.com/someone/sd-ext-demo.git?x=1#y"
    table, info = press(
        port,
        gradio_fn(config, input_label="Extension GIT repository URL"),
        ["my ext", url, "", "", "default"],
    )
    assert f"Installing extensions {why}" in info
    assert (
        "Add to your models TOML:\n[extensions.my-ext]\nurl = &quot;https://github.com/someone/sd-ext-demo&quot;\n"
        "commit = &quot;&lt;40-hex commit&gt;&quot;\nthen run `provision` (README: SD.Next extensions)."
    ) in info
    assert 'id="extensions"' in table  # the list stays as it was
    # The "install" button of a row of the extension index; a URL in git's scp form.
    _, info = press(
        port,
        gradio_fn(config, button="install_extension_button"),
        ["git@github.com:someone/other.git", "", "default"],
    )
    assert "[extensions.other]\nurl = &quot;https://github.com/someone/other&quot;" in info
    # "Update all installed" and "Apply changes" (which without the patch reloads the page).
    _, info = press(port, gradio_fn(config, button="Update all installed"), ["task(1)", "[]", "", "default"])
    assert f"Updating extensions {why}" in info and declare in info
    apply = gradio_fn(config, button="Apply changes")
    assert config["dependencies"][apply]["js"] is None
    [info] = press(port, apply, ["[]", "[]", "none"])
    assert f"Enabling, disabling and updating extensions {why}" in info and declare in info

    # SD.Next's log says it too, once per button, plainly.
    wanted = ["Installing extensions", "Installing extensions", "Updating extensions", "Enabling, disabling"]
    deadline = time.monotonic() + 60
    while True:
        text = log.read_bytes()[logged_before:].decode(errors="replace")
        said = [line for line in text.splitlines() if "from this tab is off in this image" in line]
        if len(said) >= len(wanted) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(said) == len(wanted) and all(w in line for w, line in zip(wanted, said, strict=True)), said
    assert "tok3n-secret" not in text and "Traceback" not in text
    print(f"the Extensions tab's 4 buttons answered in {time.monotonic() - began:.1f}s")
