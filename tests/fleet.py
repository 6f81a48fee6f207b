"""A fleet simulated on one machine: N hosts as N `provision --locked` processes against the
fakes (Hub, CivitAI, CDN), each with its own workspace or one shared by all, with or without a
mirror. Used by tests/test_fleet.py and bench/fleet.py (which prints the table for N = 8)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .fakes.cdn import FakeCDN
from .fakes.civitai import FakeCivitai, VersionFile
from .fakes.hub import FakeHub

COMMIT = "f" * 40
CIVITAI_TOKEN = "civitai-fleet-token-789"


def pattern(size: int, seed: int) -> bytes:
    """Bytes that differ at every 32-byte block (cheap for big sizes)."""
    block = b"".join(hashlib.sha256(b"%d:%d" % (seed, n)).digest() for n in range(2048))  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


@dataclass
class ModelSet:
    """One config and its lock: a Hub LFS checkpoint, a Hub small file (git blob id), a CivitAI
    LoRA behind a token and a plain URL's upscaler; `files` maps path under models -> bytes."""

    hub: FakeHub
    civitai: FakeCivitai
    cdn: FakeCDN
    config: Path
    files: dict[str, bytes]

    @classmethod
    def serve(cls, folder: Path, scale_kib: int = 1024) -> ModelSet:
        cdn = FakeCDN().start()
        hub, civitai = FakeHub(cdn=cdn).start(), FakeCivitai(cdn=cdn).start()
        checkpoint = pattern(8 * scale_kib * 1024, 1)
        small = b'{"fleet": true}\n' * 64
        lora = pattern(2 * scale_kib * 1024, 2)
        upscaler = pattern(scale_kib * 1024, 3)
        hub.add_repo("org/fleet", {"model.safetensors": checkpoint, "config.json": small}, commit=COMMIT)
        civitai.valid_tokens.add(CIVITAI_TOKEN)
        civitai.add_version(700, 70, [VersionFile("style.safetensors", lora, file_id=71)])
        cdn.add("/upscaler.pth", upscaler)
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "models.toml"
        config.write_text(
            '[models.checkpoints.base]\nrepo = "org/fleet"\nfile = "model.safetensors"\n\n'
            '[models.vae.cfg]\nrepo = "org/fleet"\nfile = "config.json"\n\n'
            "[models.lora.style]\nversion_id = 700\n\n"
            f'[models.esrgan]\nup = "{cdn.url}/upscaler.pth"\n'
        )
        files = {
            "Stable-diffusion/model.safetensors": checkpoint,
            "VAE/config.json": small,
            "Lora/style.safetensors": lora,
            "ESRGAN/upscaler.pth": upscaler,
        }
        return cls(hub, civitai, cdn, config, files)

    @property
    def env(self) -> dict[str, str]:
        return {
            "HF_ENDPOINT": self.hub.url,
            "CIVITAI_ENDPOINT": self.civitai.url,
            "GDRIVE_ENDPOINT": "http://127.0.0.1:9",
            "CIVITAI_TOKEN": CIVITAI_TOKEN,
            "PROVISION_RETRY_BASE": "0.01",
        }

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.files.values())

    def origin_bytes(self) -> int:
        """Model bytes the sources sent: CDN bodies plus the Hub's own small-file answers."""
        small = [s for s in self.hub.seen("/api/resolve-cache/") if s.method == "GET"]
        return self.cdn.body_bytes + len(self.files["VAE/config.json"]) * len(small)

    def verified(self, workspace: Path) -> bool:
        """Every file of the set on disk with the right bytes, and nothing else."""
        models = workspace / "sdnext" / "models"
        found = sorted(str(p.relative_to(models)) for p in models.rglob("*") if p.is_file())
        return found == sorted(self.files) and all(
            (models / path).read_bytes() == data for path, data in self.files.items()
        )

    def stop(self) -> None:
        for server in (self.hub, self.civitai, self.cdn):
            server.stop()


@dataclass
class Host:
    workspace: Path
    process: subprocess.Popen
    started: float
    lines: queue.Queue = field(default_factory=queue.Queue)
    output: list[str] = field(default_factory=list)
    stdout: str = ""
    seconds: float = 0.0
    code: int | None = None

    def wait_for_line(self, pattern: str, timeout: float = 60) -> str:
        """The first console line matching `pattern` (read as the process writes it)."""
        deadline = time.monotonic() + timeout
        for line in self.output:
            if re.search(pattern, line):
                return line
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.output.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r}; so far:\n" + "".join(self.output))

    def finish(self, timeout: float = 300) -> Host:
        self.stdout = self.process.stdout.read()
        self.code = self.process.wait(timeout)
        self.seconds = time.monotonic() - self.started
        while (line := self.lines.get()) is not None:
            self.output.append(line)
        return self

    @property
    def text(self) -> str:
        return "".join(self.output)

    def fetched_from(self) -> dict[str, str]:
        return fetched_from(self.stdout)


def report_items(text: str) -> list[dict]:
    """The items of a run's --json report: a list of rows, or an object with `items`."""
    report = json.loads(text)
    return report["items"] if isinstance(report, dict) else report


def fetched_from(text: str) -> dict[str, str]:
    """Per file under the models folder, where a run's --json report says it came from."""
    return {path: origin for row in report_items(text) for path, origin in row["fetched_from"].items()}


def start_host(models: ModelSet, workspace: Path, *extra: str, env: dict | None = None) -> Host:
    """`provision CONFIG --locked --json` as its own process; stderr read line by line."""
    argv = [str(models.config), "--locked", "--json", "--workspace", str(workspace), *extra]
    process = subprocess.Popen(
        [sys.executable, "-m", "provision", *argv],
        env={**_plain_env(), **models.env, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    host = Host(workspace, process, time.monotonic())

    def pump() -> None:
        for line in process.stderr:
            host.lines.put(line)
        host.lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return host


def run_hosts(models: ModelSet, workspaces: list[Path], *extra: str) -> list[Host]:
    """Start every host at once, then wait for all of them."""
    hosts = [start_host(models, workspace, *extra) for workspace in workspaces]
    return [host.finish() for host in hosts]


def _plain_env() -> dict[str, str]:
    secret = ("HF_TOKEN", "CIVITAI_TOKEN", "PASSWORD", "OPEN_BUTTON_TOKEN", "PROVISION_URL", "WORKSPACE")
    keep = {k: v for k, v in os.environ.items() if k not in secret and not k.startswith("PROVISION_")}
    return keep


@contextlib.contextmanager
def static_server(folder: Path):
    """`python -m http.server` over `folder`, a plain static file server in its own process;
    yields its URL and stops it afterwards."""
    server = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = server.stdout.readline()
        port = re.search(r"port (\d+)", line)
        if not port:
            raise RuntimeError(f"http.server did not start: {line!r}")
        yield f"http://127.0.0.1:{port[1]}"
    finally:
        server.terminate()
        server.wait()
