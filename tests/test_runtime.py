"""The container runtime under real s6 and a real Caddy: one login in front of every port,
services on loopback only, the provision one-shot, supervision, shutdown, and no leaked secrets.

The image's binaries that this machine lacks (sdnext-launch, filebrowser, ttyd, logdy) are
stand-ins (tests/standins/standin.py) that record how they were started and serve HTTP.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from .conftest import blob, sha256
from .fakes.cdn import FakeCDN
from .runtime_harness import (
    PROXIED,
    RUNTIME,
    connected_to,
    free_port,
    listening,
    make_runtime,
)

PASSWORD = "correct-horse-battery-9"
TOKEN = "vasttoken0123456789abcdef"
HF_TOKEN = "hf_runtime_secret_7777"
CIVITAI_TOKEN = "civitai_runtime_secret_8888"
GITHUB_TOKEN = "github_pat_runtime_secret_7777"


pytestmark = pytest.mark.usefixtures("runtime_tools")  # and `start`: both in conftest.py


def get(runtime, service, path="/", **kw):
    return requests.get(runtime.url(service, path), allow_redirects=False, timeout=10, **kw)


def test_every_port_asks_for_a_login_and_accepts_each_kind(start):
    runtime = start(PASSWORD=PASSWORD, OPEN_BUTTON_TOKEN=TOKEN)
    for service in PROXIED:
        assert get(runtime, service).status_code == 401, service
        assert get(runtime, service, auth=("admin", "wrong-password")).status_code == 401
        assert get(runtime, service, auth=("admin", "admin")).status_code == 401
        ok = get(runtime, service, auth=("admin", PASSWORD))
        assert ok.status_code == 200 and ok.json()["service"] == {"sdnext": "sdnext-launch"}.get(
            service, service
        )
        assert get(runtime, service, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert get(runtime, service, headers={"Authorization": "Bearer not-the-token"}).status_code == 401


def open_button(runtime, path: str = "/app?tab=txt2img", **kw) -> requests.Response:
    separator = "&" if "?" in path else "?"
    return get(runtime, "sdnext", f"{path}{separator}token={TOKEN}", **kw)


def session_cookie(response: requests.Response) -> tuple[str, str]:
    name, _, value = response.headers["Set-Cookie"].split(";", 1)[0].partition("=")
    return name, value


def test_open_button_sets_a_session_cookie_that_is_not_the_token(start):
    runtime = start(PASSWORD=PASSWORD, OPEN_BUTTON_TOKEN=TOKEN)
    first = open_button(runtime)
    assert first.status_code == 302
    assert first.headers["Location"] == "/app?tab=txt2img"
    cookie = first.headers["Set-Cookie"]
    name, value = session_cookie(first)
    assert re.fullmatch(r"gateway_[0-9a-f]{12}", name) and len(value) >= 40
    assert TOKEN not in cookie and PASSWORD not in cookie
    for attribute in ("Path=/", "HttpOnly", "SameSite=Lax", "Max-Age=259200"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain HTTP here; see the TLS case below
    follow = get(runtime, "sdnext", "/app?tab=txt2img", cookies={name: value, "app_pref": "dark"})
    assert follow.status_code == 200 and follow.json()["path"] == "/app?tab=txt2img"
    # The app behind gets its own cookies, never the gateway's.
    seen = follow.json()["headers"]
    assert "app_pref=dark" in seen["cookie"] and name not in seen["cookie"] and value not in json.dumps(seen)
    assert get(runtime, "logdy", cookies={name: value}).status_code == 200  # every port of the host
    assert get(runtime, "sdnext", "/?token=wrong").status_code == 401
    assert get(runtime, "sdnext", cookies={name: "wrong"}).status_code == 401
    assert get(runtime, "sdnext", cookies={f"x{name}": value}).status_code == 401  # exact name only
    assert get(runtime, "sdnext", cookies={"gateway_token": TOKEN}).status_code == 401  # the old scheme
    # A client's own X-Forwarded-Proto counts for nothing (only a TRUSTED_PROXIES proxy's does).
    assert "Secure" not in open_button(runtime, headers={"X-Forwarded-Proto": "https"}).headers["Set-Cookie"]
    # The redirect stays on this host, whatever the path looks like.
    assert open_button(runtime, "//evil.example/x").headers["Location"] == "/evil.example/x"


def test_each_instance_and_each_boot_has_its_own_session_cookie(start):
    one = start(PASSWORD=PASSWORD, OPEN_BUTTON_TOKEN=TOKEN, CONTAINER_ID="c0ffee01")
    two = start(PASSWORD=PASSWORD, OPEN_BUTTON_TOKEN=TOKEN, CONTAINER_ID="c0ffee02")
    name_one, value_one = session_cookie(open_button(one))
    name_two, value_two = session_cookie(open_button(two))
    assert name_one != name_two and value_one != value_two
    assert get(two, "sdnext", cookies={name_one: value_one}).status_code == 401
    # The same container booted again (new login settings) revokes the cookies it gave out.
    again = start(PASSWORD=PASSWORD + "-changed", OPEN_BUTTON_TOKEN=TOKEN, CONTAINER_ID="c0ffee01")
    assert session_cookie(open_button(again))[0] == name_one
    assert get(again, "sdnext", cookies={name_one: value_one}).status_code == 401


def test_the_apps_never_see_the_login(start):
    runtime = start(PASSWORD=PASSWORD, OPEN_BUTTON_TOKEN=TOKEN)
    for kw in ({"auth": ("admin", PASSWORD)}, {"headers": {"Authorization": f"Bearer {TOKEN}"}}):
        seen = get(runtime, "filebrowser", "/", **kw).json()["headers"]
        assert "authorization" not in seen, kw


def websocket_upgrade(runtime, headers: dict[str, str]) -> bytes:
    request = (
        "GET /ws HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{runtime.ports['ttyd']}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    )
    with socket.create_connection(("127.0.0.1", runtime.ports["ttyd"]), timeout=10) as sock:
        sock.sendall(request.encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
            if b"ttyd!" in data or (b"\r\n\r\n" in data and not data.startswith(b"HTTP/1.1 101")):
                break
        return data


def test_terminal_websocket_only_when_authenticated(start):
    runtime = start(PASSWORD=PASSWORD, OPEN_BUTTON_TOKEN=TOKEN)
    refused = websocket_upgrade(runtime, {})
    assert refused.startswith(b"HTTP/1.1 401")
    basic = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    name, value = session_cookie(open_button(runtime))
    for headers in ({"Authorization": f"Basic {basic}"}, {"Cookie": f"{name}={value}"}):
        upgraded = websocket_upgrade(runtime, headers)
        assert upgraded.startswith(b"HTTP/1.1 101"), upgraded[:200]
        assert b"ttyd!" in upgraded  # the frame came from the terminal behind the gateway


def test_services_listen_on_loopback_only_and_the_gateway_on_all(start):
    runtime = start(PASSWORD=PASSWORD)
    for service in PROXIED:
        assert listening(runtime.internal[service]) == {"127.0.0.1"}, service
        assert listening(runtime.ports[service]) & {"0.0.0.0", "::"}, service


def test_each_service_was_started_with_the_flags_it_needs(start):
    runtime = start(
        PASSWORD=PASSWORD, HF_TOKEN=HF_TOKEN, CIVITAI_TOKEN=CIVITAI_TOKEN, GITHUB_TOKEN=GITHUB_TOKEN
    )
    ws, internal = str(runtime.workspace), runtime.internal

    sdnext = runtime.starts("sdnext-launch")[-1]
    assert sdnext["argv"] == ["--host", "127.0.0.1", "--port", str(internal["sdnext"])]
    assert sdnext["env"]["HF_TOKEN"] == HF_TOKEN  # gated diffusers models need it
    assert "CIVITAI_TOKEN" not in sdnext["env"]  # SD.Next does not use it
    assert "GITHUB_TOKEN" not in sdnext["env"]  # provision's, for private extensions

    server = [s for s in runtime.starts("filebrowser") if s["argv"][:1] != ["config"]][-1]
    assert server["argv"] == [
        "--noauth",
        "--address",
        "127.0.0.1",
        "--port",
        str(internal["filebrowser"]),
        "--root",
        ws,
        "--database",
        f"{ws}/.filebrowser/filebrowser.db",
    ]

    ttyd = runtime.starts("ttyd")[-1]
    assert ttyd["argv"] == [
        "--port",
        str(internal["ttyd"]),
        "--interface",
        "127.0.0.1",
        "--writable",
        "--check-origin",
        "--cwd",
        ws,
        "bash",
        "--login",
    ]
    # the web terminal inherits no token and no password
    for secret in ("HF_TOKEN", "CIVITAI_TOKEN", "GITHUB_TOKEN", "PASSWORD", "OPEN_BUTTON_TOKEN"):
        assert secret not in ttyd["env"]

    logdy = runtime.starts("logdy")[-1]
    followed = [
        f"{ws}/logs/{s}/current"
        for s in ("gateway", "guard", "sdnext", "filebrowser", "ttyd", "logdy", "sshd", "provision")
    ]
    assert logdy["argv"] == [
        "follow",
        "--full-read",
        "--port",
        str(internal["logdy"]),
        "--ui-ip",
        "127.0.0.1",
        "--no-analytics",
        "--no-updates",
        *followed,
        f"{ws}/logs/provision.log",
    ]
    assert all(Path(f).exists() for f in logdy["argv"][9:])  # logdy skips files missing at start


def test_filebrowser_keeps_its_login_off_in_an_existing_database(start, tmp_path):
    runtime = start(PASSWORD=PASSWORD)
    db = runtime.workspace / ".filebrowser" / "filebrowser.db"
    db.write_bytes(b"a database from an earlier run")
    ws_before = sorted(p.name for p in runtime.workspace.iterdir())
    os.kill(runtime.starts("filebrowser")[-1]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(
        s["argv"][:2] == ["config", "set"] for s in runtime.starts("filebrowser")
    ):
        time.sleep(0.1)
    config = [s for s in runtime.starts("filebrowser") if s["argv"][:2] == ["config", "set"]]
    assert config and config[-1]["argv"] == ["config", "set", "--auth.method=noauth", "--database", str(db)]
    assert sorted(p.name for p in runtime.workspace.iterdir()) == ws_before


def test_workspace_layout_and_user_data_survive_a_restart(start, tmp_path):
    runtime = start(PASSWORD=PASSWORD)
    models = runtime.workspace / "sdnext" / "models"
    for folder in (
        "Stable-diffusion",
        "Lora",
        "VAE",
        "Text-encoder",
        "UNET",
        "Diffusers",
        "control/controlnet",
    ):
        assert (models / folder).is_dir(), folder
    (models / "Lora" / "mine.safetensors").write_bytes(b"user data")
    runtime.stop()
    again = make_runtime(tmp_path / "again", {"PASSWORD": PASSWORD, "WORKSPACE": str(runtime.workspace)})
    again.start()
    try:
        again.wait_ready()
        assert (models / "Lora" / "mine.safetensors").read_bytes() == b"user data"
    finally:
        again.kill()


def test_runtime_dir_is_root_only_and_holds_no_plain_password(start):
    runtime = start(PASSWORD=PASSWORD, HF_TOKEN=HF_TOKEN)
    for path in (runtime.runtime_dir / "gateway", runtime.runtime_dir / "env" / "secrets"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    caddyfile = runtime.runtime_dir / "gateway" / "Caddyfile"
    assert stat.S_IMODE(caddyfile.stat().st_mode) == 0o600
    assert PASSWORD not in caddyfile.read_text()
    login = runtime.runtime_dir / "gateway" / "login"  # the login guard's keyed hash of the login
    assert stat.S_IMODE(login.stat().st_mode) == 0o600
    assert PASSWORD not in login.read_text() and set(json.loads(login.read_text())) == {
        "key",
        "user",
        "digest",
    }


def test_without_password_or_token_a_generated_one_is_printed_once_and_works(start):
    runtime = start()
    lines = [line for line in runtime.console.splitlines() if "Generated login" in line]
    assert len(lines) == 1
    password = lines[0].split("password:")[1].strip()
    assert len(password) >= 20
    assert get(runtime, "sdnext", auth=("admin", password)).status_code == 200
    assert get(runtime, "sdnext", auth=("admin", "admin")).status_code == 401
    assert password not in "".join(
        p.read_text(errors="replace") for p in runtime.workspace.rglob("*") if p.is_file()
    )


def test_the_token_is_the_password_when_no_password_is_set(start):
    runtime = start(OPEN_BUTTON_TOKEN=TOKEN)
    assert get(runtime, "ttyd", auth=("admin", TOKEN)).status_code == 200
    assert get(runtime, "ttyd", auth=("admin", "admin")).status_code == 401
    assert "Generated login" not in runtime.console


def test_admin_admin_works_only_when_set(start):
    runtime = start(PASSWORD="admin", USERNAME="admin")
    assert get(runtime, "sdnext", auth=("admin", "admin")).status_code == 200


def test_enable_auth_false_opens_the_ports_with_a_warning(start):
    runtime = start(ENABLE_AUTH="false")
    assert get(runtime, "sdnext").status_code == 200
    assert get(runtime, "ttyd", "/.gateway/").status_code == 200  # the portal, without a login
    assert get(runtime, "ttyd", "/.gateway/login").headers["Location"] == "/.gateway/"
    assert "WARNING: ENABLE_AUTH=false" in runtime.console


def test_bad_username_stops_init_with_a_clear_error(tmp_path):
    runtime = make_runtime(tmp_path / "c", {"USERNAME": "ad min", "PASSWORD": PASSWORD})
    runtime.start()
    assert runtime.process.wait(timeout=20) != 0
    assert "USERNAME may only hold letters" in runtime.console


def test_duplicate_or_taken_ports_stop_init_naming_the_variable(tmp_path):
    duplicate = make_runtime(tmp_path / "dup", {"PASSWORD": PASSWORD})
    duplicate.env["TTYD_PORT"] = duplicate.env["LOGDY_PORT"]
    duplicate.start()
    assert duplicate.process.wait(timeout=20) != 0
    assert f"LOGDY_PORT and TTYD_PORT are both {duplicate.env['LOGDY_PORT']}" in duplicate.console
    taken = make_runtime(tmp_path / "taken", {"PASSWORD": PASSWORD})
    with socket.create_server(("127.0.0.1", int(taken.env["FILEBROWSER_PORT"]))):
        taken.start()
        assert taken.process.wait(timeout=20) != 0
    assert f"FILEBROWSER_PORT={taken.env['FILEBROWSER_PORT']} is already in use on this host" in taken.console
    assert not (taken.root / "run" / "service").exists()  # nothing was started


def test_no_secret_in_process_arguments_or_logs(start, cdn, write_config):
    cdn.add("/m.safetensors", blob(10_000, seed=1))
    config = write_config(f'[models.lora]\nm = "{cdn.url}/m.safetensors?token=urlsecret9999"\n')
    runtime = start(
        PASSWORD=PASSWORD,
        OPEN_BUTTON_TOKEN=TOKEN,
        HF_TOKEN=HF_TOKEN,
        CIVITAI_TOKEN=CIVITAI_TOKEN,
        GITHUB_TOKEN=GITHUB_TOKEN,
        PROVISION_URL=str(config),
    )
    wait_for(lambda: "provision:" in log_text(runtime, "provision") and runtime.refreshes(), 30)
    cmdlines = ""
    for pid in runtime.tree_pids():
        with contextlib.suppress(OSError):
            cmdlines += Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") + "\n"
    assert "s6-svscan" in cmdlines and "caddy\x00run" in cmdlines, cmdlines.replace("\x00", " ")
    logs = "".join(
        p.read_text(errors="replace") for p in (runtime.workspace / "logs").rglob("*") if p.is_file()
    )
    assert "m.safetensors" in logs
    for secret in (PASSWORD, TOKEN, HF_TOKEN, CIVITAI_TOKEN, GITHUB_TOKEN, "urlsecret9999"):
        assert secret not in cmdlines, secret
        assert secret not in logs, secret


def log_text(runtime, service: str) -> str:
    path = runtime.workspace / "logs" / service / "current"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def test_provision_runs_once_then_asks_sdnext_to_rescan(start, cdn, write_config):
    data = blob(300_000, seed=2)
    cdn.add("/model.safetensors", data)
    config = write_config(f'[models.checkpoints]\nmodel = "{cdn.url}/model.safetensors"\n')
    runtime = start(PASSWORD=PASSWORD, PROVISION_URL=str(config))
    wait_for(lambda: "no rescan endpoint for Text-encoder" in log_text(runtime, "provision"), 30)
    # The endpoints the pinned SD.Next has (its /openapi.json), each answering as at the tag.
    assert runtime.refreshes() == [f"/sdapi/v1/refresh-{k}" for k in ("checkpoints", "loras", "unets", "vae")]
    assert "refresh-unets: 204 (UNET rescanned)" in log_text(runtime, "provision")
    wait_for(lambda: "provision: finished with exit code" in log_text(runtime, "provision"), 30)
    assert "provision: finished with exit code 0" in log_text(runtime, "provision")
    dest = runtime.workspace / "sdnext/models/Stable-diffusion/model.safetensors"
    assert sha256(dest.read_bytes()) == sha256(data)
    assert "done models.checkpoints.model" in (runtime.workspace / "logs" / "provision.log").read_text()
    time.sleep(3)  # longer than the restart delay: a restarted one-shot would have run again
    assert log_text(runtime, "provision").count("provision: started") == 1
    assert len(runtime.refreshes()) == 4
    assert "asking SD.Next to rescan" in log_text(runtime, "provision")
    assert len(runtime.starts("sdnext-launch")) == 1, "SD.Next was restarted with no extension to load"
    # The portal's status says so too.
    status = get(runtime, "logdy", "/.gateway/status.json", auth=("admin", PASSWORD)).json()["provisioning"]
    assert status["state"] == "done"
    assert [(i["item"], i["state"], i["done"]) for i in status["items"]] == [
        ("checkpoints/model", "verified", 300_000)
    ]


def test_files_that_arrived_are_rescanned_when_another_item_failed(start, cdn, write_config):
    data = blob(300_000, seed=5)
    cdn.add("/lora.safetensors", data)
    config = write_config(
        f'[models.lora]\ngood = "{cdn.url}/lora.safetensors"\nmissing = "{cdn.url}/missing.safetensors"\n'
    )
    runtime = start(PASSWORD=PASSWORD, PROVISION_URL=str(config))
    wait_for(lambda: "no rescan endpoint for Text-encoder" in log_text(runtime, "provision"), 30)
    text = log_text(runtime, "provision")
    assert "FAILED (exit code 1)" in text
    assert "the files that did arrive are in place; asking SD.Next to rescan" in text
    assert "/sdapi/v1/refresh-loras" in runtime.refreshes()
    assert sha256((runtime.workspace / "sdnext/models/Lora/lora.safetensors").read_bytes()) == sha256(data)
    wait_for(lambda: "provision: finished with exit code" in log_text(runtime, "provision"), 30)
    assert "provision: finished with exit code 1" in log_text(runtime, "provision")


def test_provision_failure_is_visible_and_not_retried(start, cdn, write_config):
    config = write_config(f'[models.checkpoints]\nmissing = "{cdn.url}/missing.safetensors"\n')
    runtime = start(PASSWORD=PASSWORD, PROVISION_URL=str(config))
    wait_for(lambda: "FAILED" in log_text(runtime, "provision"), 30)
    time.sleep(3)
    text = log_text(runtime, "provision")
    assert text.count("provision: started") == 1 and "FAILED (exit code 1)" in text
    assert runtime.refreshes() == []
    assert "answered 404" in (runtime.workspace / "logs" / "provision.log").read_text()
    status = get(runtime, "sdnext", "/.gateway/status.json", auth=("admin", PASSWORD)).json()["provisioning"]
    assert status["state"] == "failed" and "1 item(s) failed" in status["detail"]
    (item,) = status["items"]
    assert item["item"] == "checkpoints/missing" and item["state"] == "failed" and "404" in item["reason"]


def test_provision_waits_for_a_network_that_comes_up_late(start, write_config):
    # The models' host answers only after the container started: refused until then.
    data = blob(200_000, seed=7)
    late = FakeCDN()
    late.add("/model.safetensors", data)
    port = free_port()
    config = write_config(f'[models.checkpoints]\nmodel = "http://127.0.0.1:{port}/model.safetensors"\n')
    runtime = start(PASSWORD=PASSWORD, PROVISION_URL=str(config), PROVISION_RETRY_DELAY="1")
    wait_for(lambda: "trying again in 1s (1 of 5)" in log_text(runtime, "provision"), 60)
    late.start(port=port)
    try:
        wait_for(lambda: "provision: finished with exit code" in log_text(runtime, "provision"), 90)
    finally:
        late.stop()
    text = log_text(runtime, "provision")
    assert f"cannot reach 127.0.0.1:{port} (connection refused)" in text
    assert "could not reach a host and placed nothing (is the network still coming up?)" in text
    assert "provision: all models in place; asking SD.Next to rescan" in text
    assert "provision: finished with exit code 0" in text
    assert text.count("provision: started") == 1 and "FAILED" not in text
    dest = runtime.workspace / "sdnext/models/Stable-diffusion/model.safetensors"
    assert sha256(dest.read_bytes()) == sha256(data)


def test_provision_gives_up_on_an_unreachable_host_after_its_retries(start, write_config):
    port = free_port()  # nothing ever listens here
    config = write_config(f'[models.checkpoints]\nmodel = "http://127.0.0.1:{port}/model.safetensors"\n')
    runtime = start(
        PASSWORD=PASSWORD, PROVISION_URL=str(config), PROVISION_RETRIES="2", PROVISION_RETRY_DELAY="1"
    )
    wait_for(lambda: "provision: finished with exit code" in log_text(runtime, "provision"), 60)
    text = log_text(runtime, "provision")
    assert "trying again in 1s (1 of 2)" in text and "trying again in 2s (2 of 2)" in text
    assert "(3 of 2)" not in text and text.count(f"cannot reach 127.0.0.1:{port}") == 3
    assert "provision: FAILED (exit code 1)" in text and "provision: finished with exit code 1" in text
    assert runtime.refreshes() == []


def test_a_lock_from_provision_lock_url_is_enforced(start, cdn, write_config, tmp_path, cli):
    cdn.add("/model.safetensors", blob(300_000, seed=3))
    config = write_config(f'[models.checkpoints]\nmodel = "{cdn.url}/model.safetensors"\n')
    assert cli("lock", str(config), "--workspace", str(tmp_path / "locking-host")).code == 0
    cdn.add("/model.safetensors", blob(300_000, seed=4))  # the bytes behind the URL change
    runtime = start(
        PASSWORD=PASSWORD, PROVISION_URL=str(config), PROVISION_LOCK_URL=str(config.with_suffix(".lock"))
    )
    wait_for(lambda: "FAILED" in log_text(runtime, "provision"), 30)
    assert "FAILED (exit code 1)" in log_text(runtime, "provision")
    assert "(--locked)" in log_text(runtime, "provision")
    assert (
        "the lock pins checkpoints/model to these bytes"
        in (runtime.workspace / "logs" / "provision.log").read_text()
    )
    assert not (runtime.workspace / "sdnext/models/Stable-diffusion/model.safetensors").exists()
    assert runtime.refreshes() == []


def test_sdnext_restarts_once_provision_installed_an_extension(start, write_config, tmp_path):
    """SD.Next loads extensions when it starts, so one that arrives after it started needs a
    restart (a rescan would not load it). Without extensions there is none (the test above)."""
    from .fakes.github import FakeGitHub, commit_files

    github = FakeGitHub().start()
    try:
        commit = commit_files(tmp_path / "ext", {"scripts/x.py": "X = 1\n"})
        github.add("someone/ext", tmp_path / "ext")
        config = write_config(
            f'[extensions.ext]\nurl = "https://github.com/someone/ext"\ncommit = "{commit}"\nrequirements = []\n'
        )
        runtime = start(PASSWORD=PASSWORD, PROVISION_URL=str(config), GITHUB_ENDPOINT=github.url)
        wait_for(lambda: "provision: finished with exit code" in log_text(runtime, "provision"), 30)
        assert "restarting SD.Next so it loads them" in log_text(runtime, "provision")
        assert "provision: finished with exit code 0" in log_text(runtime, "provision")
        assert (
            runtime.workspace / "sdnext" / "extensions" / "ext" / "scripts" / "x.py"
        ).read_text() == "X = 1\n"
        wait_for(lambda: len(runtime.starts("sdnext-launch")) == 2, 30)
    finally:
        github.stop()


def test_no_provision_service_without_provision_url(start):
    runtime = start(PASSWORD=PASSWORD)
    assert not (runtime.runtime_dir / "service" / "provision").exists()
    assert "PROVISION_URL is empty" in runtime.console


def test_a_killed_service_comes_back(start):
    runtime = start(PASSWORD=PASSWORD)
    first = runtime.starts("ttyd")[-1]["pid"]
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: len(runtime.starts("ttyd")) == 2, 20)
    runtime.wait_ready()
    assert runtime.starts("ttyd")[-1]["pid"] != first
    assert get(runtime, "ttyd", auth=("admin", PASSWORD)).status_code == 200
    assert "restarting in 2 seconds" in log_text(runtime, "ttyd")


def test_sigterm_stops_everything_within_10_seconds_with_logs_flushed(start):
    runtime = start(PASSWORD=PASSWORD)
    get(runtime, "sdnext", "/last-request-before-stop", auth=("admin", PASSWORD))
    assert len(runtime.tree_pids()) >= 10
    seconds = runtime.stop()
    assert seconds < 10
    assert runtime.tree_pids() == []
    assert runtime.process.returncode is not None
    assert "GET /last-request-before-stop" in log_text(runtime, "sdnext")
    assert "shutting down" in log_text(runtime, "gateway")  # Caddy's last words reached the disk


def test_a_service_deaf_to_sigterm_is_killed_and_the_stop_stays_within_10_seconds(start):
    runtime = start(PASSWORD=PASSWORD, STANDIN_IGNORE_SIGTERM="filebrowser,ttyd")
    get(runtime, "filebrowser", "/last-request-before-stop", auth=("admin", PASSWORD))
    seconds = runtime.stop()
    assert seconds < 10, f"stop took {seconds:.1f} s"
    assert runtime.tree_pids() == []
    assert "GET /last-request-before-stop" in log_text(runtime, "filebrowser")  # its log reached the disk


def caddy_pid(runtime) -> int | None:
    for pid in runtime.tree_pids():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"caddy\0run"):
                return pid
    return None


def test_a_gateway_that_keeps_dying_stops_the_container_with_a_reason(start):
    runtime = start(PASSWORD=PASSWORD)
    for _ in range(5):
        wait_for(lambda: caddy_pid(runtime) is not None, 30)
        os.kill(caddy_pid(runtime), signal.SIGKILL)
        wait_for(lambda: caddy_pid(runtime) is None or runtime.process.poll() is not None, 30)
    assert runtime.process.wait(timeout=30) == 1
    assert "gateway failed 5 times within a minute" in runtime.console
    assert "init: stopped: gateway failed 5 times" in runtime.console
    wait_for(lambda: runtime.tree_pids() == [], 10)


def login_from(runtime, source: str, password: str) -> http.client.HTTPResponse:
    """A request to SD.Next's port from another loopback address (another client)."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", runtime.ports["sdnext"], timeout=10, source_address=(source, 0)
    )
    basic = base64.b64encode(f"admin:{password}".encode()).decode()
    connection.request("GET", "/", headers={"Authorization": f"Basic {basic}"})
    response = connection.getresponse()
    response.body = response.read()
    connection.close()
    return response


