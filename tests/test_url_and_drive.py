"""Plain URLs and Google Drive: names from the server (sanitised), headers, redirects."""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from provision.download import Checksum, Download
from provision.engine import Engine
from provision.partfile import unheld
from provision.paths import write_atomically
from provision.records import VerifiedRecords

from .conftest import blob, run_module, sha256, start_module, tree, which
from .fakes.gdrive import DriveFile
from .fakes.server import FakeServer

DATA = blob(150_000, seed=7)


def run(cli, write_config, body: str, *args):
    return cli(str(write_config(body)), "--json", *args)


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        ('attachment; filename="plain.pth"', "plain.pth"),
        ("attachment; filename=\"fallback.pth\"; filename*=UTF-8''%E2%9C%93%20real.pth", "✓ real.pth"),
        ('attachment; filename="../../../../etc/evil.pth"', "evil.pth"),
        ("attachment; filename*=UTF-8''..%2F..%2F.bashrc", "bashrc"),
    ],
)
def test_name_from_content_disposition_is_sanitised(
    cli, write_config, cdn, models, workspace, disposition, expected
):
    cdn.add("/dl", DATA, content_disposition=disposition)
    result = run(cli, write_config, f'[models.esrgan.x]\nurl = "{cdn.url}/dl"\n')
    assert result.code == 0, result.err
    assert tree(models) == [f"ESRGAN/{expected}"]
    assert sorted(p.name for p in workspace.iterdir()) == [".provision", "logs", "sdnext"]


def test_name_from_the_url_path_and_from_the_item(cli, write_config, cdn, models):
    cdn.add("/files/4x%20Ultra.pth", DATA)
    body = (
        f'[models.esrgan]\na = "{cdn.url}/files/4x%20Ultra.pth?x=1"\n'
        f'[models.swinir.b]\nurl = "{cdn.url}/files/4x%20Ultra.pth"\nfilename = "mine.pth"\n'
    )
    result = run(cli, write_config, body)
    assert result.code == 0, result.err
    assert tree(models) == ["ESRGAN/4x Ultra.pth", "SwinIR/mine.pth"]


class Mirror(FakeServer):
    """Needs X-Api-Key, then redirects to the CDN (another host)."""

    cdn_url = ""

    def handle(self, h, path, query):
        if path == "/to-file":
            h.reply(302, b"", {"Location": "file:///etc/passwd"})
        elif h.headers.get("X-Api-Key") != "mirror-secret-1":
            h.reply(403, b"no key")
        elif path == "/model.safetensors":
            h.reply(302, b"", {"Location": f"{self.cdn_url}/stored.safetensors"})
        elif path == "/ftp":
            h.reply(302, b"", {"Location": "ftp://127.0.0.1/x"})
        elif path == "/loop":
            h.reply(302, b"", {"Location": "/loop"})
        else:
            h.reply(404, b"")


@pytest.fixture
def mirror(cdn):
    server = Mirror()
    server.cdn_url = cdn.url
    server.start()
    yield server
    server.stop()


def test_headers_with_env_secrets_go_to_their_host_only(cli, write_config, cdn, mirror, monkeypatch, models):
    monkeypatch.setenv("MIRROR_KEY", "mirror-secret-1")
    cdn.add("/stored.safetensors", DATA)
    body = f'[models.lora.m]\nurl = "{mirror.url}/model.safetensors"\nheaders = {{ X-Api-Key = "${{MIRROR_KEY}}" }}\n'
    result = run(cli, write_config, body)
    assert result.code == 0, result.err
    assert sha256((models / "Lora" / "model.safetensors").read_bytes()) == sha256(DATA)
    assert cdn.requests and not any("x-api-key" in r.headers for r in cdn.requests)
    assert "mirror-secret-1" not in result.text


