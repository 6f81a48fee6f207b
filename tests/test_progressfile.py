"""`<workspace>/.provision/progress.json`, what the container's portal shows of a run: each item
queued, downloading (bytes, speed, time left), verified, in place or failed with its reason, and
the whole set; the run's own display gets every event as before."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from provision import progressfile
from provision.engine import Progress


class Recorder(Progress):
    def __init__(self):
        self.events = []

    def file_started(self, download, total, have):
        self.events.append(("started", download.dest.name, have))

    def advance(self, download, n):
        self.events.append(("advance", download.dest.name, n))

    def file_finished(self, download):
        self.events.append(("finished", download.dest.name))

    def close(self):
        self.events.append(("close",))


def entry(key: str, size: int | None, **state):
    download = SimpleNamespace(dest=Path(f"/ws/{key.replace('/', '-')}"), expected_size=size)
    fields = {"in_place": None, "error": None, "fetching": 0, "statuses": []} | state
    return SimpleNamespace(item=SimpleNamespace(key=key), downloads=[download], **fields)


def test_every_state_and_the_totals_are_written_and_events_reach_the_display(tmp_path, monkeypatch):
    monkeypatch.setattr(progressfile, "INTERVAL", 3600)  # written by the calls below, not the timer
    queued = entry("lora/queued", 1000)
    moving = entry("checkpoints/moving", 10_000, fetching=1)
    verified = entry("vae/verified", 500, fetching=1, statuses=["ok"])
    placed = entry("lora/placed", None, in_place=[Path("/ws/x")])
    failed = entry("lora/failed", 700, error="failed.safetensors: 404 Not Found: check the URL")
    inner = Recorder()
    progress = progressfile.ProgressFile(inner, tmp_path, [queued, moving, verified, placed, failed])
    download = moving.downloads[0]
    progress.file_started(download, 10_000, 2_000)
    progress.advance(download, 3_000)
    progress._write(finished=False)
    picture = json.loads((tmp_path / ".provision" / "progress.json").read_text())
    states = {i["item"]: (i["state"], i["done"], i["reason"]) for i in picture["items"]}
    assert states == {
        "lora/queued": ("queued", 0, None),
        "checkpoints/moving": ("downloading", 5_000, None),
        "vae/verified": ("verified", 500, None),
        "lora/placed": ("in place", 0, None),
        "lora/failed": ("failed", 0, "failed.safetensors: 404 Not Found: check the URL"),
    }
    assert picture["total"]["size"] == 1000 + 10_000 + 500 + 700 and picture["total"]["done"] == 5_500
    assert picture["finished"] is False
    progress.close()
    assert json.loads((tmp_path / ".provision" / "progress.json").read_text())["finished"] is True
    assert inner.events == [
        ("started", "checkpoints-moving", 2_000),
        ("advance", "checkpoints-moving", 3_000),
        ("close",),
    ]


def test_speed_and_time_left_follow_the_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(progressfile, "INTERVAL", 3600)
    clock = iter(float(t) for t in range(1000, 2000))
    monkeypatch.setattr(progressfile.time, "time", lambda: next(clock))
    moving = entry("checkpoints/moving", 10_000, fetching=1)
    progress = progressfile.ProgressFile(Recorder(), tmp_path, [moving])
    progress.file_started(moving.downloads[0], 10_000, 0)
    for _ in range(4):  # 1000 bytes a second
        progress.advance(moving.downloads[0], 1000)
        progress._write(finished=False)
    item = json.loads((tmp_path / ".provision" / "progress.json").read_text())["items"][0]
    assert item["speed"] == 1000.0 and item["eta"] == 6.0
    progress.close()


def test_a_picture_that_cannot_be_written_never_fails_the_run(tmp_path):
    (tmp_path / ".provision").write_text("a file where the state folder should be")
    inner = Recorder()
    moving = entry("checkpoints/moving", 10_000, fetching=1)
    progress = progressfile.ProgressFile(inner, tmp_path, [moving])
    progress.file_started(moving.downloads[0], 10_000, 0)
    progress.close()
    assert inner.events[-1] == ("close",)
