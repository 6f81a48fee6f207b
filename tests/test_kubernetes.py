"""deploy/kubernetes: the kustomize base and the example overlay render (kubectl's kustomize),
validate against the Kubernetes 1.35 schemas (kubernetes-validate, strict), and pass checkov but
for the findings the README lists with their reason. What the manifests promise is checked on
the rendered objects, and the readiness probe's command is run against a stand-in SD.Next."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from provision.categories import PIN

from .conftest import REPO
from .fakes.server import FakeServer

KUBERNETES = REPO / "deploy" / "kubernetes"
TOOLS = Path(sys.prefix) / "deploy-tools" / "kubernetes" / "bin"  # made by tests/run.sh
SECRET_NAMES = {"PASSWORD", "HF_TOKEN", "CIVITAI_TOKEN", "GITHUB_TOKEN"}
GATEWAY_PORTS = {8010, 7010, 7020, 7030}
# The checkers run offline: checkov skips its platform's mappings, and anything that still tries
# the network meets a closed loopback port.
OFFLINE = {
    "BC_SKIP_MAPPING": "TRUE",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "",
}


def tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing; tests/run.sh installs it (CI must skip nothing)")
        pytest.skip(f"{path} is missing: run ./tests/run.sh once")
    return str(path)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    """The base and the example overlay rendered to files. The overlay wants the user's
    models.lock beside its models.toml (written by `provision lock`): a stand-in here."""
    tree = tmp_path_factory.mktemp("k8s") / "kubernetes"
    shutil.copytree(KUBERNETES, tree)
    (tree / "overlays" / "example" / "models.lock").write_text(
        "version = 1\n# stand-in for the user's lock\n"
    )
    out = {}
    for name, folder in (("base", tree / "base"), ("example", tree / "overlays" / "example")):
        result = subprocess.run([tool("kubectl"), "kustomize", str(folder)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        out[name] = tree / f"{name}.yaml"
        out[name].write_text(result.stdout)
    return out


def objects(path: Path) -> dict[tuple[str, str], dict]:
    return {
        (doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(path.read_text()) if doc
    }


@pytest.mark.parametrize("which", ["base", "example"])
def test_the_rendered_manifests_validate_against_kubernetes_1_35_strictly(rendered, which):
    result = subprocess.run(
        [
            tool("kubernetes-validate"),
            "--kubernetes-version",
            "1.35.0",
            "--strict",
            "--quiet",
            str(rendered[which]),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_finds_nothing_beyond_what_the_readme_lists_with_its_reason(rendered, tmp_path):
    result = subprocess.run(
        [
            tool("checkov"),
            "-f",
            str(rendered["example"]),
            "--framework",
            "kubernetes",
            "-o",
            "json",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE, "HOME": str(tmp_path)},
    )
    report = json.loads(result.stdout)
    found = {(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]}
    listed = {
        (m[1], m[2])
        for m in re.finditer(r"^\| (CKV\w+) \| ([\w.-]+) \| \S.*\|$", (REPO / "README.md").read_text(), re.M)
    }
    assert found - listed == set(), "fix these, or list them in the README with the reason they stay"
    assert listed - found == set(), "the README lists findings checkov no longer reports"
    assert report["summary"]["passed"] > 50


def test_secrets_are_references_the_config_and_lock_a_configmap_models_a_shared_volume(rendered):
    docs = objects(rendered["example"])
    assert not [key for key in docs if key[0] == "Secret"], "no Secret with literal values is shipped"
    config_maps = [doc for (kind, _), doc in docs.items() if kind == "ConfigMap"]
    assert len(config_maps) == 1 and set(config_maps[0]["data"]) == {"models.toml", "models.lock"}
    deployment = docs[("Deployment", "sdnext")]
    pod = deployment["spec"]["template"]["spec"]
    for container in pod["initContainers"] + pod["containers"]:
        for env in container.get("env", []):
            if env["name"] in SECRET_NAMES:
                assert "value" not in env and env["valueFrom"]["secretKeyRef"]["name"] == "sdnext-secrets"
    (init,) = pod["initContainers"]
    assert init["args"][:3] == ["provision", "/config/models.toml", "--locked"]
    (main,) = pod["containers"]
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {p["containerPort"] for p in main["ports"]} == GATEWAY_PORTS
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_maps[0]["metadata"]["name"]  # the hashed name
    claim = docs[("PersistentVolumeClaim", volumes["models"]["persistentVolumeClaim"]["claimName"])]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    # The workspace lock and the records live on the shared volume, in both containers.
    for container in (init, main):
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert (
            mounts["/workspace/.provision"]["name"] == mounts["/workspace/sdnext/models"]["name"] == "models"
        )
    service = docs[("Service", "sdnext")]
    assert {p["port"] for p in service["spec"]["ports"]} == GATEWAY_PORTS
    assert service["spec"]["sessionAffinity"] == "ClientIP", "a login is one pod's session"
    mirror_env = {e["name"]: e.get("value") for e in init["env"]}
    assert mirror_env["PROVISION_MIRROR"] == "http://sdnext-mirror"
    assert ("Service", "sdnext-olah") in docs


def test_the_mirror_pod_installs_the_lock_writes_it_by_hash_and_serves_only_that(rendered):
    docs = objects(rendered["example"])
    pod = docs[("Deployment", "sdnext-mirror")]["spec"]["template"]["spec"]
    install, fill = pod["initContainers"]
    assert install["args"] == [
        "provision",
        "/config/models.toml",
        "--locked",
        "--workspace",
        "/data/workspace",
    ]
    assert fill["args"][:3] == ["provision", "mirror", "/data/mirror"] and "/data/workspace" in fill["args"]
    (serve,) = pod["containers"]
    (html,) = [m for m in serve["volumeMounts"] if m["mountPath"] == "/usr/share/nginx/html"]
    assert html["subPath"] == "mirror" and html["readOnly"] is True, "the workspace and tokens stay unserved"
    assert "env" not in serve
    service = docs[("Service", "sdnext-mirror")]
    assert service["spec"]["ports"][0]["port"] == 80  # http://sdnext-mirror, as PROVISION_MIRROR says
    images = {c["image"] for d in docs.values() if d["kind"] == "Deployment" for c in _containers(d)}
    tag = PIN["tag"]  # the overlay's images entry rewrites the base's sdnext:TAG everywhere
    assert f"ghcr.io/OWNER/REPO:{tag}" in images and f"sdnext:{tag}" not in images


def _containers(deployment: dict) -> list[dict]:
    spec = deployment["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


class StandIn(FakeServer):
    """SD.Next's API on its loopback port, answering /sdapi/v1/status with `status`."""

    status = 200

    def handle(self, h, path, query):
        h.reply(self.status if path == "/sdapi/v1/status" else 404, b'{"status": "idle"}')


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe"])
def test_the_probe_command_passes_only_while_sdnext_answers_on_its_loopback_port(rendered, probe):
    (main,) = objects(rendered["base"])[("Deployment", "sdnext")]["spec"]["template"]["spec"]["containers"]
    command = main[probe]["exec"]["command"]
    server = StandIn().start()
    port = server.url.rsplit(":", 1)[1]

    def probe_exit() -> int:
        env = {"PATH": os.environ["PATH"], "SDNEXT_INTERNAL_PORT": port}
        return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode

    try:
        assert probe_exit() == 0
        server.status = 401  # SDNEXT_ARGS turned on SD.Next's own --auth: it answers, so it is up
        assert probe_exit() == 0
        server.status = 503
        assert probe_exit() == 1
        assert server.seen("/sdapi/v1/status") and all(
            "authorization" not in s.headers for s in server.seen()
        ), "the probe needs no credential"
    finally:
        server.stop()
    assert probe_exit() == 1, "nothing listening: not ready"


def test_a_locked_run_never_rewrites_the_lock_a_configmap_mounts_read_only(cli, hub, write_config):
    # The init container runs `provision /config/models.toml --locked` with /config read-only.
    hub.add_repo("org/a", {"a.safetensors": b"a" * 20_000})
    hub.add_repo("org/b", {"b.safetensors": b"b" * 20_000})
    items = [
        '[models.lora.a]\nrepo = "org/a"\nfile = "a.safetensors"\n',
        '[models.lora.b]\nrepo = "org/b"\nfile = "b.safetensors"\n',
    ]
    config = write_config("\n".join(items))
    assert cli("lock", str(config)).code == 0
    lock = config.with_suffix(".lock")
    before = (lock.read_text(), lock.stat().st_mtime_ns)
    config.write_text("\n".join(reversed(items)))  # the same items in another order: still up to date
    result = cli(str(config), "--locked")
    assert result.code == 0, result.text
    assert (lock.read_text(), lock.stat().st_mtime_ns) == before
