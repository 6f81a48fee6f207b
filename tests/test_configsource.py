"""Remote configs: http(s) and Google Drive, a size cap, and clear errors for what is not TOML."""

from __future__ import annotations

import json
import time

import pytest

from .conftest import tree
from .fakes.gdrive import DriveFile
from .fakes.server import FakeServer

VAE = b"vae bytes" * 100


def good_config(host) -> bytes:
    return f'[models.vae.v]\nurl = "{host.url}/files/remote_vae.safetensors"\n'.encode()


class ConfigHost(FakeServer):
    def handle(self, h, path, query):
        if path == "/models.toml":
            h.reply(200, good_config(self), content_type="text/plain; charset=utf-8")
        elif path == "/files/remote_vae.safetensors":
            h.reply(200, VAE, content_type="application/octet-stream")
        elif path == "/redirect":
            h.reply(302, headers={"Location": "/models.toml"})
        elif path == "/ftp-redirect":
            h.reply(302, headers={"Location": "ftp://127.0.0.1/models.toml"})
        elif path == "/login":
            h.reply(200, b"<!DOCTYPE html><html><body>Sign in</body></html>", content_type="text/html")
        elif path == "/big":
            h.reply(200, b"#" * (1024 * 1024 + 10))
        elif path == "/binary":
            h.reply(200, b"\xff\xfe\x00bad")
        elif path == "/trickle":  # a byte now and then: the read timeout never fires
            h.send_response(200)
            h.send_header("Content-Length", "100000")
            h.end_headers()
            for _ in range(100000):
                try:
                    h.wfile.write(b"#")
                    h.wfile.flush()
                except OSError:
                    return  # the client gave up
                time.sleep(0.05)
        else:
            h.reply(404, b"not here")


@pytest.fixture
def host():
    server = ConfigHost().start()
    yield server
    server.stop()


def test_remote_config_is_planned(cli, host, workspace):
    result = cli(f"{host.url}/models.toml", "--dry-run", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["items"][0]["dest"].endswith("/VAE/remote_vae.safetensors")
    assert tree(workspace / "sdnext") == []


def test_remote_config_follows_a_redirect(cli, host):
    assert cli(f"{host.url}/redirect", "--dry-run", "--json").code == 0


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/login", "returned an HTML page (a login, preview or error page), not TOML"),
        ("/missing.toml?token=sekrit-query-token", "answered 404 Not Found: check the URL"),
        ("/big", "larger than 1024 KiB"),
        ("/binary", "not UTF-8 text"),
        ("/ftp-redirect", "refused a redirect to a non-http(s) URL"),
    ],
)
def test_remote_config_errors_exit_2_with_a_reason(cli, host, workspace, path, message):
    result = cli(f"{host.url}{path}", "--dry-run")
    assert result.code == 2
    assert message in result.err
    assert "sekrit-query-token" not in result.text
    assert tree(workspace) == []


def test_a_config_that_trickles_in_is_given_up_after_the_deadline(cli, host, monkeypatch):
    monkeypatch.setenv("PROVISION_CONFIG_DEADLINE", "1")
    result = cli(f"{host.url}/trickle", "--dry-run")
    assert result.code == 2
    assert "not complete after 1 s" in result.err


def test_a_config_without_any_model_is_an_error(cli, tmp_path):
    empty = tmp_path / "empty.toml"
    empty.write_text("[models]\n[models.lora]\n")
    result = cli(str(empty), "--dry-run", "--offline")
    assert result.code == 2 and "[models] lists no model" in result.err


def test_unreachable_config_host_exits_2(cli):
    result = cli("http://127.0.0.1:9/models.toml", "--dry-run")
    assert result.code == 2, result.err
    assert (
        "error: the config http://127.0.0.1:9/models.toml: cannot reach 127.0.0.1:9 (connection refused)"
        in result.err
    )
    assert "problem(s) in the configuration" not in result.err and "Errno" not in result.err


def test_non_http_scheme_is_refused(cli):
    result = cli("file:///etc/passwd", "--dry-run")
    assert result.code == 2 and "only http(s) URLs or local paths" in result.err


@pytest.mark.parametrize("mode", ["direct", "confirm"])
@pytest.mark.parametrize(
    "link",
    [
        "https://drive.google.com/file/d/{id}/view?usp=sharing",
        "https://drive.google.com/open?id={id}",
        "https://drive.google.com/uc?id={id}&export=download",
        "https://drive.usercontent.google.com/download?id={id}",
    ],
)
def test_config_from_a_google_drive_link(cli, drive, host, mode, link):
    file_id = "1CoNfIgFiLeIdAbCdEf"
    drive.files[file_id] = DriveFile("models.toml", good_config(host), mode)
    result = cli(link.format(id=file_id), "--dry-run", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["items"][0]["dest"].endswith("/VAE/remote_vae.safetensors")
    assert all(r.query.get("id") == file_id for r in drive.requests)


@pytest.mark.parametrize(
    ("mode", "message"),
    [("quota", "download quota exceeded"), ("private", "share it with 'Anyone with the link'")],
)
def test_drive_config_errors(cli, drive, host, mode, message):
    drive.files["1CoNfIgFiLeIdAbCdEf"] = DriveFile("models.toml", good_config(host), mode)
    result = cli("https://drive.google.com/file/d/1CoNfIgFiLeIdAbCdEf/view", "--dry-run")
    assert result.code == 2 and message in result.err
