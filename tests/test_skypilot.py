"""deploy/skypilot: the task and the SkyServe YAML load with SkyPilot's own code (no cloud, no
network), and what they make SkyPilot run works: `setup` installs the lock, `run` starts the
services under real s6 from an ordinary shell (not PID 1), the SkyServe readiness probe passes
through the gateway once SD.Next answers, and SIGTERM to the job stops every process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from .conftest import REPO, blob
from .runtime_harness import make_runtime

SKYPILOT = REPO / "deploy" / "skypilot"
PYTHON = Path(sys.prefix) / "deploy-tools" / "skypilot" / "bin" / "python"  # made by tests/run.sh
CHECK = Path(__file__).parent / "skypilot_check.py"
PASSWORD, TOKEN = "sky-password-1234", "sky-bearer-token-5678"
ENVS = ["--env", "PROVISION_URL=https://example.com/models.toml"]
ENVS += ["--env", "PROVISION_LOCK_URL=https://example.com/models.lock"]
SECRETS = [f"PASSWORD={PASSWORD}", f"OPEN_BUTTON_TOKEN={TOKEN}", "HF_TOKEN=hf_abc", "CIVITAI_TOKEN=cv_abc"]


def skypilot(*files: Path, secrets=SECRETS, envs=ENVS) -> tuple[int, dict]:
    argv = [str(PYTHON), str(CHECK), *map(str, files), *envs]
    for secret in secrets:
        argv += ["--secret", secret]
    home = files[0].parent / ".sky-home" if files else Path("/nonexistent")
    result = subprocess.run(
        argv, capture_output=True, text=True, env={"HOME": str(home), "PATH": os.environ["PATH"]}
    )
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """The YAML files, copied where a test may break them; SkyPilot must be installed."""
    if not PYTHON.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{PYTHON} is missing; tests/run.sh installs it (CI must skip nothing)")
        pytest.skip(f"{PYTHON} is missing: run ./tests/run.sh once")
    copies = {}
    for path in SKYPILOT.glob("*.yaml"):
        copies[path.name] = tmp_path / path.name
        copies[path.name].write_text(path.read_text())
    return copies


def test_skypilot_loads_the_task_and_the_service_and_holds_no_secret(files):
    code, loaded = skypilot(files["sdnext.yaml"], files["sdnext-serve.yaml"])
    assert code == 0, loaded
    task, serve = loaded[str(files["sdnext.yaml"])], loaded[str(files["sdnext-serve.yaml"])]
    for spec in (task, serve):
        assert "provision --locked" in spec["setup"]
        assert spec["run"].strip() == "exec sdnext-services run"
        assert spec["clouds"] == ["RunPod", "Vast"]
        assert {"PASSWORD", "HF_TOKEN", "CIVITAI_TOKEN"} <= set(spec["secrets"])
    assert task["ports"] == ["7010", "7020", "7030", "8010"]
    assert serve["readiness_path"] == "/sdapi/v1/status"
    assert serve["readiness_headers"] == {"Authorization": f"Bearer {TOKEN}"}, "filled in from the secret"
    for path in SKYPILOT.glob("*.yaml"):
        assert (
            TOKEN not in path.read_text()
            and "Bearer ${OPEN_BUTTON_TOKEN}" in SKYPILOT.joinpath("sdnext-serve.yaml").read_text()
        )


def test_skypilot_refuses_a_launch_without_the_config_or_with_a_wrong_key(files):
    code, loaded = skypilot(files["sdnext.yaml"], envs=[])
    assert code == 1 and "PROVISION_URL" in loaded[str(files["sdnext.yaml"])]["error"]
    broken = files["sdnext-serve.yaml"]
    broken.write_text(broken.read_text().replace("  readiness_probe:", "  readyness_probe:"))
    code, loaded = skypilot(broken)
    assert code == 1 and "readyness_probe" in loaded[str(broken)]["error"]


def test_what_skypilot_runs_in_the_container_provisions_serves_probes_and_stops(tmp_path, hub, files):
    weights = blob(64 * 1024, seed=21)
    hub.add_repo("org/sky", {"model.safetensors": weights}, commit="5" * 40)
    config = tmp_path / "models.toml"
    config.write_text('[models.checkpoints.sky]\nrepo = "org/sky"\nfile = "model.safetensors"\n')
    env = {"HF_ENDPOINT": hub.url, "PATH": os.environ["PATH"]}
    locked = subprocess.run(
        [sys.executable, "-m", "provision", "lock", str(config)], env=env, capture_output=True
    )
    assert locked.returncode == 0, locked.stderr
    _, loaded = skypilot(files["sdnext-serve.yaml"])
    spec = loaded[str(files["sdnext-serve.yaml"])]

    runtime = make_runtime(tmp_path / "container", {"PASSWORD": PASSWORD, "OPEN_BUTTON_TOKEN": TOKEN})
    runtime.env.update(
        HF_ENDPOINT=hub.url,
        PROVISION_URL=str(config),
        PROVISION_LOCK_URL=str(config.with_suffix(".lock")),
        PROVISION_MIRROR="",
    )
    # SkyPilot's setup, then its run, each in a bash of their own: no init as PID 1.
    setup = subprocess.run(["bash", "-c", spec["setup"]], env=runtime.env, capture_output=True, text=True)
    assert setup.returncode == 0, setup.stderr
    assert (runtime.workspace / "sdnext/models/Stable-diffusion/model.safetensors").read_bytes() == weights
    with open(tmp_path / "job.log", "wb") as log:
        job = subprocess.Popen(
            ["bash", "-c", spec["run"]],
            env=runtime.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    runtime.process = job  # the harness's cleanup and readiness wait work on it
    try:
        runtime.wait_ready(60)
        probe = requests.get(
            runtime.url("sdnext", spec["readiness_path"]), headers=spec["readiness_headers"], timeout=10
        )
        assert probe.status_code == 200 and probe.json() == {"status": "idle"}
        assert requests.get(runtime.url("sdnext", spec["readiness_path"]), timeout=10).status_code == 401
        assert job.pid in runtime.tree_pids(), "the job's own process supervises the services"
    except BaseException:
        runtime.kill()
        raise
    job.send_signal(signal.SIGTERM)  # what stopping the job does
    assert job.wait(timeout=30) == 0
    runtime.process = None
    assert runtime.tree_pids() == [], "nothing left behind"
    assert "init: workspace" in (tmp_path / "job.log").read_text()