@pytest.mark.parametrize(
    ("path", "message"),
    [("/ftp", "refused a redirect to a non-http(s) URL"), ("/loop", "Exceeded 10 redirects")],
)
def test_redirects_only_to_http_and_with_a_limit(
    cli, write_config, mirror, monkeypatch, path, message, models
):
    monkeypatch.setenv("MIRROR_KEY", "mirror-secret-1")
    body = f'[models.lora.m]\nurl = "{mirror.url}{path}"\nfilename = "m.bin"\nheaders = {{ X-Api-Key = "${{MIRROR_KEY}}" }}\n'
    result = run(cli, write_config, body)
    assert result.code == 1 and message in result.err
    assert tree(models) == []


def test_a_404_url_names_the_url_without_its_token(cli, write_config, cdn, models):
    result = run(cli, write_config, f'[models.lora.x]\nurl = "{cdn.url}/gone.bin?token=sekret-999"\n')
    assert result.code == 1
    assert f"{cdn.url}/gone.bin?token=*** answered 404: check the URL" in result.err
    assert "sekret-999" not in result.text


@pytest.mark.parametrize("mode", ["direct", "confirm"])
def test_google_drive_file_through_the_confirm_page(cli, write_config, drive, models, mode):
    drive.files["1AbCdEfGhIjKlMnOpQr"] = DriveFile("my lora.safetensors", DATA, mode)
    result = run(
        cli,
        write_config,
        '[models.lora]\nd = "https://drive.google.com/file/d/1AbCdEfGhIjKlMnOpQr/view?usp=sharing"\n',
    )
    assert result.code == 0, result.err
    assert (models / "Lora" / "my lora.safetensors").read_bytes() == DATA


def test_google_drive_quota_page_is_explained(cli, write_config, drive, models):
    drive.files["1AbCdEfGhIjKlMnOpQr"] = DriveFile("x.safetensors", DATA, "quota")
    result = run(
        cli, write_config, '[models.lora]\nd = "https://drive.google.com/open?id=1AbCdEfGhIjKlMnOpQr"\n'
    )
    assert result.code == 1
    assert "Google Drive download quota exceeded" in json.loads(result.out)["items"][0]["reason"]
    assert tree(models) == []


def test_server_chosen_names_that_collide_fail_the_later_item(cli, write_config, cdn, models):
    cdn.add("/one", b"first model", content_disposition='attachment; filename="model.safetensors"')
    cdn.add("/two", b"second model", content_disposition='attachment; filename="model.safetensors"')
    result = run(cli, write_config, f'[models.lora]\na = "{cdn.url}/one"\nb = "{cdn.url}/two"\n')
    assert result.code == 1
    a, b = json.loads(result.out)["items"]
    assert a["status"] == "ok" and b["status"] == "failed"
    assert b["reason"].startswith(f"same destination as models.lora.a ({models}/Lora/model.safetensors)")
    assert (models / "Lora" / "model.safetensors").read_bytes() == b"first model"
    assert tree(models) == ["Lora/model.safetensors"]


def test_a_url_entry_with_sha256_and_size_is_verified(cli, write_config, cdn, models):
    cdn.add("/good.pth", DATA)
    cdn.add("/swapped.pth", blob(len(DATA), seed=99))  # same size, other bytes
    body = (
        f'[models.esrgan.good]\nurl = "{cdn.url}/good.pth"\nsha256 = "{sha256(DATA).upper()}"\nsize = {len(DATA)}\n'
        f'[models.esrgan.swapped]\nurl = "{cdn.url}/swapped.pth"\nsha256 = "{sha256(DATA)}"\n'
        f'[models.esrgan.resized]\nurl = "{cdn.url}/good.pth"\nfilename = "r.pth"\nsize = 12\n'
    )
    result = run(cli, write_config, body)
    assert result.code == 1
    rows = {r["name"]: r for r in json.loads(result.out)["items"]}
    assert rows["good"]["status"] == "ok"
    assert rows["swapped"]["status"] == "failed"
    assert f"checksum mismatch: expected sha256:{sha256(DATA)}" in rows["swapped"]["reason"]
    assert rows["resized"]["status"] == "failed"
    assert f"offers {len(DATA)} bytes, but the config says size = 12" in rows["resized"]["reason"]
    assert tree(models) == ["ESRGAN/good.pth"]  # nothing unverified under a final name


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('sha256 = "abc"', "sha256: must be 64 hex digits"),
        ("size = 0", "size: must be a positive number"),
        ('headers = { X-A = "v\\r\\nInjected: 1" }', "may not hold a line break"),
    ],
)
def test_bad_url_checksum_size_or_header_is_a_config_error(cli, write_config, entry, message):
    result = run(cli, write_config, f'[models.esrgan.x]\nurl = "https://example.com/x.pth"\n{entry}\n')
    assert result.code == 2
    assert "models.esrgan.x" in result.err and message in result.err


