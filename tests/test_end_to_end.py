"""Whole runs of `provision` as a user sees them: kill and resume, re-runs, the report, the log,
and secrets that never show up anywhere."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from provision.ranges import Ranges

from .conftest import blob, run_module, sha256, start_module, tree
from .fakes.cdn import Fault
from .fakes.civitai import VersionFile

SIZE = 24 * 1024 * 1024
DATA = blob(SIZE, seed=21)


def start_provision(config: Path, workspace: Path, extra_env: dict | None = None) -> subprocess.Popen:
    env = {"PROVISION_RETRY_BASE": "0.01", **(extra_env or {})}
    return start_module(str(config), "--workspace", str(workspace), "--json", env=env)


def test_sigkill_mid_download_resumes_with_only_the_missing_bytes(cdn, write_config, workspace, models):
    cdn.add("/big.safetensors", DATA)
    cdn.rate = 1024 * 1024  # per connection, so the download takes a few seconds
    config = write_config(f'[models.checkpoints]\nbig = "{cdn.url}/big.safetensors"\n')
    dest = models / "Stable-diffusion" / "big.safetensors"
    state = dest.with_name("big.safetensors.part.state")

    process = start_provision(config, workspace)
    deadline = time.monotonic() + 60
    covered = 0
    while time.monotonic() < deadline and covered < 6 * 1024 * 1024:
        assert not dest.exists(), "an unfinished file sits under its final name"
        if state.exists():
            with contextlib.suppress(ValueError):  # caught mid-replace: read again next time
                covered = Ranges(json.loads(state.read_text())["done"]).covered()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert not dest.exists()

    left = Ranges(json.loads(state.read_text())["done"])
    missing = SIZE - left.covered()
    assert 0 < missing < SIZE - 5 * 1024 * 1024
    cdn.rate = None
    cdn.wait_idle()  # the killed client's connections: let the server notice they are gone
    first_run_bytes = cdn.body_bytes
    cdn.body_bytes = 0

    process = start_provision(config, workspace)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert sha256(dest.read_bytes()) == sha256(DATA)
    assert cdn.body_bytes == missing  # exactly the gaps, nothing twice
    # Little was lost at the kill: what was sent but not recorded (in flight, socket buffers).
    assert first_run_bytes - left.covered() < 6 * 1024 * 1024
    assert tree(models) == ["Stable-diffusion/big.safetensors"]
    (row,) = json.loads(out)["items"]
    assert (row["status"], row["bytes"], row["size"]) == ("ok", missing, SIZE)


def test_a_rerun_with_everything_in_place_reads_no_model_bytes(
    cli, write_config, cdn, hub, workspace, models
):
    cdn.add("/a.pth", blob(100_000, seed=1))
    hub.add_repo("org/m", {"vae.safetensors": blob(50_000, seed=2)})
    config = str(
        write_config(
            f'[models.esrgan]\na = "{cdn.url}/a.pth"\n'
            '[models.vae.v]\nrepo = "org/m"\nfile = "vae.safetensors"\n'
        )
    )
    first = cli(config, "--json")
    assert first.code == 0, first.err
    assert [r["status"] for r in json.loads(first.out)["items"]] == ["ok", "ok"]
    cdn.body_bytes = 0
    cdn.requests.clear()
    hub.requests.clear()
    again = cli(config, "--json")
    assert again.code == 0
    rows = json.loads(again.out)["items"]
    assert [(r["status"], r["bytes"]) for r in rows] == [("skipped", 0), ("skipped", 0)]
    assert cdn.requests == [] and hub.requests == []  # recorded as in place: not one request
    # The records live outside the models folder: SD.Next sees only the models.
    assert tree(models) == ["ESRGAN/a.pth", "VAE/vae.safetensors"]
    assert (workspace / ".provision" / "verified.json").exists()
    log = (workspace / "logs" / "provision.log").read_text()
    assert "skipped models.esrgan.a: in place as recorded (--update asks the source again)" in log

    # --update asks the sources again (metadata only) and still reads no model bytes.
    updated = cli(config, "--json", "--update")
    assert updated.code == 0
    assert [r["status"] for r in json.loads(updated.out)["items"]] == ["skipped", "skipped"]
    assert cdn.body_bytes == 0 and cdn.requests and all(r.method == "HEAD" for r in cdn.requests)
    log = (workspace / "logs" / "provision.log").read_text()
    assert "skipped models.esrgan.a: already in place and verified" in log


def test_a_failed_item_does_not_stop_the_others_and_the_report_says_why(cli, write_config, cdn, models):
    cdn.add("/good.pth", b"good bytes")
    result = cli(
        str(write_config(f'[models.esrgan]\ngood = "{cdn.url}/good.pth"\nbad = "{cdn.url}/missing.pth"\n')),
        "--json",
    )
    assert result.code == 1
    good, bad = json.loads(result.out)["items"]
    assert (good["status"], good["bytes"]) == ("ok", 10)
    assert bad["status"] == "failed" and "answered 404: check the URL" in bad["reason"]
    assert {"category", "name", "source", "dest", "size", "status", "bytes", "seconds", "reason"} <= set(bad)
    assert tree(models) == ["ESRGAN/good.pth"]
    # The reason is said once, at the end, not as it happens and again under the table.
    assert result.err.count("answered 404: check the URL") == 1, result.err
    assert "failed esrgan.bad: " in result.err


def test_log_has_item_lines_and_a_periodic_total_without_a_terminal(write_config, cdn, workspace):
    cdn.add("/slow.pth", blob(3 * 1024 * 1024, seed=3))
    cdn.rate = 1024 * 1024
    config = write_config(f'[models.esrgan]\nslow = "{cdn.url}/slow.pth"\n')
    process = start_provision(config, workspace, {"PROVISION_PROGRESS_INTERVAL": "0.3"})
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    log = (workspace / "logs" / "provision.log").read_text()
    assert "start models.esrgan.slow ->" in log and "done models.esrgan.slow: 3.0 MiB in" in log
    assert "progress: " in log and "of 3.0 MiB at" in log and "file(s) active" in log
    assert log.count("progress: ") < 40  # periodic, not per chunk


def test_no_secret_reaches_logs_reports_output_or_process_arguments(
    write_config, cdn, civitai, hub, workspace
):
    hf_token, civitai_token, header_secret = (
        "hf_supersecret_AAAA",
        "civ_supersecret_BBBB",
        "hdr_supersecret_CCCC",
    )
    hub.valid_tokens.add(hf_token)
    hub.add_repo("org/gated", {"m.safetensors": blob(40_000, seed=4)}, gated=True, accepted_tokens={hf_token})
    civitai.valid_tokens.add(civitai_token)
    civitai.add_version(11, 10, [VersionFile("c.safetensors", blob(30_000, seed=5))])
    cdn.add("/p.pth", b"private")
    config = write_config(
        '[models.unet.g]\nrepo = "org/gated"\nfile = "m.safetensors"\ngated = true\n'
        "[models.lora.c]\nversion_id = 11\n"
        f'[models.esrgan.p]\nurl = "{cdn.url}/p.pth?token=urlsecret_DDDD"\nheaders = {{ X-Key = "${{HDR}}" }}\n'
        f'[models.esrgan.q]\nurl = "{cdn.url}/nope.pth?token=urlsecret_DDDD"\n'
    )
    env = {
        "HF_TOKEN": hf_token,
        "CIVITAI_TOKEN": civitai_token,
        "HDR": header_secret,
        "HF_ENDPOINT": hub.url,
        "CIVITAI_ENDPOINT": civitai.url,
    }
    process = start_provision(config, workspace, env)
    cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode(errors="replace")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1  # q is a 404
    rows = {r["name"]: r for r in json.loads(out)["items"]}
    assert [rows[n]["status"] for n in "gcp"] == ["ok", "ok", "ok"]
    everything = out + err + cmdline + "".join(p.read_text() for p in (workspace / "logs").rglob("*.log"))
    everything += (workspace / ".provision" / "verified.json").read_text()
    for secret in (hf_token, civitai_token, header_secret, "urlsecret_DDDD"):
        assert secret not in everything
    assert "token=***" in everything  # the failing URL is still named, masked


@pytest.mark.parametrize("jobs", ["1", "3"])
def test_jobs_limits_files_at_once(write_config, cdn, workspace, models, jobs):
    for n in range(4):
        cdn.add(f"/f{n}.pth", blob(200_000, seed=n))
    config = write_config("[models.esrgan]\n" + "".join(f'f{n} = "{cdn.url}/f{n}.pth"\n' for n in range(4)))
    result = run_module(str(config), "--workspace", str(workspace), "--jobs", jobs, "-q", timeout=60)
    assert result.returncode == 0, result.stderr
    assert tree(models) == [f"ESRGAN/f{n}.pth" for n in range(4)]


def test_progress_bars_on_a_terminal(write_config, cdn, workspace, models, capsys):
    from provision import Provisioner

    cdn.add("/a.pth", blob(5 * 1024 * 1024, seed=8))
    cdn.add("/b.pth", blob(1024 * 1024, seed=9))
    config = write_config(f'[models.esrgan]\na = "{cdn.url}/a.pth"\nb = "{cdn.url}/b.pth"\n')
    report = Provisioner(workspace, progress=True).run(config)
    assert [r.status for r in report.results] == ["ok", "ok"]
    err = capsys.readouterr().err
    assert "total " in err and "ESRGAN/a.pth " in err and "/5.0 MiB" in err  # as the log writes sizes
    assert "ESRGAN/b.pth" in err  # 1 MiB: big enough for a line of its own
    assert "verifying" in err  # the hash after the last byte is a phase of its own
    assert tree(models) == ["ESRGAN/a.pth", "ESRGAN/b.pth"]


def _wait_for_line(stream, text: str, timeout: float = 60) -> str:
    """Read a running process's stderr until a line holds `text`; returns what was read."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} never appeared in:\n{''.join(seen)}")