def test_request_bodies_pass_the_login_check_intact(start):
    runtime = start(PASSWORD=PASSWORD)
    body = blob(1024 * 1024, seed=9)
    with requests.Session() as session:  # one kept-alive connection, several requests
        for _ in range(3):
            answer = session.post(
                runtime.url("sdnext", "/sdapi/v1/txt2img"), data=body, auth=("admin", PASSWORD), timeout=10
            )
            assert answer.status_code == 200 and answer.json()["sha256"] == sha256(body)


def test_refused_logins_are_limited_per_client_and_a_good_login_is_not(start):
    runtime = start(PASSWORD=PASSWORD)
    statuses = [login_from(runtime, "127.0.0.2", f"guess-{n}").status for n in range(6)]
    assert statuses == [401] * 5 + [429], "five refusals are free, then the address waits"
    blocked = login_from(runtime, "127.0.0.2", PASSWORD)
    assert blocked.status == 429 and int(blocked.getheader("Retry-After")) >= 1
    assert b"too many refused logins from 127.0.0.2" in blocked.body
    # Another client is neither blocked nor slowed: its good login is let in at once.
    assert login_from(runtime, "127.0.0.1", PASSWORD).status == 200
    assert login_from(runtime, "127.0.0.1", "one-wrong-guess").status == 401
    # The wait ends (1 s after the fifth refusal); a good login then clears the address.
    wait_for(lambda: login_from(runtime, "127.0.0.2", PASSWORD).status == 200, 30)
    assert login_from(runtime, "127.0.0.2", "a-new-wrong-guess").status == 401
    wait_for(lambda: "(1 in a row)" in log_text(runtime, "guard").split("next check")[-1], 30)
    log = log_text(runtime, "guard")
    assert "refused a wrong password from 127.0.0.2 (5 in a row)" in log
    assert "127.0.0.2: too many refused logins: next check in 1 s" in log
    assert "guess-" not in log and PASSWORD not in log