def test_a_redirect_to_a_file_url_fails_the_item_with_the_reason(cli, write_config, mirror, models):
    result = run(cli, write_config, f'[models.lora.m]\nurl = "{mirror.url}/to-file"\nfilename = "m.bin"\n')
    assert result.code == 1
    (row,) = json.loads(result.out)["items"]
    assert "refused a redirect to a non-http(s) URL (file:)" in row["reason"]
    assert "unexpected error" not in result.err


def test_an_unreachable_host_is_named_in_plain_words(cli, write_config, models, monkeypatch):
    monkeypatch.setenv("PROVISION_RETRY_ATTEMPTS", "2")
    result = run(cli, write_config, '[models.lora.m]\nurl = "http://127.0.0.1:9/m.bin"\n')
    assert result.code == 1
    (row,) = json.loads(result.out)["items"]
    assert (
        "cannot reach 127.0.0.1:9 (connection refused): check the host and port in the URL, and that the server runs"
        in row["reason"]
    )
    assert "HTTPConnectionPool" not in row["reason"]


@pytest.mark.parametrize(
    "code, said",
    [
        (errno.ENOSPC, "is full: free some space"),
        (errno.EDQUOT, "is full for this user (its disk quota is used up): free some space"),
    ],
    ids=["no space left", "quota used up"],
)
def test_a_full_disk_says_what_to_do(cli, write_config, cdn, models, monkeypatch, code, said):
    cdn.add("/big.pth", blob(5_000_000, seed=5))

    real_pwrite = os.pwrite

    def full(fd, data, offset):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):
            raise OSError(code, os.strerror(code))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full)
    result = run(cli, write_config, f'[models.esrgan]\nbig = "{cdn.url}/big.pth"\n')
    assert result.code == 1
    (row,) = json.loads(result.out)["items"]
    assert f"{said} or rent a bigger disk, then run again (what is on disk resumes)" in row["reason"]
    assert "()" not in row["reason"]


def test_google_drive_under_load_is_retried(cli, write_config, drive, models):
    drive.files["1RetryMeAbCdEfGh"] = DriveFile("upscaler.pth", DATA, "confirm")
    drive.faults = [503, 429, 503]
    result = run(
        cli, write_config, '[models.esrgan]\nup = "https://drive.google.com/file/d/1RetryMeAbCdEfGh/view"\n'
    )
    assert result.code == 0, result.err
    assert sha256((models / "ESRGAN" / "upscaler.pth").read_bytes()) == sha256(DATA)
    assert drive.faults == []