@pytest.fixture
def two_files(cdn, write_config):
    files = {f"f{i}": blob(3 * 1024 * 1024 + i, seed=40 + i) for i in range(2)}
    for name, data in files.items():
        cdn.add(f"/{name}.safetensors", data)
    cdn.gate = threading.Event()  # the first run's bodies wait until the second run is there
    lines = "".join(f'{name} = "{cdn.url}/{name}.safetensors"\n' for name in files)
    return files, write_config(f"[models.checkpoints]\n{lines}")


def _holding(process: subprocess.Popen, workspace: Path) -> None:
    lock = workspace / ".provision" / "lock"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if lock.exists() and f'"pid": {process.pid}' in lock.read_text():
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("the first run never took the workspace lock")


def test_two_runs_on_one_workspace_take_turns_and_both_end_ok(cdn, two_files, workspace, models):
    files, config = two_files
    first = start_provision(config, workspace)
    _holding(first, workspace)
    second = start_provision(config, workspace)
    said = _wait_for_line(second.stderr, "waiting for it to finish")
    assert f"another provision (PID {first.pid}, running since " in said
    cdn.gate.set()
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert (first.returncode, second.returncode) == (0, 0), err1 + said + err2
    assert [r["status"] for r in json.loads(out1)["items"]] == ["ok", "ok"]
    assert [r["status"] for r in json.loads(out2)["items"]] == ["skipped", "skipped"]
    for name, data in files.items():
        assert sha256((models / "Stable-diffusion" / f"{name}.safetensors").read_bytes()) == sha256(data)
    assert tree(models) == ["Stable-diffusion/f0.safetensors", "Stable-diffusion/f1.safetensors"]