def test_refused_logins_are_logged_without_secrets_and_granted_ones_are_not(start):
    runtime = start(PASSWORD=PASSWORD, OPEN_BUTTON_TOKEN=TOKEN)
    get(runtime, "ttyd", "/refused-basic", auth=("admin", "a-wrong-password-1234"))
    get(runtime, "ttyd", f"/refused-token?token=wrong-{TOKEN}")
    get(runtime, "ttyd", "/refused-bearer", headers={"Authorization": "Bearer wrong-bearer-5678"})
    get(runtime, "ttyd", "/granted", auth=("admin", PASSWORD))
    get(runtime, "ttyd", "/first-visit")  # no credentials at all: not a refusal, not a line
    wait_for(lambda: "a wrong Bearer token" in log_text(runtime, "guard"), 30)
    log = log_text(runtime, "guard")
    for what, n in (("a wrong password", 1), ("a wrong ?token=", 2), ("a wrong Bearer token", 3)):
        assert f"refused {what} from 127.0.0.1 ({n} in a row)" in log, log
    both = log + log_text(runtime, "gateway") + runtime.console
    for secret in ("a-wrong-password-1234", "wrong-bearer-5678", TOKEN, PASSWORD):
        assert secret not in both
    # No line per request (the stand-in app logs its own): the gateway and the guard have none.
    assert not re.search(r"/refused-|/granted|/first-visit", log + log_text(runtime, "gateway"))


