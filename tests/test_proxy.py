"""Downloads through a real forward proxy (tinyproxy on loopback), as HTTPS_PROXY / HTTP_PROXY /
NO_PROXY say, with tokens still going only to their own service."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time

import huggingface_hub
import pytest

from provision.http import new_session

from .conftest import REPO, blob, sha256, which
from .runtime_harness import free_port

TOKEN = "hf_proxy_test_token_4242"


@pytest.fixture
def proxy(tmp_path):
    tool = which("tinyproxy")
    if tool is None:
        pytest.skip("tinyproxy is not installed (tests/run.sh installs it)")
    port = free_port()
    log = tmp_path / "tinyproxy.log"
    conf = tmp_path / "tinyproxy.conf"
    conf.write_text(
        f'Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 60\nMaxClients 64\nLogFile "{log}"\n'
        "LogLevel Info\n"
    )
    process = subprocess.Popen(
        [tool, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            break
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    # huggingface_hub keeps one client per process, made with the proxy settings of its time.
    forget_hub_client = (
        getattr(huggingface_hub, "close_session", None) or huggingface_hub.utils.reset_sessions
    )
    forget_hub_client()
    yield f"http://127.0.0.1:{port}"
    forget_hub_client()
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def sources(cdn, hub, write_config, monkeypatch):
    cdn.add("/plain.pth", blob(200_000, seed=81))
    hub.add_repo("org/m", {"vae.safetensors": blob(300_000, seed=82)})  # LFS: 302 to the CDN
    hub.valid_tokens.add(TOKEN)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return str(
        write_config(
            f'[models.esrgan]\nplain = "{cdn.url}/plain.pth"\n[models.vae.v]\nrepo = "org/m"\nfile = "vae.safetensors"\n'
        )
    )


def proxied(server) -> list[bool]:
    return ["tinyproxy" in r.headers.get("via", "") for r in server.requests]


def test_every_request_goes_through_the_proxy_and_the_token_only_to_the_hub(
    cli, sources, proxy, cdn, hub, monkeypatch, models
):
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "")
    result = cli(sources, "--json")
    assert result.code == 0, result.err
    assert [r["status"] for r in json.loads(result.out)["items"]] == ["ok", "ok"]
    assert sha256((models / "ESRGAN" / "plain.pth").read_bytes()) == sha256(blob(200_000, seed=81))
    assert cdn.requests and all(proxied(cdn)), "a CDN request bypassed the proxy"
    assert hub.requests and all(proxied(hub)), "a Hub request bypassed the proxy"
    assert not any(TOKEN in json.dumps(r.headers) for r in cdn.requests)


def test_no_proxy_is_honoured(cli, sources, proxy, cdn, hub, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    result = cli(sources, "--json")
    assert result.code == 0, result.err
    assert cdn.requests and not any(proxied(cdn)) and not any(proxied(hub))


def test_a_ca_bundle_from_the_environment_is_used(monkeypatch, tmp_path):
    bundle = tmp_path / "corporate-ca.pem"
    bundle.write_text("")
    session = new_session()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    assert session.merge_environment_settings("https://example.com/x", {}, False, True, None)[
        "verify"
    ] == str(bundle)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    assert session.merge_environment_settings("https://example.com/x", {}, False, True, None)[
        "verify"
    ] == str(bundle)


def test_the_test_command_stops_no_process_by_name():
    """tests/run.sh once ran `pkill -x tinyproxy`: every tinyproxy on the machine, not only the
    one Debian's package started. Services are kept from starting instead (policy-rc.d)."""
    script = (REPO / "tests" / "run.sh").read_text()
    commands = [line.split("#")[0] for line in script.splitlines()]
    assert not any(word in line.split() for line in commands for word in ("pkill", "killall"))
    assert "policy-rc.d" in script and "exit 101" in script