def test_no_wait_fails_at_once_naming_the_other_run(cdn, two_files, workspace):
    _, config = two_files
    first = start_provision(config, workspace)
    _holding(first, workspace)
    second = run_module(str(config), "--workspace", str(workspace), "--no-wait", timeout=60)
    assert second.returncode == 1
    assert f"error: another provision (PID {first.pid}, running since " in second.stderr
    assert f"is working on {workspace}" in second.stderr
    assert "start models." not in second.stderr  # it touched no file
    cdn.gate.set()
    first.communicate(timeout=120)
    assert first.returncode == 0


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_stops_every_transfer_at_once_and_the_next_run_resumes(
    cdn, write_config, workspace, models, signum, code
):
    others = {f"o{i}": blob(2 * 1024 * 1024, seed=60 + i) for i in range(2)}
    cdn.add("/big.safetensors", DATA)
    for name, data in others.items():
        cdn.add(f"/{name}.safetensors", data)
    cdn.rate = 512 * 1024  # per connection: every file is still on its way at the signal
    lines = "".join(f'{n} = "{cdn.url}/{n}.safetensors"\n' for n in ["big", *others])
    config = write_config(f"[models.checkpoints]\n{lines}")
    dest = models / "Stable-diffusion" / "big.safetensors"
    state = dest.with_name("big.safetensors.part.state")
    # A read timeout far beyond the wait below: only the fix can make the process leave in time.
    process = start_provision(config, workspace, {"PROVISION_READ_TIMEOUT": "300"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
            if Ranges(json.loads(state.read_text())["done"]).covered() >= 2 * 1024 * 1024:
                break
        time.sleep(0.05)
    cdn.gate = threading.Event()  # from now on no body moves: every worker sits in a read
    process.send_signal(signum)
    out, err = process.communicate(timeout=30)
    assert process.returncode == code, err
    lines = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1, err
    assert re.fullmatch(
        r"interrupted: \d partial files? kept \(([\w/-]+\.safetensors, )*Stable-diffusion/big\.safetensors[^)]*\); "
        r"run the same command again to resume",
        lines[0],
    ), lines
    assert not dest.exists()
    kept = Ranges(json.loads(state.read_text())["done"]).covered()
    assert kept >= 2 * 1024 * 1024

    cdn.gate.set()
    cdn.gate = None
    cdn.rate = None
    cdn.wait_idle()
    cdn.body_bytes = 0
    again = start_provision(config, workspace)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert sha256(dest.read_bytes()) == sha256(DATA)
    big = next(r for r in json.loads(out)["items"] if r["name"] == "big")
    assert big["bytes"] == SIZE - kept  # only the missing bytes


def test_files_done_just_before_a_signal_are_recorded_and_never_asked_for_again(
    cdn, write_config, workspace, models
):
    # The records are written at most twice a second while files finish: the ones done in the
    # last moments before a stop are written on the way out, or the next run would ask again.
    # "Done" is what the log says (a file under its final name may still be on its way there).
    small = {f"s{i}": blob(300_000, seed=80 + i) for i in range(6)}
    for name, data in small.items():
        cdn.add(f"/{name}.safetensors", data)
    cdn.add("/big.safetensors", DATA)
    held = threading.Event()
    cdn.fault("/big.safetensors", *[Fault(stall_at=0, hold=held)] * 64)  # never ends
    lines = "".join(f'{n} = "{cdn.url}/{n}.safetensors"\n' for n in ["big", *small])
    config = write_config(f"[models.checkpoints]\n{lines}")
    folder = models / "Stable-diffusion"
    process = start_provision(config, workspace)
    log_file = workspace / "logs" / "provision.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        said = log_file.read_text() if log_file.exists() else ""
        if all(f"done models.checkpoints.{n}:" in said for n in small):
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)  # at once: within the records' half second
    assert all((folder / f"{n}.safetensors").exists() for n in small)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 143, err

    cdn.faults.clear()
    held.set()
    cdn.requests.clear()
    again = start_provision(config, workspace)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    statuses = {r["name"]: r["status"] for r in json.loads(out)["items"]}
    assert statuses == {"big": "ok", **dict.fromkeys(small, "skipped")}
    assert [r.path for r in cdn.seen() if not r.path.startswith("/big")] == []


def test_a_restart_with_every_server_down_finds_everything_in_place(
    cli, write_config, cdn, hub, civitai, workspace, models, monkeypatch
):
    cdn.add("/a.pth", blob(100_000, seed=3))
    hub.add_repo("org/m", {"vae.safetensors": blob(50_000, seed=4)})
    civitai.add_version(7, 70, [VersionFile("lora.safetensors", blob(30_000, seed=5), file_id=5)])
    config = str(
        write_config(
            f'[models.esrgan]\na = "{cdn.url}/a.pth"\n'
            '[models.vae.v]\nrepo = "org/m"\nfile = "vae.safetensors"\n'
            "[models.lora.l]\nversion_id = 7\n"
        )
    )
    monkeypatch.setenv("HF_TOKEN", "hf_token_for_the_restart_test")
    monkeypatch.setenv("CIVITAI_TOKEN", "civitai_token_for_the_restart_test")
    hub.valid_tokens.add("hf_token_for_the_restart_test")
    civitai.valid_tokens.add("civitai_token_for_the_restart_test")
    first = cli(config, "--json")
    assert first.code == 0, first.err
    # The network is gone (a restart is a new process: no connection of the first run lingers).
    for server in (cdn, hub, civitai):
        server.stop()
    env = {
        "HF_TOKEN": "hf_token_for_the_restart_test",
        "CIVITAI_TOKEN": "civitai_token_for_the_restart_test",
        "PROVISION_RETRY_BASE": "5",  # retries would take minutes: none may happen
    }
    again = start_provision(Path(config), workspace, env)
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert [r["status"] for r in json.loads(out)["items"]] == ["skipped", "skipped", "skipped"]
    assert "retry" not in err and "warning" not in err
    # Asked to check upstream (--update) with every source down, each item stays in place as
    # verified and is reported as kept, with why it could not be checked; nothing is missing, so
    # the run exits 0. Each dead host costs one retry, not eight per item.
    before = {p: p.stat().st_mtime_ns for p in models.rglob("*") if p.is_file()}
    checked = run_module(
        config, "--workspace", str(workspace), "--json", "--update",
        env={**env, "PROVISION_RETRY_BASE": "0.01", "HF_ENDPOINT": hub.url, "CIVITAI_ENDPOINT": civitai.url},
        timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert [r["status"] for r in report["items"]] == ["kept", "kept", "kept"], checked.stderr
    assert report["summary"]["kept"] == 3 and report["summary"]["exit_code"] == 0
    for row in report["items"]:
        assert row["reason"].startswith(
            "in place as verified; could not check for a newer version: cannot reach 127.0.0.1:"
        )
        assert "(connection refused)" in row["reason"]
    assert "retry 2 " not in checked.stderr and "Errno" not in checked.stderr
    assert "3 items: 3 kept" in checked.stderr
    assert {p: p.stat().st_mtime_ns for p in models.rglob("*") if p.is_file()} == before


def test_a_dry_run_says_what_is_on_disk(cli, write_config, cdn, workspace, models):
    # A workspace prepared by a real run: one file in place, one changed behind our back, one
    # left partial by a run that failed, one never fetched.
    for name in ("kept", "changed", "partial", "new"):
        cdn.add(f"/{name}.pth", blob(3 * 1024 * 1024, seed=len(name)))
    entries = "".join(
        f'[models.esrgan.{n}]\nurl = "{cdn.url}/{n}.pth"\nfilename = "{n}.pth"\n'
        for n in ("kept", "changed", "partial", "new")
    )
    first = write_config(entries.split("[models.esrgan.new]")[0])
    # (the first request is the resolver's HEAD; then the transfer breaks off and the server fails)
    cdn.fault("/partial.pth", Fault(), Fault(close_at=1024 * 1024), *[Fault(status=503)] * 20)
    result = cli(str(first), "--json")
    assert [r["status"] for r in json.loads(result.out)["items"]] == ["ok", "ok", "failed"]
    changed = models / "ESRGAN" / "changed.pth"
    changed.write_bytes(changed.read_bytes()[::-1])  # same size, other bytes, newer mtime
    cdn.faults.clear()
    config = str(write_config(entries))

    online = {r["name"]: r for r in json.loads(cli(config, "--dry-run", "--json").out)["items"]}
    assert online["kept"]["on_disk"] == "in place"
    assert online["changed"]["on_disk"] == "will replace"
    assert (
        re.fullmatch(r"partial \d+%", online["partial"]["on_disk"])
        and online["partial"]["have"] >= 1024 * 1024
    )
    assert online["new"]["on_disk"] == "missing"
    summary = cli(config, "--dry-run")
    assert "4 items: 4 planned (1 in place, 1 partial, 1 missing, 1 to replace)" in summary.err
    assert "to download " in summary.err and " after" in summary.err

    offline = {
        r["name"]: r["on_disk"]
        for r in json.loads(cli(config, "--dry-run", "--offline", "--json").out)["items"]
    }
    assert offline["kept"] == "in place" and offline["new"] == "missing"
    assert offline["changed"] == "to check"  # its record no longer matches: the run hashes it
    assert offline["partial"].startswith("partial")
    assert tree(models) == [
        "ESRGAN/changed.pth",
        "ESRGAN/kept.pth",
        "ESRGAN/partial.pth.part",
        "ESRGAN/partial.pth.part.state",
    ]


def test_the_report_says_how_each_item_was_verified(cli, write_config, cdn, hub, workspace):
    cdn.add("/plain.pth", blob(70_000, seed=31))
    hub.add_repo("org/m", {"vae.safetensors": blob(300_000, seed=32), "config.json": b'{"a": 1}'})
    config = str(
        write_config(
            f'[models.esrgan]\nplain = "{cdn.url}/plain.pth"\n'
            '[models.vae.lfs]\nrepo = "org/m"\nfile = "vae.safetensors"\n'
            '[models.vae.small]\nrepo = "org/m"\nfile = "config.json"\n'
        )
    )
    first = cli(config, "--json")
    assert {r["name"]: r["verified"] for r in json.loads(first.out)["items"]} == {
        "plain": "size only",
        "lfs": "sha256",
        "small": "git blob id",
    }
    again = cli(config)
    table = again.err.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("ITEM "))
    assert table[header].split() == ["ITEM", "SIZE", "TIME", "SPEED", "CHECKED", "BY", "STATUS"]
    rows = [line.split() for line in table[header + 1 : header + 4]]
    assert [(row[0], row[-2], row[-1]) for row in rows] == [
        ("esrgan.plain", "records", "skipped"),
        ("vae.lfs", "records", "skipped"),
        ("vae.small", "records", "skipped"),
    ]


def test_force_fetches_again_what_is_in_place_and_only_that(cli, write_config, cdn, models):
    cdn.add("/a.pth", blob(200_000, seed=41))
    cdn.add("/b.pth", blob(200_000, seed=42))
    config = str(write_config(f'[models.esrgan]\na = "{cdn.url}/a.pth"\nb = "{cdn.url}/b.pth"\n'))
    assert cli(config).code == 0
    cdn.body_bytes = 0
    forced = cli(config, "--json", "--force", "--only", "esrgan/a")
    assert forced.code == 0, forced.err
    assert [(r["name"], r["status"], r["bytes"]) for r in json.loads(forced.out)["items"]] == [
        ("a", "ok", 200_000)
    ]
    assert cdn.body_bytes == 200_000
    assert sha256((models / "ESRGAN" / "a.pth").read_bytes()) == sha256(blob(200_000, seed=41))


def test_status_shows_the_model_folders_file_by_file(cli, write_config, cdn, workspace, models):
    cdn.add("/a.pth", blob(200_000, seed=51))
    cdn.add("/b.pth", blob(3 * 1024 * 1024, seed=52))
    config = str(
        write_config(
            f'[models.esrgan]\na = "{cdn.url}/a.pth"\n[models.lora.b]\nurl = "{cdn.url}/b.pth"\nfilename = "b.pth"\n'
        )
    )
    cdn.fault("/b.pth", Fault(), Fault(close_at=1024 * 1024), *[Fault(status=503)] * 20)
    assert cli(config).code == 1  # b is left partial
    (models / "Lora" / "mine.safetensors").write_bytes(b"a LoRA the user copied in")
    result = cli("status", config, "--workspace", str(workspace), "--json")
    assert result.code == 1, result.err  # b is not in place yet
    files = {f["path"]: (f["state"], f["owner"]) for f in json.loads(result.out)["files"]}
    assert files["ESRGAN/a.pth"] == ("verified", "models.esrgan.a")
    assert files["Lora/mine.safetensors"] == ("unverified", "-")
    assert re.fullmatch(r"partial \d+%", files["Lora/b.pth.part"][0])
    assert files["Lora/b.pth.part"][1] == "models.lora.b"
    text = cli("status", config, "--workspace", str(workspace)).out
    assert text.splitlines()[0].split() == ["FILE", "SIZE", "STATE", "ITEM"]
    assert "; 1 owned by no item; 1 not in place as verified" in " ".join(text.split())