def test_started_from_a_shell_in_the_background_and_stopped_as_documented(tmp_path):
    # Vast's SSH and Jupyter launch modes: no entrypoint, an on-start script in a shell.
    runtime = make_runtime(tmp_path / "c", {"PASSWORD": PASSWORD})
    started = subprocess.run(
        ["bash", "-c", "sdnext-services start"], env=runtime.env, capture_output=True, text=True, timeout=30
    )
    assert started.returncode == 0, started.stderr
    assert "stop with: sdnext-services stop" in started.stdout
    try:
        wait_for(lambda: runtime.serves("sdnext"), 30)
        assert get(runtime, "sdnext").status_code == 401
        assert get(runtime, "sdnext", auth=("admin", PASSWORD)).status_code == 200
    finally:  # stopped as documented even when a check fails: no services left behind
        stopped = subprocess.run(
            ["bash", "-c", "sdnext-services stop"],
            env=runtime.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert stopped.returncode == 0 and "sdnext-services: stopped" in stopped.stdout, stopped.stderr
    wait_for(lambda: runtime.tree_pids() == [], 15)
    assert "init: workspace" in (runtime.workspace / "logs" / "init.log").read_text()


def test_the_gateway_log_has_no_colour_codes(start):
    runtime = start(PASSWORD=PASSWORD)
    get(runtime, "sdnext")
    wait_for(lambda: "serving initial configuration" in log_text(runtime, "gateway"), 30)
    assert "\x1b[" not in log_text(runtime, "gateway")


def test_logs_go_to_the_workspace_and_to_the_console(start):
    runtime = start(PASSWORD=PASSWORD)
    get(runtime, "logdy", "/marker-1234", auth=("admin", PASSWORD))
    # The file and the console are written by two log processes: either may be first.
    wait_for(
        lambda: "GET /marker-1234" in log_text(runtime, "logdy") and "GET /marker-1234" in runtime.console, 10
    )
    line = next(line for line in log_text(runtime, "logdy").splitlines() if "marker-1234" in line)
    assert re.match(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d", line)  # timestamped by s6-log
    # On the console each line also says which service it came from; the file keeps it as it was.
    console = next(line for line in runtime.console.splitlines() if "marker-1234" in line)
    assert re.match(r"logdy +\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d\S* ", console), console
    assert not line.startswith("logdy")
    for service in ("gateway", "sdnext"):
        wait_for(lambda service=service: re.search(rf"^{service} +\d{{4}}-", runtime.console, re.M), 10)


@pytest.mark.parametrize("driver", [True, False], ids=["with-driver", "without-driver"])
def test_a_command_runs_instead_of_the_services(tmp_path, driver):
    # `docker run IMAGE selftest`: init runs the command with the image's environment and
    # prepares nothing; triton is told where the NVIDIA runtime mounted libcuda.so.1.
    mounted = tmp_path / "usr-lib64"
    mounted.mkdir()
    if driver:
        (mounted / "libcuda.so.1").write_bytes(b"")
    runtime = make_runtime(tmp_path / "container", {"LD_LIBRARY_PATH": f"{tmp_path}/absent:{mounted}"})
    result = subprocess.run(
        [str(RUNTIME / "init"), "bash", "-c", 'echo "triton=${TRITON_LIBCUDA_PATH:-unset}"; exit 3'],
        env=runtime.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout == f"triton={mounted if driver else 'unset'}\n"
    assert not Path(runtime.env["WORKSPACE"]).exists()


def test_a_login_while_the_guard_restarts_waits_for_it_instead_of_failing(start):
    # s6 restarts a guard that died two seconds later, and at start the gateway listens before the
    # guard does: a browser that asks in between gets the login prompt, not "502 Bad Gateway".
    runtime = start(PASSWORD=PASSWORD)
    guard_port = int(runtime.env["GUARD_INTERNAL_PORT"])
    guard = str(runtime.runtime_dir / "service" / "guard")
    subprocess.run(["s6-svc", "-d", guard], env=runtime.env, check=True)
    wait_for(lambda: not listening(guard_port), 15)
    answer: dict[str, int] = {}
    asking = threading.Thread(target=lambda: answer.update(status=get(runtime, "ttyd").status_code))
    asking.start()
    wait_for(lambda: connected_to(runtime.ports["ttyd"]) or not asking.is_alive(), 10)
    subprocess.run(["s6-svc", "-u", guard], env=runtime.env, check=True)
    asking.join(15)
    assert answer == {"status": 401}
    assert get(runtime, "ttyd", auth=("admin", PASSWORD)).status_code == 200


def test_a_service_that_is_not_listening_gets_a_page_that_says_so_and_retries(start):
    runtime = start(PASSWORD=PASSWORD)
    ttyd = str(runtime.runtime_dir / "service" / "ttyd")
    subprocess.run(["s6-svc", "-d", ttyd], env=runtime.env, check=True)
    wait_for(lambda: not listening(runtime.internal["ttyd"]), 15)
    assert get(runtime, "ttyd").status_code == 401  # the login still comes first
    waiting = get(runtime, "ttyd", auth=("admin", PASSWORD))
    assert (waiting.status_code, waiting.headers.get("Retry-After")) == (503, "5")
    assert "Terminal is not answering yet: it is starting (it starts in a few seconds)" in waiting.text
    assert '<meta http-equiv="refresh" content="5">' in waiting.text
    subprocess.run(["s6-svc", "-u", ttyd], env=runtime.env, check=True)
    wait_for(lambda: listening(runtime.internal["ttyd"]), 15)
    assert get(runtime, "ttyd", auth=("admin", PASSWORD)).status_code == 200