@contextlib.contextmanager
def own_filesystem(folder: Path, options: str):
    """`folder` on a tmpfs of its own (mount `options`) in the mount namespace of a holder
    process: a disk that can really fill up. Yields the command prefix that runs a program
    inside (nsenter) and the folder as the test sees it (through /proc/PID/root)."""
    unshare, nsenter = which("unshare"), which("nsenter")
    if unshare is None or nsenter is None:
        pytest.skip("needs unshare and nsenter (util-linux)")
    holder = subprocess.Popen(
        [unshare, "--user", "--map-root-user", "--mount", "bash", "-c",
         f"mount -t tmpfs -o {options} tmpfs '{folder}' && echo mounted && exec sleep 600"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        if holder.stdout.readline().strip() != "mounted":
            pytest.skip("needs unshare with user and mount namespaces (a tmpfs of its own)")
        inside = [nsenter, "-t", str(holder.pid), "--user", "--mount", "--"]
        yield inside, Path(f"/proc/{holder.pid}/root{folder}")
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture
def small_disk(models):
    """The models' ESRGAN folder on a 160 MiB disk of its own (a 40 MiB file and 64 MiB to spare fit)."""
    folder = models / "ESRGAN"
    folder.mkdir(parents=True)
    with own_filesystem(folder, "size=160m") as disk:
        yield disk


def fill(folder: Path, leave: int) -> Path:
    """Fill the filesystem of `folder` until `leave` bytes are free, or it is full (what another
    program does to a rented disk while a download runs)."""
    filler = folder / "filler"
    stat = os.statvfs(folder)
    with open(filler, "wb") as file, contextlib.suppress(OSError):
        file.write(b"\0" * (stat.f_bavail * stat.f_frsize - leave))
    return filler


def test_a_disk_that_another_program_fills_during_a_download_does_not_fail_it(
    small_disk, write_config, cdn, workspace
):
    # The .part holds its blocks from the start (fallocate): a sparse one failed with "is full"
    # at its next write and the user had to free space and run again.
    inside, folder = small_disk
    data = blob(40 * 1024 * 1024 + 4321, seed=21)
    cdn.add("/big.pth", data)
    cdn.gate = threading.Event()  # headers go out, bodies wait: the .part is there, no byte in it
    config = write_config(f'[models.esrgan.big]\nurl = "{cdn.url}/big.pth"\nsha256 = "{sha256(data)}"\n')
    first = start_module(str(config), "--workspace", str(workspace), "--connections", "4", inside=inside)
    wait_for((folder / "big.pth.part").exists, first)
    fill(folder, leave=0)
    cdn.gate.set()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert err.count("big.pth: the disk is full: no resume state saved; the download goes on") == 1
    assert sorted(p.name for p in folder.iterdir()) == ["big.pth", "filler"]
    assert sha256((folder / "big.pth").read_bytes()) == sha256(data)


def test_a_disk_filled_before_the_first_byte_fails_the_download_at_once_and_leaves_nothing(
    small_disk, write_config, cdn, workspace
):
    inside, folder = small_disk
    data = blob(40 * 1024 * 1024 + 4321, seed=21)
    cdn.add("/big.pth", data)
    cdn.get_gate = threading.Event()  # the space check has passed, the answer waits
    config = write_config(f'[models.esrgan.big]\nurl = "{cdn.url}/big.pth"\nsha256 = "{sha256(data)}"\n')
    args = (str(config), "--workspace", str(workspace), "--json", "--connections", "4")
    first = start_module(*args, inside=inside)
    wait_for(lambda: "/big.pth" in cdn.gets_waiting, first)
    filler = fill(folder, leave=1536 * 1024)  # another program takes the room meanwhile
    cdn.get_gate.set()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 1, err
    (row,) = json.loads(out)["items"]
    assert "is full: free some space or rent a bigger disk, then run again" in row["reason"]
    assert sorted(p.name for p in folder.iterdir()) == ["filler"]  # no .part, no state

    filler.unlink()  # the user frees space and runs again
    cdn.get_gate = None
    second = run_module(*args, inside=inside)
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["big.pth"]
    assert sha256((folder / "big.pth").read_bytes()) == sha256(data)


def test_a_second_download_is_not_refused_for_room_the_first_already_holds(small_disk, cdn, tmp_path):
    # 160 MiB: each 40 MiB file fits with 64 MiB to spare beside the other. The first one's
    # .part holds its blocks (preallocated) and the disk reports them as used: promised to it
    # as well, they were counted twice and the second file was refused.
    _, folder = small_disk
    files = {name: blob(40 * 1024 * 1024, seed=seed) for name, seed in (("a.pth", 31), ("b.pth", 32))}
    for name, data in files.items():
        cdn.add(f"/{name}", data)
    cdn.gate = threading.Event()  # headers go out, bodies wait: both are under way at once
    engine = Engine(VerifiedRecords(tmp_path / "verified.json"), connections=4, per_file=2)  # 2 each

    def fetch(name: str):
        data = files[name]
        checksum = Checksum("sha256", sha256(data))
        return engine.fetch(Download(f"{cdn.url}/{name}", folder / name, len(data), checksum, identity=name))

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(fetch, "a.pth")
        deadline = time.monotonic() + 30
        while unheld(folder / "a.pth.part", len(files["a.pth"])):
            assert time.monotonic() < deadline and not first.done(), "the first .part never held its blocks"
            time.sleep(0.01)
        second = pool.submit(fetch, "b.pth")
        while not (folder / "b.pth.part").exists() and not second.done():
            time.sleep(0.01)
        cdn.gate.set()
        assert second.result().status == "ok" and first.result().status == "ok"
    assert sorted(p.name for p in folder.iterdir()) == ["a.pth", "b.pth"]
    assert all(sha256((folder / name).read_bytes()) == sha256(data) for name, data in files.items())


def test_a_record_rewritten_on_a_full_disk_keeps_its_old_content_and_leaves_nothing(small_disk):
    _, folder = small_disk
    record = folder / "verified.json"
    write_atomically(record, '{"old": 1}')
    fill(folder, leave=0)
    with pytest.raises(OSError) as failed:
        write_atomically(record, '{"new": 2}' + " " * 8192)
    assert failed.value.errno == errno.ENOSPC
    assert record.read_text() == '{"old": 1}'
    assert sorted(p.name for p in folder.iterdir()) == ["filler", "verified.json"]


def test_a_workspace_on_a_full_disk_says_so_in_one_line_never_a_traceback(write_config, cdn, workspace):
    cdn.add("/small.pth", blob(300_000, seed=3))
    items = [f'm{n} = "{cdn.url}/missing-{n}.pth"' for n in range(30)]  # a log longer than a page
    config = write_config(f'[models.esrgan]\nsmall = "{cdn.url}/small.pth"\n')
    workspace.mkdir()
    with own_filesystem(workspace, "size=80m") as (inside, ws):  # room for the file and the margin
        args = (str(config), "--workspace", str(workspace), "--json")
        first = run_module(*args, inside=inside)
        assert first.returncode == 0, first.stderr
        fill(ws, leave=0)  # the log, the lock and the records exist; now the disk is full
        config.write_text(config.read_text() + "\n".join(items) + "\n")
        second = run_module(*args, inside=inside)
        log_text = (ws / "logs" / "provision.log").read_text()
    assert second.returncode == 1
    assert second.stderr.count("cannot write the log file") == 1, second.stderr
    assert "No space left on device; logging to the console only" in second.stderr
    assert "Traceback" not in second.stderr and "Logging error" not in second.stderr
    rows = {row["name"]: row for row in json.loads(second.stdout)["items"]}
    assert rows["small"]["status"] == "skipped"  # in place: a full disk does not undo what is there
    assert rows["m0"]["reason"].endswith("answered 404: check the URL")
    assert "start models.esrgan.small" in log_text  # what the first run wrote is still there


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ("size=16m,nr_inodes=1", "the disk is full: {ws}/.provision; free some space or rent a bigger disk"),
        (
            "size=16m,ro",
            "Read-only file system: {ws}/.provision; --workspace (or $WORKSPACE) must be a folder",
        ),
    ],
    ids=["no-inodes-left", "read-only"],
)
def test_a_workspace_that_cannot_be_written_fails_with_the_fix(write_config, cdn, workspace, options, said):
    cdn.add("/small.pth", blob(300_000, seed=3))
    config = write_config(f'[models.esrgan]\nsmall = "{cdn.url}/small.pth"\n')
    workspace.mkdir()
    with own_filesystem(workspace, options) as (inside, ws):  # no file can be made there
        result = run_module(str(config), "--workspace", str(workspace), inside=inside)
        left = sorted(p.name for p in ws.iterdir())
    assert result.returncode == 1
    assert f"error: {said.format(ws=workspace)}" in result.stderr
    assert "Traceback" not in result.stderr
    assert left == []


