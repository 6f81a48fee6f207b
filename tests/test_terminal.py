"""provision at a real terminal: a pseudo-terminal of 80x24 columns rendered by a terminal
emulator (pyte), as a person sees it in tmux or the web terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import Callable

import pytest

from .conftest import SECRET_VARS, blob, sha256

pyte = pytest.importorskip("pyte", reason="pyte comes with the test extras")

COLUMNS = 80


def run_in_terminal(argv: list[str], env: dict[str, str], rows: int = 24) -> tuple[int, list[str]]:
    """Run argv with a pty as its terminal; the screen as rendered at the end (rows scrolled
    off the top are kept, as a terminal's scrollback would)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, COLUMNS, 0, 0))
    process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    screen = pyte.HistoryScreen(COLUMNS, rows, history=2000)
    stream = pyte.ByteStream(screen)
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not data:
            break
        stream.feed(data)
    os.close(master)
    code = process.wait(timeout=60)
    history = ["".join(char.data for char in line.values()) for line in screen.history.top]
    return code, [*history, *screen.display]


def test_a_run_at_a_terminal_prints_whole_lines_and_leaves_no_bar(cdn, write_config, workspace):
    long_name = "a-lora-with-a-name-long-enough-to-make-every-line-about-it-wrap-at-80.safetensors"
    cdn.add(f"/{long_name}", b"x" * 1000)
    for name, size in (("a", 3 * 1024 * 1024), ("b", 3 * 1024 * 1024), ("tiny", 10_000)):
        cdn.add(f"/{name}.safetensors", blob(size, seed=len(name)))
    cdn.rate = 512 * 1024  # per connection: the bars are on screen while items start and end
    lines = "".join(f'{n} = "{cdn.url}/{n}.safetensors"\n' for n in ("a", "b", "tiny"))
    lines += f'long = "{cdn.url}/{long_name}"\n'  # its start and done lines are longer than 80
    config = write_config(f"[models.lora]\n{lines}")
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS}
    env.update({"TERM": "xterm-256color", "PROVISION_RETRY_BASE": "0.01", "COLUMNS": str(COLUMNS)})
    argv = [sys.executable, "-m", "provision", str(config), "--workspace", str(workspace)]
    argv += ["--connections", "4"]
    code, screen = run_in_terminal(argv, env)
    text = "\n".join(screen)
    assert code == 0, text
    rows = [row.rstrip() for row in screen if row.strip()]
    for name in ("a", "b", "tiny"):
        assert f"start models.lora.{name} -> Lora/{name}.safetensors" in rows, text
        assert any(row.startswith(f"done models.lora.{name}: ") for row in rows), text
    for row in rows:  # a log line never shares its row with a bar or another line's piece
        for word in ("start models.", "done models.", "items: "):
            assert word not in row or row.startswith(word) or row.startswith("4 items"), row
    assert not any("%|" in row for row in rows), text  # every bar is gone at the end
    assert all(len(row) < COLUMNS for row in rows), text  # no line wraps
    assert rows[-1] == "4 items: 4 ok; total 6.0 MiB", text
    assert any(row.startswith("start models.lora.long -> Lora/a-lora-with") for row in rows), text


class Terminal:
    """A process on an 80x24 pseudo-terminal, its output fed to a terminal emulator as it
    comes: every screen it showed (`screens`), the raw bytes, and the screen at the end."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int = 24):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, COLUMNS, 0, 0))
        self.process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
        )
        os.close(slave)
        self.master = master
        self.screen = pyte.HistoryScreen(COLUMNS, rows, history=2000)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        self.screens: list[list[str]] = []

    def run(self, each: Callable[[Terminal], None] = lambda t: None) -> int:
        """Read until the process closes the terminal; `each` sees the screen after every read."""
        while True:
            ready, _, _ = select.select([self.master], [], [], 60)
            assert ready, "no output for 60 s"
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not data:
                break
            self.raw += data
            self.stream.feed(data)
            self.screens.append(list(self.screen.display))
            each(self)
        os.close(self.master)
        return self.process.wait(timeout=60)

    @property
    def text(self) -> list[str]:
        """The rows at the end, with those scrolled off the top (a terminal's scrollback)."""
        history = ["".join(char.data for char in line.values()) for line in self.screen.history.top]
        return [row.rstrip() for row in [*history, *self.screen.display]]


def terminal_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS}
    env.update({"TERM": "xterm-256color", "PROVISION_RETRY_BASE": "0.01", "COLUMNS": str(COLUMNS)})
    return env


def assert_no_holes(term: Terminal) -> None:
    """No screen ever had a blank row between two written ones (a finished bar's hole)."""
    for shown in term.screens:
        rows = [row.rstrip() for row in shown]
        last = max((n for n, row in enumerate(rows) if row), default=-1)
        assert all(rows[: last + 1]), "\n".join(rows)


def assert_clean_end(term: Terminal) -> list[str]:
    """After the process: no progress fragment anywhere, the cursor at the start of an empty
    row (where the shell's prompt goes). Returns the written rows."""
    rows = [row for row in term.text if row]
    assert not any("ETA" in row or "verifying" in row or "file(s)" in row for row in rows), "\n".join(rows)
    assert (
        term.screen.cursor.x == 0
        and not term.text[-1 - (len(term.screen.display) - 1 - term.screen.cursor.y)]
    )
    return rows


