"""Failures as a newcomer meets them, through the CLI in real processes: a dead host fails fast
and says so once, in one style for every source and for the config URL; `--json` always prints
an object; `provision status` is a health check and `provision clean` tidies up after it."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from .conftest import blob, run_module, sha256, which
from .fakes.cdn import FakeCDN, Fault

RAW_TEXT = ("Errno", "HTTPConnectionPool", "HTTPSConnectionPool", "Max retries", "NewConnectionError")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed): connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_dead_host_fails_its_56_items_after_one_retry_with_one_message(write_config, workspace):
    port = closed_port()
    lines = "".join(f'item{n:02d} = "http://127.0.0.1:{port}/file{n}.safetensors"\n' for n in range(56))
    config = write_config(f"[models.lora]\n{lines}")
    # The default retry policy (8 tries with backoff) except for the first delay, kept short.
    result = run_module(
        str(config), "--workspace", str(workspace), "--json", env={"PROVISION_RETRY_BASE": "0.05"}
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["summary"]["failed"] == 56 and report["summary"]["exit_code"] == 1
    reason = (
        f"cannot reach 127.0.0.1:{port} (connection refused): check the host and port in the URL,"
        " and that the server runs"
    )
    assert {row["reason"] for row in report["items"]} == {reason}
    # Said once, for all 56: the first items to meet the dead host retried once, the others
    # were failed at once by the breaker with the same reason.
    assert result.stderr.count(reason) == 1, result.stderr
    assert "failed lora.item00, lora.item01, lora.item02 and 53 more: " in result.stderr
    assert "retry 2 " not in result.stderr
    # The items under way when it died (16 resolving at once) each met it: said once.
    assert result.stderr.count("retry 1 ") == 1, result.stderr
    assert not any(text in result.stderr for text in RAW_TEXT), result.stderr


@pytest.fixture
def no_network():
    """A command prefix that runs its command in a network namespace of its own (loopback
    down, no route): a name lookup fails on this machine, no query leaves it."""
    unshare = which("unshare")
    if unshare is None:
        pytest.skip("needs unshare (util-linux)")
    inside = [unshare, "--user", "--map-root-user", "--net", "--"]
    probe = subprocess.run([*inside, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"needs user and network namespaces: {probe.stderr.strip()}")
    return inside


def test_every_source_and_the_config_url_say_an_unresolvable_host_the_same_way(
    write_config, workspace, no_network
):
    host = "models.example.invalid"
    config = write_config(
        '[models.vae.hub]\nrepo = "org/m"\nfile = "vae.safetensors"\n'
        "[models.lora.civitai]\nversion_id = 7\n"
        f'[models.esrgan]\nplain = "http://{host}/x.pth"\n'
    )
    env = {
        "HF_ENDPOINT": f"http://{host}",
        "CIVITAI_ENDPOINT": f"http://{host}",
        "PROVISION_RETRY_BASE": "0.05",
        "HF_TOKEN": "hf_a_token_whose_check_cannot_get_through",  # no second message about it
        "CIVITAI_TOKEN": "a_civitai_key",
    }
    args = ("--workspace", str(workspace), "--json")
    result = run_module(str(config), *args, env=env, inside=no_network)
    assert result.returncode == 1, result.stderr
    reason = f"cannot reach {host}:80 (no such host): check the host name in the URL and the network (DNS)"
    report = json.loads(result.stdout)
    assert [row["reason"] for row in report["items"]] == [reason] * 3, result.stderr
    assert result.stderr.count(reason) == 1, result.stderr  # one line names the three items
    assert "retry 2 " not in result.stderr
    assert not any(text in result.stderr for text in RAW_TEXT), result.stderr

    remote = run_module(f"http://{host}/models.toml", *args, env=env, inside=no_network)
    assert remote.returncode == 2
    assert f"error: the config http://{host}/models.toml: {reason}" in remote.stderr
    assert "problem(s) in the configuration" not in remote.stderr
    assert not any(text in remote.stderr for text in RAW_TEXT), remote.stderr
    answer = json.loads(remote.stdout)  # `provision URL --json | jq` reads an object, never nothing
    assert answer["error"] == {
        "kind": "unreachable",
        "problems": [f"the config http://{host}/models.toml: {reason}"],
    }
    assert answer["items"] == [] and answer["summary"]["exit_code"] == 2


def test_a_certificate_that_is_not_trusted_fails_at_once(write_config, workspace):
    server = FakeCDN().start(tls=True)
    try:
        server.add("/a.pth", b"weights")
        config = write_config(f'[models.esrgan]\na = "{server.url}/a.pth"\n')
        env = {"REQUESTS_CA_BUNDLE": "", "SSL_CERT_FILE": ""}  # the system's CAs: not the fake's
        result = run_module(str(config), "--workspace", str(workspace), "--json", env=env)
    finally:
        server.stop()
    assert result.returncode == 1
    (row,) = json.loads(result.stdout)["items"]
    port = server.url.rsplit(":", 1)[1]
    assert row["reason"].startswith(f"cannot reach 127.0.0.1:{port} (TLS: "), row["reason"]
    assert "retry" not in result.stderr and not server.requests
    assert not any(text in result.stderr for text in RAW_TEXT), result.stderr


def test_errors_before_any_item_are_json_objects_too(write_config, workspace):
    bad = write_config('[models.lora.x]\nurl = "not a url"\n')
    result = run_module(str(bad), "--workspace", str(workspace), "--json")
    assert result.returncode == 2
    answer = json.loads(result.stdout)
    assert answer["error"]["kind"] == "config" and answer["summary"]["exit_code"] == 2
    assert answer["error"]["problems"] and all(p in result.stderr for p in answer["error"]["problems"])
    usage = run_module(str(bad), "--jobs", "0", "--json")
    assert usage.returncode == 2 and json.loads(usage.stdout)["error"]["kind"] == "usage"


def test_status_is_a_health_check_and_clean_removes_stray_state_files(cdn, write_config, workspace, models):
    good, rot, gone, partial = (blob(200_000, seed=n) for n in range(4))
    for name, data in (("good", good), ("rot", rot), ("gone", gone), ("partial", partial)):
        cdn.add(f"/{name}.pth", data)
    # The partial one breaks off after its first megabyte... of 200 kB: its body stops at 100 kB,
    # and the server fails every retry, so the run leaves a .part behind.
    cdn.fault("/partial.pth", Fault(), Fault(close_at=100_000), *[Fault(status=503)] * 20)
    entries = "".join(f'{n} = "{cdn.url}/{n}.pth"\n' for n in ("good", "rot", "gone", "partial"))
    config = write_config(f"[models.esrgan]\n{entries}")
    args = ("--workspace", str(workspace))
    first = run_module(str(config), *args, "--json", env={"PROVISION_RETRY_ATTEMPTS": "2"})
    assert [r["status"] for r in json.loads(first.stdout)["items"]] == ["ok", "ok", "ok", "failed"]
    folder = models / "ESRGAN"
    assert (folder / "partial.pth.part").exists()

    unfinished = run_module("status", str(config), *args, "--json")
    assert unfinished.returncode == 1, unfinished.stdout  # an item is not in place yet
    files = {f["path"]: f for f in json.loads(unfinished.stdout)["files"]}
    # A partial file names the item it belongs to (a user must not take it for litter).
    assert files["ESRGAN/partial.pth.part"]["owner"] == "models.esrgan.partial"
    assert files["ESRGAN/partial.pth.part"]["state"].startswith("partial")
    # Without that item in the config, its partial file is a leftover, not a failure.
    kept = "".join(f'{n} = "{cdn.url}/{n}.pth"\n' for n in ("good", "rot", "gone"))
    config.write_text(f"[models.esrgan]\n{kept}")
    healthy = run_module("status", str(config), *args, "--json")
    assert healthy.returncode == 0, healthy.stdout

    # Bit rot: other bytes, same size, same mtime. Only hashing finds it.
    stat = (folder / "rot.pth").stat()
    (folder / "rot.pth").write_bytes(bytes(len(rot)))
    os.utime(folder / "rot.pth", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert run_module("status", str(config), *args).returncode == 0
    verified = run_module("status", str(config), *args, "--verify", "--json")
    assert verified.returncode == 1
    states = {f["path"]: f["state"] for f in json.loads(verified.stdout)["files"]}
    assert states["ESRGAN/rot.pth"] == "corrupt" and states["ESRGAN/good.pth"] == "verified"

    (folder / "rot.pth").write_bytes(rot)  # put right again; now one file goes missing
    os.utime(folder / "rot.pth", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (folder / "gone.pth").unlink()
    (folder / "left.pth.part.state").write_text("{}")  # beside no .part: a crash's leftover
    missing = run_module("status", str(config), *args)
    assert missing.returncode == 1
    rows = {line.split()[0]: line for line in missing.stdout.splitlines()[1:-1]}
    assert "missing" in rows["ESRGAN/gone.pth"] and "esrgan.gone" in rows["ESRGAN/gone.pth"]
    assert "stray state" in rows["ESRGAN/left.pth.part.state"]
    assert "1 stray state file (`provision clean` removes them)" in " ".join(missing.stdout.split())

    cleaned = run_module("clean", *args)
    assert cleaned.returncode == 0 and "removed ESRGAN/left.pth.part.state" in cleaned.stdout
    assert not (folder / "left.pth.part.state").exists()
    assert (folder / "partial.pth.part.state").exists()  # its .part is there: it resumes
    assert sha256((folder / "good.pth").read_bytes()) == sha256(good)


def test_status_counts_an_item_never_fetched_as_missing(cdn, write_config, workspace):
    cdn.add("/a.pth", b"a" * 1000)
    config = write_config(f'[models.esrgan]\na = "{cdn.url}/a.pth"\nb = "{cdn.url}/b.pth"\n')
    run_module(str(config), "--workspace", str(workspace))  # b fails: the server has no b.pth
    result = run_module("status", str(config), "--workspace", str(workspace), "--json")
    assert result.returncode == 1
    files = {f["path"]: (f["state"], f["owner"]) for f in json.loads(result.stdout)["files"]}
    assert files == {
        "ESRGAN/a.pth": ("verified", "models.esrgan.a"),
        "ESRGAN/b.pth": ("missing", "models.esrgan.b"),
    }