def test_records_that_cannot_be_saved_do_not_fail_a_verified_download(write_config, cdn, workspace, models):
    data = blob(300_000, seed=4)
    cdn.add("/small.pth", data)
    config = write_config(f'[models.esrgan.small]\nurl = "{cdn.url}/small.pth"\nsha256 = "{sha256(data)}"\n')
    state = workspace / ".provision"
    state.mkdir(parents=True)
    with own_filesystem(state, "size=1m") as (inside, view):
        filler = fill(view, leave=0)  # the records' disk is full; the models' is not
        args = (str(config), "--workspace", str(workspace), "--json")
        first = run_module(*args, inside=inside)
        assert first.returncode == 0, first.stderr
        assert (
            "verified.json (No space left on device): the next run hashes these files again" in first.stderr
        )
        assert sha256((models / "ESRGAN" / "small.pth").read_bytes()) == sha256(data)
        assert sorted(p.name for p in view.iterdir()) == ["filler", "lock"]
        sent = cdn.body_bytes
        filler.unlink()
        second = run_module(*args, inside=inside)
    assert second.returncode == 0, second.stderr
    assert cdn.body_bytes == sent  # hashed on disk, not downloaded again
    assert "Traceback" not in first.stderr + second.stderr


def wait_for(condition, process: subprocess.Popen) -> None:
    """Wait until `condition()` holds (an event in another process, so it is looked at
    repeatedly); fails at once if the process ends first."""
    deadline = time.monotonic() + 60
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the process ended first: {process.communicate()}")
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


