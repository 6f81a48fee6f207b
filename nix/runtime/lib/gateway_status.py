"""What the portal and `/.gateway/status.json` show: each service's state, the provisioning run
as it goes (from provision's own `<workspace>/.provision/progress.json`), and the GPU.

Read fresh on every request; nothing here writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Display name, what it is, and what a user waiting for it should know.
SERVICE_INFO = {
    "sdnext": ("SD.Next", "image generation", "the first start takes about a minute"),
    "filebrowser": ("Files", "file manager over the workspace", "it starts in a few seconds"),
    "ttyd": ("Terminal", "a shell in the workspace", "it starts in a few seconds"),
    "logdy": ("Logs", "every service's log", "it starts in a few seconds"),
}


@dataclass(frozen=True)
class Service:
    name: str
    title: str
    what: str
    hint: str
    port: int  # where the gateway serves it
    public_port: int  # where browsers reach it (a host's port mapping, when it says)
    internal: int  # where the service itself listens, on 127.0.0.1


def services_from_env(env: dict[str, str] | None = None) -> list[Service]:
    env = dict(os.environ if env is None else env)
    services = []
    for name in env.get("PROXIED_SERVICES", "").split():
        port = int(env[f"{name.upper()}_PORT"])
        title, what, hint = SERVICE_INFO.get(name, (name, "", "it is starting"))
        # Vast.ai maps each container port to a public one and says so in VAST_TCP_PORT_<port>.
        public = env.get(f"VAST_TCP_PORT_{port}", "")
        services.append(
            Service(
                name,
                title,
                what,
                hint,
                port,
                int(public) if public.isdigit() else port,
                int(env[f"{name.upper()}_INTERNAL_PORT"]),
            )
        )
    return services


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.3):
        return True
    return False


def _svstat(service_dir: Path) -> dict[str, str] | None:
    """s6's view of a service: up, wantedup, exitcode (None: no such service)."""
    if not (service_dir / "supervise").exists():
        return None
    fields = ("up", "wantedup", "exitcode", "updownfor")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["s6-svstat", "-o", ",".join(fields), str(service_dir)],
            capture_output=True,
            text=True,
            timeout=2,
        ).stdout.split()
        if len(out) == len(fields):
            return dict(zip(fields, out, strict=True))
    return None


def service_state(service: Service, service_root: Path) -> dict:
    """up (answering), starting (running, not answering yet), failed (exited; s6 restarts it),
    stopped."""
    if _listening(service.internal):
        return {"state": "up", "detail": ""}
    status = _svstat(service_root / service.name)
    if status is None or status["up"] == "true":
        return {"state": "starting", "detail": service.hint}
    if status["wantedup"] == "true":
        return {"state": "failed", "detail": f"exited with code {status['exitcode']}; restarting"}
    return {"state": "stopped", "detail": ""}


def provisioning(workspace: Path, service_root: Path, configured: bool) -> dict:
    """The provision one-shot: off, running (with its progress), done or failed."""
    if not configured:
        return {"state": "off", "detail": "PROVISION_URL is not set", "items": [], "total": None}
    status = _svstat(service_root / "provision")
    picture: dict = {}
    with contextlib.suppress(OSError, ValueError):
        picture = json.loads((workspace / ".provision" / "progress.json").read_text())
    items, total = picture.get("items", []), picture.get("total")
    if status is not None and status["up"] == "true":
        state = "running"
        detail = "downloading" if picture and not picture.get("finished") else "reading the config"
    elif status is None:
        state, detail = "starting", ""
    elif status["exitcode"] == "0":
        state, detail = "done", "every model is in place"
    else:
        failed = sum(1 for item in items if item.get("state") == "failed")
        state = "failed"
        detail = f"exit code {status['exitcode']}" + (f"; {failed} item(s) failed" if failed else "")
        detail += "; see logs/provision.log"
    return {"state": state, "detail": detail, "items": items, "total": total}


def gpu(proc_dir: Path) -> list[str]:
    """One line per GPU with the driver version, from what the NVIDIA runtime mounts under
    /proc/driver/nvidia; empty without a GPU."""
    driver = ""
    with contextlib.suppress(OSError):
        first = (proc_dir / "version").read_text().splitlines()[0]
        words = first.split()
        driver = next((w for w in words if w[:1].isdigit() and "." in w), "")
    lines = []
    for info in sorted(proc_dir.glob("gpus/*/information")):
        with contextlib.suppress(OSError):
            fields = dict(
                (k.strip(), v.strip())
                for k, _, v in (line.partition(":") for line in info.read_text().splitlines())
            )
            model = fields.get("Model", "unknown GPU")
            lines.append(f"{model}, driver {driver}" if driver else model)
    return lines


def status(
    services: list[Service], workspace: Path, service_root: Path, proc_dir: Path, provision_configured: bool
) -> dict:
    return {
        "services": [
            {"name": s.name, "title": s.title, "what": s.what, "port": s.public_port}
            | service_state(s, service_root)
            for s in services
        ],
        "provisioning": provisioning(workspace, service_root, provision_configured),
        "gpu": gpu(proc_dir),
    }