def test_progress_at_80x24_tells_the_truth_and_ctrl_c_leaves_a_clean_screen(
    cdn, hub, write_config, workspace, models
):
    big, stream = blob(12 * 1024 * 1024, seed=31), blob(3 * 1024 * 1024, seed=34)
    cdn.add("/big.safetensors", big)
    cdn.add("/stream.safetensors", stream, length=False)  # no Content-Length: the config says
    unet, vae = blob(2 * 1024 * 1024, seed=32), blob(2 * 1024 * 1024, seed=33)
    hub.add_repo("org/pipe", {"unet/diffusion_pytorch_model.safetensors": unet,
                              "vae/diffusion_pytorch_model.safetensors": vae,
                              "model_index.json": b"{}"})  # fmt: skip
    cdn.rate = 1024 * 1024  # per connection: every line is on screen for a while
    config = write_config(
        f'[models.checkpoints.big]\nurl = "{cdn.url}/big.safetensors"\n'
        f'[models.checkpoints.stream]\nurl = "{cdn.url}/stream.safetensors"\nsize = {len(stream)}\n'
        '[models.diffusers.pipe]\nrepo = "org/pipe"\n'
    )
    env = terminal_env() | {"HF_ENDPOINT": hub.url}
    argv = [sys.executable, "-m", "provision", str(config), "--workspace", str(workspace)]
    argv += ["--connections", "2"]

    def interrupt_at_a_third(term: Terminal) -> None:
        """SIGINT once every file had its line and the big one is a third done."""
        rows = [row for row in term.screen.display if row.startswith("Stable-diffusion/big.safetensors ")]
        third = any(int(row.split("%")[0].split()[-1]) >= 33 for row in rows if "%" in row)
        seen = {row.rstrip() for screen in term.screens for row in screen}
        every = all(any(name in row for row in seen) for name in ("/unet/", "/vae/"))
        every = every and any("stream.safetensors " in row and "%" in row for row in seen)  # under way
        if third and every and not getattr(term, "sent", False):
            term.sent = True  # type: ignore[attr-defined]
            term.process.send_signal(signal.SIGINT)

    first = Terminal(argv, env)
    assert first.run(interrupt_at_a_third) == 130
    rows = assert_clean_end(first)
    start = max(n for n, row in enumerate(rows) if row.startswith("interrupted: "))
    ending = " ".join(row.strip() for row in rows[start:])  # the one line, wrapped at 80
    assert "Stable-diffusion/big.safetensors" in ending, ending  # paths, not bare names
    assert ending.endswith("run the same command again to resume"), ending
    assert_no_holes(first)
    shown = {row.rstrip() for screen in first.screens for row in screen}
    # The size comes from the config though the server sends none; every line has an ETA.
    stream_rows = [row for row in shown if "stream.safetensors " in row and "%" in row]
    assert stream_rows and all("/3.0 MiB" in row for row in stream_rows), stream_rows
    assert any(row.startswith("total ") and "ETA " in row for row in shown), shown
    # Two files of one name stay apart: the folder inside the item is shown.
    named = [row for row in shown if "_model.safetensors" in row and "%" in row]
    assert any("/unet/" in row for row in named) and any("/vae/" in row for row in named), named
    assert all(len(row) < COLUMNS for row in shown)

    # Resumed: the bytes on disk count from the first line on, and the hash of what was on
    # disk before is a phase the screen shows.
    second = Terminal(argv, env)
    assert second.run() == 0
    totals = [row for screen in second.screens for row in screen if row.startswith("total ")]
    assert totals and all(not row.startswith("total   0%") for row in totals), totals
    assert b"verifying" in second.raw
    rows = assert_clean_end(second)
    assert rows[-1].startswith("3 items: ") and rows[-1].endswith("; total 19.0 MiB"), "\n".join(rows)
    assert "failed" not in rows[-1]
    assert_no_holes(second)
    assert all(len(row) < COLUMNS for row in second.text)
    assert sha256((models / "Stable-diffusion" / "big.safetensors").read_bytes()) == sha256(big)


def test_every_table_fits_80_columns_and_wide_shows_whole_paths(cdn, write_config, workspace, models):
    names = [f"a-style-lora-whose-name-alone-takes-most-of-a-row-{n}" for n in range(3)]
    for name in names:
        cdn.add(f"/files/{name}-with-an-even-longer-file-name.safetensors", blob(20_000, seed=len(name)))
    lines = "".join(f'{n} = "{cdn.url}/files/{n}-with-an-even-longer-file-name.safetensors"\n' for n in names)
    config = write_config(f"[models.lora]\n{lines}")
    env = terminal_env()

    def screen_of(*args: str) -> list[str]:
        term = Terminal([sys.executable, "-m", "provision", *args], env)
        assert term.run() in (0, 1), term.text
        return [row for row in term.text if row]

    base = ("--workspace", str(workspace))
    plan = screen_of(str(config), "--dry-run", *base)
    report = screen_of(str(config), *base)
    locked = screen_of("lock", str(config), *base)
    status = screen_of("status", str(config), *base)
    for rows in (plan, report, locked, status):
        # A row as wide as the terminal is one that wrapped (or is about to).
        assert all(len(row) < COLUMNS for row in rows), "\n".join(rows)
    # Each item is one row of each table, its last column on it: nothing wrapped onto the next.
    for name in names:
        row_of = f"row-{name[-1]} "
        assert any(
            row.startswith("lora.a-s") and row_of in row and " missing  Lora/" in row
            and row.endswith(".safetensors") for row in plan
        ), plan  # fmt: skip
        assert any(row.startswith("lora.a-s") and row_of in row and row.endswith(" ok") for row in report), (
            report
        )
    assert any(row.startswith("Lora/") and "verified" in row for row in status), status
    assert not any(str(models) in row for row in plan + status)  # relative to the models folder
    wide = screen_of("status", str(config), *base, "--wide")
    whole = f"{models}/Lora/{names[0]}-with-an-even-longer-file-name.safetensors"
    assert whole in "".join(wide), wide  # whole and absolute, so it wraps