def test_a_partial_file_that_cannot_be_resumed_is_restarted_with_a_warning(
    cdn, write_config, workspace, models
):
    data = blob(4 * 1024 * 1024, seed=51)
    cdn.add("/stream.pth", data, length=False)  # no size, no ranges: bytes on disk cannot be placed
    cdn.rate = 1024 * 1024
    config = write_config(f'[models.esrgan]\nstream = "{cdn.url}/stream.pth"\n')
    args = (str(config), "--workspace", str(workspace))
    first = start_module(*args)
    part = models / "ESRGAN" / "stream.pth.part"
    wait_for(lambda: part.exists() and part.stat().st_size > 1024 * 1024, first)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    assert first.returncode == 143 and part.exists()
    second = run_module(*args)
    assert second.returncode == 0, second.stderr
    assert (
        "stream.pth: the partial download cannot be resumed (the server sent no size, so the bytes"
        " cannot be placed); starting over from byte 0" in second.stderr
    ), second.stderr
    assert sha256((models / "ESRGAN" / "stream.pth").read_bytes()) == sha256(data)


def test_plain_urls_are_resolved_32_at_once_whatever_jobs_says(cdn, write_config, workspace):
    # A HEAD per URL is a round trip: 200 URLs from a server 20 ms away were 16 at once.
    for i in range(40):
        cdn.add(f"/f{i}.pth", blob(1000, seed=200 + i))
    cdn.head_gate = threading.Event()
    config = write_config("[models.esrgan]\n" + "".join(f'f{i} = "{cdn.url}/f{i}.pth"\n' for i in range(40)))
    process = start_module(str(config), "--workspace", str(workspace), "--dry-run", "--jobs", "2", "--json")
    try:
        deadline = time.monotonic() + 60
        while len(cdn.heads_waiting) < 32 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.01)
        # 32 files asked about at once (a timed-out HEAD asked again is the same file)
        assert len(cdn.heads_waiting) == 32
    finally:
        cdn.head_gate.set()
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert [r["status"] for r in json.loads(out)["items"]] == ["planned"] * 40
